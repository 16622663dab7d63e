# TotalSegmentator MRI: one image that is a MONAI Application Package (MAP) and an XNAT container.
#
#   TAG=totalseg-mri:0.1.0
#   docker build -t $TAG --build-arg MODEL_TASK=total_mr \
#     --build-arg XNAT_COMMANDS="$(python3 -m app.xnat_command_label --image $TAG)" .
#
# Build arguments:
#   BASE_IMAGE     CUDA runtime base (default) or any Debian/Ubuntu with python3 >= 3.10 (tests use a local
#                  debootstrap Debian).
#   TORCH_VARIANT  cuda (torch from PyPI, CUDA build) or cpu (torch from the PyTorch CPU index).
#   TORCH_PIP_ARGS extra pip arguments for the torch install (overrides the CPU index choice).
#   MODEL_TASK     weights baked into /opt/holoscan/models: total_mr, total_mr_fast, total_mr_fastest, or demo
#                  (the small demo model committed under models/demo). A run never downloads.
#   XNAT_COMMANDS  value of the org.nrg.commands label, generated from xnat_command.json by
#                  app/xnat_command_label.py; the build fails if it is missing or differs from that file.
ARG BASE_IMAGE=nvcr.io/nvidia/cuda:13.0.0-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

ARG TORCH_VARIANT=cuda
ARG TORCH_VERSION=2.13.0
ARG TORCH_PIP_ARGS=""
ARG MODEL_TASK=total_mr
ARG XNAT_COMMANDS=""
ARG APP_VERSION=0.1.0

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOLOSCAN_APPLICATION=/opt/holoscan/app \
    HOLOSCAN_INPUT_PATH=/var/holoscan/input \
    HOLOSCAN_OUTPUT_PATH=/var/holoscan/output \
    HOLOSCAN_WORKDIR=/var/holoscan \
    HOLOSCAN_MODEL_PATH=/opt/holoscan/models \
    HOLOSCAN_CONFIG_PATH=/var/holoscan/app.yaml \
    HOLOSCAN_APP_MANIFEST_PATH=/etc/holoscan/app.json \
    HOLOSCAN_PKG_MANIFEST_PATH=/etc/holoscan/pkg.json \
    HOLOSCAN_DOCS_PATH=/opt/holoscan/docs \
    HOLOSCAN_LOGS_PATH=/var/holoscan/logs \
    HOLOSCAN_LOG_LEVEL=WARN

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

# torch first, from the index that matches the variant; every later install is constrained to it so pip
# never swaps the build.
RUN set -e; \
    args="$TORCH_PIP_ARGS"; \
    if [ -z "$args" ] && [ "$TORCH_VARIANT" = cpu ]; then args="--index-url https://download.pytorch.org/whl/cpu"; fi; \
    pip install --no-cache-dir $args "torch==${TORCH_VERSION}"; \
    echo "torch==$(python3 -c 'import torch; print(torch.__version__)')" > /opt/torch-constraint.txt

COPY pyproject.toml README.md xnat_command.json /src/
COPY app /src/app
COPY operators /src/operators
COPY MAP /src/MAP
COPY requirements /src/requirements
RUN pip install --no-cache-dir -c /opt/torch-constraint.txt /src \
 && pip install --no-cache-dir --no-deps -r /src/requirements/runtime-nodeps.txt
# Holoscan (holoscan-cu13) loads libcudart.so.13 even on the CPU; CUDA runtime bases have it, plain Debian /
# Ubuntu bases get NVIDIA's CUDA runtime wheel (no driver needed).
RUN set -e; \
    if ! ldconfig -p | grep -q 'libcudart.so.13'; then \
        pip install --no-cache-dir -c /opt/torch-constraint.txt 'nvidia-cuda-runtime>=13,<14'; \
        python3 -c "import glob, os, sys; print(os.path.dirname(glob.glob(sys.prefix + '/lib/python3*/site-packages/nvidia/**/libcudart.so.13', recursive=True)[0]))" \
            > /etc/ld.so.conf.d/cuda-runtime-wheel.conf; \
        ldconfig; \
    fi; \
    python3 -c "import torch, holoscan, highdicom, pydicom, app.cli, operators.volume"

# The label handed in must be exactly what xnat_command.json generates: never a hand-copied command.
RUN python3 -m app.xnat_command_label --command /src/xnat_command.json --verify "$XNAT_COMMANDS"
LABEL org.nrg.commands="${XNAT_COMMANDS}" \
      org.opencontainers.image.title="TotalSegmentator MRI" \
      org.opencontainers.image.version="${APP_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

# MAP layout: application folder (runs as `python3 /opt/holoscan/app`), manifests, config, models.
# PYTHONPATH makes every entry point (the MAP, `totalseg-mri`, `python3 -m app.xnat_outputs`) import this one
# copy of app/ and operators/, data files included.
ENV PYTHONPATH=/opt/holoscan/app
RUN python3 /src/MAP/prepare_package_app.py --out /opt/holoscan/app \
 && mkdir -p /etc/holoscan /opt/holoscan/models /opt/holoscan/docs /var/holoscan/input /var/holoscan/output /var/holoscan/logs \
 && cp /src/MAP/app.yaml /var/holoscan/app.yaml \
 && python3 /src/MAP/generate_manifests.py --task "$MODEL_TASK" --out /etc/holoscan

# Weights: fetched, checked and unpacked by the project's fetcher at build time (or the committed demo model).
COPY models /src/models
RUN set -e; \
    if [ "$MODEL_TASK" = demo ]; then \
        cp -r /src/models/demo/. /opt/holoscan/models/; \
        test -n "$(ls /opt/holoscan/models)" || { echo "models/demo is empty: no demo model to bake in" >&2; exit 1; }; \
    else \
        python3 -m app.weights fetch --task "$MODEL_TASK" -m /opt/holoscan/models; \
        python3 -m app.weights verify --task "$MODEL_TASK" -m /opt/holoscan/models; \
    fi; \
    rm -rf /src/models

# uid/gid 1000 as MAPs expect (CUDA Ubuntu bases already have a uid-1000 user: reuse it).
RUN set -e; \
    if ! getent group 1000 >/dev/null; then groupadd -g 1000 holoscan; fi; \
    if ! getent passwd 1000 >/dev/null; then useradd -m -u 1000 -g 1000 -s /bin/sh holoscan; fi; \
    chown -R 1000:1000 /var/holoscan; \
    chmod -R a+rX /opt/holoscan /etc/holoscan

USER 1000:1000
WORKDIR /var/holoscan
ENTRYPOINT ["python3", "/opt/holoscan/app"]
