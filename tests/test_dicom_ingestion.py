"""Ingestion of DICOM written by others: pydicom's and nibabel's test corpora (Philips, Siemens, Toshiba)."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from operators.dicom_index import scan_folder
from operators.selection_rules import SelectionPolicy, SelectionRules
from operators.series_selection import select_series
from operators.volume_builder import build_selected_volumes, read_frame_pixels
from tests.conftest import NIBABEL_DICOM

DICOMDIR_TESTS = Path(get_testdata_file("DICOMDIR")).parent


def _reason_codes(selection) -> dict[str, set[str]]:
    codes: dict[str, set[str]] = {}
    for decision in selection.decisions:
        key = f"{decision.series.modality} {decision.series.series_description}".strip()
        found = {r.code for r in decision.reasons} | {r.code for s in decision.stacks for r in s.reasons}
        codes.setdefault(key, set()).update(found - {"series"})
    return codes


def test_pydicom_dicomdir_corpus_every_file_accounted_for():
    index = scan_folder(DICOMDIR_TESTS)
    indexed_files = {f.path for s in index.series.values() for f in s.frames}
    skipped = {s.path: s.reason for s in index.skipped}
    all_files = {p for p in DICOMDIR_TESTS.rglob("*") if p.is_file()}
    assert indexed_files | set(skipped) == all_files
    assert not indexed_files & set(skipped)
    assert index.files_seen == len(all_files)

    assert all("DICOMDIR" in skipped[p] for p in all_files if p.name.startswith("DICOMDIR"))
    assert skipped[DICOMDIR_TESTS / "README.txt"] == "not a DICOM file"

    rules = SelectionRules(policy=SelectionPolicy(modalities=("MR", "CT")))
    selection = select_series(index, rules)
    codes = _reason_codes(selection)
    assert codes["MR T/S/C RF FAST PILOT"] == {"localizer"}
    assert codes["MR FAST LOCALIZER"] == {"localizer"}
    assert codes["CT Scout"] == {"localizer"}
    assert "derived" in codes["MR ANGIO Projected from   C"]
    assert codes["CR Cervical LAT"] == {"modality"}
    assert codes["CT Routine Brain"] == {"too_few_slices"}
    assert selection.selected_stacks == []
    # MR only (the default): CT is rejected for its modality before anything else.
    assert _reason_codes(select_series(index))["CT Routine Brain"] == {"modality"}


def test_tri_plane_pilot_is_recognised_by_geometry_alone(tmp_path):
    for path in (DICOMDIR_TESTS / "98892003" / "MR2" / name for name in ("4950", "4981", "5011")):
        ds = pydicom.dcmread(path)
        ds.SeriesDescription = "series 2"
        ds.save_as(tmp_path / path.name)
    (decision,) = select_series(scan_folder(tmp_path)).decisions
    assert [r.code for r in decision.reasons] == ["localizer"]
    assert "3 orientations" in decision.reasons[0].detail


@pytest.mark.parametrize(
    "name",
    ["MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
     "MR_small_jpeg_ls_lossless.dcm"],
)
def test_lossless_transfer_syntaxes_decode_to_the_same_values(name):
    reference = scan_folder(Path(get_testdata_file("MR_small.dcm")))
    other = scan_folder(Path(get_testdata_file(name)))
    (ref_series,), (other_series,) = reference.series.values(), other.series.values()
    np.testing.assert_array_equal(read_frame_pixels(other_series.frames)[0],
                                  read_frame_pixels(ref_series.frames)[0])


@pytest.mark.parametrize(
    "name", ["emri_small_RLE.dcm", "emri_small_big_endian.dcm", "emri_small_jpeg_2k_lossless.dcm",
             "emri_small_jpeg_ls_lossless.dcm"]
)
def test_enhanced_mr_multiframe_syntaxes_decode_every_frame(name):
    (ref,) = scan_folder(Path(get_testdata_file("emri_small.dcm"))).series.values()
    (other,) = scan_folder(Path(get_testdata_file(name))).series.values()
    assert len(other.frames) == 10 and [f.frame_number for f in other.frames] == list(range(1, 11))
    for a, b in zip(read_frame_pixels(other.frames), read_frame_pixels(ref.frames), strict=True):
        np.testing.assert_array_equal(a, b)


def test_jpeg2000_lossy_and_lossless_decode_as_their_reference_files():
    # pydicom-data: MR2_UNCR is the original, MR2_J2KR its lossless and MR2_J2KI its lossy JPEG 2000
    # encoding, MR2_UNCI the lossy one decompressed by the data set's authors.
    def pixels(name):
        (series,) = scan_folder(Path(get_testdata_file(name))).series.values()
        return read_frame_pixels(series.frames)[0]

    original, lossless, lossy = pixels("MR2_UNCR.dcm"), pixels("MR2_J2KR.dcm"), pixels("MR2_J2KI.dcm")
    assert original.shape == (1024, 1024)
    np.testing.assert_array_equal(lossless, original)
    np.testing.assert_array_equal(lossy, pixels("MR2_UNCI.dcm"))
    assert np.mean(np.abs(lossy - original)) > 0  # really lossy, and still the same image:
    assert np.corrcoef(lossy.ravel(), original.ravel())[0, 1] > 0.99


def test_duplicate_sop_instances_are_read_once(tmp_path):
    # pydicom's MR_small family: one image in many encodings, all with the same SOPInstanceUID.
    for path in Path(get_testdata_file("MR_small.dcm")).parent.glob("MR_small*.dcm"):
        shutil.copy(path, tmp_path / path.name)
    index = scan_folder(tmp_path)
    (series,) = index.series.values()
    assert len(series.frames) == 1
    duplicates = [s for s in index.skipped if s.reason.startswith("duplicate SOPInstanceUID")]
    assert len(duplicates) == len(list(tmp_path.iterdir())) - 1


def test_enhanced_mr_without_functional_groups_is_rejected_for_geometry():
    selection = select_series(scan_folder(Path(get_testdata_file("emri_small.dcm"))))
    (stack,) = selection.decisions[0].stacks
    assert {r.code for r in stack.reasons} == {"geometry"}
    assert "ImagePositionPatient" in stack.reasons[0].detail


def test_siemens_mosaic_and_mip_are_rejected(tmp_path):
    for name in ("0.dcm", "1.dcm", "slicethickness_empty_string.dcm"):
        shutil.copy(NIBABEL_DICOM / name, tmp_path / name)
    with gzip.open(NIBABEL_DICOM / "siemens_dwi_1000.dcm.gz") as src, open(tmp_path / "dwi1000", "wb") as dst:
        shutil.copyfileobj(src, dst)
    codes = _reason_codes(select_series(scan_folder(tmp_path)))
    assert "mosaic" in codes["MR CBU_DTI_64D_1A"]
    assert "derived" in codes["MR <MIP Range>"]


def test_truncated_pixel_data_rejects_only_that_stack(tmp_path, colin27_2mm):
    from tests.series_factory import oblique_affine, write_series

    good = write_series(tmp_path / "a", colin27_2mm, oblique_affine((2, 2, 2), (0, 0, 0), (0, 0, 0)), seed="a")
    write_series(tmp_path / "b", colin27_2mm, oblique_affine((2, 2, 2), (0, 0, 0), (0, 0, 0)), seed="b",
                 series_number=2)
    victim = sorted((tmp_path / "b").iterdir())[5]
    victim.write_bytes(victim.read_bytes()[:-5000])  # header intact, pixel data cut short
    selection = select_series(scan_folder(tmp_path))
    volumes = build_selected_volumes(selection)
    assert [v.series_number for v in volumes] == [1]
    assert len(volumes[0].sources) == len(good)
    rejected = [s for d in selection.decisions for s in d.stacks if not s.selected]
    assert len(rejected) == 1 and rejected[0].reasons[0].code == "volume"
    assert str(victim) in rejected[0].reasons[0].detail


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("corpus", ["pydicom", "pydicom-data", "nibabel"])
def test_whole_real_world_corpora_are_ingested_without_a_crash(corpus):
    """Every file of each corpus is indexed or skipped with a reason; every stack is built or rejected."""
    root = {
        "pydicom": Path(pydicom.__file__).parent / "data",
        "pydicom-data": Path(get_testdata_file("MR2_UNCR.dcm")).parent,
        "nibabel": NIBABEL_DICOM,
    }[corpus]
    index = scan_folder(root)
    indexed = {f.path for s in index.series.values() for f in s.frames}
    skipped = {s.path for s in index.skipped}
    assert indexed | skipped == {p for p in root.rglob("*") if p.is_file()}
    assert all(s.reason for s in index.skipped)
    rules = SelectionRules(policy=SelectionPolicy(modalities=("MR", "CT"), min_slices=2))
    selection = select_series(index, rules)
    candidates = len(selection.selected_stacks)
    volumes = build_selected_volumes(selection)
    assert candidates == len(volumes) + sum(
        1 for d in selection.decisions for s in d.stacks if s.reasons and s.reasons[-1].code == "volume"
    )
    assert all(r.detail for d in selection.decisions for s in d.stacks for r in s.reasons)
