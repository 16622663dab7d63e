"""DICOM SEG writer: coded anatomy, geometry read back by highdicom and dcmqi, exact source references,
dciodvfy conformance, on axial / coronal / sagittal / oblique classic MR and Enhanced MR sources."""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr._cid_dict import cid_concepts
from pydicom.sr._concepts_dict import concepts

from operators.anatomy_codes import UnknownStructureError, anatomy_for, load_anatomy_table
from operators.seg_writer import SegWriterOptions, build_segmentation, write_segmentation
from operators.segmentation_result import ResultWriterError
from tests.result_writer_sources import (
    make_result,
    oblique_orientation,
    write_classic_series,
    write_enhanced_mr,
)
from tests.result_writer_tools import assert_dciodvfy_clean, dcmqi_label_volume

PROFILES = Path(__file__).resolve().parents[1] / "operators" / "profiles"
REFERENCE_CLASS_MAP = Path("/work/shared/reference/totalsegmentator_mri.md")
CLASSES = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 5: "liver", 10: "lung_left", 19: "vertebrae"}
# Codes that mean "some tissue / some structure": using one as a property type is the fallback we forbid.
GENERIC_CODES = {"85756007", "123037004", "91723000", "91722005", "49755003"}


def _cid_codes(cid: int) -> dict[str, str]:
    """code value -> meaning of a DICOM context group, from pydicom's copy of PS3.16."""
    out = {}
    for scheme, keywords in cid_concepts[cid].items():
        for keyword in keywords:
            for code, (meaning, _cids) in concepts[scheme][keyword].items():
                out[code] = meaning
    return out


def _shipped_profile_classes() -> dict[str, dict[int, str]]:
    return {
        path.stem: {int(k): v for k, v in json.loads(path.read_text())["classes"].items()}
        for path in sorted(PROFILES.glob("*.json"))
    }


def test_every_class_of_every_shipped_profile_has_specific_codes_and_a_fixed_colour():
    table = load_anatomy_table()
    profiles = _shipped_profile_classes()
    assert "total_mr" in profiles, "the total_mr profile is expected in operators/profiles"
    cid7151, cid4031, cid7150, cid244 = (_cid_codes(c) for c in (7151, 4031, 7150, 244))
    for profile, classes in profiles.items():
        for label, name in classes.items():
            entry = anatomy_for(name)  # raises for an uncoded structure
            if profile.startswith("total_mr"):
                assert entry.label == label, f"{profile}: {name} has label {label}, table says {entry.label}"
    assert len(table) == 50
    colours = [e.color_rgb for e in table.values()]
    assert len(set(colours)) == 50, "every structure needs its own display colour"
    for name, e in table.items():
        assert e.property_type.value not in GENERIC_CODES, f"{name} falls back to a generic code"
        assert e.category.scheme == "SCT" and e.category.value in cid7150
        assert e.anatomic_region.value in cid4031, f"{name}: anatomic region not in CID 4031"
        if e.source.startswith("DICOM PS3.16 CID 7151"):
            assert cid7151.get(e.property_type.value) == e.property_type.meaning, name
        if name.endswith("_left") or name.endswith("_right"):
            side = "Left" if name.endswith("_left") else "Right"
            assert e.type_modifier is not None and e.type_modifier.meaning == side
            assert e.type_modifier.value in cid244
        else:
            assert e.type_modifier is None, name
    # The four classes the official tool leaves uncoded get real concepts here.
    assert anatomy_for("lung_left").property_type.value == "39607008"
    assert anatomy_for("vertebrae").property_type.value == "51282000"
    assert anatomy_for("intervertebral_discs").property_type.value == "360499006"


def test_class_map_matches_reference_total_mr_numbering():
    text = REFERENCE_CLASS_MAP.read_text() if REFERENCE_CLASS_MAP.exists() else ""
    if not text:
        pytest.fail(f"{REFERENCE_CLASS_MAP} missing: the reference class map of total_mr is needed")
    for name, entry in load_anatomy_table().items():
        assert f"{entry.label} {name}" in text.replace("\n", " "), name


def test_unknown_structure_is_an_error_not_a_generic_code(tmp_path):
    series = write_classic_series(tmp_path / "src")
    result = make_result(series, {1: "spleen", 2: "not_an_organ"})
    with pytest.raises(UnknownStructureError, match="not_an_organ"):
        build_segmentation(result)


def _sources(kind: str, folder: Path):
    if kind == "enhanced":
        return write_enhanced_mr(folder)
    orientation = oblique_orientation() if kind == "oblique" else kind
    return write_classic_series(folder, orientation=orientation)


def _readback_highdicom(seg: hd.seg.Segmentation, result, segment_to_label: dict[int, int]) -> np.ndarray:
    """Label volume from highdicom, addressed by the source references the SEG carries."""
    labels = np.zeros(result.volume.shape, dtype=np.uint16)
    sources = result.volume.sources
    if sources[0].frame_number is None:
        planes = seg.get_pixels_by_source_instance(
            [s.sop_instance_uid for s in sources], combine_segments=True, relabel=False
        )
    else:
        planes = seg.get_pixels_by_source_frame(
            sources[0].sop_instance_uid, [s.frame_number for s in sources], combine_segments=True
        )
    lut = np.zeros(max(segment_to_label) + 1, dtype=np.uint16)
    for number, label in segment_to_label.items():
        lut[number] = label
    for k in range(result.volume.shape[2]):
        labels[:, :, k] = lut[planes[k]].T
    return labels


@pytest.mark.parametrize("kind", ["axial", "coronal", "sagittal", "oblique", "enhanced"])
def test_seg_reads_back_exactly_on_source_geometry(tmp_path, kind):
    series = _sources(kind, tmp_path / "src")
    result = make_result(series, CLASSES)
    outcome = write_segmentation(result, tmp_path / "seg.dcm")
    assert_dciodvfy_clean(outcome.path)
    segment_to_label = {n: label for label, n in outcome.segment_numbers.items()}

    seg = hd.seg.segread(outcome.path)
    np.testing.assert_array_equal(_readback_highdicom(seg, result, segment_to_label), result.labels)
    np.testing.assert_array_equal(
        dcmqi_label_volume(outcome.path, result.volume, segment_to_label, tmp_path), result.labels
    )

    source = series.datasets[0]
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.PatientID == source.PatientID
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    referenced = {
        (i.ReferencedSOPInstanceUID, getattr(i, "ReferencedFrameNumber", None))
        for f in seg.PerFrameFunctionalGroupsSequence
        for d in f.DerivationImageSequence
        for i in d.SourceImageSequence
    }
    expected = {(s.sop_instance_uid, s.frame_number) for s in result.volume.sources}
    occupied = {k for k in range(result.volume.shape[2]) if result.labels[:, :, k].any()}
    assert referenced == {
        (result.volume.sources[k].sop_instance_uid, result.volume.sources[k].frame_number) for k in occupied
    }
    assert referenced <= expected


def test_segments_carry_codes_colours_and_algorithm_identification(tmp_path):
    series = write_classic_series(tmp_path / "src")
    result = make_result(series, CLASSES)
    outcome = write_segmentation(result, tmp_path / "seg.dcm")
    seg = pydicom.dcmread(outcome.path)
    assert len(seg.SegmentSequence) == len(CLASSES)
    for item in seg.SegmentSequence:
        label = {n: lab for lab, n in outcome.segment_numbers.items()}[int(item.SegmentNumber)]
        anatomy = anatomy_for(CLASSES[label])
        prop = item.SegmentedPropertyTypeCodeSequence[0]
        assert (prop.CodingSchemeDesignator, prop.CodeValue) == ("SCT", anatomy.property_type.value)
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
        assert item.AnatomicRegionSequence[0].CodeValue == anatomy.anatomic_region.value
        modifier = prop.get("SegmentedPropertyTypeModifierCodeSequence")
        if anatomy.type_modifier:
            assert modifier[0].CodeValue == anatomy.type_modifier.value
        else:
            assert modifier is None
        rgb = hd.color.CIELabColor.from_dicom_value(item.RecommendedDisplayCIELabValue).to_rgb()
        assert np.allclose(rgb, anatomy.color_rgb, atol=1), (CLASSES[label], rgb)
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "TotalSegmentator MRI"
        assert algorithm.AlgorithmVersion == "0.1.0"
        assert "a" * 64 in algorithm.AlgorithmParameters and "total_mr" in algorithm.AlgorithmParameters
        assert item.TrackingID == CLASSES[label]


def test_empty_structures_are_omitted_and_reported(tmp_path):
    series = write_classic_series(tmp_path / "src")
    result = make_result(series, CLASSES)
    result.labels[result.labels == 5] = 0  # liver not found
    outcome = write_segmentation(result, tmp_path / "seg.dcm")
    assert outcome.omitted_structures == ["liver"]
    assert 5 not in outcome.segment_numbers
    seg = pydicom.dcmread(outcome.path)
    assert sorted(int(s.SegmentNumber) for s in seg.SegmentSequence) == list(range(1, len(CLASSES)))
    assert "liver" not in {s.SegmentLabel for s in seg.SegmentSequence}


def test_nothing_found_raises_instead_of_writing_an_empty_seg(tmp_path):
    series = write_classic_series(tmp_path / "src")
    result = make_result(series, CLASSES)
    result.labels[:] = 0
    with pytest.raises(ResultWriterError, match="no structure was found"):
        write_segmentation(result, tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()


def test_split_enhanced_stack_references_only_its_own_frames(tmp_path):
    """Two stacks at the same positions in one instance (Dixon water/fat): the SEG of stack 2 must point
    at frames 11-20, never at stack 1's frames that share those positions."""
    series = write_enhanced_mr(tmp_path / "src", stacks=2, volume_stack=2)
    result = make_result(series, CLASSES)
    outcome = write_segmentation(result, tmp_path / "seg.dcm")
    assert_dciodvfy_clean(outcome.path)
    seg = pydicom.dcmread(outcome.path)
    frames = {
        int(i.ReferencedFrameNumber)
        for f in seg.PerFrameFunctionalGroupsSequence
        for d in f.DerivationImageSequence
        for i in d.SourceImageSequence
    }
    nk = result.volume.shape[2]
    assert frames and frames <= set(range(nk + 1, 2 * nk + 1))


def test_labelmap_option_reads_back(tmp_path):
    """LABELMAP (Label Map Segmentation Storage, added to DICOM in 2024) is an option, not the default:
    Debian's dicom3tools does not know that IOD yet ("Information Object Not found"), and OHIF / Slicer
    read BINARY more widely. It must still read back exactly."""
    series = write_classic_series(tmp_path / "src", orientation="coronal")
    result = make_result(series, CLASSES)
    outcome = write_segmentation(result, tmp_path / "seg.dcm", SegWriterOptions(segmentation_type="LABELMAP"))
    assert outcome.dataset.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7"
    seg = hd.seg.segread(outcome.path)
    assert seg.SegmentationType == "LABELMAP"
    segment_to_label = {n: label for label, n in outcome.segment_numbers.items()}
    np.testing.assert_array_equal(_readback_highdicom(seg, result, segment_to_label), result.labels)


def test_label_shape_mismatch_is_rejected(tmp_path):
    series = write_classic_series(tmp_path / "src")
    result = make_result(series, CLASSES)
    result.labels = result.labels[:, :, :-1]
    with pytest.raises(ResultWriterError, match="shape"):
        build_segmentation(result)


def test_label_value_outside_class_map_is_rejected(tmp_path):
    series = write_classic_series(tmp_path / "src")
    result = make_result(series, CLASSES)
    result.labels[0, 0, 0] = 42
    with pytest.raises(ResultWriterError, match=r"\[42\]"):
        build_segmentation(result)


def test_resampled_volume_gets_a_seg_on_the_source_frames(tmp_path):
    """When the volume builder resampled a non-uniformly spaced stack, the SEG still has one frame per
    source image, at the source positions, holding the labels of the nearest resampled slice."""
    from operators.dicom_index import scan_folder
    from operators.stack_split import split_series
    from operators.volume_builder import build_volume

    series = write_classic_series(tmp_path / "src", shape=(16, 14, 12), spacing=(1.5, 1.5, 3.0))
    for k, path in enumerate(series.paths):  # slices 6.. sit 0.6 mm further: one gap of 3.6 mm
        ds = pydicom.dcmread(path)
        if k >= 6:
            ds.ImagePositionPatient = [float(v) for v in np.add(ds.ImagePositionPatient, [0, 0, 0.6])]
            ds.save_as(path)
    index = scan_folder(tmp_path / "src")
    (info,) = index.series.values()
    (stack,) = split_series(info.frames)
    volume = build_volume(info, stack.stack_id, stack.frames)
    assert not volume.slices_match_sources
    result = make_result(type(series)(volume, series.paths, series.datasets), CLASSES)
    outcome = write_segmentation(result, tmp_path / "seg.dcm")
    assert_dciodvfy_clean(outcome.path)
    seg = hd.seg.segread(outcome.path)
    segment_to_label = {n: label for label, n in outcome.segment_numbers.items()}
    lut = np.zeros(max(segment_to_label) + 1, dtype=np.uint16)
    for number, label in segment_to_label.items():
        lut[number] = label
    planes = seg.get_pixels_by_source_instance(
        [s.sop_instance_uid for s in volume.sources],
        combine_segments=True,
        assert_missing_frames_are_empty=True,
    )
    inverse = np.linalg.inv(volume.affine_lps)
    for m, source in enumerate(volume.sources):
        position = [float(v) for v in pydicom.dcmread(source.path).ImagePositionPatient]
        k = int(np.clip(np.rint((inverse @ [*position, 1.0])[2]), 0, volume.shape[2] - 1))
        np.testing.assert_array_equal(lut[planes[m]].T, result.labels[:, :, k])


@pytest.mark.slow
def test_fifty_segments_on_512x512x200_are_written_in_under_10_seconds(tmp_path):
    """The speed requirement, measured like bench/seg_writer_benchmark.py (BINARY, empty frames omitted)."""
    import time

    from bench.seg_writer_benchmark import ellipsoid_labels
    from operators.segmentation_result import AlgorithmInfo, SegmentationResult

    series = write_classic_series(tmp_path / "src", shape=(512, 512, 200), spacing=(0.8, 0.8, 1.5))
    classes = {entry.label: name for name, entry in load_anatomy_table().items()}
    result = SegmentationResult(
        series.volume, ellipsoid_labels(series.volume.shape, 50), classes, AlgorithmInfo("T", "1", "total_mr")
    )
    started = time.perf_counter()
    outcome = write_segmentation(result, tmp_path / "seg.dcm")
    seconds = time.perf_counter() - started
    assert len(outcome.segment_numbers) == 50
    assert seconds < 10.0, f"SEG of 50 segments took {seconds:.1f} s"


def test_fast_multiframe_save_writes_the_same_bytes_as_pydicom(tmp_path):
    from operators.multiframe_save import save_multiframe

    for kind in ("oblique", "enhanced"):
        result = make_result(_sources(kind, tmp_path / kind), CLASSES)
        seg = build_segmentation(result).dataset
        save_multiframe(seg, tmp_path / f"{kind}_fast.dcm")
        seg.save_as(tmp_path / f"{kind}_pydicom.dcm", enforce_file_format=True)
        assert (tmp_path / f"{kind}_fast.dcm").read_bytes() == (tmp_path / f"{kind}_pydicom.dcm").read_bytes()
