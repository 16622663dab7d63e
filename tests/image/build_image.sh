#!/usr/bin/env bash
# Build the project image with podman on a machine without a Docker daemon or registry access:
# a local Debian base made with debootstrap, pip served from the machine's local wheel indexes when present.
#   tests/image/build_image.sh [TAG]      (default localhost/totalseg-mri:test; MODEL_TASK=demo, CPU torch)
# Needs root or rootless podman, plus: apt-get install -y --no-install-recommends podman runc debootstrap
set -euo pipefail

TAG="${1:-localhost/totalseg-mri:test}"
BASE="${BASE_IMAGE:-localhost/debian-base:bookworm}"
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
WORK="${IMAGE_WORKDIR:-$REPO/build/image}"
mkdir -p "$WORK"

# podman settings this sandbox needs (see docs): finite ulimits, runc, cgroupfs, file event log.
if [ -z "${CONTAINERS_CONF:-}" ]; then
    nofile="$(ulimit -Hn)"
    cat > "$WORK/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
    export CONTAINERS_CONF="$WORK/containers.conf"
fi

if ! podman image exists "$BASE"; then
    mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
    mirror="${mirror:-http://deb.debian.org/debian}"
    rootfs="$WORK/rootfs"
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$mirror"
    # HTTPS here goes through a TLS-intercepting proxy: trust its CA inside the image too.
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        mkdir -p "$rootfs/usr/local/share/ca-certificates"
        cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    fi
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar --numeric-owner -C "$rootfs" -c . | podman import - "$BASE"
    rm -rf "$rootfs"
fi

# Local wheel indexes (this machine's pip configuration) are mounted into the build so pip stays offline.
pip_args=()
volumes=()
for dir in /opt/wheels /opt/pypi /opt/pypi-more; do
    [ -d "$dir" ] && volumes+=(--volume "$dir:$dir:ro")
done
torch_args=""
if [ -d /opt/wheels ] && compgen -G "/opt/wheels/torch-*+cpu-*.whl" >/dev/null; then
    torch_args="--find-links /opt/wheels"
fi
if [ -d /opt/pypi/simple ]; then
    pip_args+=(--build-arg "PIP_INDEX_URL=file:///opt/pypi/simple"
               --build-arg "PIP_EXTRA_INDEX_URL=file:///opt/pypi-more/simple"
               --build-arg "PIP_FIND_LINKS=/opt/wheels")
fi

# A small build context: sources, manifests and models/demo (DEMO_MODELS_DIR replaces the latter, e.g. a
# freshly trained demo model that is not committed yet).
ctx="$WORK/context"
rm -rf "$ctx"
mkdir -p "$ctx"
for item in Dockerfile .dockerignore pyproject.toml README.md xnat_command.json requirements app operators MAP models; do
    [ -e "$REPO/$item" ] && cp -r "$REPO/$item" "$ctx/"
done
if [ -n "${DEMO_MODELS_DIR:-}" ]; then
    rm -rf "$ctx/models/demo"
    mkdir -p "$ctx/models/demo"
    cp -r "$DEMO_MODELS_DIR/." "$ctx/models/demo/"
fi
find "$ctx" -name __pycache__ -prune -exec rm -rf {} +

PY="${PYTHON:-$REPO/.venv/bin/python}"
LABEL="$(cd "$REPO" && "$PY" -m app.xnat_command_label --image "$TAG")"

podman build --network host -t "$TAG" \
    "${volumes[@]}" "${pip_args[@]}" \
    --build-arg BASE_IMAGE="$BASE" \
    --build-arg TORCH_VARIANT=cpu \
    --build-arg TORCH_PIP_ARGS="$torch_args" \
    --build-arg MODEL_TASK="${MODEL_TASK:-demo}" \
    --build-arg XNAT_COMMANDS="$LABEL" \
    -f "$ctx/Dockerfile" "$ctx"
echo "$TAG"
