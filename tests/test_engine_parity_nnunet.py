"""Parity of the segmentation engine with nnU-Net 2.8.1's nnUNetPredictor behind TotalSegmentator's flow.

The reference (bench/reference_tools.py) is TotalSegmentator 2.18's own canonicalisation, int32 resampling,
part merge and back-resampling functions around ``nnUNetPredictor``, on the same random-weight nnU-Net
folders. Random networks have far less confident logits than trained ones, so this is a strict test of
tiling, Gaussian weighting, normalisation, cropping, axis order, merge order and resampling.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.reference_tools import dice_per_class, nnunet_reference_segment  # noqa: E402
from operators.model_profile import parse_profile  # noqa: E402
from operators.segmentation_engine import SegmentationEngine  # noqa: E402
from tests.engine_helpers import FINAL, make_volume, smooth_image, two_part_models  # noqa: E402

DICE_BAR = 0.999


def assert_parity(ours: np.ndarray, reference: np.ndarray, classes, min_classes: int = 2) -> dict[int, float]:
    assert ours.shape == reference.shape and ours.dtype == np.uint8
    scores = dice_per_class(ours, reference, classes)
    assert len(scores) >= min_classes, f"too few classes present to compare: {scores}"
    worst = {k: v for k, v in scores.items() if v < DICE_BAR}
    assert not worst, f"classes below Dice {DICE_BAR}: {worst} (all: {scores})"
    return scores


def test_oblique_anisotropic_two_part_volume_matches_nnunet(two_parts):
    root, profile = two_parts
    volume = make_volume(smooth_image((50, 40, 18), seed=0))
    ours = SegmentationEngine(profile, root, device="cpu").segment(volume)
    reference = nnunet_reference_segment(volume, profile, root)
    assert_parity(ours, reference, FINAL, min_classes=4)
    # both parts contribute, and the later part overwrites the earlier one where it labels a voxel
    assert set(np.unique(ours)) & {46, 47, 48} and set(np.unique(ours)) & {1, 2, 3, 4, 5}
    assert np.array_equal(ours, reference)


@pytest.mark.parametrize("accumulator", ["rolling", "whole"])
def test_long_volume_rolls_the_accumulator_and_still_matches(two_parts, monkeypatch, accumulator):
    """Canonical z becomes network axis 0; 70 slices of 3 mm give several tile rows along it. With the
    whole-image accumulator limit at 0 bytes the sums roll slab by slab; by default this image fits whole."""
    import operators.segmentation_engine as engine_module
    import operators.sliding_window as sliding_window

    if accumulator == "rolling":
        monkeypatch.setattr(sliding_window, "FULL_ACCUMULATOR_BYTES", 0)
    seen = []

    def recording(*args, **kwargs):
        seen.append(kwargs["stats"])
        return sliding_window.predict_labels(*args, **kwargs)

    monkeypatch.setattr(engine_module, "predict_labels", recording)
    root, profile = two_parts
    affine = np.diag([-1.2, -1.2, 3.0, 1.0])  # already RAS+ canonical (LPS -x, -y)
    volume = make_volume(smooth_image((30, 28, 70), seed=3, zero_border=0), affine)
    engine = SegmentationEngine(profile, root, device="cpu")
    ours = engine.segment(volume)
    assert engine.last_run.model_shape[2] == 140  # 70 * 3 mm / 1.5 mm
    rows = {stats.accumulator_rows for stats in seen}  # one run per part
    if accumulator == "whole":
        assert rows == {140}
    else:
        assert rows and max(rows) < 140
    assert_parity(ours, nnunet_reference_segment(volume, profile, root), FINAL, min_classes=4)


def test_volume_smaller_than_the_patch_is_padded_like_nnunet(two_parts):
    root, profile = two_parts
    volume = make_volume(smooth_image((14, 12, 5), seed=5, zero_border=0))
    ours = SegmentationEngine(profile, root, device="cpu").segment(volume)
    assert_parity(ours, nnunet_reference_segment(volume, profile, root), FINAL)


def test_transposed_plans_and_masked_normalisation_match(tmp_path):
    root = tmp_path / "models"
    profile = two_part_models(root, patch=(40, 24, 32), transpose_forward=(2, 0, 1), use_mask_for_norm=True)
    image = smooth_image((40, 36, 16), seed=7)
    image[10:14, 10:14, 5:9] = 0  # an interior hole: filled for the normalisation mask
    volume = make_volume(image)
    ours = SegmentationEngine(profile, root, device="cpu").segment(volume)
    assert_parity(ours, nnunet_reference_segment(volume, profile, root), FINAL, min_classes=4)


def test_int32_truncation_is_what_totalsegmentator_does(two_parts):
    """Fractional intensities: truncating after resampling matches the reference; keeping floats does not."""
    root, profile = two_parts
    rng = np.random.default_rng(11)
    image = smooth_image((36, 30, 14), seed=11, scale=6.0) + rng.uniform(0, 1, (36, 30, 14)).astype(
        np.float32
    )
    volume = make_volume(image)
    reference = nnunet_reference_segment(volume, profile, root)
    truncating = SegmentationEngine(profile, root, device="cpu").segment(volume)
    assert_parity(truncating, reference, FINAL)
    raw = parse_profile({**_profile_dict(profile), "intensity_cast": "none"})
    floats = SegmentationEngine(raw, root, device="cpu").segment(volume)
    scores = dice_per_class(floats, reference, FINAL)
    assert min(scores.values()) < DICE_BAR, f"keeping float intensities unexpectedly matched: {scores}"


def test_already_canonical_volume_at_model_spacing_skips_resampling_and_cast(two_parts):
    """Like TotalSegmentator: no resampling and no int32 cast when the spacing already matches."""
    root, profile = two_parts
    affine = np.diag([-1.5, -1.5, 1.5, 1.0])  # LPS diag(-1,-1,1) = RAS+ canonical, 1.5 mm
    image = smooth_image((30, 34, 28), seed=13, scale=5.0)  # fractional values that a cast would change
    volume = make_volume(image, affine)
    engine = SegmentationEngine(profile, root, device="cpu")
    ours = engine.segment(volume)
    assert engine.last_run.model_shape == (30, 34, 28)
    assert_parity(ours, nnunet_reference_segment(volume, profile, root), FINAL)


def _profile_dict(profile) -> dict:
    classes = profile.classes
    return {
        "name": profile.name,
        "classes": {str(k): v for k, v in classes.items()},
        "target_spacing_mm": list(profile.target_spacing_mm),
        "tile_step_size": profile.tile_step_size,
        "intensity_cast": profile.intensity_cast,
        "parts": [
            {
                "dataset": p.dataset,
                "trainer": p.trainer,
                "plans": p.plans,
                "configuration": p.configuration,
                "fold": p.fold,
                "checkpoint": p.checkpoint,
                "labels": {str(ch): classes[label] for ch, label in p.labels.items()},
            }
            for p in profile.parts
        ],
    }


REPO = Path(__file__).resolve().parents[1]


def test_demo_profile_matches_nnunet_on_a_phantom(tmp_path):
    """The shipped demo profile on a rendered torso phantom, against nnUNetPredictor.

    Uses the trained demo model in models/demo when it is there, else a random-weight model of the same
    architecture and folder layout (the test must not depend on the trained model being present).
    """
    from app.synthetic import demo_model as dm
    from app.synthetic import phantom as ph
    from operators.model_factory import write_model_folder
    from operators.model_profile import load_profile

    profile = load_profile("demo")
    root = REPO / "models" / "demo"
    if not (root / profile.parts[0].relative_checkpoint).is_file():
        root = tmp_path / "models"
        names = tuple(profile.classes[label] for label in profile.parts[0].labels.values())
        write_model_folder(
            root,
            dm.factory_spec(dataset=profile.parts[0].dataset, label_names=names, weight_scale=1.5),
        )
    rng = np.random.default_rng(0)
    affine = np.array([[3.5, 0, 0, -140.0], [0, 3.5, 0, -112.0], [0, 0, 8.0, -96.0], [0, 0, 0, 1]])
    image, _ = ph.render(ph.TorsoPhantom(5), (80, 64, 24), affine, ph.contrast("t1", rng), rng)
    volume = make_volume(image / image.max() * 1000.0, affine)
    ours = SegmentationEngine(profile, root, device="cpu").segment(volume)
    # parity, not accuracy: a weakly trained demo model may find few structures in this small field of view
    assert ours.any()
    assert_parity(ours, nnunet_reference_segment(volume, profile, root), profile.classes, min_classes=1)
