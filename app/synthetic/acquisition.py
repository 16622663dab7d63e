"""Acquisition grids: how a phantom is imaged before the engine resamples it to the model grid.

A clinical MR series is a stack of slices in one plane (axial, coronal or sagittal), with finer pixels in
the plane than between slices, stored as integers. The held-out evaluation renders its phantoms on such
grids (:data:`ACQUISITIONS`), and the demo training renders part of its volumes on random ones, so that the
network sees what the engine's resampling of a real acquisition looks like.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Acquisition:
    """An acquisition grid: slice orientation (row and column direction cosines in LPS) and voxel size."""

    name: str
    row: tuple[float, float, float]
    col: tuple[float, float, float]
    spacing: tuple[float, float, float]  # along row, column, slice normal (mm)


ACQUISITIONS = (
    Acquisition("axial", (1, 0, 0), (0, 1, 0), (1.5, 1.5, 4.0)),
    Acquisition("coronal", (1, 0, 0), (0, 0, -1), (1.4, 1.4, 4.5)),
    Acquisition("sagittal", (0, 1, 0), (0, 0, -1), (1.6, 1.6, 5.0)),
)


def model_grid_acquisition(spacing_mm: float) -> Acquisition:
    """The demo model's own grid as an acquisition: RAS+ axes (LPS row -x, column -y, normal +z), isotropic."""
    return Acquisition("model grid", (-1, 0, 0), (0, -1, 0), (spacing_mm, spacing_mm, spacing_mm))


def acquisition_grid(extent_lps, acq: Acquisition, margin_mm: float = 12.0):
    """Shape and LPS affine of an ``acq`` grid covering the phantom's extent plus a margin of air."""
    lo, hi = (np.asarray(v, dtype=np.float64) for v in extent_lps)
    lo, hi = lo - margin_mm, hi + margin_mm
    row, col = np.asarray(acq.row, float), np.asarray(acq.col, float)
    normal = np.cross(row, col)
    axes = np.stack([row, col, normal], axis=1)  # columns: unit direction of i, j, k
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    proj = corners @ axes  # coordinates of the box corners along i, j, k directions
    start, stop = proj.min(axis=0), proj.max(axis=0)
    spacing = np.asarray(acq.spacing, float)
    shape = tuple(int(np.ceil((b - a) / s)) + 1 for a, b, s in zip(start, stop, spacing, strict=True))
    affine = np.eye(4)
    affine[:3, :3] = axes * spacing[None, :]
    affine[:3, 3] = axes @ start
    return shape, affine


def to_stored_values(image: np.ndarray) -> np.ndarray:
    """Quantise to 12-bit unsigned integers (as float32), like pixel data read back from a DICOM series."""
    peak = float(np.percentile(image, 99.9)) or 1.0
    return np.clip(np.round(image / peak * 3000.0), 0, 4095).astype(np.float32)
