# Set up, run and test TotalSegmentator MRI for MONAI Deploy / XNAT.
#   make demo   - fresh machine -> venv + system tools -> run the app on the generated demo study
#   make test   - fresh machine -> venv + test tools -> the whole test suite (what CI runs)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Debian packages: dcm2niix and mricron-data (Colin27 T1) for geometry tests against an independent converter;
# g++ for torch.compile, which the demo model's training script uses (and its determinism test).
APT_RUNTIME :=
APT_TEST    := dcm2niix mricron-data dicom3tools orthanc orthanc-dicomweb g++

IMAGE ?= localhost/totalseg-mri:test
APT_IMAGE := podman runc debootstrap

.PHONY: setup setup-test demo test test-unit test-image lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# The CPU build of torch 2.13.0 (on local disk here); install it first so nothing pulls a CUDA build.
	$(BIN)/pip install torch==2.13.0

$(VENV)/.installed: $(BIN)/python pyproject.toml requirements/*.txt
	$(BIN)/pip install -c requirements/constraints.txt -e '.[test]'
	$(BIN)/pip install --no-deps -r requirements/runtime-nodeps.txt
	touch $@

$(VENV)/.reference: $(VENV)/.installed requirements/reference*.txt
	$(BIN)/pip install --no-deps -r requirements/reference-nodeps.txt
	$(BIN)/pip install -c requirements/constraints.txt -r requirements/reference.txt
	touch $@

.apt-test.stamp:
	$(SUDO) apt-get update -q
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $(APT_RUNTIME) $(APT_TEST)
	touch $@

setup: $(VENV)/.installed

setup-test: setup $(VENV)/.reference .apt-test.stamp

demo: setup
	$(BIN)/totalseg-mri demo -o out/demo
	@echo "results in out/demo: dicom/ (SEG, SR, PDF), report/, statistics.json, run.json, selection.json, nifti/"

# The whole suite: unit/integration tests, then the real image build and its XNAT and MONAI Deploy runs.
test: test-unit test-image

test-unit: setup-test
	$(BIN)/ruff check .
	$(BIN)/python MAP/generate_manifests.py --check
	$(BIN)/python -m pytest -q

.apt-image.stamp:
	$(SUDO) apt-get update -q
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $(APT_IMAGE)
	touch $@

# Build the CPU image with podman from a local debootstrap base (no registry, no Docker daemon) and run it
# as XNAT and as MONAI Deploy would.
test-image: setup .apt-image.stamp
	PYTHON=$(CURDIR)/$(BIN)/python tests/image/build_image.sh $(IMAGE)
	CONTAINERS_CONF=$(CURDIR)/build/image/containers.conf TOTALSEG_MRI_IMAGE=$(IMAGE) \
		$(BIN)/python -m pytest -q tests/image

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf out build .apt-test.stamp .apt-image.stamp
