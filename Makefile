# Set up, run and test TotalSegmentator MRI for MONAI Deploy / XNAT.
#   make demo   - fresh machine -> venv + system tools -> run the app on the generated demo study
#   make test   - fresh machine -> venv + test tools -> the whole test suite (what CI runs)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Debian packages: dcm2niix and mricron-data (Colin27 T1) for geometry tests against an independent converter.
APT_RUNTIME :=
APT_TEST    := dcm2niix mricron-data dicom3tools

.PHONY: setup setup-test demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# The CPU build of torch 2.13.0 (on local disk here); install it first so nothing pulls a CUDA build.
	$(BIN)/pip install torch==2.13.0

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -e '.[test]'
	touch $@

.apt-test.stamp:
	$(SUDO) apt-get update -q
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $(APT_RUNTIME) $(APT_TEST)
	touch $@

setup: $(VENV)/.installed

setup-test: setup .apt-test.stamp

demo: setup
	$(BIN)/totalseg-mri demo -o out/demo
	@echo "results in out/demo (selection.json, nifti/)"

test: setup-test
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf out .apt-test.stamp
