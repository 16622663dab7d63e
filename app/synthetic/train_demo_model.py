"""Train the embedded demo model on synthetic torso phantoms and write it in the nnU-Net v2 results layout.

    python -m app.synthetic.train_demo_model --out models/demo

Deterministic for a given seed, iteration count and thread count on one machine: phantom seeds, contrasts,
fields of view and patches come from one ``numpy.random.Generator``; weights from ``torch.manual_seed``; torch
runs with ``use_deterministic_algorithms(True)`` on a fixed number of threads.

Every training volume is a fresh phantom on a 3 mm grid in the RAS+ canonical frame (what the inference
pipeline sees after ``nib.as_closest_canonical`` and resampling), either rendered there or acquired on a
random axial, coronal or sagittal slice grid and resampled to it as the engine resamples a series
(:func:`acquired_on_model_grid`), with a contrast drawn from
:data:`TRAIN_CONTRASTS` (``random`` gives arbitrary tissue intensities, so the network has to rely on shape;
the realistic ones sometimes pass through a random intensity curve, :func:`curved_contrast`), random bias
field, noise, field of view, intensity scale and integer truncation. The contrasts in
:data:`HELDOUT_CONTRASTS` and the seeds from :data:`EVAL_SEED_BASE` on are never used for training.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from app.synthetic import demo_model as dm
from app.synthetic.acquisition import ACQUISITIONS, Acquisition, acquisition_grid
from operators.canonical_orientation import to_closest_canonical
from operators.glibc_malloc import keep_freed_blocks
from operators.resampling import corner_zoom, image_to_spacing
from operators.volume import LPS_TO_RAS

log = logging.getLogger(__name__)

# "random" three times in seven: 3/7 of the volumes after the curriculum have arbitrary tissue intensities.
# With one in five, the network took the disc for "the band darker than the vertebra" (held-out t2 /
# dixon_opp discs 0.00; 0.54-0.82 with the two intensities swapped). Held-out mean Dice (discs): one in five
# 0.809 (0.27), two in six 0.822 (0.39), three in seven with Adam at 8e-3 0.828 (0.61; gallbladder and
# stomach 0.03 and 0.02 lower).
TRAIN_CONTRASTS = (
    "random",
    "random",
    "random",
    "t1",
    "pd",
    "dixon_water",
    "dixon_fat",
)
HELDOUT_CONTRASTS = ("t2", "dixon_in", "dixon_opp")
# Curriculum: the first CURRICULUM_FRACTION of the iterations render only CURRICULUM_CONTRASTS. With every
# patch in another contrast the network predicts background for the first 600-900 iterations (a third of the
# budget); with one consistent contrast it finds the organs within a few hundred and then learns the other
# contrasts from there. Batch 1, 2600 iterations, same seed: held-out mean Dice 0.47 without, 0.69 with.
CURRICULUM_CONTRASTS = ("t1",)
CURRICULUM_FRACTION = 0.2
TRAIN_SEED_RANGE = (0, 500_000)
EVAL_SEED_BASE = 900_000  # evaluation phantoms use seeds from here on; training never draws them

# 15000 iterations (12000 on the early patches): held-out mean Dice 0.901, every structure >= 0.80, in 1841 s on
# this 2-core CPU (2026-12-03 evening, quiet host, cold compile cache; 2139 s before the byte-identical speed-ups
# of that evening): OVER the 30-minute budget by 41 s. 9500 iterations, 1463 s: 0.883; wider patches or a finer
# grid in the same steps did not help (app/synthetic/demo_model.py), more steps did.
DEFAULT_ITERATIONS = 15000
DEFAULT_SEED = 20261124
# Batch 2, not 1: at batch 1 PyTorch's CPU convolution takes its slow im2col path (slow_conv3d) for every
# layer below full resolution (N*C*D*H <= 20480), at batch 2 oneDNN throughout: 0.44 s per sample instead of
# 0.61. Held-out mean Dice 0.70 in 1537 s at Adam 2e-3 (batch 1, 2600 iterations: 0.69 in 1851 s).
# 9500 iterations (7600 on the small early patches; the default until 2026-12-03): 1281-1361 s on this 2-core
# CPU at its usual speed (1414-1463 s with acquired volumes, ACQUISITION_PROBABILITY) with
# the one-convolution decoder (N_CONV_PER_STAGE*), channels-last convolutions, network and loss compiled in
# their training form (COMPILE_NETWORK) and bfloat16 convolutions (BFLOAT16_CONVOLUTIONS).
BATCH_SIZE = 2
# Progressive patch size: the first EARLY_FRACTION of the iterations train on smaller patches (None = off);
# the network is fully convolutional. A step on 32x48x48 costs 0.23-0.41x one on 48x64x64 in three
# side-by-side runs of `bench/demo_training_step.py`, about half in the training runs (rendering included, see
# below). Held-out mean Dice 0.809 with them (3000 iterations, 1515 s); 0.798 without (2200 iterations,
# 1423 s), but that run also had intensity curves at 0.5, so the comparison is not clean. The network is
# under-trained (the same recipe for 6000 iterations, 3791 s, over the budget: 0.884), so steps count: 4400
# iterations, 80 % of them early, reach 0.847 in 1689 s where 3000 with 40 % early reached 0.828 in 1607 s
# (an early step measured 0.27-0.34 s with rendering, a full one 0.6-0.67 s, in these runs; compiled, see
# COMPILE_NETWORK, 0.20-0.23 s and 0.41-0.46 s; in the training form 0.14-0.16 s and 0.34-0.38 s).
EARLY_PATCH_SIZE: tuple[int, int, int] | None = (32, 48, 48)
# 0.85 (2026-12-03 evening, otherwise the documented command): held-out mean Dice 0.898 instead of 0.901,
# in 1838 s on a host 10 % slower that evening (the identical first 12000 steps took 1206 s instead of 1089).
EARLY_FRACTION = 0.8
POOL_SIZE = 12  # rendered volumes kept for patch sampling
# Iterations between two freshly rendered volumes (24 patches per volume). A render costs 0.62 s on one core,
# a full step 0.56 s on two: every 4 iterations, rendering was a fifth of the wall time; with mostly early
# steps (about half as long) 12 keeps it near a tenth. Rendering ahead on a background thread at the lowest
# priority (torch's two threads leave part of the two cores idle) took 2-8 % off the wall time: not kept.
# (2026-12-02: a render 0.42 s, an early step 0.14-0.16 s with it, so rendering is about a fifth of an early
# step again; the process keeps 1.8-1.9 cores busy, so a background thread has little idle time to fill.)
# 2026-12-03, with the 16-feature network in bfloat16: a render 0.24 s, an early step 0.105 s without it, so
# every 12 iterations rendering was 16 % of an early step; every 24 it is 9 %, and a run of 9500 iterations
# still renders about 400 phantoms (48 patches each).
# 2026-12-03 evening: rendering the next volume on a thread during the step before it (the generator's draws in
# the same order, weights byte-identical) made 600-iteration runs slower, 85-92 s against 81-83 s: the step
# keeps both cores busy. Classifying the anatomy in blocks on two threads (phantom._classify_grid) took a
# render from 0.45-0.51 s to 0.26-0.27 s instead (with KEEP_FREED_BLOCKS; 40 volumes, same SHA-256).
RENDER_EVERY = 24
# After the curriculum, a realistic training contrast has its tissue intensities passed through a random
# curve with this probability, so that tissue orderings all training contrasts share are not taken for
# anatomy: the disc is never brighter than the vertebra in t1, pd, dixon_water or dixon_fat, but is in t2 and
# dixon_opp. Held-out intervertebral disc Dice 0.27 without, 0.55 with (mean 0.785 -> 0.803) in one run; three
# later runs with curves (at 0.3 and 0.5) got 0.27-0.33 again, so the discs still depend on the draw.
CURVE_PROBABILITY = 0.3
CURVE_KNOTS = 5
# A "random" training contrast has each tissue, with this probability, take another tissue's intensity
# (coincident_contrast). In held-out contrasts neighbours can be nearly iso-intense (t2: kidney 0.62 and
# stomach 0.75 against fat 0.70), which independent random intensities almost never are: held-out t2 kidneys
# 0.73-0.86 and stomach 0.76-0.80 with the 16-feature network before. With it (9500 iterations, otherwise the
# same command): held-out mean Dice 0.886 -> 0.888, kidneys 0.84/0.82 -> 0.85/0.84, stomach 0.85 -> 0.87.
COINCIDENCE_PROBABILITY = 0.25
# With this probability a training volume is not rendered on the 3 mm grid but acquired like a clinical
# series and resampled as the engine resamples one (acquired_on_model_grid). The renderer blurs and textures
# per voxel, so a 4-5 mm slice stack interpolated to 3 mm looks unlike a volume rendered at 3 mm: the same
# held-out phantoms scored 0.927 (t1), 0.905 (t2) and 0.908 (dixon_opp) rendered on the model grid, but
# 0.909, 0.893 and 0.894 on that grid when acquired axially or coronally and resampled (2026-12-03).
# Held-out mean Dice (9 cases) with it at 0.5: 0.883, every structure at 0.80 or above for the first time
# (discs 0.766 -> 0.834, min 0.53 -> 0.78; kidneys 0.85/0.84 -> 0.82/0.83, stomach 0.87 -> 0.86); at 0.3:
# 0.882 (discs 0.815); without: 0.888 with the discs at 0.766. An acquired volume costs about 1.2 s to
# render and resample against 0.23 s, so training takes about 1460 s instead of 1280.
ACQUISITION_PROBABILITY = 0.5
ACQUISITION_PLANES = tuple((a.row, a.col) for a in ACQUISITIONS)  # axial, coronal, sagittal slice planes
ACQUISITION_PIXEL_MM = (1.2, 2.0)  # in-plane pixel size
ACQUISITION_SLICE_MM = (3.0, 6.0)  # slice spacing
MARGIN_PROBABILITY = 0.7  # per uncropped side of the field of view: air added beyond the body ...
MARGIN_MM = 30.0  # ... at most this much (see field_of_view)
FOREGROUND_FRACTION = 0.6  # patches centred on a voxel of a randomly chosen structure
NOISE_RANGE = (0.005, 0.06)  # Rician noise sigma relative to the brightest tissue
# Adam at 1.2e-2 with poly decay. Before the curriculum and the prior-initialised heads, SGD with nnU-Net's
# momentum 0.99 and Adam at >= 3e-3 settled on "background everywhere"; with both, at batch 2, held-out mean
# Dice rose with the rate: 0.70 at 2e-3, 0.74 at 3e-3 (1500 iterations), 0.772 at 3e-3 and 0.785 at 5e-3
# (1900 iterations of the one-convolution decoder). Since then the rate has not been separated from the other
# changes: 7e-3 with the intensity curves gave 0.757 against 0.803 at 5e-3, 8e-3 came with the third "random"
# above (0.828 against 0.822 at 5e-3 with two), and 1.2e-2 with the compiled network's 5600 iterations in the
# time of 4400 (0.864 against 0.847 at 8e-3; 1.5e-2 gained nothing).
LEARNING_RATE = 1.2e-2
WARMUP_ITERATIONS = 30
# torch.compile (inductor) the training network: it fuses instance norm, LeakyReLU and the channels-last
# conversions that eager mode runs as separate passes. Side by side with eager (alternating steps in one
# process) a step took 0.90-0.91x as long on both patch sizes; in the training runs an early step fell from
# 0.27-0.34 s to 0.20-0.23 s and a full one from 0.60-0.67 s to 0.41-0.46 s (rendering included), after
# about 40 s of compilation (two graphs, one per patch size). Since 2026-12-02 the graph holds the network in
# its training form and the loss too (training_network.compiled_loss): side by side in one process
# (`bench/demo_training_step.py`) a step costs 0.66x (48x64x64) and 0.75x (32x48x48) the compiled network
# with the loss outside, and in the training run an early step took 0.14-0.16 s and a full one 0.34-0.38 s.
# Needs a C++ compiler. Compiled and eager steps round differently, so the committed weights need it on
# (``--no-compile`` off).
COMPILE_NETWORK = True
# Convolutions in bfloat16 (CPU autocast; oneDNN uses the AVX512-BF16 instructions of this host's Zen 4
# cores); norms, loss, parameters and gradients in float32 (training_network.training_form). Measured
# 2026-12-02: a step of the 16-feature full-resolution network 0.70x (32x48x48) and 0.76x (48x64x64) as long
# as in float32, side by side. The committed weights were trained with it. A CPU without native bfloat16
# (bfloat16_is_native; e.g. the Zen 3 EPYC hosts of 2026-12-06: AVX2, no AVX-512) has oneDNN emulate it, and
# there a step took about 16 s instead of 0.1-0.2 s (a 30-iteration run: 20 steps in 413 s), so `--precision
# auto` (the default, training_precision) trains such a CPU in float32; its weights differ from the committed
# ones, as they would anyway (oneDNN's kernels, hence the rounding, depend on the instruction set). In float32
# there the documented command took 6476 s (2026-12-06/07, 3.6x the 30-minute budget) and reached the same
# held-out Dice (mean 0.901, every structure >= 0.80; models/demo/README.md): the 30-minute figure holds only
# on a bfloat16 host.
BFLOAT16_CONVOLUTIONS = True
PRECISIONS = ("auto", "bfloat16", "float32")
# Keep freed blocks in glibc's heap (operators.glibc_malloc): every step allocates and frees the same
# activations, and glibc otherwise maps and page-faults the large ones in anew each time. In the full run
# (2026-12-03) the last 2000 steps (48x64x64) took 873 CPU-seconds instead of 1087, the early ones the same;
# the weights are byte-identical with it (allocation does not change arithmetic).
KEEP_FREED_BLOCKS = True


class TrainingError(dm.DemoModelError):
    """Training cannot start or its output cannot be written."""


@dataclass
class TrainingVolume:
    image: np.ndarray  # float32 [z, y, x], z-scored over the non-zero bounding box, cropped to it
    labels: np.ndarray  # uint8 [z, y, x], model class indices
    class_voxels: dict[int, np.ndarray]  # model index -> flat indices of its voxels
    raw_foreground: np.ndarray  # a sample of raw foreground intensities (for the plans fingerprint)


def zscore_nonzero_crop(image_zyx: np.ndarray) -> tuple[np.ndarray, tuple[slice, slice, slice]]:
    """What nnU-Net (and the engine) do before the network: crop to the bounding box of the non-zero voxels,
    then ``ZScoreNormalization`` without mask, (x - mean) / max(std, 1e-8) over that crop."""
    box = ndimage.find_objects((image_zyx != 0).astype(np.uint8))
    if not box or box[0] is None:
        raise TrainingError("a rendered training image is entirely zero")
    crop = image_zyx[box[0]].astype(np.float32)
    return (crop - float(crop.mean())) / max(float(crop.std()), 1e-8), box[0]


def _extent_bounds(extent_lps) -> tuple[np.ndarray, np.ndarray]:
    """(min corner, max corner) in LPS mm from the phantom's ``extent_lps``."""
    ext = np.asarray(extent_lps, dtype=np.float64)
    if ext.shape == (2, 3):
        return ext.min(axis=0), ext.max(axis=0)
    if ext.shape == (3, 2):
        return ext.min(axis=1), ext.max(axis=1)
    raise TrainingError(f"phantom extent_lps has unexpected shape {ext.shape}; expected (2, 3) or (3, 2)")


def canonical_grid(lo: np.ndarray, hi: np.ndarray, spacing: float, offset: np.ndarray):
    """Shape and LPS affine of a RAS+ voxel grid (i -> right, j -> anterior, k -> superior) over a box."""
    shape = tuple(int(np.ceil((b - a) / spacing)) + 1 for a, b in zip(lo, hi, strict=True))
    affine = np.diag([-spacing, -spacing, spacing, 1.0])
    # RAS+ voxel 0 is the right-most, anterior-most, lowest corner: largest LPS x and y, smallest LPS z.
    affine[:3, 3] = [hi[0] - offset[0], hi[1] - offset[1], lo[2] + offset[2]]
    return shape, affine


def curved_contrast(contrast, rng: np.random.Generator):
    """``contrast`` with every tissue intensity v replaced by f(v), f a random piecewise-linear curve through
    CURVE_KNOTS equally spaced knots over [0, max v] with f(0) = 0 (air stays black) and the other knot values
    uniform in [0.05, 1]: tissues of equal intensity stay equal, their order changes where f is not monotone."""
    values = np.asarray(contrast.intensities, dtype=np.float64)
    knots_x = np.linspace(0.0, float(values.max()), CURVE_KNOTS)
    knots_y = np.concatenate([[0.0], rng.uniform(0.05, 1.0, CURVE_KNOTS - 1)])
    return replace(contrast, intensities=tuple(float(v) for v in np.interp(values, knots_x, knots_y)))


def coincident_contrast(contrast, rng: np.random.Generator):
    """``contrast`` with every non-air tissue, with probability COINCIDENCE_PROBABILITY, given the intensity
    of another randomly chosen non-air tissue, so that neighbouring structures are sometimes iso-intense and
    only their shape tells them apart."""
    values = list(contrast.intensities)
    tissues = [i for i, v in enumerate(values) if v > 0]
    for i in tissues:
        if rng.random() < COINCIDENCE_PROBABILITY:
            values[i] = values[tissues[int(rng.integers(len(tissues)))]]
    return replace(contrast, intensities=tuple(values))


def field_of_view(lo: np.ndarray, hi: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random training field of view (min and max corner, LPS mm) over the body's box ``[lo, hi]``: partial
    z coverage (slabs) and occasionally clipped body edges in x/y; each side left uncropped gets, with
    MARGIN_PROBABILITY, up to MARGIN_MM of air beyond the body, as an acquisition's field of view has.
    Without that air the network never saw where the body ends, and at the top of a held-out study (12 mm of
    air) it carried the dark lungs on into the air above them (lung Dice 0.84 on a t1 phantom on the model
    grid, 90 % of the false positives in the air)."""
    size = hi - lo
    new_lo, new_hi = lo.copy(), hi.copy()
    for axis, p_crop, min_frac in ((0, 0.2, 0.75), (1, 0.2, 0.8), (2, 0.3, 0.4)):
        if rng.random() < p_crop:
            frac = rng.uniform(min_frac, 1.0)
            start = rng.uniform(0, 1 - frac)
            new_lo[axis] = lo[axis] + start * size[axis]
            new_hi[axis] = new_lo[axis] + frac * size[axis]
    for axis in range(3):
        if new_lo[axis] == lo[axis] and rng.random() < MARGIN_PROBABILITY:
            new_lo[axis] -= rng.uniform(0.0, MARGIN_MM)
        if new_hi[axis] == hi[axis] and rng.random() < MARGIN_PROBABILITY:
            new_hi[axis] += rng.uniform(0.0, MARGIN_MM)
    return new_lo, new_hi


def _intensity_scale(image: np.ndarray, rng: np.random.Generator) -> float:
    """A factor that puts the image's 99.5th percentile at a random level between 30 and 4000 (log-uniform):
    scanners store very different integer ranges."""
    peak = float(np.percentile(image, 99.5)) or 1.0
    return float(np.exp(rng.uniform(np.log(30.0), np.log(4000.0)))) / peak


def to_model_grid(stored: np.ndarray, affine_lps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An acquired image (LPS voxel-to-mm ``affine_lps``) on the model grid as the engine puts it there:
    reoriented to RAS+ and resampled to the model spacing by the engine's own functions (linear interpolation,
    int32 truncation). Returns the image and the LPS affine of its grid, whose corner voxels sit on the
    acquisition's as ``ndimage.zoom`` places them."""
    canonical = to_closest_canonical(stored, LPS_TO_RAS @ affine_lps)
    target = np.full(3, dm.SPACING_MM)
    model, _ = image_to_spacing(canonical.array, canonical.spacing, target, "int32_truncate")
    zooms = [corner_zoom(n, m) for n, m in zip(canonical.array.shape, model.shape, strict=True)]
    return model, LPS_TO_RAS @ canonical.affine_ras @ np.diag([*zooms, 1.0])


def acquired_on_model_grid(
    phantom_module, phantom, box: tuple[np.ndarray, np.ndarray], contrast, rng: np.random.Generator, bias, noise
) -> tuple[np.ndarray, np.ndarray]:
    """Image and labels on the model grid by way of a random clinical acquisition of the field of view
    ``box``: the phantom rendered on an axial, coronal or sagittal grid (ACQUISITION_PLANES, pixels and slice
    spacing drawn from ACQUISITION_PIXEL_MM and ACQUISITION_SLICE_MM), stored as integers at a random scale,
    then taken to the model grid (:func:`to_model_grid`); the labels are the phantom's at that grid's voxel
    centres."""
    row, col = ACQUISITION_PLANES[int(rng.integers(len(ACQUISITION_PLANES)))]
    pixel = float(rng.uniform(*ACQUISITION_PIXEL_MM))
    spacing = (pixel, pixel, float(rng.uniform(*ACQUISITION_SLICE_MM)))
    shape, affine = acquisition_grid(box, Acquisition("training", row, col, spacing), margin_mm=0.0)
    image, _ = phantom_module.render(phantom, shape, affine, contrast, rng, bias=bias, noise=noise)
    model, model_affine = to_model_grid(np.round(image * _intensity_scale(image, rng)).astype(np.float32), affine)
    return model, phantom.sample_grid(model.shape, model_affine)


def render_training_volume(
    phantom_module,
    rng: np.random.Generator,
    lut: np.ndarray,
    contrasts: Sequence[str] = TRAIN_CONTRASTS,
    curve_probability: float | None = None,
) -> TrainingVolume:
    """One randomized training volume on the canonical 3 mm grid, in one of ``contrasts`` (a realistic one
    passed through a random intensity curve with ``curve_probability``, default CURVE_PROBABILITY)."""
    phantom = phantom_module.TorsoPhantom(int(rng.integers(*TRAIN_SEED_RANGE)))
    new_lo, new_hi = field_of_view(*_extent_bounds(phantom.extent_lps), rng)
    shape, affine = canonical_grid(new_lo, new_hi, dm.SPACING_MM, rng.uniform(0, dm.SPACING_MM, 3))
    name = contrasts[int(rng.integers(len(contrasts)))]
    contrast = phantom_module.contrast(name, rng)
    if curve_probability is None:
        curve_probability = CURVE_PROBABILITY
    if name == "random":
        contrast = coincident_contrast(contrast, rng)
    elif rng.random() < curve_probability:
        contrast = curved_contrast(contrast, rng)
    bias = float(rng.uniform(0.0, 0.5))
    noise = float(rng.uniform(*NOISE_RANGE))
    if rng.random() < ACQUISITION_PROBABILITY:
        image, labels = acquired_on_model_grid(phantom_module, phantom, (new_lo, new_hi), contrast, rng, bias, noise)
    else:
        image, labels = phantom_module.render(phantom, shape, affine, contrast, rng, bias=bias, noise=noise)
        image = np.asarray(image, dtype=np.float32)
        if rng.random() < 0.3:  # partial-volume-like softening, as after resampling from another resolution
            image = ndimage.gaussian_filter(image, rng.uniform(0.3, 1.0, 3)).astype(np.float32)
        image *= _intensity_scale(image, rng)
        if rng.random() < 0.7:  # the inference pipeline truncates resampled intensities to int32
            image = np.trunc(image)
    zyx = np.ascontiguousarray(np.transpose(image, (2, 1, 0)))
    lab_zyx = np.ascontiguousarray(np.transpose(lut[np.asarray(labels)], (2, 1, 0)))
    normalized, box = zscore_nonzero_crop(zyx)
    lab_zyx = lab_zyx[box]
    flat = lab_zyx.ravel()
    order = np.argsort(flat, kind="stable")
    counts = np.bincount(flat, minlength=int(lut.max()) + 1)
    ends = np.cumsum(counts)
    class_voxels = {c: order[ends[c] - counts[c] : ends[c]] for c in range(1, len(counts)) if counts[c] > 0}
    fg = zyx[box][lab_zyx > 0]
    raw_fg = fg[rng.integers(0, fg.size, 2000)] if fg.size else np.zeros(0, np.float32)
    return TrainingVolume(normalized, lab_zyx, class_voxels, raw_fg)


def extract_patch(volume: TrainingVolume, center: np.ndarray, patch: Sequence[int]):
    """A patch around ``center`` with zero image / background label outside the volume."""
    img = np.zeros(patch, dtype=np.float32)
    lab = np.zeros(patch, dtype=np.int64)
    start = np.asarray(center) - np.asarray(patch) // 2
    src, dst = [], []
    for s, p, n in zip(start, patch, volume.image.shape, strict=True):
        a, b = max(s, 0), min(s + p, n)
        if b <= a:
            return img, lab
        src.append(slice(a, b))
        dst.append(slice(a - s, b - s))
    img[tuple(dst)] = volume.image[tuple(src)]
    lab[tuple(dst)] = volume.labels[tuple(src)]
    return img, lab


def sample_patch(volume: TrainingVolume, rng: np.random.Generator, patch: Sequence[int]):
    shape = np.asarray(volume.image.shape)
    if volume.class_voxels and rng.random() < FOREGROUND_FRACTION:
        classes = sorted(volume.class_voxels)
        voxels = volume.class_voxels[classes[int(rng.integers(len(classes)))]]
        center = np.array(np.unravel_index(int(voxels[int(rng.integers(voxels.size))]), shape))
        center = center + rng.integers(-16, 17, 3)  # not always centred on the structure
    else:
        half = np.asarray(patch) // 2
        lo = np.minimum(half, shape // 2)
        hi = np.maximum(shape - half, shape // 2 + 1)
        center = np.array([rng.integers(a, b) for a, b in zip(lo, hi, strict=True)])
    return extract_patch(volume, center, patch)


def init_output_layers(network, pool: list[TrainingVolume], n_classes: int) -> None:
    """Start every segmentation head at the class frequencies of the first volumes (zero weights, bias =
    log prior): He-initialised heads start with confidently wrong logits, and Adam then spends hundreds of
    iterations only undoing them."""
    import torch

    counts = sum(np.bincount(v.labels.ravel(), minlength=n_classes) for v in pool).astype(np.float64) + 1.0
    prior = torch.from_numpy(np.log(counts / counts.sum()).astype(np.float32))
    with torch.no_grad():
        for layer in network.decoder.seg_layers:
            layer.weight.zero_()
            layer.bias.copy_(prior)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _intensity_properties(samples: np.ndarray) -> dict[str, float]:
    if samples.size == 0:
        samples = np.zeros(1, np.float32)
    return {
        "max": float(samples.max()),
        "mean": float(samples.mean()),
        "median": float(np.median(samples)),
        "min": float(samples.min()),
        "percentile_00_5": float(np.percentile(samples, 0.5)),
        "percentile_99_5": float(np.percentile(samples, 99.5)),
        "std": float(samples.std()),
    }


def _early_patch_sentence() -> str:
    if EARLY_PATCH_SIZE is None or EARLY_FRACTION <= 0:
        return f"Patches {list(dm.PATCH_SIZE)} throughout."
    return (
        f"Patches {list(EARLY_PATCH_SIZE)} for the first {EARLY_FRACTION:.0%} of the iterations, "
        f"{list(dm.PATCH_SIZE)} afterwards."
    )


def _compile_sentence(compiled: bool) -> str:
    if compiled:
        return (
            "the network in its training form and the loss compiled together with `torch.compile` "
            "(`app/synthetic/training_network.py`; inductor, needs a C++ compiler)"
        )
    return "the network run eagerly (`--no-compile`)"


def _precision_sentence(bfloat16: bool) -> str:
    if bfloat16:
        return (
            "convolutions in bfloat16 (CPU autocast; norms, loss, parameters and gradients in float32, the "
            "deepest encoder stage in float32)"
        )
    return "float32 throughout"


def _contrast_shares() -> str:
    counts = Counter(TRAIN_CONTRASTS)
    return ", ".join(f"{name} {n}/{len(TRAIN_CONTRASTS)}" for name, n in sorted(counts.items()))


def _readme(classes, command: str, args, stats: dict, sums: dict[str, str]) -> str:
    rows = "\n".join(f"| {c.index} | {c.label} | {c.name} |" for c in classes)
    sum_lines = "\n".join(f"{digest}  {name}" for name, digest in sums.items())
    return f"""# Demo model (synthetic phantoms only; not for clinical use)

A small nnU-Net v2 model in the exact results layout of nnU-Net 2.8.1
(`{dm.DATASET_NAME}/{dm.MODEL_SUBFOLDER}/{{dataset.json, plans.json, fold_0/{dm.CHECKPOINT_NAME}}}`), trained
only on the procedural torso phantoms of `app/synthetic/phantom.py`. It stands in for the TotalSegmentator MR
weights where those cannot be downloaded. It knows nothing about real anatomy.

- Input: one MR channel, RAS+ canonical (`nib.as_closest_canonical`), resampled to {dm.SPACING_MM:g} mm
  isotropic, array in SimpleITK order `[z, y, x]`, z-scored over the non-zero bounding box
  (`ZScoreNormalization`, no mask); patch {list(dm.PATCH_SIZE)}; no mirroring.
- Network: `PlainConvUNet`, {len(dm.FEATURES_PER_STAGE)} stages, features {list(dm.FEATURES_PER_STAGE)},
  convolutions per stage {list(dm.N_CONV_PER_STAGE)} (encoder) and {list(dm.N_CONV_PER_STAGE_DECODER)}
  (decoder), InstanceNorm3d (affine), LeakyReLU; {stats["parameters"]:,} parameters.

## Model class index -> TotalSegmentator MR label

| model index | final label | name |
|---|---|---|
| 0 | 0 | background |
{rows}

## Training

Command (run from the repository root):

    {command}

Seed {args.seed}, {args.iterations} iterations of batch {BATCH_SIZE}, {args.threads} torch threads,
{_compile_sentence(args.compiled)}, {_precision_sentence(args.bfloat16)};
Adam at {LEARNING_RATE:g} with poly decay. Training contrasts, the share of volumes each:
{_contrast_shares()} (the first {CURRICULUM_FRACTION:.0%} of the iterations: {", ".join(CURRICULUM_CONTRASTS)}
only; afterwards a realistic contrast has its tissue intensities passed through a random piecewise-linear
curve with probability {CURVE_PROBABILITY:g}, and in a "random" one each tissue takes another's intensity
with probability {COINCIDENCE_PROBABILITY:g}); held out for evaluation:
{", ".join(HELDOUT_CONTRASTS)} and phantom seeds >= {EVAL_SEED_BASE}. Fields of view: random slabs and clipped
body edges, and on each uncropped side, with probability {MARGIN_PROBABILITY:g}, up to {MARGIN_MM:g} mm of air
beyond the body. With probability {ACQUISITION_PROBABILITY:g} a volume is acquired on a random axial, coronal
or sagittal slice grid (pixels {ACQUISITION_PIXEL_MM[0]:g}-{ACQUISITION_PIXEL_MM[1]:g} mm, slices
{ACQUISITION_SLICE_MM[0]:g}-{ACQUISITION_SLICE_MM[1]:g} mm apart), stored as integers and resampled to
{dm.SPACING_MM:g} mm as the engine resamples a series; otherwise it is rendered on the {dm.SPACING_MM:g} mm grid.
{_early_patch_sentence()}
Measured on the machine that produced the committed weights: wall {stats["wall_s"]:.0f} s,
process CPU {stats["cpu_s"]:.0f} s; final training loss {stats["final_loss"]:.3f}.

Evaluate on held-out phantoms and contrasts (exits non-zero below mean Dice 0.90 or any structure < 0.80):

    python -m app.synthetic.evaluate_demo_model --models models/demo

## Checksums (`sha256sum -c SHA256SUMS` in this folder)

```
{sum_lines}
```
"""


def bfloat16_is_native(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU has bfloat16 arithmetic (AVX512-BF16 or AMX-BF16, as /proc/cpuinfo lists them); where it
    has not, oneDNN emulates the bfloat16 convolutions: the documented training time does not hold, and the
    weights may differ in their last bits from the committed ones."""
    try:
        flags = set(cpuinfo.read_text().split())
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def training_precision(precision: str, native: bool | None = None) -> bool:
    """Whether the training convolutions run in bfloat16 for ``precision`` (one of :data:`PRECISIONS`).
    ``auto`` follows the committed recipe (BFLOAT16_CONVOLUTIONS) where this CPU has native bfloat16 and
    trains in float32 where oneDNN would emulate it (two orders of magnitude slower per step)."""
    if precision not in PRECISIONS:
        raise TrainingError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "float32":
        return False
    native = bfloat16_is_native() if native is None else native
    if precision == "bfloat16":
        if not native:
            log.warning(
                "this CPU has no native bfloat16 (avx512_bf16 / amx_bf16): oneDNN emulates the bfloat16 "
                "training convolutions, about 100x slower per step than with them (use --precision auto)"
            )
        return True
    if BFLOAT16_CONVOLUTIONS and not native:
        log.warning(
            "this CPU has no native bfloat16 (avx512_bf16 / amx_bf16): training the convolutions in float32 "
            "instead of the committed recipe's bfloat16, so the weights will differ from the committed ones "
            "and the documented training time does not apply"
        )
    return BFLOAT16_CONVOLUTIONS and native


def require_cxx_compiler() -> None:
    """Fail before training, not at the first compiled step with inductor's traceback, when the C++ compiler
    torch.compile uses on Linux ($CXX, else g++) is missing."""
    from operators.compiled_network import cxx_compiler, cxx_compiler_name

    compiler = cxx_compiler_name()
    if cxx_compiler() is None:
        raise TrainingError(
            f"torch.compile needs a C++ compiler and {compiler!r} is not on PATH: install g++ "
            "(`make setup-test` does) or train with --no-compile (eager steps; the weights then differ from "
            "the committed ones)"
        )


def train(
    out: Path,
    iterations: int,
    seed: int,
    threads: int,
    log_every: int,
    command: str,
    compile_network: bool | None = None,
    precision: str = "auto",
) -> Path:
    """Train and write the model folder under ``out`` atomically; returns the model subfolder.
    ``compile_network`` defaults to COMPILE_NETWORK; ``precision`` is resolved by :func:`training_precision`."""
    import torch

    from app.synthetic import phantom as phantom_module
    from app.synthetic.training_network import compiled_loss, training_form

    if compile_network is None:
        compile_network = COMPILE_NETWORK
    if compile_network:
        require_cxx_compiler()
    bfloat16 = training_precision(precision)
    if KEEP_FREED_BLOCKS:
        keep_freed_blocks()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(seed)

    classes = dm.model_label_map(dict(phantom_module.LABELS))
    lut = np.zeros(256, dtype=np.uint8)
    for c in classes:
        lut[c.label] = c.index
    n_classes = len(classes) + 1
    plans_stub = dm.build_plans((1, 1, 1), _intensity_properties(np.zeros(1)))
    network = dm.build_network(plans_stub, n_classes, deep_supervision=True)
    if hasattr(network, "initialize"):
        network.apply(network.initialize)
    # Channels-last: oneDNN convolves NDHWC without reordering every tensor (a step 0.77x as long).
    network = network.to(memory_format=torch.channels_last_3d)
    # foreach: one call per step for all parameters instead of one per tensor; the same arithmetic (parameters
    # byte-identical after 200 steps side by side), a little less Python per step.
    optimizer = torch.optim.Adam(network.parameters(), lr=LEARNING_RATE, foreach=True)
    n_params = sum(p.numel() for p in network.parameters())
    log.info(
        "training %d classes, %d parameters, %d iterations, convolutions in %s",
        n_classes,
        n_params,
        iterations,
        "bfloat16" if bfloat16 else "float32",
    )

    wall0, cpu0 = time.perf_counter(), time.process_time()
    shapes: list[tuple[int, ...]] = []  # of every rendered volume, for the plans fingerprint
    fg_samples: list[np.ndarray] = []
    losses: list[float] = []

    def render(iteration: int) -> TrainingVolume:
        early = iteration < CURRICULUM_FRACTION * iterations
        if early:  # one consistent contrast, no intensity curves
            vol = render_training_volume(phantom_module, rng, lut, CURRICULUM_CONTRASTS, curve_probability=0.0)
        else:
            vol = render_training_volume(phantom_module, rng, lut, TRAIN_CONTRASTS)
        shapes.append(vol.image.shape)
        fg_samples.append(vol.raw_foreground)
        return vol

    pool = [render(0) for _ in range(POOL_SIZE)]
    init_output_layers(network, pool, n_classes)
    network.train()
    # The network in its training form (its instance norms computed as inductor vectorises them; nnU-Net's
    # modules are back for saving after the block), network and loss in one static graph per patch size
    # sharing the parameters, so ``network`` is what is saved.
    with training_form(network, bfloat16=bfloat16) as trained:
        step_loss = compiled_loss(trained, n_classes, compile_network)
        for it in range(iterations):
            # Replace the oldest pooled volume every RENDER_EVERY iterations: a volume serves several patches.
            if it > 0 and it % RENDER_EVERY == 0:
                pool = [*pool[1:], render(it)]
            picks = rng.choice(len(pool), size=BATCH_SIZE, replace=False)
            early = EARLY_PATCH_SIZE is not None and it < EARLY_FRACTION * iterations
            patch_size = EARLY_PATCH_SIZE if early else dm.PATCH_SIZE
            patches = [sample_patch(pool[int(p)], rng, patch_size) for p in picks]
            x = torch.from_numpy(np.stack([p[0] for p in patches]))[:, None]
            x = x.contiguous(memory_format=torch.channels_last_3d)
            y = torch.from_numpy(np.stack([p[1] for p in patches]))
            lr = LEARNING_RATE * min(1.0, (it + 1) / WARMUP_ITERATIONS) * (1 - it / iterations) ** 0.9
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss = step_loss(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), 12.0, foreach=True)
            optimizer.step()
            losses.append(float(loss.detach()))
            if (it + 1) % log_every == 0 or it + 1 == iterations:
                log.info(
                    "iteration %d/%d loss %.4f (mean of last %d) lr %.2e volumes %d wall %.0f s cpu %.0f s",
                    it + 1,
                    iterations,
                    float(np.mean(losses[-log_every:])),
                    log_every,
                    lr,
                    len(shapes),
                    time.perf_counter() - wall0,
                    time.process_time() - cpu0,
                )
    stats = {
        "wall_s": time.perf_counter() - wall0,
        "cpu_s": time.process_time() - cpu0,
        "final_loss": float(np.mean(losses[-min(50, len(losses)) :])),
        "parameters": n_params,
    }
    median_shape = tuple(int(v) for v in np.median(np.array(shapes), axis=0))
    plans = dm.build_plans(median_shape, _intensity_properties(np.concatenate(fg_samples)))
    dataset_json = dm.build_dataset_json(classes, num_training=len(shapes))
    network.decoder.deep_supervision = False  # inference returns only the full-resolution output
    network = network.to(memory_format=torch.contiguous_format)
    network.eval()
    return _write_model(
        out, network, plans, dataset_json, classes, iterations, stats, command, seed, threads, compile_network, bfloat16
    )


def _write_model(
    out, network, plans, dataset_json, classes, iterations, stats, command, seed, threads, compiled, bfloat16
) -> Path:
    import torch

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        folder = dm.model_folder(tmp)
        (folder / f"fold_{dm.FOLD}").mkdir(parents=True)
        (folder / "plans.json").write_text(json.dumps(plans, indent=4, sort_keys=False) + "\n")
        (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=4, sort_keys=False) + "\n")
        checkpoint = {
            "network_weights": network.state_dict(),
            "optimizer_state": None,
            "grad_scaler_state": None,
            "logging": None,
            "_best_ema": None,
            "current_epoch": 1,
            "init_args": {
                "plans": plans,
                "configuration": dm.CONFIGURATION,
                "fold": dm.FOLD,
                "dataset_json": dataset_json,
                "device": "cpu",
            },
            "trainer_name": dm.TRAINER_NAME,
            "inference_allowed_mirroring_axes": None,
        }
        torch.save(checkpoint, folder / f"fold_{dm.FOLD}" / dm.CHECKPOINT_NAME)
        rel = [
            f"{dm.DATASET_NAME}/{dm.MODEL_SUBFOLDER}/dataset.json",
            f"{dm.DATASET_NAME}/{dm.MODEL_SUBFOLDER}/plans.json",
            f"{dm.DATASET_NAME}/{dm.MODEL_SUBFOLDER}/fold_{dm.FOLD}/{dm.CHECKPOINT_NAME}",
        ]
        sums = {name: sha256_of(tmp / name) for name in rel}
        (tmp / "SHA256SUMS").write_text("".join(f"{d}  {n}\n" for n, d in sums.items()))
        args = argparse.Namespace(
            seed=seed, iterations=iterations, threads=threads, compiled=compiled, bfloat16=bfloat16
        )
        (tmp / "README.md").write_text(_readme(classes, command, args, stats, sums))
        os.chmod(tmp, 0o755)
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %s (wall %.0f s, cpu %.0f s)", out, stats["wall_s"], stats["cpu_s"])
    return dm.model_folder(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models/demo"), help="models root to (re)write")
    parser.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (results depend on it)")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument(
        "--no-compile",
        action="store_true",
        help="eager training steps (no C++ compiler needed; slower, and the weights differ)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="training convolutions: bfloat16 as the committed weights were trained where the CPU has it "
        "natively, float32 elsewhere (auto, the default), or either one forced",
    )
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.iterations < 1 or args.threads < 1 or args.log_every < 1:
        parser.error("--iterations, --threads and --log-every must be positive")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    command = "python -m app.synthetic.train_demo_model " + " ".join(
        [
            f"--out {args.out}",
            f"--iterations {args.iterations}",
            f"--seed {args.seed}",
            f"--threads {args.threads}",
            *(["--no-compile"] if args.no_compile else []),
            *([f"--precision {args.precision}"] if args.precision != "auto" else []),
        ]
    )
    try:
        train(
            args.out,
            args.iterations,
            args.seed,
            args.threads,
            args.log_every,
            command,
            not args.no_compile,
            args.precision,
        )
    except TrainingError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
