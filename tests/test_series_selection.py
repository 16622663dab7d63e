"""Stack splitting, the default policy, SDK-format rules and best-per-study ranking."""

from __future__ import annotations

import json

import numpy as np
import pytest

from operators.dicom_index import scan_folder
from operators.errors import RulesError
from operators.selection_rules import SelectionRules, matches
from operators.series_selection import select_series
from operators.volume_builder import build_selected_volumes
from tests.series_factory import oblique_affine, write_series

AXIAL = oblique_affine((4, 4, 4), (0, 0, 0), (-60, -60, -40))
SAGITTAL = np.array([[0, 0, 4, -60], [4, 0, 0, -60], [0, -4, 0, 60], [0, 0, 0, 1]], dtype=float)


@pytest.fixture(scope="module")
def small(colin27_2mm):
    return np.ascontiguousarray(colin27_2mm[::2, ::2, ::2][:, :, :20])  # 46x55x20 at 4 mm


def test_dixon_series_is_split_into_one_volume_per_image_type(tmp_path, small):
    series_uid = "1.2.826.0.1.3680043.8.498.1"
    for n, kind in enumerate(("IN", "OPP", "W", "F")):
        write_series(tmp_path, small * (n + 1), AXIAL, seed=f"dixon-{kind}", series_uid=series_uid,
                     image_type=("ORIGINAL", "PRIMARY", "M", "DIXON", kind), file_prefix=kind)
    selection = select_series(scan_folder(tmp_path))
    (decision,) = selection.decisions
    ids = sorted(s.stack.stack_id for s in decision.stacks)
    assert ids == [f"ImageType=ORIGINAL\\PRIMARY\\M\\DIXON\\{k}" for k in ("F", "IN", "OPP", "W")]
    volumes = {v.stack_id.rsplit("\\", 1)[1]: v for v in build_selected_volumes(selection)}
    assert set(volumes) == {"IN", "OPP", "W", "F"}
    for n, kind in enumerate(("IN", "OPP", "W", "F")):  # each volume holds its own image type's values
        assert volumes[kind].array.shape == (46, 55, 20)
        np.testing.assert_allclose(volumes[kind].array.mean(), np.round(small * (n + 1)).mean(), rtol=1e-3)


def test_multi_echo_and_dynamic_series_split_by_the_attribute_that_varies(tmp_path, small):
    uid = "1.2.826.0.1.3680043.8.498.2"
    for echo in (1, 2, 3):
        write_series(tmp_path / "echo", small, AXIAL, seed=f"echo{echo}", series_uid=uid,
                     extra={"EchoNumbers": echo, "EchoTime": 2.3 * echo}, file_prefix=f"E{echo}")
    uid2 = "1.2.826.0.1.3680043.8.498.3"
    for phase in (1, 2):
        write_series(tmp_path / "dyn", small, AXIAL, seed=f"dyn{phase}", series_uid=uid2,
                     extra={"TemporalPositionIdentifier": phase}, file_prefix=f"T{phase}")
    decisions = {d.series.series_instance_uid: d for d in select_series(scan_folder(tmp_path)).decisions}
    assert sorted(s.stack.stack_id for s in decisions[uid].stacks) == [f"EchoNumbers={e}" for e in (1, 2, 3)]
    assert sorted(s.stack.stack_id for s in decisions[uid2].stacks) == [
        "TemporalPositionIdentifier=1", "TemporalPositionIdentifier=2"]
    assert all(s.selected and s.stack.n_frames == 20 for d in decisions.values() for s in d.stacks)


def test_per_slice_acquisition_numbers_do_not_split_a_2d_series(tmp_path, small):
    write_series(tmp_path, small, AXIAL, seed="acq", extra={"AcquisitionNumber": lambda k: k + 1})
    (decision,) = select_series(scan_folder(tmp_path)).decisions
    assert [(s.stack.stack_id, s.stack.n_frames, s.selected) for s in decision.stacks] == [("1", 20, True)]


def test_repeats_nothing_tells_apart_are_rejected(tmp_path, small):
    uid = "1.2.826.0.1.3680043.8.498.4"
    for n in range(2):
        write_series(tmp_path, small, AXIAL, seed=f"rep{n}", series_uid=uid, file_prefix=f"R{n}")
    (decision,) = select_series(scan_folder(tmp_path)).decisions
    (stack,) = decision.stacks
    assert [r.code for r in stack.reasons] == ["duplicate_positions"]


def test_too_few_slices_and_derived_and_non_mr(tmp_path, small):
    write_series(tmp_path / "few", small[:, :, :4], AXIAL, seed="few", series_number=1)
    write_series(tmp_path / "mip", small, AXIAL, seed="mip", series_number=2,
                 image_type=("DERIVED", "SECONDARY", "PROJECTION IMAGE", "MIP"))
    write_series(tmp_path / "ct", small, AXIAL, seed="ct", series_number=3, modality="CT")
    write_series(tmp_path / "ok", small, AXIAL, seed="ok", series_number=4)
    selection = select_series(scan_folder(tmp_path))
    by_number = {d.series.series_number: d for d in selection.decisions}
    assert [r.code for r in by_number[1].stacks[0].reasons] == ["too_few_slices"]
    assert [r.code for r in by_number[2].reasons] == ["derived"]
    assert [r.code for r in by_number[3].reasons] == ["modality"]
    assert by_number[4].selected
    # The model also accepts CT: a policy can let it through.
    rules = SelectionRules.from_json(json.dumps({"policy": {"modalities": ["MR", "CT"]}}))
    assert {d.series.series_number for d in select_series(scan_folder(tmp_path), rules).decisions
            if d.selected} == {3, 4}


def test_sdk_rules_select_by_orientation_thickness_and_image_type(tmp_path, small):
    write_series(tmp_path / "ax", small, AXIAL, seed="ax", series_number=1, description="T1 AX")
    write_series(tmp_path / "sag", small, SAGITTAL, seed="sag", series_number=2, description="T2 SAG")
    index = scan_folder(tmp_path)
    sdk_rules = {"selections": [{"name": "axial", "conditions": {
        "Modality": "(?i)MR", "ImageOrientationPatient": "Axial", "SliceThickness": [2, ">"],
        "ImageType": ["PRIMARY", "!SECONDARY"], "SeriesDescription": "^T1"}}]}
    selection = select_series(index, SelectionRules.from_json(json.dumps(sdk_rules)))
    chosen = [(s.series.series_number, s.matched_selection) for s in selection.selected_stacks]
    assert chosen == [(1, "axial")]
    sag = next(d for d in selection.decisions if d.series.series_number == 2)
    assert [r.code for r in sag.stacks[0].reasons] == ["rules"]


def test_best_per_study_prefers_more_slices_then_finer_spacing_then_axial(tmp_path, small):
    study = "1.2.826.0.1.3680043.8.498.10"
    write_series(tmp_path / "a", small, AXIAL, seed="a", series_number=1, study_uid=study)
    write_series(tmp_path / "s", small, SAGITTAL, seed="s", series_number=2, study_uid=study)
    write_series(tmp_path / "fine", small[:, :, :15], oblique_affine((2, 2, 4), (0, 0, 0), (0, 0, 0)),
                 seed="fine", series_number=3, study_uid=study)
    rules = SelectionRules.from_json('{"policy": {"best_per_study": true}}')
    selection = select_series(scan_folder(tmp_path), rules)
    assert [s.series.series_number for s in selection.selected_stacks] == [1]  # 20 slices, axial beats sagittal
    not_best = [r for d in selection.decisions for s in d.stacks for r in s.reasons if r.code == "not_best"]
    assert len(not_best) == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [("{", "not valid JSON"), ('{"selections": [{"conditions": {"ImageOrientationPatient": "Oblique"}}]}',
                               "Sagittal, Coronal, Axial"),
     ('{"selections": [{"conditions": {"SliceThickness": [2, "=>"]}}]}', "unsupported operator"),
     ('{"policy": {"min_slice": 3}}', "unknown policy key"), ('{"select": []}', "unknown top-level"),
     ('{"selections": [{"conditions": {"SeriesDescription": "(unclosed"}}]}', "invalid regular expression")],
)
def test_malformed_rules_are_reported_clearly(text, message):
    with pytest.raises(RulesError, match=message):
        SelectionRules.from_json(text)


def test_condition_semantics_follow_the_sdk():
    attrs = {"SliceThickness": 3.0, "SeriesDescription": "T1 VIBE Dixon", "ImageType": ["ORIGINAL", "PRIMARY"],
             "SeriesNumber": 7}
    assert matches("SliceThickness", [2, 5], attrs) and not matches("SliceThickness", [3, "<"], attrs)
    assert matches("SliceThickness", [3, "<="], attrs) and matches("SeriesNumber", 7, attrs)
    assert matches("SeriesDescription", "vibe", attrs) and matches("SeriesDescription", "^t1.*dixon$", attrs)
    assert matches("ImageType", ["PRIMARY", "!SECONDARY"], attrs) and not matches("ImageType", "!ORIGINAL", attrs)
    assert not matches("BodyPartExamined", "ABDOMEN", attrs)  # missing attribute never matches
    assert matches("BodyPartExamined", None, attrs)  # an empty condition is ignored
