"""Turn one selected stack of DICOM frames into a :class:`~operators.volume.Volume` with trustworthy geometry.

Geometry (PS3.3 C.7.6.2.1.1): for a frame with ImagePositionPatient ``P``, row direction cosine ``r``
(ImageOrientationPatient[0:3]), column direction cosine ``c`` and PixelSpacing ``(dr, dc)`` (distance
between rows, between columns), the pixel in column ``i`` and row ``j`` is at ``P + i*dc*r + j*dr*c``.
Slices are sorted by the projection of ``P`` on the slice normal ``n = r x c``; the slice spacing is the
distance between consecutive projections, never SliceThickness or SpacingBetweenSlices (which vendors
fill inconsistently).

Checks, each either corrected with a note or rejected with a :class:`VolumeBuildError`:

- positions that drift sideways from the slice normal (a sheared stack): rejected;
- gaps more than 1.5x the typical spacing (missing slices): rejected, naming the gap;
- other non-uniform spacing beyond 1% of the typical spacing: resampled along the normal onto a uniform
  grid at the median spacing by linear interpolation, and noted on the volume;
- frames of different matrix sizes, undecodable pixel data: rejected.

Stored values become real-world values with RescaleSlope/RescaleIntercept (per frame for Enhanced MR,
from the Pixel Value Transformation functional group).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom

from operators.dicom_index import FrameInfo, SeriesInfo
from operators.errors import VolumeBuildError
from operators.series_selection import Reason, SelectionResult
from operators.volume import SourceFrame, Volume

logger = logging.getLogger(__name__)

ORTHOGONALITY_TOLERANCE = 1e-3
SPACING_TOLERANCE = 0.01  # relative: beyond this, slices are not uniformly spaced
MISSING_SLICE_FACTOR = 1.5  # a gap this many times the median spacing means slices are missing
SHEAR_TOLERANCE_MM = 0.05


def _direction_cosines(frame: FrameInfo) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    iop = np.asarray(frame.orientation, dtype=float)
    row, col = iop[:3], iop[3:]
    if not (np.isclose(np.linalg.norm(row), 1, atol=1e-2) and np.isclose(np.linalg.norm(col), 1, atol=1e-2)):
        raise VolumeBuildError(f"ImageOrientationPatient {frame.orientation} does not hold unit vectors")
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    if abs(float(row @ col)) > ORTHOGONALITY_TOLERANCE:
        raise VolumeBuildError(f"ImageOrientationPatient {frame.orientation}: row and column not orthogonal")
    normal = np.cross(row, col)
    return row, col, normal / np.linalg.norm(normal)


def sort_frames(frames: list[FrameInfo]) -> tuple[list[FrameInfo], np.ndarray]:
    """Frames sorted along the slice normal, and their positions along it (mm)."""
    if any(f.position is None or f.orientation is None or f.pixel_spacing is None for f in frames):
        raise VolumeBuildError("frames without ImagePositionPatient, ImageOrientationPatient or PixelSpacing")
    _, _, normal = _direction_cosines(frames[0])
    projections = np.array([np.asarray(f.position, dtype=float) @ normal for f in frames])
    order = np.argsort(projections, kind="stable")
    return [frames[i] for i in order], projections[order]


def _check_stacked(frames: list[FrameInfo], normal: np.ndarray) -> None:
    positions = np.array([f.position for f in frames], dtype=float)
    offsets = positions - np.outer(positions @ normal, normal)  # in-plane component of each position
    drift = float(np.max(np.linalg.norm(offsets - offsets[0], axis=1)))
    if drift > SHEAR_TOLERANCE_MM:
        raise VolumeBuildError(
            f"slice positions drift {drift:.2f} mm sideways from the slice normal (sheared or tilted stack)"
        )


def slice_spacing(projections: np.ndarray) -> tuple[float, bool]:
    """Typical spacing along the normal and whether it is uniform; raise when slices are missing."""
    if len(projections) < 2:
        raise VolumeBuildError("a single slice is a 2D image, not a 3D volume")
    gaps = np.diff(projections)
    if np.any(gaps < 1e-3):
        raise VolumeBuildError("two frames share a slice position")
    median = float(np.median(gaps))
    worst = int(np.argmax(gaps))
    if gaps[worst] > MISSING_SLICE_FACTOR * median:
        raise VolumeBuildError(
            f"missing slice(s): a gap of {gaps[worst]:.2f} mm after slice {worst + 1} of {len(projections)} "
            f"(position {projections[worst]:.2f} mm along the normal) where the spacing is {median:.2f} mm"
        )
    uniform = bool(np.all(np.abs(gaps - median) <= SPACING_TOLERANCE * median))
    return median, uniform


def read_frame_pixels(frames: list[FrameInfo]) -> list[np.ndarray]:
    """Real-world values of each frame as (rows, columns) float32, decoding each file once."""
    wanted: dict[Path, list[int]] = defaultdict(list)
    for n, frame in enumerate(frames):
        wanted[frame.path].append(n)
    planes: list[np.ndarray | None] = [None] * len(frames)
    for path, members in wanted.items():
        try:
            ds = pydicom.dcmread(path)
            pixels = ds.pixel_array
        except Exception as exc:  # decoders raise many types; all mean the same to the user
            raise VolumeBuildError(f"pixel data of {path} could not be decoded: {exc}") from None
        for n in members:
            frame = frames[n]
            plane = pixels[frame.frame_number - 1] if frame.frame_number is not None else pixels
            if plane.shape != (frame.rows, frame.columns):
                raise VolumeBuildError(f"{path}: frame has shape {plane.shape}, header says "
                                       f"{frame.rows}x{frame.columns}")
            values = plane.astype(np.float32) * np.float32(frame.rescale_slope) + np.float32(
                frame.rescale_intercept
            )
            if frame.photometric == "MONOCHROME1":  # low values are bright: flip to the usual sense
                values = values.max() + values.min() - values
            planes[n] = values
    return planes  # type: ignore[return-value]


def _resample_uniform(data: np.ndarray, projections: np.ndarray, spacing: float) -> np.ndarray:
    """Linear interpolation along k from measured slice positions to a uniform grid starting at the first."""
    n_out = int(round((projections[-1] - projections[0]) / spacing)) + 1
    targets = projections[0] + spacing * np.arange(n_out)
    upper = np.clip(np.searchsorted(projections, targets, side="right"), 1, len(projections) - 1)
    lower = upper - 1
    weight = ((targets - projections[lower]) / (projections[upper] - projections[lower])).astype(np.float32)
    weight = np.clip(weight, 0, 1)
    return data[:, :, lower] * (1 - weight) + data[:, :, upper] * weight


def build_volume(series: SeriesInfo, stack_id: str, frames: list[FrameInfo]) -> Volume:
    """Build the volume of one stack of ``series``; raise :class:`VolumeBuildError` with the reason."""
    if len({(f.rows, f.columns) for f in frames}) > 1:
        raise VolumeBuildError("frames of different matrix sizes in one stack")
    if len({tuple(np.round(f.pixel_spacing, 4)) for f in frames if f.pixel_spacing}) > 1:
        raise VolumeBuildError("frames with different PixelSpacing in one stack")
    ordered, projections = sort_frames(frames)
    row, col, normal = _direction_cosines(ordered[0])
    _check_stacked(ordered, normal)
    spacing, uniform = slice_spacing(projections)
    planes = read_frame_pixels(ordered)
    # (rows, columns) planes -> array[i=column, j=row, k=slice]
    data = np.stack([p.T for p in planes], axis=-1).astype(np.float32, copy=False)
    notes = []
    sources = [SourceFrame(f.path, f.sop_class_uid, f.sop_instance_uid, f.frame_number) for f in ordered]
    if not uniform:
        gaps = np.diff(projections)
        data = _resample_uniform(data, projections, spacing)
        notes.append(
            f"non-uniform slice spacing ({gaps.min():.3f}-{gaps.max():.3f} mm) resampled to {spacing:.3f} mm "
            f"({len(projections)} -> {data.shape[2]} slices) by linear interpolation"
        )
        logger.warning("series %s stack %s: %s", series.series_instance_uid, stack_id, notes[-1])
    row_spacing, column_spacing = ordered[0].pixel_spacing  # type: ignore[misc]
    affine = np.eye(4)
    affine[:3, 0] = row * column_spacing
    affine[:3, 1] = col * row_spacing
    affine[:3, 2] = normal * spacing
    affine[:3, 3] = ordered[0].position  # type: ignore[assignment]
    return Volume(
        array=data,
        affine_lps=affine,
        study_instance_uid=series.study_instance_uid,
        series_instance_uid=series.series_instance_uid,
        stack_id=stack_id,
        modality=series.modality,
        series_description=series.series_description,
        series_number=series.series_number,
        frame_of_reference_uid=series.frame_of_reference_uid,
        sources=sources,
        slices_match_sources=uniform,
        notes=notes,
    )


def build_selected_volumes(selection: SelectionResult) -> list[Volume]:
    """Build every selected stack; a stack that fails is rejected (reason ``volume``), never fatal."""
    volumes = []
    for decision in selection.selected_stacks:
        try:
            volumes.append(build_volume(decision.series, decision.stack.stack_id, decision.stack.frames))
        except VolumeBuildError as exc:
            logger.warning(
                "series %s stack %s rejected: %s",
                decision.series.series_number,
                decision.stack.stack_id,
                exc,
            )
            decision.reasons.append(Reason("volume", str(exc)))
    return volumes
