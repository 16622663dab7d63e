"""The whole result set of a run: TID 1500 SR, statistics (JSON, CSV), PDF + Encapsulated PDF, PNG
overlays, run.json, the output layout, atomic writing, and validity on awkward real and synthetic headers."""

from __future__ import annotations

import csv
import gzip
import json
import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from operators import results_writer as results_writer_module
from operators.anatomy_codes import anatomy_for
from operators.dicom_index import scan_folder
from operators.overlays import _display_slice, to_ras
from operators.results_writer import write_results, write_results_atomically
from operators.segmentation_result import ResultWriterError, SegmentationResult
from operators.stack_split import split_series
from operators.statistics import compute_statistics
from operators.volume import SourceFrame, Volume
from operators.volume_builder import build_volume
from tests.conftest import NIBABEL_DICOM
from tests.result_writer_sources import (
    DEMO_ALGORITHM,
    blob_labels,
    make_result,
    write_classic_series,
    write_enhanced_mr,
)
from tests.result_writer_tools import assert_dciodvfy_clean

CLASSES = {
    1: "spleen", 2: "kidney_right", 3: "kidney_left", 5: "liver", 10: "lung_left", 20: "intervertebral_discs"
}  # fmt: skip


@pytest.fixture(scope="module")
def two_volume_run(tmp_path_factory):
    """Two series of one run (classic axial + Enhanced sagittal), written with every output enabled."""
    tmp = tmp_path_factory.mktemp("run")
    a = make_result(write_classic_series(tmp / "a", patient_name="Müller^Jürgen"), CLASSES, seed=1)
    b = make_result(write_enhanced_mr(tmp / "b"), CLASSES, seed=2)
    b.labels[b.labels == 20] = 0  # intervertebral discs absent from the second volume
    out = tmp / "out"
    written = write_results_atomically([a, b], out)
    return a, b, out, written


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_layout_is_fixed_and_dicom_is_separated(two_volume_run):
    a, b, out, written = two_volume_run
    la, lb = a.volume.label, b.volume.label
    study_a = "study_" + a.volume.study_instance_uid[-12:].replace(".", "_")
    study_b = "study_" + b.volume.study_instance_uid[-12:].replace(".", "_")
    expected = {
        f"dicom/{la}_seg.dcm", f"dicom/{la}_sr.dcm", f"dicom/{lb}_seg.dcm", f"dicom/{lb}_sr.dcm",
        f"dicom/{study_a}_report_pdf.dcm", f"dicom/{study_b}_report_pdf.dcm",
        f"report/{study_a}_report.pdf", f"report/{study_b}_report.pdf",
        *(f"report/{v}_{view}.png" for v in (la, lb) for view in ("axial", "coronal", "sagittal")),
        "statistics.json", f"statistics/{la}/statistics.json", f"statistics/{lb}/statistics.json",
        "statistics.csv", "run.json",
    }  # fmt: skip
    assert _files(out) == expected
    assert set(written.files) == expected
    for path in (out / "dicom").iterdir():
        pydicom.dcmread(path)  # every file under dicom/ is DICOM
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "staging folder left behind"


def test_every_dicom_object_passes_dciodvfy(two_volume_run):
    _, _, out, _ = two_volume_run
    kinds = {}
    for path in sorted((out / "dicom").iterdir()):
        assert_dciodvfy_clean(path)
        kinds[path.name] = pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID
    assert sorted(set(kinds.values())) == sorted(
        {"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.104.1"}
    )


def test_statistics_json_has_totalsegmentator_shape_and_exact_values(two_volume_run):
    a, b, out, _ = two_volume_run
    for result in (a, b):
        data = json.loads((out / "statistics" / result.volume.label / "statistics.json").read_text())
        assert list(data) == [CLASSES[k] for k in sorted(CLASSES)]
        voxel_mm3 = float(np.prod(result.volume.spacing))
        for label, name in CLASSES.items():
            mask = result.labels == label
            assert set(data[name]) == {"volume", "intensity"}
            assert data[name]["volume"] == pytest.approx(mask.sum() * voxel_mm3, abs=1e-3)
            expected_mean = float(result.volume.array[mask].mean()) if mask.any() else 0.0
            assert data[name]["intensity"] == pytest.approx(expected_mean, abs=1e-3)
    primary = json.loads((out / "statistics.json").read_text())
    assert primary == json.loads((out / "statistics" / a.volume.label / "statistics.json").read_text())


def test_csv_has_one_row_per_structure_and_series(two_volume_run):
    a, b, out, _ = two_volume_run
    with (out / "statistics.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * len(CLASSES)
    assert {(r["series_instance_uid"], r["structure"]) for r in rows} == {
        (r.volume.series_instance_uid, name) for r in (a, b) for name in CLASSES.values()
    }
    discs_b = next(r for r in rows if r["series_instance_uid"] == b.volume.series_instance_uid
                   and r["structure"] == "intervertebral_discs")  # fmt: skip
    assert discs_b["voxel_count"] == "0" and discs_b["mean_intensity"] == ""
    liver_a = next(r for r in rows if r["series_instance_uid"] == a.volume.series_instance_uid
                   and r["structure"] == "liver")  # fmt: skip
    mask = a.labels == 5
    assert float(liver_a["median_intensity"]) == pytest.approx(float(np.median(a.volume.array[mask])))
    assert float(liver_a["volume_ml"]) == pytest.approx(mask.sum() * np.prod(a.volume.spacing) / 1000)


def test_sr_measurements_reference_their_segments(two_volume_run):
    _, b, out, _ = two_volume_run
    seg = pydicom.dcmread(out / "dicom" / f"{b.volume.label}_seg.dcm")
    sr = hd.sr.srread(out / "dicom" / f"{b.volume.label}_sr.dcm")
    flags = (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag)
    assert flags == ("COMPLETE", "UNVERIFIED", "PRELIMINARY")
    assert sr.StudyInstanceUID == seg.StudyInstanceUID
    segments = {int(s.SegmentNumber): s.SegmentLabel for s in seg.SegmentSequence}
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(segments) == len(CLASSES) - 1
    stats = {s.structure: s for s in compute_statistics(b)}
    for group in groups:
        ref = group.referenced_segment
        assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert ref.source_series_for_segmentation.value == b.volume.series_instance_uid
        (number,) = ref.referenced_segment_numbers
        name = group.tracking_identifier
        assert anatomy_for(name).display_name == segments[number]
        values = {(m.name.meaning, m.derivation.meaning if m.derivation else None): m.value
                  for m in group.get_measurements()}  # fmt: skip
        assert values[("Volume", None)] == pytest.approx(stats[name].volume_ml, rel=1e-6)
        assert values[("MR signal intensity", "Mean")] == pytest.approx(stats[name].mean_intensity, rel=1e-6)
        assert values[("MR signal intensity", "Median")] == pytest.approx(stats[name].median_intensity)
    evidence = {
        i.ReferencedSOPInstanceUID
        for s in sr.CurrentRequestedProcedureEvidenceSequence
        for r in s.ReferencedSeriesSequence
        for i in r.ReferencedSOPSequence
    }
    assert seg.SOPInstanceUID in evidence and b.volume.sources[0].sop_instance_uid in evidence


def test_pdf_and_encapsulated_pdf(two_volume_run):
    a, _, out, _ = two_volume_run
    study = "study_" + a.volume.study_instance_uid[-12:].replace(".", "_")
    pdf = (out / "report" / f"{study}_report.pdf").read_bytes()
    assert pdf.startswith(b"%PDF")
    pages = pdf.count(b"/Type /Page") - pdf.count(b"/Type /Pages")
    assert pages == 1 + 1 + 3  # identification, structure table, three overlay views
    enc = pydicom.dcmread(out / "dicom" / f"{study}_report_pdf.dcm")
    assert enc.EncapsulatedDocument[: enc.EncapsulatedDocumentLength] == pdf
    assert enc.StudyInstanceUID == a.volume.study_instance_uid
    assert str(enc.PatientName) == "Müller^Jürgen"
    assert enc.MIMETypeOfEncapsulatedDocument == "application/pdf"


def test_png_overlays_are_pictures_with_the_structure_colours(two_volume_run):
    from PIL import Image

    a, _, out, _ = two_volume_run
    for view in ("axial", "coronal", "sagittal"):
        picture = np.asarray(Image.open(out / "report" / f"{a.volume.label}_{view}.png").convert("RGB"))
        assert picture.shape[0] > 300 and picture.shape[1] > 300
        # The legend patch of each found structure is drawn in its exact display colour.
        packed = set(np.unique((picture.astype(np.uint32) << [16, 8, 0]).sum(axis=2)).tolist())
        for name in CLASSES.values():
            r, g, b = anatomy_for(name).color_rgb
            assert (r << 16 | g << 8 | b) in packed, (view, name)


def test_overlay_views_are_in_radiological_orientation(tmp_path):
    """A mark at the patient's right-anterior-superior corner shows top-left in axial view (anterior up,
    patient right on screen left), top-left in coronal (superior up) and top-left in sagittal (anterior
    left, superior up) - whatever plane the series was acquired in."""
    for orientation in ("axial", "sagittal", "coronal"):
        series = write_classic_series(tmp_path / orientation, orientation=orientation, shape=(16, 14, 12))
        v = series.volume
        labels = np.zeros(v.shape, dtype=np.uint8)
        # the voxel furthest to the patient's right, front and top: +x, +y, +z in RAS+
        ijk = np.indices(v.shape).reshape(3, -1)
        ras = (v.affine_ras @ np.vstack([ijk, np.ones(ijk.shape[1])]))[:3]
        score = ras[0] + ras[1] + ras[2]
        corner = np.unravel_index(int(np.argmax(score)), v.shape)
        labels[corner] = 1
        result = SegmentationResult(v, labels, {1: "spleen"}, DEMO_ALGORITHM)
        _, ras_labels, _ = to_ras(result)
        x, y, z = (int(i[0]) for i in np.nonzero(ras_labels))
        assert _display_slice(ras_labels, "axial", z)[0, 0] == 1, orientation
        assert _display_slice(ras_labels, "coronal", y)[0, 0] == 1, orientation
        assert _display_slice(ras_labels, "sagittal", x)[0, 0] == 1, orientation


def test_run_json_records_provenance(two_volume_run):
    a, b, out, _ = two_volume_run
    run = json.loads((out / "run.json").read_text())
    assert run["algorithm"]["model_profile"] == "total_mr"
    assert run["algorithm"]["weights_sha256"] == list(DEMO_ALGORITHM.weights_sha256)
    assert run["versions"]["highdicom"] == hd.__version__
    assert run["versions"]["pydicom"] == pydicom.__version__
    volumes = {v["series_instance_uid"]: v for v in run["volumes"]}
    for result in (a, b):
        record = volumes[result.volume.series_instance_uid]
        assert record["study_instance_uid"] == result.volume.study_instance_uid
        assert [f["sop_instance_uid"] for f in record["source_frames"]] == [
            s.sop_instance_uid for s in result.volume.sources
        ]
        assert record["timings_s"] == {"inference": 1.5}
    assert volumes[b.volume.series_instance_uid]["structures_absent"] == ["intervertebral_discs"]
    stages = {"writer.dicom_seg", "writer.dicom_sr", "writer.statistics", "writer.pdf_report"}
    assert stages <= set(run["timings_s"])
    assert set(run["outputs"]) == _files(out)


def test_crash_midway_leaves_no_partial_files(tmp_path, monkeypatch):
    series = write_classic_series(tmp_path / "src")
    result = make_result(series, CLASSES)
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.txt").write_text("from another step")

    def explode(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(results_writer_module, "write_pdf_report", explode)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_results_atomically([result], out)
    assert _files(out) == {"earlier.txt"}
    assert [p.name for p in out.iterdir()] == ["earlier.txt"]


def test_bad_result_fails_before_any_file_is_written(tmp_path):
    good = make_result(write_classic_series(tmp_path / "a"), CLASSES)
    bad = make_result(write_classic_series(tmp_path / "b"), {1: "spleen", 7: "pancreas_head"})
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(ResultWriterError, match="pancreas_head"):
        write_results([good, bad], root)
    assert _files(root) == set()


def test_volume_with_nothing_found_gets_statistics_but_no_seg(tmp_path):
    result = make_result(write_classic_series(tmp_path / "src"), CLASSES)
    result.labels[:] = 0
    written = write_results_atomically([result], tmp_path / "out")
    assert written.volumes_without_seg == [result.volume.label]
    assert not list((tmp_path / "out" / "dicom").glob("*_seg.dcm"))
    assert (tmp_path / "out" / "statistics.json").exists()
    for path in (tmp_path / "out" / "dicom").iterdir():
        assert_dciodvfy_clean(path)


@pytest.mark.parametrize(
    "variant",
    [
        {"minimal": True},  # no PatientName, StudyID, AccessionNumber; empty SoftwareVersions
        {"patient_name": "Ådne^Øystein=山田^太郎"},
        {"series_description": "very long description " * 10},
    ],
    ids=["missing_optional_tags", "non_ascii_names", "long_description"],
)
def test_awkward_source_headers_still_give_valid_objects(tmp_path, variant):
    series = write_classic_series(tmp_path / "src", **variant)
    result = make_result(series, CLASSES)
    write_results_atomically([result], tmp_path / "out")
    paths = sorted((tmp_path / "out" / "dicom").iterdir())
    assert len(paths) == 3
    for path in paths:
        assert_dciodvfy_clean(path)
    if "patient_name" in variant:
        seg = pydicom.dcmread(tmp_path / "out" / "dicom" / f"{result.volume.label}_seg.dcm")
        assert str(seg.PatientName) == variant["patient_name"]


def _single_slice_volume(path: Path) -> Volume:
    """A one-slice Volume of a single-frame MR image (the volume builder rejects 2D input; the writers
    must not care)."""
    ds = pydicom.dcmread(path)
    row = np.array([float(v) for v in ds.ImageOrientationPatient[:3]])
    col = np.array([float(v) for v in ds.ImageOrientationPatient[3:]])
    dr, dc = (float(v) for v in ds.PixelSpacing)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1] = row * dc, col * dr
    affine[:3, 2] = np.cross(row, col) * float(ds.SliceThickness)
    affine[:3, 3] = [float(v) for v in ds.ImagePositionPatient]
    return Volume(
        array=ds.pixel_array.T[:, :, None].astype(np.float32),
        affine_lps=affine,
        study_instance_uid=ds.StudyInstanceUID,
        series_instance_uid=ds.SeriesInstanceUID,
        stack_id="1",
        series_number=int(ds.SeriesNumber),
        frame_of_reference_uid=ds.FrameOfReferenceUID,
        sources=[SourceFrame(path, ds.SOPClassUID, ds.SOPInstanceUID, None)],
    )


def test_vendor_headers_from_pydicom_and_nibabel_give_valid_objects(tmp_path):
    """Toshiba MR_small (pydicom test file: one slice, empty AccessionNumber, no SeriesDescription) and
    the Philips Enhanced MR MPRAGE header from nibabel's test data, built by the project's volume builder."""
    folder = tmp_path / "vendor"
    folder.mkdir()
    shutil.copy(get_testdata_file("MR_small.dcm"), tmp_path / "MR_small.dcm")
    with gzip.open(NIBABEL_DICOM / "philips_mprage.dcm.gz") as src, open(folder / "mprage.dcm", "wb") as dst:
        shutil.copyfileobj(src, dst)
    index = scan_folder(folder)
    (series,) = index.series.values()
    (stack,) = split_series(series.frames)
    volumes = [
        _single_slice_volume(tmp_path / "MR_small.dcm"),
        build_volume(series, stack.stack_id, stack.frames),
    ]
    results = []
    for seed, volume in enumerate(volumes):
        labels = blob_labels(volume.shape, {1: "spleen", 5: "liver"}, seed=seed)
        labels[:3, :3, 0] = 1  # make sure both structures are present even on one slice
        results.append(SegmentationResult(volume, labels, {1: "spleen", 5: "liver"}, DEMO_ALGORITHM))
    written = write_results_atomically(results, tmp_path / "out")
    dicom = sorted((tmp_path / "out" / "dicom").iterdir())
    assert len(dicom) == 2 * 2 + 2  # SEG + SR per volume, one report per study (two studies)
    for path in dicom:
        assert_dciodvfy_clean(path)
    assert written.volumes_without_seg == []
    seg = hd.seg.segread(tmp_path / "out" / "dicom" / f"{volumes[1].label}_seg.dcm")
    frames = [s.frame_number for s in volumes[1].sources]
    planes = seg.get_pixels_by_source_frame(
        volumes[1].sources[0].sop_instance_uid,
        frames,
        combine_segments=True,
        assert_missing_frames_are_empty=True,
    )
    lut = {n: label for label, n in {1: 1, 5: 2}.items()}
    assert np.array_equal(np.vectorize(lambda v: lut.get(v, 0))(planes).transpose(2, 1, 0), results[1].labels)


def test_source_file_replaced_under_the_volume_is_detected(tmp_path):
    series = write_classic_series(tmp_path / "src")
    result = make_result(series, CLASSES)
    frame = result.volume.sources[0]
    result.volume.sources[0] = SourceFrame(frame.path, frame.sop_class_uid, "1.2.3.4", None)
    with pytest.raises(ResultWriterError, match="expected 1.2.3.4"):
        write_results_atomically([result], tmp_path / "out")
    assert not (tmp_path / "out").exists() or _files(tmp_path / "out") == set()
