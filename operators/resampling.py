"""Resample the canonical image to the model spacing and the label map back, as TotalSegmentator does.

Decisions (see ``docs/engine.md``):

* Image -> model grid: ``scipy.ndimage.zoom`` with linear interpolation (order 1), ``mode="nearest"``,
  zoom factors ``spacing / target_spacing`` where the spacing is the float32 value a NIfTI header stores.
  ``ndimage.zoom`` derives the output shape by rounding ``shape * zoom`` and then maps the corner voxels onto
  each other, which is exactly TotalSegmentator 2.18's ``change_spacing``. Interpolation runs in float64.
* Intensity cast: TotalSegmentator casts the resampled image to int32, truncating towards zero, before
  nnU-Net normalises it (and skips both resampling and cast when the spacing already matches). The models
  were trained behind that cast, and results only match the official tool with it, so a profile's default
  ``intensity_cast`` is ``"int32_truncate"``; ``"none"`` keeps float intensities for models trained without.
* Labels -> source grid: nearest neighbour (order 0) ``ndimage.zoom`` with factors
  ``source_shape / model_shape``, again as TotalSegmentator does it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def resampled_shape(shape: tuple[int, ...], spacing: np.ndarray, target: np.ndarray) -> tuple[int, ...]:
    """The shape ``ndimage.zoom`` produces for ``spacing -> target`` (Python's round, half to even)."""
    zoom = np.asarray(spacing, dtype=np.float64) / np.asarray(target, dtype=np.float64)
    return tuple(int(round(s * z)) for s, z in zip(shape, zoom, strict=True))


def image_to_spacing(
    array: np.ndarray, spacing: np.ndarray, target: np.ndarray, intensity_cast: str = "int32_truncate"
) -> tuple[np.ndarray, bool]:
    """Resample a canonical image to ``target`` spacing; returns (float32 array, whether it was resampled)."""
    spacing = np.asarray(spacing, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if np.array_equal(spacing, target):
        return np.asarray(array, dtype=np.float32), False
    zoom = spacing / target
    resampled = ndimage.zoom(array, zoom, output=np.float64, order=1, mode="nearest")
    if intensity_cast == "int32_truncate":
        resampled = resampled.astype(np.int32)
    return resampled.astype(np.float32), True


def labels_to_shape(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour resample a label array to ``shape`` (identity when the shapes already agree)."""
    if tuple(labels.shape) == tuple(shape):
        return labels
    zoom = np.asarray(shape, dtype=np.float64) / np.asarray(labels.shape, dtype=np.float64)
    result = ndimage.zoom(labels, zoom, order=0, mode="nearest")
    if result.shape != tuple(shape):
        raise ValueError(f"nearest-neighbour resampling produced {result.shape}, expected {tuple(shape)}")
    return result
