"""The synthetic MR DICOM study: content, geometry against ground truth, validators, determinism, failures."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    BasicTextSRStorage,
    EnhancedMRImageStorage,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
)

from app.synthetic import dicom_study
from app.synthetic.dicom_study import SyntheticStudy, SyntheticStudyError, main, write_study
from app.synthetic.phantom import LABEL_BY_NAME, TorsoPhantom
from tests.conftest import require_tool

SEED, SCALE = 3, 0.35
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> SyntheticStudy:
    return write_study(tmp_path_factory.mktemp("study") / "out", SEED, scale=SCALE)


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def read_stack(files: list[Path]) -> tuple[np.ndarray, np.ndarray, list[pydicom.Dataset]]:
    """(real volume [i, j, k], LPS affine, datasets) from single-frame files, from the DICOM tags only."""
    datasets = [pydicom.dcmread(f) for f in files]
    iop = np.array(datasets[0].ImageOrientationPatient, dtype=float)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    datasets.sort(key=lambda d: float(np.dot(normal, np.array(d.ImagePositionPatient, dtype=float))))
    for d in datasets:  # one orientation and spacing throughout
        np.testing.assert_allclose(np.array(d.ImageOrientationPatient, dtype=float), iop)
    positions = np.array([d.ImagePositionPatient for d in datasets], dtype=float)
    spacing_rows, spacing_cols = (float(v) for v in datasets[0].PixelSpacing)
    affine = np.eye(4)
    affine[:3, 0] = row * spacing_cols
    affine[:3, 1] = col * spacing_rows
    affine[:3, 2] = (positions[-1] - positions[0]) / (len(positions) - 1)
    affine[:3, 3] = positions[0]
    steps = np.diff(positions, axis=0)
    np.testing.assert_allclose(steps, np.broadcast_to(affine[:3, 2], steps.shape), atol=2e-3)
    slope = float(getattr(datasets[0], "RescaleSlope", 1.0))
    intercept = float(getattr(datasets[0], "RescaleIntercept", 0.0))
    volume = np.stack([d.pixel_array.T.astype(float) * slope + intercept for d in datasets], axis=2)
    return volume, affine, datasets


def within_label_spread(volume: np.ndarray, labels: np.ndarray) -> float:
    """Pooled within-structure std over the std of all labelled voxels: small when pixels and labels align."""
    inside = labels > 0
    values, classes = volume[inside], labels[inside]
    residual = values.copy()
    for value in np.unique(classes):
        residual[classes == value] -= np.median(values[classes == value])
    return float(np.std(residual) / np.std(values))


def series_by_kind(study: SyntheticStudy, kind: str):
    (s,) = [s for s in study.series if s.kind == kind]
    return s


def files_of_type(series, value: str) -> list[Path]:
    return [f for f in series.files if pydicom.dcmread(f, stop_before_pixels=True).ImageType[-1] == value]


def test_manifest_describes_every_series_and_the_expected_selection(study: SyntheticStudy) -> None:
    manifest = json.loads(study.manifest_path.read_text())
    assert manifest["study_instance_uid"] == study.study_instance_uid and manifest["seed"] == SEED
    expected = {s["kind"]: (s["expected"], s["n_volumes_expected"]) for s in manifest["series"]}
    assert expected == {
        "localizer": ("rejected:localizer", 0),
        "axial": ("selected", 1),
        "coronal": ("selected", 1),
        "oblique": ("selected", 1),
        "dixon": ("selected", 4),
        "enhanced_multiframe": ("selected", 1),
        "compressed": ("selected", 1),
        "projection": ("rejected:derived", 0),
        "too_few_slices": ("rejected:too_few_slices", 0),
        "structured_report": ("rejected:non_image", 0),
    }
    selected = [s for s in study.series if s.expected == "selected"]
    assert sum(s.n_volumes_expected for s in selected) == 9 == len(study.ground_truth)
    for s in selected:
        for stack in s.stack_ids:
            assert study.ground_truth[s.ground_truth_key(stack)].is_file()
    for entry in manifest["series"]:
        assert all((study.root / f).is_file() for f in entry["files"]) and entry["n_files"] == len(
            entry["files"]
        )
    assert [p.name for p in study.non_dicom_files] == ["notes.txt"]


def test_all_files_share_patient_study_and_frame_of_reference_and_decode(study: SyntheticStudy) -> None:
    files = [p for p in (study.root / "dicom").rglob("*") if p.is_file()]
    assert any(p.suffix == ".dcm" for p in files) and any(p.suffix == "" for p in files)
    assert max(len(p.relative_to(study.root).parts) for p in files) >= 6  # nested folders
    n_images = 0
    for path in files:
        if path.name == "notes.txt":
            with pytest.raises(InvalidDicomError):
                pydicom.dcmread(path)
            continue
        ds = pydicom.dcmread(path)
        assert ds.StudyInstanceUID == study.study_instance_uid
        assert ds.PatientID == study.patient_id and ds.Manufacturer == "Synthetic"
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        if ds.SOPClassUID == BasicTextSRStorage:
            assert ds.Modality == "SR" and "PixelData" not in ds
            continue
        assert ds.Modality == "MR" and ds.FrameOfReferenceUID == study.frame_of_reference_uid
        assert ds.SOPClassUID in (MRImageStorage, EnhancedMRImageStorage)
        assert ds.BitsAllocated == 16 and ds.PixelRepresentation == 0 and ds.SamplesPerPixel == 1
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        pixels = ds.pixel_array
        expected = (int(getattr(ds, "NumberOfFrames", 1)), ds.Rows, ds.Columns)
        assert pixels.reshape((-1, ds.Rows, ds.Columns)).shape == expected
        assert pixels.max() > 0
        n_images += 1
    assert n_images == sum(len(s.files) for s in study.series if s.kind != "structured_report")
    sop_uids = [
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for s in study.series for p in s.files
    ]
    assert len(set(sop_uids)) == len(sop_uids)


@pytest.mark.parametrize("kind", ["axial", "coronal", "oblique", "compressed"])
def test_ground_truth_is_on_the_grid_described_by_the_dicom_tags(study: SyntheticStudy, kind: str) -> None:
    series = series_by_kind(study, kind)
    volume, affine_lps, _ = read_stack(series.files)
    gt = nib.load(study.ground_truth[series.ground_truth_key("1")])
    assert gt.shape == volume.shape and gt.get_data_dtype() == np.uint8
    np.testing.assert_allclose(gt.affine, LPS_TO_RAS @ affine_lps, atol=1e-4)
    np.testing.assert_allclose(gt.header.get_qform(), gt.affine, atol=1e-4)
    labels = np.asarray(gt.dataobj)
    # the labels are the phantom's anatomy on exactly this grid ...
    np.testing.assert_array_equal(labels, TorsoPhantom(SEED).sample_grid(volume.shape, affine_lps))
    # ... and the pixels show that anatomy: air-filled lung is dark, liver is not (catches flipped axes)
    lung = (labels == LABEL_BY_NAME["lung_left"]) | (labels == LABEL_BY_NAME["lung_right"])
    liver = labels == LABEL_BY_NAME["liver"]
    assert lung.sum() > 20 and liver.sum() > 20
    assert np.median(volume[lung]) < 0.5 * np.median(volume[liver])
    assert within_label_spread(volume, labels) < 0.45  # about 0.3 aligned; >= 0.55 if flipped or shifted


def test_enhanced_mr_frames_and_functional_groups_match_ground_truth(study: SyntheticStudy) -> None:
    series = series_by_kind(study, "enhanced_multiframe")
    (path,) = series.files
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == EnhancedMRImageStorage and ds.NumberOfFrames > 4
    shared = ds.SharedFunctionalGroupsSequence[0]
    iop = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
    spacing_rows, spacing_cols = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    assert shared.MRImageFrameTypeSequence[0].FrameType[0] == "ORIGINAL"
    frames = ds.PerFrameFunctionalGroupsSequence
    assert len(frames) == ds.NumberOfFrames
    positions = np.array([f.PlanePositionSequence[0].ImagePositionPatient for f in frames], dtype=float)
    assert [f.FrameContentSequence[0].InStackPositionNumber for f in frames] == list(
        range(1, len(frames) + 1)
    )
    assert all(float(f.PixelValueTransformationSequence[0].RescaleSlope) == 1.0 for f in frames)
    affine = np.eye(4)
    affine[:3, 0] = iop[:3] * spacing_cols
    affine[:3, 1] = iop[3:] * spacing_rows
    affine[:3, 2] = (positions[-1] - positions[0]) / (len(positions) - 1)
    affine[:3, 3] = positions[0]
    assert np.dot(affine[:3, 2], np.cross(iop[:3], iop[3:])) > 0  # frames ascend along the normal
    gt = nib.load(study.ground_truth[series.ground_truth_key("1")])
    np.testing.assert_allclose(gt.affine, LPS_TO_RAS @ affine, atol=1e-4)
    volume = np.transpose(ds.pixel_array, (2, 1, 0)).astype(float)
    labels = np.asarray(gt.dataobj)
    assert volume.shape == labels.shape
    assert within_label_spread(volume, labels) < 0.45
    assert np.median(volume[labels == LABEL_BY_NAME["liver"]]) > 2 * np.median(
        volume[labels == LABEL_BY_NAME["lung_right"]]
    )


def test_dixon_series_holds_four_image_types_at_the_same_positions(study: SyntheticStudy) -> None:
    series = series_by_kind(study, "dixon")
    suffixes = ["IN", "OPP", "W", "F"]
    assert series.stack_ids == [f"ImageType=ORIGINAL\\PRIMARY\\M\\DIXON\\{t}" for t in suffixes]
    assert len({pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID for f in series.files}) == 1
    stacks = {t: read_stack(files_of_type(series, t)) for t in suffixes}
    reference = stacks["IN"][1]
    for (suffix, (_, affine, datasets)), stack_id in zip(stacks.items(), series.stack_ids, strict=True):
        np.testing.assert_allclose(affine, reference, atol=1e-6)
        assert list(datasets[0].ImageType) == ["ORIGINAL", "PRIMARY", "M", "DIXON", suffix]
        gt = nib.load(study.ground_truth[series.ground_truth_key(stack_id)])
        np.testing.assert_allclose(gt.affine, LPS_TO_RAS @ affine, atol=1e-4)
    labels = np.asarray(nib.load(study.ground_truth[series.ground_truth_key(series.stack_ids[2])]).dataobj)
    marrow, fat_free = labels == LABEL_BY_NAME["vertebrae"], labels == LABEL_BY_NAME["spleen"]
    in_phase, opposed = stacks["IN"][0], stacks["OPP"][0]
    assert within_label_spread(in_phase, labels) < 0.45
    water, fat = stacks["W"][0], stacks["F"][0]
    # partly fatty marrow loses signal on opposed phase; spleen (no fat) does not; fat image is dark in spleen
    assert np.median(opposed[marrow]) < 0.7 * np.median(in_phase[marrow])
    assert np.median(opposed[fat_free]) > 0.8 * np.median(in_phase[fat_free])
    assert np.median(fat[fat_free]) < 0.3 * np.median(water[fat_free])
    in_echo = {int(d.EchoNumbers) for d in stacks["IN"][2]}
    opp_te = {float(d.EchoTime) for d in stacks["OPP"][2]}
    assert in_echo == {2} and len(opp_te) == 1 and float(stacks["IN"][2][0].EchoTime) > opp_te.pop()


def test_compressed_series_uses_three_lossless_syntaxes(study: SyntheticStudy) -> None:
    series = series_by_kind(study, "compressed")
    syntaxes = {pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID for f in series.files}
    assert syntaxes == {JPEG2000Lossless, JPEGLSLossless, RLELossless}
    for f in series.files[:3]:
        ds = pydicom.dcmread(f)
        assert ds.LossyImageCompression == "00" and ds.pixel_array.shape == (ds.Rows, ds.Columns)
    coronal = series_by_kind(study, "coronal")
    first = pydicom.dcmread(coronal.files[0], stop_before_pixels=True)
    assert first.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian


def test_series_that_must_be_rejected_look_the_part(study: SyntheticStudy) -> None:
    localizer = [
        pydicom.dcmread(f, stop_before_pixels=True) for f in series_by_kind(study, "localizer").files
    ]
    assert len(localizer) == 9 and all("LOCALIZER" in d.ImageType for d in localizer)
    normals = {
        tuple(
            np.round(
                np.abs(
                    np.cross(
                        np.array(d.ImageOrientationPatient[:3], dtype=float),
                        np.array(d.ImageOrientationPatient[3:], dtype=float),
                    )
                ),
                3,
            )
        )
        for d in localizer
    }
    assert normals == {(0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (1.0, 0.0, 0.0)}
    mips = [pydicom.dcmread(f, stop_before_pixels=True) for f in series_by_kind(study, "projection").files]
    assert mips and all(list(d.ImageType) == ["DERIVED", "SECONDARY", "PROJECTION IMAGE"] for d in mips)
    assert len(series_by_kind(study, "too_few_slices").files) == 2


def test_rescale_slope_and_intercept_are_non_trivial_on_the_axial_series(study: SyntheticStudy) -> None:
    ds = pydicom.dcmread(series_by_kind(study, "axial").files[0], stop_before_pixels=True)
    assert float(ds.RescaleSlope) == 2.0 and float(ds.RescaleIntercept) == -10.0


def test_the_project_pipeline_selects_and_builds_what_the_manifest_expects(study: SyntheticStudy) -> None:
    """The real indexer, selector and volume builder agree with the manifest and the ground-truth grids."""
    from operators.dicom_index import scan_folder
    from operators.series_selection import select_series
    from operators.volume_builder import build_selected_volumes

    index = scan_folder(study.root / "dicom")
    skipped = {p.path.name for p in index.skipped}
    assert skipped == {"notes.txt", study.series_by_number(99).files[0].name}
    selection = select_series(index)
    by_uid = {s.series_instance_uid: s for s in study.series}
    for decision in selection.decisions:
        expected = by_uid[decision.series.series_instance_uid]
        codes = {r.code for r in decision.reasons} | {r.code for st in decision.stacks for r in st.reasons}
        if expected.expected == "selected":
            assert all(st.selected for st in decision.stacks), (expected.description, codes)
            assert sorted(st.stack.stack_id for st in decision.stacks) == sorted(expected.stack_ids)
        else:
            assert expected.expected.split(":")[1] in codes, (expected.description, codes)
    volumes = build_selected_volumes(selection)
    assert len(volumes) == len(study.ground_truth)
    for volume in volumes:
        series = by_uid[volume.series_instance_uid]
        gt = nib.load(study.ground_truth[series.ground_truth_key(volume.stack_id)])
        assert gt.shape == volume.shape, series.description
        np.testing.assert_allclose(gt.affine, volume.affine_ras, atol=1e-3)
        if not volume.stack_id.endswith("DIXON\\F"):  # the fat image is mostly noise inside the organs
            labels = np.asarray(gt.dataobj)
            assert within_label_spread(volume.array, labels) < 0.45, (series.description, volume.stack_id)


@pytest.mark.parametrize("kind", ["axial", "oblique"])
def test_dcm2niix_agrees_with_the_ground_truth_geometry(study: SyntheticStudy, kind: str, tmp_path) -> None:
    require_tool("dcm2niix", "dcm2niix")
    series = series_by_kind(study, kind)
    folder = series.files[0].parent
    run = subprocess.run(
        ["dcm2niix", "-z", "n", "-f", "converted", "-o", str(tmp_path), str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    converted = nib.as_closest_canonical(nib.load(tmp_path / "converted.nii"))
    gt = nib.as_closest_canonical(nib.load(study.ground_truth[series.ground_truth_key("1")]))
    assert converted.shape == gt.shape
    np.testing.assert_allclose(converted.affine, gt.affine, atol=1e-3)
    # same voxels too: dcm2niix's pixels sit where our reading of the tags puts them
    volume, affine_lps, _ = read_stack(series.files)
    ours = nib.as_closest_canonical(nib.Nifti1Image(volume.astype(np.float32), LPS_TO_RAS @ affine_lps))
    np.testing.assert_allclose(converted.get_fdata(), ours.get_fdata(), atol=1e-3)


def test_dciodvfy_finds_no_errors_in_any_series(study: SyntheticStudy) -> None:
    require_tool("dciodvfy", "dicom3tools")
    for series in study.series:
        for path in {series.files[0], series.files[-1]}:
            run = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=120)
            report = run.stdout + run.stderr
            errors = [line for line in report.splitlines() if line.startswith("Error")]
            assert not errors, f"{series.description}: {errors}"


def test_same_seed_gives_byte_identical_files_and_other_seeds_differ(study: SyntheticStudy, tmp_path) -> None:
    again = write_study(tmp_path / "again", SEED, scale=SCALE)
    assert tree_digest(again.root) == tree_digest(study.root)
    other = write_study(tmp_path / "other", SEED + 1, scale=SCALE)
    assert other.study_instance_uid != study.study_instance_uid
    key = series_by_kind(other, "axial")
    gt_other = np.asarray(nib.load(other.ground_truth[key.ground_truth_key("1")]).dataobj)
    gt_this = np.asarray(
        nib.load(study.ground_truth[series_by_kind(study, "axial").ground_truth_key("1")]).dataobj
    )
    assert gt_other.shape == gt_this.shape and np.mean(gt_other != gt_this) > 0.01


def test_bad_requests_raise_and_leave_nothing_behind(tmp_path, monkeypatch) -> None:
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    with pytest.raises(SyntheticStudyError, match="not empty"):
        write_study(occupied, 0, scale=0.2)
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"]
    with pytest.raises(SyntheticStudyError, match="seed"):
        write_study(tmp_path / "a", -1)
    with pytest.raises(SyntheticStudyError, match="scale"):
        write_study(tmp_path / "b", 0, scale=0.0)

    def broken(ctx) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(dicom_study, "_compressed", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_study(tmp_path / "c", 0, scale=0.2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["occupied"]  # no partial study, no temp folder


def test_command_line_entry_writes_a_study_and_reports_errors(tmp_path, caplog) -> None:
    out = tmp_path / "cli"
    assert main(["-o", str(out), "--seed", "5", "--scale", "0.2"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 5 and len(manifest["ground_truth"]) == 9
    assert main(["-o", str(out), "--seed", "5"]) == SyntheticStudyError.exit_code
    assert "not empty" in caplog.text


@pytest.mark.slow
def test_full_size_study_stays_modest(tmp_path) -> None:
    study = write_study(tmp_path / "full", 0)
    size = sum(p.stat().st_size for p in study.root.rglob("*") if p.is_file())
    assert size < 40e6, f"{size / 1e6:.1f} MB"
    axial = pydicom.dcmread(series_by_kind(study, "axial").files[0], stop_before_pixels=True)
    assert (axial.Rows, axial.Columns) == (160, 192)
