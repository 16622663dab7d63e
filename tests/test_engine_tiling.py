"""Tiling, Gaussian weights, orientation, resampling: against nnU-Net, nibabel and TotalSegmentator."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from operators.canonical_orientation import to_closest_canonical  # noqa: E402
from operators.resampling import image_to_spacing, labels_to_shape  # noqa: E402
from operators.sliding_window import gaussian_importance_map, padding_for, predict_labels, tile_starts  # noqa: E402
from tests.engine_helpers import OBLIQUE_AFFINE_LPS  # noqa: E402


@pytest.mark.parametrize("patch", [(24, 32, 40), (128, 128, 128), (64, 64, 64), (5, 7, 9)])
def test_gaussian_map_equals_nnunet(patch):
    sliding = importlib.import_module("nnunetv2.inference.sliding_window_prediction")
    theirs = sliding.compute_gaussian(
        patch, sigma_scale=1.0 / 8, value_scaling_factor=10, device=torch.device("cpu")
    )
    assert np.array_equal(gaussian_importance_map(patch), theirs.float().numpy())
    assert gaussian_importance_map(patch).min() > 0


@pytest.mark.parametrize("size", [(128, 128, 128), (129, 200, 300), (240, 187, 240), (40, 41, 300)])
@pytest.mark.parametrize("step", [0.5, 0.8, 1.0])
def test_tile_starts_equal_nnunet(size, step):
    sliding = importlib.import_module("nnunetv2.inference.sliding_window_prediction")
    patch = (40, 41, 128)
    assert tile_starts(size, patch, step) == sliding.compute_steps_for_sliding_window(size, patch, step)


def test_padding_is_centred_with_the_extra_voxel_after():
    assert padding_for((10, 40, 33), (16, 32, 40)) == [(3, 3), (0, 0), (3, 4)]


def test_rolling_accumulator_equals_whole_volume_accumulation():
    """Bounded-memory slab accumulation gives the labels of a plain full-volume float16 accumulation."""
    torch.manual_seed(0)
    network = torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv3d(4, 3, 1)
    )
    rng = np.random.default_rng(0)
    image = rng.normal(size=(70, 20, 22)).astype(np.float32)
    patch, step = (16, 16, 16), 0.5
    ours = predict_labels(network, image, patch, 3, step, torch.device("cpu"))
    g = torch.from_numpy(gaussian_importance_map(patch))
    logits = torch.zeros((3, *image.shape), dtype=torch.float16)
    weights = torch.zeros(image.shape, dtype=torch.float16)
    starts = tile_starts(image.shape, patch, step)
    with torch.inference_mode():
        for x in starts[0]:
            for y in starts[1]:
                for z in starts[2]:
                    sl = (slice(x, x + 16), slice(y, y + 16), slice(z, z + 16))
                    logits[(slice(None), *sl)] += network(torch.from_numpy(image[sl])[None, None])[0] * g
                    weights[sl] += g.half()
    expected = torch.div(logits, weights).argmax(0).numpy()
    assert np.array_equal(ours, expected)


def test_canonical_view_matches_nibabel_and_round_trips():
    array = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    affine_ras = np.diag([-1, -1, 1, 1]) @ OBLIQUE_AFFINE_LPS
    view = to_closest_canonical(array, affine_ras)
    reference = nib.as_closest_canonical(nib.Nifti1Image(array, affine_ras))
    assert np.array_equal(view.array, np.asanyarray(reference.dataobj))
    assert np.allclose(view.affine_ras, reference.affine)
    assert np.array_equal(view.to_source(view.array), array)


def test_image_resampling_equals_totalsegmentator_change_spacing():
    resampling = importlib.import_module("totalsegmentator.resampling")
    rng = np.random.default_rng(1)
    array = (rng.uniform(0, 300, (23, 31, 9)) + 0.5).astype(np.float32)
    affine = np.diag([0.8, 1.1, 3.3, 1.0])
    img = nib.Nifti1Image.from_bytes(nib.Nifti1Image(array, affine).to_bytes())
    theirs = resampling.change_spacing(
        nib.Nifti1Image(img.get_fdata(), img.affine), [1.5] * 3, order=1, dtype=np.int32, nr_cpus=1
    )
    ours, resampled = image_to_spacing(
        array, np.asarray(img.header.get_zooms(), dtype=np.float64), np.full(3, 1.5)
    )
    assert resampled and np.array_equal(ours, np.asanyarray(theirs.dataobj).astype(np.float32))
    labels = (rng.uniform(0, 5, theirs.shape)).astype(np.uint8)
    back = resampling.change_spacing(
        nib.Nifti1Image(labels, theirs.affine),
        [1.5] * 3,
        array.shape,
        order=0,
        dtype=np.uint8,
        nr_cpus=1,
        force_affine=img.affine,
    )
    assert np.array_equal(labels_to_shape(labels, array.shape), np.asanyarray(back.dataobj))
