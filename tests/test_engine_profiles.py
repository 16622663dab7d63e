"""Model profiles: the shipped ones agree with TotalSegmentator 2.18, malformed ones give clear errors."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from operators.model_profile import ProfileError, available_profiles, load_profile, parse_profile  # noqa: E402


def test_shipped_profiles():
    assert {"demo", "total_mr", "total_mr_fast"} <= set(available_profiles())


def test_total_mr_matches_totalsegmentator_class_maps():
    """Final labels, part datasets and per-part channel maps as TotalSegmentator 2.18 defines them."""
    map_to_binary = importlib.import_module("totalsegmentator.map_to_binary")
    tasks = importlib.import_module("totalsegmentator.map_tasks_config")
    profile = load_profile("total_mr")
    assert profile.classes == map_to_binary.class_map["total_mr"]
    assert profile.target_spacing_mm == (1.5, 1.5, 1.5) and profile.tile_step_size == 0.8
    final_of = {name: label for label, name in profile.classes.items()}
    for part, task_id in zip(profile.parts, (850, 851), strict=True):
        assert part.dataset == tasks.TASK_ID_WEIGHTS_CONFIGS[task_id]["foldername"]
        assert part.trainer == "nnUNetTrainer_2000epochs_NoMirroring" and part.fold == 0
        official = map_to_binary.class_map_parts_mr[map_to_binary.map_taskid_to_partname_mr[task_id]]
        assert part.labels == {channel: final_of[name] for channel, name in official.items()}
    assert [min(p.labels.values()) for p in profile.parts] == [1, 30]
    assert [max(p.labels.values()) for p in profile.parts] == [29, 50]


def test_fast_variant_is_the_3mm_single_model():
    tasks = importlib.import_module("totalsegmentator.map_tasks_config")
    fast = load_profile("total_mr", fast=True)
    assert fast.name == "total_mr_fast" and fast.target_spacing_mm == (3.0, 3.0, 3.0)
    assert [p.dataset for p in fast.parts] == [tasks.TASK_ID_WEIGHTS_CONFIGS[852]["foldername"]]
    assert fast.parts[0].labels == {i: i for i in range(1, 51)}


def test_demo_profile_covers_the_phantom_labels():
    phantom = importlib.import_module("app.synthetic.phantom")
    demo = load_profile("demo")
    assert demo.classes == phantom.LABELS
    assert list(demo.parts[0].labels.values()) == sorted(phantom.LABELS)
    assert demo.parts[0].dataset == "Dataset999_TotalSegMRIDemo"


def test_demo_profile_has_no_fast_variant():
    with pytest.raises(ProfileError, match="no fast variant"):
        load_profile("demo", fast=True)


def test_unknown_profile_lists_the_shipped_ones():
    with pytest.raises(ProfileError, match="not found; shipped profiles: .*total_mr"):
        load_profile("total_ct")


def test_profile_from_a_file_path(tmp_path):
    data = json.loads(Path(load_profile("demo").source).read_text())
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({**data, "name": "mine"}))
    assert load_profile(path).name == "mine"


BASE = {
    "name": "x",
    "classes": {"1": "spleen", "5": "liver"},
    "target_spacing_mm": 1.5,
    "parts": [{"dataset": "Dataset1_X", "labels": {"1": "spleen", "2": "liver"}}],
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"classes": {"1": "spleen", "5": "spleen"}}, "must be unique"),
        ({"classes": {"0": "spleen", "5": "liver"}}, "1..255"),
        ({"parts": [{"dataset": "D", "labels": {"1": "spleen", "2": "lung"}}]}, "'lung' of channel 2"),
        ({"parts": [{"dataset": "D", "labels": {"1": "spleen", "3": "liver"}}]}, "without gaps"),
        ({"parts": [{"dataset": "D", "labels": {"1": "spleen"}}]}, r"classes \[5\] are produced by no part"),
        ({"parts": [{"labels": {"1": "spleen", "2": "liver"}}]}, "'dataset' is missing"),
        ({"target_spacing_mm": [1.5, 0]}, "target_spacing_mm"),
        ({"tile_step_size": 1.5}, "tile_step_size"),
        ({"intensity_cast": "round"}, "intensity_cast"),
    ],
)
def test_malformed_profiles_are_rejected(change, message):
    with pytest.raises(ProfileError, match=message):
        parse_profile({**BASE, **change})


def test_unreadable_profile_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ProfileError, match="cannot be read"):
        load_profile(path)
