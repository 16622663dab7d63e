"""Sliding-window prediction with Gaussian importance weighting, accumulated slab by slab.

Tiling follows nnU-Net v2: an image smaller than the patch is zero-padded symmetrically (the extra voxel
after), tile starts along each axis are ``round(i * (size - patch) / (n - 1))`` with
``n = ceil((size - patch) / (patch * step)) + 1``, tiles are visited with axis 0 outermost, each tile's
logits are multiplied by a Gaussian importance map (sigma = patch / 8, peak 10) and summed, and the class is
the argmax of the summed logits divided by the summed weights.

The Gaussian map takes nnU-Net's values exactly: computed in float64, rounded to float16 and its
underflowed corners set to the smallest non-zero weight, as ``nnUNetPredictor`` does; an exact float32
Gaussian moves argmax decisions near tile borders. By default the weighted logits and the weights are summed
in float16, in nnU-Net's order, divided in float16 and the argmax taken on that, as nnU-Net 2.8 does: with
float32 sums, near-ties that float16 rounding turns into exact ties (won by the lower class index) go the
other way, which on weakly trained or random networks costs up to ~0.4 % Dice against the official tool.
``accumulate_dtype=torch.float32`` is available for models whose logits could overflow float16. How tiles are
weighted, summed and decided is a :class:`WindowArithmetic`: :class:`EagerArithmetic` here, the same bits
compiled for the CPU in :mod:`operators.window_kernels`.

Memory stays bounded on large images: tile starts along axis 0 only increase, so once the tiles of one
axis-0 position are summed, every voxel before the next position is final. Those voxels are turned into
labels as soon as they are final; when the whole-image accumulator would exceed
:data:`FULL_ACCUMULATOR_BYTES`, they are also dropped, so the accumulator holds about ``patch[0] + step`` rows
of axis 0 instead of the whole volume (for total_mr: 30 classes x ~230 x Y x Z floats instead of
30 x X x Y x Z). Small images keep the whole accumulator and so skip moving the unfinished rows.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

logger = logging.getLogger(__name__)

# Largest whole-image accumulator (logits and weights); larger images accumulate in rolling slabs. The demo
# model's 19 x 112 x 84 x 107 float16 sums take 38 MB, total_mr's 30 classes on a 300^3 grid 1.7 GB.
FULL_ACCUMULATOR_BYTES = 256 * 2**20


@lru_cache(maxsize=4)
def gaussian_importance_map(patch_size: tuple[int, ...]) -> np.ndarray:
    """nnU-Net's Gaussian tile weights (float16 values, zero-free), returned as float32."""
    impulse = np.zeros(patch_size, dtype=np.float64)
    impulse[tuple(p // 2 for p in patch_size)] = 1.0
    blurred = gaussian_filter(impulse, [p / 8.0 for p in patch_size], 0, mode="constant", cval=0)
    blurred = blurred / (blurred.max() / 10.0)
    half = blurred.astype(np.float16)
    if np.any(half == 0):
        half[half == 0] = half[half != 0].min()
    return half.astype(np.float32)


def tile_starts(image_size: tuple[int, ...], patch_size: tuple[int, ...], step: float) -> list[list[int]]:
    """Start index of every tile along each axis (the image is at least as large as the patch)."""
    starts = []
    for size, patch in zip(image_size, patch_size, strict=True):
        if size < patch:
            raise ValueError(f"image size {size} is smaller than the patch {patch}; pad first")
        n = int(math.ceil((size - patch) / (patch * step))) + 1
        gap = (size - patch) / (n - 1) if n > 1 else 0.0
        starts.append([int(round(gap * i)) for i in range(n)])
    return starts


def padding_for(image_size: tuple[int, ...], patch_size: tuple[int, ...]) -> list[tuple[int, int]]:
    """(before, after) zero padding per axis that makes the image at least patch-sized, centred."""
    pads = []
    for size, patch in zip(image_size, patch_size, strict=True):
        missing = max(0, patch - size)
        pads.append((missing // 2, missing - missing // 2))
    return pads


def weighted_argmax(summed: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``torch.argmax(summed / weights, 0)`` as uint8, the quotient rounded to ``summed``'s dtype as nnU-Net
    divides, but computed one class at a time with a running maximum. On the demo model's 19 x 112 x 84 x 107
    float16 accumulator (2-core CPU) the division, finiteness check and strided argmax over the class axis
    took 0.25 s, this loop 0.06 s; the whole engine run is about 1.6 s. Ties go to the lower class index, as
    with ``argmax``.

    Raises ``FloatingPointError`` when a voxel's winning value is not finite (an overflowed accumulator):
    ``torch.maximum`` propagates NaN, and a winner of +/-inf cannot be trusted; an overflowed losing class
    (-inf) does not change the label.
    """
    best = torch.div(summed[0], weights).float()
    winner = torch.zeros(best.shape, dtype=torch.uint8, device=best.device)
    for index in range(1, summed.shape[0]):
        value = torch.div(summed[index], weights).float()
        winner.masked_fill_(value > best, index)
        torch.maximum(best, value, out=best)
    if not torch.isfinite(best).all():
        raise FloatingPointError(
            f"non-finite logits in the {summed.dtype} accumulator; use accumulate_dtype=torch.float32"
        )
    return winner


class WindowArithmetic(Protocol):
    """How :func:`predict_labels` weights, sums and decides."""

    def accumulate(
        self, summed: torch.Tensor, logits: torch.Tensor, gaussian: torch.Tensor, corner: tuple[int, ...]
    ) -> None:
        """Add ``logits * gaussian`` (one tile, ``[classes, *patch]``) in place into the accumulator ``summed``
        (``[classes, *grid]``) at the tile's ``corner``, rounded once to ``summed``'s dtype. ``logits`` may be
        overwritten."""

    def argmax(self, summed: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """uint8 class index of ``summed / weights`` (ties to the lower index); ``FloatingPointError`` when a
        winning value is not finite."""


def tile_region(corner: tuple[int, ...], patch_size: tuple[int, ...]) -> tuple[slice, ...]:
    """The accumulator index of a tile, class axis first."""
    return (slice(None), *(slice(c, c + p) for c, p in zip(corner, patch_size, strict=True)))


class EagerArithmetic:
    """Eager torch: nnUNetPredictor's own operations (``prediction *= gaussian``, ``predicted_logits[sl] +=
    prediction``) and :func:`weighted_argmax`."""

    def accumulate(
        self, summed: torch.Tensor, logits: torch.Tensor, gaussian: torch.Tensor, corner: tuple[int, ...]
    ) -> None:
        if torch.promote_types(logits.dtype, gaussian.dtype) == logits.dtype:
            # In place on the network's own output, as nnUNetPredictor weights its prediction: the same
            # rounding, without a second logits-sized buffer.
            logits.mul_(gaussian)
        else:  # float16 logits into a float32 accumulator: the product stays float32 (no overflow)
            logits = logits * gaussian
        summed[tile_region(corner, tuple(logits.shape[1:]))] += logits

    def argmax(self, summed: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return weighted_argmax(summed, weights)


@dataclass
class WindowStats:
    """What one sliding-window run did, for timing reports."""

    tiles: int = 0
    forward_seconds: float = 0.0
    total_seconds: float = 0.0
    batch_size: int = 1
    accumulator_device: str = "cpu"
    accumulator_rows: int = 0  # axis-0 rows the accumulator held (the padded image's, or a rolling slab's)
    notes: list[str] = field(default_factory=list)


def _forward(network: torch.nn.Module, batch: torch.Tensor, use_amp: bool) -> torch.Tensor:
    if use_amp:
        with torch.autocast("cuda", dtype=torch.float16):
            return network(batch)  # float16 logits, weighted in float16 as nnUNetPredictor does
    return network(batch)


@torch.inference_mode()
def predict_labels(
    network: torch.nn.Module,
    image: np.ndarray,
    patch_size: tuple[int, int, int],
    num_classes: int,
    step: float,
    device: torch.device,
    batch_size: int = 1,
    accumulate_on_device: bool = True,
    use_amp: bool = False,
    stats: WindowStats | None = None,
    accumulate_dtype: torch.dtype = torch.float16,
    max_accumulator_bytes: int | None = None,
    arithmetic: WindowArithmetic | None = None,
) -> np.ndarray:
    """Argmax labels (uint8, same shape as ``image``) of Gaussian-weighted sliding-window logits.

    ``image`` is the normalised image in network axis order. The network must already be on ``device``.
    The accumulator covers the whole (padded) image when it needs at most ``max_accumulator_bytes`` (default
    :data:`FULL_ACCUMULATOR_BYTES`), otherwise a rolling slab of axis-0 rows; the labels are the same.
    ``arithmetic`` weights, sums and takes the argmax (default :class:`EagerArithmetic`; the compiled kernels
    of :mod:`operators.window_kernels` give the same bits faster on CPU).
    """
    arithmetic = arithmetic or EagerArithmetic()
    stats = stats if stats is not None else WindowStats()
    started = time.perf_counter()
    pads = padding_for(image.shape, patch_size)
    padded = np.pad(image, pads, mode="constant", constant_values=0) if any(sum(p) for p in pads) else image
    shape = padded.shape
    starts = tile_starts(shape, patch_size, step)
    acc_device = device if accumulate_on_device else torch.device("cpu")
    stats.accumulator_device = str(acc_device)
    stats.batch_size = batch_size
    data = torch.from_numpy(np.ascontiguousarray(padded, dtype=np.float32))
    gaussian = torch.from_numpy(gaussian_importance_map(tuple(patch_size))).to(acc_device)
    gaussian_acc = gaussian.to(accumulate_dtype)  # exact: the values are float16 numbers
    p0 = patch_size[0]
    max_gap = max((b - a for a, b in zip(starts[0], starts[0][1:], strict=False)), default=0)
    row_bytes = (num_classes + 1) * math.prod(shape[1:]) * torch.finfo(accumulate_dtype).bits // 8
    # Rows of axis 0 held at once: the whole image when that is small (no rows moved between slabs),
    # otherwise one slab of tiles plus the next step.
    limit = FULL_ACCUMULATOR_BYTES if max_accumulator_bytes is None else max_accumulator_bytes
    span = shape[0] if shape[0] * row_bytes <= limit else min(shape[0], p0 + max_gap)
    stats.accumulator_rows = span
    logits = torch.zeros((num_classes, span, *shape[1:]), dtype=accumulate_dtype, device=acc_device)
    weights = torch.zeros((span, *shape[1:]), dtype=accumulate_dtype, device=acc_device)
    labels = np.zeros(shape, dtype=np.uint8)
    origin = 0  # axis-0 index of accumulator row 0
    done = 0  # axis-0 rows before this one have their labels

    def finalize(upto: int) -> None:
        """Write labels for rows [done, upto): every tile covering them has been added."""
        nonlocal done
        if upto > done:
            rows = slice(done - origin, upto - origin)
            labels[done:upto] = arithmetic.argmax(logits[:, rows], weights[rows]).cpu().numpy()
            done = upto

    def make_room(x: int) -> None:
        """Drop the finished rows when the tiles at axis-0 start ``x`` would run past the accumulator."""
        nonlocal origin
        if x + p0 - origin <= span:
            return
        n = done - origin
        keep = span - n
        if keep > 0:
            logits[:, :keep] = logits[:, n:].clone()
            weights[:keep] = weights[n:].clone()
        logits[:, keep:] = 0
        weights[keep:] = 0
        origin = done

    rolling = span < shape[0]
    for x in starts[0]:
        if rolling:  # a whole-image accumulator takes its argmax once, at the end, in one contiguous pass
            finalize(x)
            make_room(x)
        slab = data[x : x + p0].to(device)
        positions = [(y, z) for y in starts[1] for z in starts[2]]
        for first in range(0, len(positions), batch_size):
            chunk = positions[first : first + batch_size]
            batch = torch.stack([slab[:, y : y + patch_size[1], z : z + patch_size[2]] for y, z in chunk])[
                :, None
            ]
            t0 = time.perf_counter()
            out = _forward(network, batch, use_amp)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            stats.forward_seconds += time.perf_counter() - t0
            out = out.to(acc_device)
            weight = gaussian_acc if out.dtype == torch.float16 else gaussian
            for (y, z), tile in zip(chunk, out, strict=True):
                corner = (x - origin, y, z)
                arithmetic.accumulate(logits, tile, weight, corner)
                weights[tile_region(corner, patch_size)[1:]] += gaussian_acc
            stats.tiles += len(chunk)
    finalize(shape[0])
    stats.total_seconds += time.perf_counter() - started
    unpad = tuple(slice(before, shape[i] - after) for i, (before, after) in enumerate(pads))
    return labels[unpad]
