"""The built image, run with podman the way XNAT and MONAI Deploy run it (``make test-image``).

Run after ``tests/image/build_image.sh``:
``TOTALSEG_MRI_IMAGE=localhost/totalseg-mri:test pytest tests/image``. Without that variable the module is
skipped (the image build takes minutes; CI runs it as its own target).
Every run uses ``--network none``: the image must work offline.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest

from app.xnat_command_label import label_commands
from app.xnat_command_validator import load_command
from app.xnat_launch import XnatSite, resolve_launch

IMAGE = os.environ.get("TOTALSEG_MRI_IMAGE")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not IMAGE, reason="set TOTALSEG_MRI_IMAGE (make test-image builds it)"),
]
REPO = Path(__file__).resolve().parents[2]
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
RUN_TIMEOUT = 900


def podman(*args: str, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    """ERROR-level log lines: the CLI format ("ERROR name: ...") or the SDK one ("[...] [ERROR] (name) -")."""
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith("ERROR") or "] [ERROR] (" in line]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from app.synthetic.dicom_study import write_study

    root = tmp_path_factory.mktemp("study")
    return write_study(root / "study", seed=0, scale=0.5)


def writable_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(path, 1000, 1000)  # the image's uid/gid, as XNAT's container user or the WM plug-in's chown
    else:
        path.chmod(0o777)
    return path


def selected_series(study):
    return next(s for s in study.series if s.expected == "selected" and s.kind == "axial")


def test_label_manifests_and_user(study):
    info = json.loads(podman("image", "inspect", IMAGE).stdout)[0]
    labels = info.get("Labels") or info["Config"]["Labels"]
    command = load_command(REPO / "xnat_command.json")
    assert json.loads(labels["org.nrg.commands"]) == label_commands(command, IMAGE)

    import importlib.util

    spec = importlib.util.spec_from_file_location("gm", REPO / "MAP" / "generate_manifests.py")
    gm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gm)
    expected = gm.build_manifests(REPO / "MAP" / "app.yaml", os.environ.get("MODEL_TASK", "demo"))
    for name in ("app.json", "pkg.json"):
        shown = podman(
            "run", "--rm", "--network", "none", "--entrypoint", "cat", IMAGE, f"/etc/holoscan/{name}"
        )
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout) == json.loads(expected[name])
    ident = podman("run", "--rm", "--network", "none", "--entrypoint", "id", IMAGE)
    assert ident.stdout.startswith("uid=1000") and "gid=1000" in ident.stdout


def test_map_run_writes_dicom_results(study, tmp_path):
    out = writable_dir(tmp_path / "out")
    result = podman(
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        f"{study.root / 'dicom'}:/var/holoscan/input:ro",
        "-v",
        f"{out}:/var/holoscan/output",
        IMAGE,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    segs = [
        p
        for p in (out / "dicom").rglob("*")
        if p.is_file() and pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID == SEG_CLASS
    ]
    assert segs, sorted(str(p) for p in out.rglob("*"))


def _xnat_run(launch, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    args = ["run", "--rm", "--network", "none", "--entrypoint", ""]
    for mount in launch.mounts:
        args += ["-v", f"{mount.host_path}:{mount.container_path}:{'rw' if mount.writable else 'ro'}"]
    for key, value in {**launch.environment, **(extra_env or {})}.items():
        args += ["-e", f"{key}={value}"]
    return podman(*args, IMAGE, *launch.argv)


def _scan_object(series_dir: Path) -> dict:
    return {
        "type": "Scan",
        "id": "3",
        "label": "3",
        "xsiType": "xnat:mrScanData",
        "uri": "/experiments/E1/scans/3",
        "directory": str(series_dir.parent),
        "project-id": "P1",
        "session-id": "E1",
        "resources": [
            {
                "type": "Resource",
                "label": "DICOM",
                "uri": "/experiments/E1/scans/3/resources/1",
                "directory": str(series_dir),
            }
        ],
    }


def test_xnat_scan_launch_uploads_every_required_output(study, tmp_path):
    series = selected_series(study)
    series_dir = tmp_path / "archive" / "SCANS" / "3" / "DICOM"
    series_dir.mkdir(parents=True)
    for path in series.files:
        shutil.copy(path, series_dir / path.name)
    build = writable_dir(tmp_path / "build")
    site = XnatSite(build_root=str(build), workflow_id="1")
    launch = resolve_launch(
        load_command(REPO / "xnat_command.json"),
        "totalseg-mri-scan",
        _scan_object(series_dir),
        {"device": "auto"},
        site,
    )
    writable_dir(Path(launch.mount("out").host_path))
    result = _xnat_run(launch)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for upload in launch.uploads:
        files = list(Path(upload.host_path).glob(upload.glob or "*"))
        assert files or not upload.required, f"{upload.label}: nothing in {upload.host_path}"
    seg = next(Path(launch.uploads[0].host_path).glob("*.dcm"))
    assert pydicom.dcmread(seg).SOPClassUID == SEG_CLASS


def test_xnat_session_launch_reads_the_xnat_layout(study, tmp_path):
    session_dir = tmp_path / "archive" / "SESSION1"
    scans = []
    for number, series in enumerate(s for s in study.series if s.expected == "selected"):
        folder = session_dir / "SCANS" / str(number + 1) / "DICOM"
        folder.mkdir(parents=True)
        for path in series.files:
            shutil.copy(path, folder / path.name)
        scans.append({"type": "Scan", "id": str(number + 1), "resources": [{"label": "DICOM"}]})
    session = {
        "type": "Session",
        "id": "E1",
        "label": "SESSION1",
        "xsiType": "xnat:mrSessionData",
        "uri": "/experiments/E1",
        "directory": str(session_dir),
        "project-id": "P1",
        "scans": scans,
    }
    site = XnatSite(build_root=str(writable_dir(tmp_path / "build")), workflow_id="2")
    launch = resolve_launch(
        load_command(REPO / "xnat_command.json"), "totalseg-mri-session", session, {}, site
    )
    writable_dir(Path(launch.mount("out").host_path))
    result = _xnat_run(launch)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert len(list(Path(launch.uploads[0].host_path).glob("*.dcm"))) >= 1


@pytest.mark.parametrize("case", ["unwritable-output", "missing-model", "cuda-without-gpu"])
def test_bad_platform_conditions_end_with_one_clear_line(study, tmp_path, case):
    out = tmp_path / "out"
    out.mkdir()
    if case != "unwritable-output":
        writable_dir(out)
    elif os.geteuid() != 0:
        out.chmod(0o555)
    args = [
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        f"{study.root / 'dicom'}:/var/holoscan/input:ro",
        "-v",
        f"{out}:/var/holoscan/output",
    ]
    if case == "missing-model":
        args += ["-e", "HOLOSCAN_MODEL_PATH=/opt/holoscan/no-models"]
    if case == "cuda-without-gpu":
        args += ["-e", "TOTALSEG_MRI_DEVICE=cuda"]
    result = podman(*args, IMAGE)
    assert result.returncode != 0
    errors = error_lines(result)
    assert len(errors) == 1, result.stdout[-2000:] + result.stderr[-2000:]
    # Nothing half-written: at most the selection report, which says why the run stopped.
    left = [p.name for p in out.iterdir()]
    assert left in ([], ["selection.json"])
    if left:
        report = json.loads((out / "selection.json").read_text())
        assert report["status"] == "error" and report["error"]
