"""The application end to end, as users start it: the `totalseg-mri` CLI and the SDK's `python -m app`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.data import get_testdata_file

from tests.series_factory import oblique_affine, write_series

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "app.cli"]


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(args, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=600)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if "ERROR" in line or "Traceback" in line]


@pytest.fixture(scope="module")
def study(tmp_path_factory, colin27_2mm) -> Path:
    """An axial T1 series, a sagittal one, a CT series and pydicom's Philips tri-plane pilot, one folder."""
    root = tmp_path_factory.mktemp("study")
    small = np.ascontiguousarray(colin27_2mm[::2, ::2, ::2])  # 46x55x46 at 4 mm
    study_uid = "1.2.826.0.1.3680043.8.498.500"
    write_series(root / "ax", small, oblique_affine((4, 4, 4), (0, 0, 0), (-90, -110, -70)), seed="ax",
                 series_number=3, description="T1 AX", study_uid=study_uid)
    sagittal = np.array([[0, 0, 4, -90], [4, 0, 0, -110], [0, -4, 0, 90], [0, 0, 0, 1]], dtype=float)
    write_series(root / "sag", small, sagittal, seed="sag", series_number=4, description="T2 SAG",
                 study_uid=study_uid)
    write_series(root / "ct", small, oblique_affine((4, 4, 4), (0, 0, 0), (0, 0, 0)), seed="ct",
                 series_number=5, modality="CT")
    pilot = Path(get_testdata_file("DICOMDIR")).parent / "98892003" / "MR2"
    for name in ("4950", "4981", "5011"):
        shutil.copy(pilot / name, root / f"pilot{name}")
    (root / "notes.txt").write_text("not DICOM")
    return root


def _selection(out: Path) -> dict:
    return json.loads((out / "selection.json").read_text())


@pytest.fixture(scope="module")
def eager_run(study, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The CLI on the study with the suite's default (networks run eagerly, conftest)."""
    out = tmp_path_factory.mktemp("eager") / "out"
    return out, run([*CLI, "run", "-i", str(study), "-o", str(out)])


def test_cli_run_selects_every_eligible_series_and_writes_volumes(eager_run):
    out, result = eager_run
    assert result.returncode == 0, result.stderr[-3000:]
    report = _selection(out)
    assert report["status"] == "ok" and report["selected_volumes"] == 2
    decided = {s["series_number"]: s for st in report["studies"] for s in st["series"]}
    assert decided[3]["selected"] and decided[4]["selected"]
    assert [r["code"] for r in decided[5]["reasons"]] == ["modality"]
    assert {s["series_number"] for s in decided.values() if not s["selected"]} == {2, 5}
    assert report["skipped_files"] == [{"path": "notes.txt", "reason": "not a DICOM file"}]
    # Every selected volume is segmented and written: image + label NIfTI on the same grid, SEG + SR.
    images = sorted(p for p in (out / "nifti").glob("*.nii.gz") if not p.name.endswith("_seg.nii.gz"))
    assert len(images) == 2
    for image in images:
        labels = nib.load(image.with_name(image.name.replace(".nii.gz", "_seg.nii.gz")))
        np.testing.assert_allclose(labels.affine, nib.load(image).affine)
        assert labels.shape == nib.load(image).shape and labels.get_data_dtype() == np.uint8
        stem = image.name.removesuffix(".nii.gz")
        assert (out / "dicom" / f"{stem}_seg.dcm").is_file() and (out / "dicom" / f"{stem}_sr.dcm").is_file()
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["algorithm"]["model_profile"] == "demo" and run_info["device"] == "cpu"
    assert (out / "statistics.json").is_file() and list((out / "report").glob("*.pdf"))
    assert not list(out.glob(".staging-*"))  # staged output moved into place, nothing left behind
    assert "Traceback" not in result.stderr


def test_cli_compile_cache_runs_compiled_networks_with_the_same_labels(study, eager_run, tmp_path):
    """--compile-cache DIR: the demo network is compiled for this CPU into DIR, the run says so in run.json,
    and its labels agree with the eager run's (compiled logits differ by rounding only)."""
    from tests.conftest import require_tool

    require_tool("g++", "g++")
    eager_out, eager_result = eager_run
    assert eager_result.returncode == 0, eager_result.stderr[-3000:]
    out, cache = tmp_path / "out", tmp_path / "compiled"
    result = run([*CLI, "run", "-i", str(study), "-o", str(out), "--compile-cache", str(cache)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list(cache.glob("*.pt2"))) == 3  # the demo's one part: network, tile sums, argmax
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["device"] == "cpu (networks compiled ahead of time, AOTInductor)"
    segs = sorted((out / "nifti").glob("*_seg.nii.gz"))
    assert len(segs) == 2
    for seg in segs:
        ours = np.asarray(nib.load(seg).dataobj)
        eager = np.asarray(nib.load(eager_out / "nifti" / seg.name).dataobj)
        assert ours.shape == eager.shape and ours.any()
        assert np.mean(ours == eager) > 0.999


def test_sdk_entry_point_with_holoscan_variables(study, tmp_path):
    out = tmp_path / "sdk-out"
    env = {"HOLOSCAN_INPUT_PATH": str(study), "HOLOSCAN_OUTPUT_PATH": str(out),
           "TOTALSEG_MRI_BEST_PER_STUDY": "1"}
    result = run([sys.executable, "-m", "app"], env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = _selection(out)
    assert report["selected_volumes"] == 1
    reasons = [r["code"] for st in report["studies"] for s in st["series"] for k in s["stacks"]
               for r in k["reasons"]]
    assert "not_best" in reasons
    assert len(list((out / "nifti").glob("*_seg.nii.gz"))) == 1


@pytest.mark.parametrize(
    ("make_input", "code", "message"),
    [
        (lambda p: None, 2, "is empty"),
        (lambda p: (p / "a.txt").write_text("hello"), 2, "no DICOM image found"),
        (lambda p: shutil.copy(get_testdata_file("CT_small.dcm"), p), 3, "no eligible series"),
        (lambda p: shutil.copy(get_testdata_file("MR_small.dcm"), p), 3, "no eligible series"),
        (lambda p: shutil.copy(get_testdata_file("emri_small.dcm"), p), 3, "no eligible series"),
        (lambda p: shutil.copy(get_testdata_file("MR_truncated.dcm"), p), 3, "no eligible series"),
    ],
    ids=["empty", "no-dicom", "only-ct", "single-2d-slice", "no-geometry", "truncated"],
)
def test_bad_input_ends_with_one_clear_line_and_a_report(tmp_path, make_input, code, message):
    source = tmp_path / "in"
    source.mkdir()
    make_input(source)
    out = tmp_path / "out"
    result = run([*CLI, "run", "-i", str(source), "-o", str(out)])
    assert result.returncode == code, result.stderr[-2000:]
    lines = error_lines(result)
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    report = _selection(out)
    assert report["status"] == "error" and message in report["error"]
    assert [p.name for p in out.iterdir()] == ["selection.json"]  # nothing half-written


def test_conflicting_orientations_are_rejected_with_reason(tmp_path, colin27_2mm):
    small = np.ascontiguousarray(colin27_2mm[::2, ::2, ::2][:, :, :20])
    uid = "1.2.826.0.1.3680043.8.498.77"
    write_series(tmp_path / "in", small, oblique_affine((4, 4, 4), (0, 0, 0), (0, 0, 0)), seed="o1",
                 series_uid=uid, file_prefix="A")
    write_series(tmp_path / "in", small, oblique_affine((4, 4, 4), (30, 0, 0), (0, 0, 200)), seed="o2",
                 series_uid=uid, file_prefix="B")
    result = run([*CLI, "run", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out")])
    assert result.returncode == 3
    (series,) = _selection(tmp_path / "out")["studies"][0]["series"]
    assert series["stacks"][0]["reasons"][0]["code"] == "orientation"


def test_unwritable_output_and_bad_rules_are_one_line_errors(study, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run([*CLI, "run", "-i", str(study), "-o", str(blocker / "out")])
    assert result.returncode == 2 and "not writable" in error_lines(result)[0]
    rules = tmp_path / "rules.json"
    rules.write_text('{"selections": [{"conditions": {"ImageOrientationPatient": "Diagonal"}}]}')
    result = run([*CLI, "run", "-i", str(study), "-o", str(tmp_path / "o"), "--rules", str(rules)])
    assert result.returncode == 2
    (line,) = error_lines(result)
    assert "ImageOrientationPatient" in line and "Traceback" not in result.stderr
