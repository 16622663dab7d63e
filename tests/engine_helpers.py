"""Shared builders for the segmentation-engine tests: random-weight nnU-Net folders, profiles, volumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from operators.model_factory import SyntheticModelSpec, write_model_folder
from operators.model_profile import ModelProfile, parse_profile
from operators.volume import Volume

ORGANS = ("spleen", "kidney_right", "kidney_left", "gallbladder", "liver")
MUSCLES = ("autochthon_left", "autochthon_right", "iliopsoas_left")
FINAL = {
    1: "spleen",
    2: "kidney_right",
    3: "kidney_left",
    4: "gallbladder",
    5: "liver",
    46: "autochthon_left",
    47: "autochthon_right",
    48: "iliopsoas_left",
}


def two_part_models(
    root: Path,
    patch=(24, 32, 40),
    transpose_forward=(0, 1, 2),
    use_mask_for_norm=False,
    spacing=1.5,
    trainer="nnUNetTrainer",
) -> ModelProfile:
    """Two random-weight parts (5 organs, 3 muscles) written under ``root``, and their profile."""
    common = dict(
        patch_size=patch,
        features_per_stage=(4, 8, 16),
        transpose_forward=transpose_forward,
        use_mask_for_norm=use_mask_for_norm,
        spacing=(spacing,) * 3,
        trainer=trainer,
    )
    write_model_folder(
        root, SyntheticModelSpec(dataset="Dataset901_TestOrgans", label_names=ORGANS, seed=1, **common)
    )
    write_model_folder(
        root,
        SyntheticModelSpec(
            dataset="Dataset902_TestMuscles", label_names=MUSCLES, seed=2, weight_scale=1.5, **common
        ),
    )
    return parse_profile(
        {
            "name": "test_two_parts",
            "classes": {str(k): v for k, v in FINAL.items()},
            "target_spacing_mm": spacing,
            "tile_step_size": 0.8,
            "intensity_cast": "int32_truncate",
            "weights_hint": "write them with operators.model_factory",
            "parts": [
                {
                    "dataset": "Dataset901_TestOrgans",
                    "trainer": trainer,
                    "labels": {str(i + 1): n for i, n in enumerate(ORGANS)},
                },
                {
                    "dataset": "Dataset902_TestMuscles",
                    "trainer": trainer,
                    "labels": {str(i + 1): n for i, n in enumerate(MUSCLES)},
                },
            ],
        }
    )


def smooth_image(shape, seed=0, scale=800.0, zero_border=3) -> np.ndarray:
    """A smooth random 'anatomy' with noise and a zero border on one side (exercises the non-zero crop)."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
    image = (field - field.min()) / (field.max() - field.min()) * scale + rng.normal(0, 5, size=shape)
    image = np.clip(image, 0, None)
    if zero_border:
        image[:zero_border] = 0
    return image.astype(np.float32)


def _oblique_affine_lps() -> np.ndarray:
    """A slightly oblique (3 and 2 degree tilts), non-canonical, anisotropic grid with orthonormal directions.

    i runs mostly anterior->posterior (1.1 mm), j mostly left->right (0.9 mm), k superior->inferior (3 mm).
    """
    a, b = np.radians(3.0), np.radians(2.0)
    tilt_x = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    tilt_z = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    axes = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])  # columns: +P, -L (=R), -S (=I)
    affine = np.eye(4)
    affine[:3, :3] = tilt_z @ tilt_x @ axes @ np.diag([1.1, 0.9, 3.0])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    return affine


OBLIQUE_AFFINE_LPS = _oblique_affine_lps()


def make_volume(array: np.ndarray, affine_lps: np.ndarray = OBLIQUE_AFFINE_LPS) -> Volume:
    return Volume(
        array=array,
        affine_lps=np.asarray(affine_lps, dtype=np.float64),
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.4",
        stack_id="1",
        series_number=7,
    )
