"""Overlay pictures: axial / coronal / sagittal mosaics of the segmentation over the image, with a legend.

So a reader sees at a glance whether the segmentation went right. The volume is reoriented to the
nearest RAS+ axes first (whatever the acquisition plane) and shown in radiological convention: patient
right on the left of the screen, anterior at the top of axial views, superior at the top of coronal and
sagittal views. Colours are each structure's fixed display colour (:mod:`operators.anatomy_codes`).
Rendered with matplotlib's Agg backend (no display needed); the same figures go into the PDF report.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: containers and CI have no display

import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from operators.anatomy_codes import anatomy_for  # noqa: E402
from operators.segmentation_result import SegmentationResult  # noqa: E402

logger = logging.getLogger(__name__)

VIEWS = ("axial", "coronal", "sagittal")
_VIEW_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}  # RAS axis held fixed in each view
OVERLAY_ALPHA = 0.45


def to_ras(result: SegmentationResult) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image, labels and voxel sizes reoriented to the closest RAS+ axes (no interpolation)."""
    ornt = nib.orientations.io_orientation(result.volume.affine_ras)
    image = nib.orientations.apply_orientation(result.volume.array, ornt)
    labels = nib.orientations.apply_orientation(result.labels, ornt)
    spacing = np.array(result.volume.spacing)[ornt[:, 0].astype(int)]
    return image, labels, spacing


def _display_slice(array: np.ndarray, view: str, index: int) -> np.ndarray:
    """One slice as a (rows, columns) picture in radiological display orientation."""
    if view == "axial":
        plane = array[:, :, index]  # (x=R, y=A)
    elif view == "coronal":
        plane = array[:, index, :]  # (x=R, z=S)
    else:
        plane = array[index, :, :]  # (y=A, z=S)
    # rows: second axis descending (anterior / superior at the top); columns: first axis descending
    # (patient right on screen left; anterior on the left in sagittal views).
    return plane.T[::-1, ::-1]


def _aspect(view: str, spacing: np.ndarray) -> float:
    axes = [a for a in range(3) if a != _VIEW_AXIS[view]]
    return float(spacing[axes[1]] / spacing[axes[0]])  # row height / column width


def _slice_indices(labels: np.ndarray, view: str, count: int) -> list[int]:
    axis = _VIEW_AXIS[view]
    others = tuple(a for a in range(3) if a != axis)
    occupied = np.flatnonzero(labels.any(axis=others))
    low, high = (int(occupied[0]), int(occupied[-1])) if occupied.size else (0, labels.shape[axis] - 1)
    return sorted({int(round(v)) for v in np.linspace(low, high, count + 2)[1:-1]}) or [low]


def _color_table(result: SegmentationResult) -> np.ndarray:
    table = np.zeros((int(max(result.classes, default=0)) + 1, 4), dtype=np.float32)
    for label, name in result.classes.items():
        table[label, :3] = np.array(anatomy_for(name).color_rgb) / 255.0
        table[label, 3] = OVERLAY_ALPHA
    return table


def window(image: np.ndarray) -> tuple[float, float]:
    """Display window from the 1st-99.5th percentile of non-zero voxels (MR has no fixed units)."""
    values = image[image != 0] if np.any(image != 0) else image.ravel()
    sample = values[:: max(1, values.size // 1_000_000)]
    low, high = np.percentile(sample, [1.0, 99.5]) if sample.size else (0.0, 1.0)
    return float(low), float(high if high > low else low + 1.0)


def mosaic_figure(result: SegmentationResult, view: str, count: int = 12, columns: int = 4) -> Figure:
    """A grid of ``count`` slices of one view with the labels overlaid and a legend of present structures."""
    image, labels, spacing = to_ras(result)
    colors = _color_table(result)
    indices = _slice_indices(labels, view, count)
    rows = int(np.ceil(len(indices) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 2.6, rows * 2.6 + 1.6), squeeze=False)
    low, high = window(image)
    aspect = _aspect(view, spacing)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, index in zip(axes.ravel(), indices, strict=False):
        ax.imshow(
            _display_slice(image, view, index),
            cmap="gray",
            vmin=low,
            vmax=high,
            aspect=aspect,
            interpolation="nearest",
        )
        ax.imshow(colors[_display_slice(labels, view, index)], aspect=aspect, interpolation="nearest")
        ax.set_title(f"{view} {index + 1}/{image.shape[_VIEW_AXIS[view]]}", fontsize=7)
    present = [label for label in sorted(result.classes) if np.any(labels == label)]
    handles = [
        Patch(
            facecolor=np.array(anatomy_for(result.classes[label]).color_rgb) / 255.0,
            label=anatomy_for(result.classes[label]).display_name,
        )
        for label in present
    ]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(5, len(handles)), fontsize=6, frameon=False)
    title = f"{result.volume.series_description or result.volume.label} - {view} (patient right on the left)"
    fig.suptitle(title, fontsize=9)
    # fixed margins: tight_layout costs a third of the rendering time and the grid is regular anyway
    fig.subplots_adjust(
        left=0.01, right=0.99, top=0.93, bottom=0.09 + 0.012 * (len(handles) // 5), wspace=0.04, hspace=0.12
    )
    return fig


def write_overlay_pngs(result: SegmentationResult, folder: Path, stem: str, dpi: int = 110) -> list[Path]:
    """``<stem>_axial.png``, ``<stem>_coronal.png``, ``<stem>_sagittal.png`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for view in VIEWS:
        fig = mosaic_figure(result, view)
        path = folder / f"{stem}_{view}.png"
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        paths.append(path)
    logger.info("wrote overlay PNGs for %s", stem)
    return paths
