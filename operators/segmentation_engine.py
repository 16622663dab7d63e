"""The segmentation engine: one image volume in memory -> one label volume on the same voxel grid.

Steps, each reproducing what TotalSegmentator 2.18 + nnU-Net 2.8 do for ``--task total_mr`` (see
``docs/engine.md`` for the decisions and the parity evidence):

1. reorient to the closest RAS+ canonical axis order (``nib.as_closest_canonical`` semantics, in memory);
2. resample to the profile's spacing with linear interpolation and cast to int32 (TotalSegmentator's cast);
3. per model part: put axes in nnU-Net order (SimpleITK ``[z, y, x]``, then the plans' ``transpose_forward``),
   crop to the non-zero bounding box, normalise as the plans say (z-score for MR), run Gaussian-weighted
   sliding-window prediction with the profile's tile step, take the argmax and put it back in the box;
4. map each part's classes to the final labels and merge them (a later part overwrites where it is non-zero);
5. resample the labels to the canonical source shape (nearest neighbour) and undo the reorientation.

Runs on CUDA when available (with autocast float16, as ``nnUNetPredictor`` does there) and on all CPU cores
otherwise; on CPU, with a compile cache folder, through networks compiled ahead of time for this CPU
(:mod:`operators.compiled_network`) and the sliding window's float16 arithmetic compiled with them
(:mod:`operators.window_kernels`, the eager bits). GPU out-of-memory falls back to CPU-side accumulation and
then to CPU inference rather than losing the case.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import TypeVar

import numpy as np
import torch

from operators.canonical_orientation import to_closest_canonical
from operators.compiled_network import CompiledNetworkCache, CompileKey, CompileUnavailableError
from operators.cpu_count import available_cpu_count
from operators.errors import InputError, TotalSegMRIError
from operators.model_profile import ModelProfile, ProfileError, load_profile
from operators.model_store import ModelFolderError, ResolvedPart, dataset_label_count, resolve_parts
from operators.network_builder import NetworkConfig, load_part_network
from operators.resampling import image_to_spacing, labels_to_shape, resampled_shape
from operators.segmentation_result import AlgorithmInfo, SegmentationResult
from operators.sliding_window import (
    WindowArithmetic,
    WindowStats,
    gaussian_importance_map,
    predict_labels,
)
from operators.volume import Volume
from operators.window_kernels import load_compiled_arithmetic

logger = logging.getLogger(__name__)
T = TypeVar("T")

MAX_ANISOTROPY = 30.0  # largest/smallest voxel size; beyond it an image is a stack of unrelated slices
MAX_MODEL_VOXELS = 512 * 512 * 1200  # resampled voxels; ~1.2 billion would need tens of GB


class DeviceError(TotalSegMRIError, ValueError):
    """The requested compute device is not available."""


class UnsupportedVolumeError(InputError):
    """A volume cannot be segmented: wrong dimensionality, non-finite voxels, extreme geometry."""


@dataclass
class _LoadedPart:
    resolved: ResolvedPart
    network: torch.nn.Module
    config: NetworkConfig
    num_channels: int
    lut: np.ndarray  # part output channel -> final label
    compiled: Callable[[torch.Tensor], torch.Tensor] | None = None  # CPU tiles through the compiled network
    arithmetic: WindowArithmetic | None = None  # the sliding window's sums and argmax, compiled with it

    @property
    def label(self) -> str:
        """The part's dataset folder name, for log lines and notes."""
        return self.resolved.folder.parent.name

    @cached_property
    def checkpoint_sha256(self) -> str:
        """SHA-256 of the checkpoint file, read once per engine: the compile key and the provenance share it."""
        return self.resolved.checkpoint_sha256()


@dataclass
class EngineRun:
    """Timings (seconds) and facts of one :meth:`SegmentationEngine.segment` call."""

    timings: dict[str, float] = field(default_factory=dict)
    tiles: int = 0
    model_shape: tuple[int, int, int] | None = None
    notes: list[str] = field(default_factory=list)


def choose_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` -> CUDA when present, else CPU; a request for a missing CUDA device is an error."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise DeviceError(f"unsupported device {device!r}; use auto, cpu or cuda") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError("CUDA was requested but no CUDA device is available (use --device auto or cpu)")
    if chosen.type not in ("cuda", "cpu"):
        raise DeviceError(f"unsupported device {device!r}; use auto, cpu or cuda")
    return chosen


def check_volume(volume: Volume) -> None:
    """Raise :class:`UnsupportedVolumeError` for volumes the models cannot meaningfully segment."""
    array = volume.array
    name = volume.label if volume.series_instance_uid else "volume"
    if array.ndim != 3:
        raise UnsupportedVolumeError(
            f"{name}: a 3D volume is required, got an array with {array.ndim} dimensions"
        )
    if min(array.shape) < 2:
        raise UnsupportedVolumeError(
            f"{name}: shape {tuple(array.shape)} is a single slice (2D); a 3D stack of slices is required"
        )
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise UnsupportedVolumeError(f"{name}: voxel type {array.dtype} is not a real number type")
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise UnsupportedVolumeError(f"{name}: {bad} voxels are NaN or infinite; the image data is corrupt")
    spacing = np.linalg.norm(np.asarray(volume.affine_lps)[:3, :3], axis=0)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise UnsupportedVolumeError(f"{name}: voxel spacing {spacing.tolist()} is not positive")
    if spacing.max() / spacing.min() > MAX_ANISOTROPY:
        raise UnsupportedVolumeError(
            f"{name}: voxel size {np.round(spacing, 3).tolist()} mm is too anisotropic "
            f"(ratio {spacing.max() / spacing.min():.1f} > {MAX_ANISOTROPY:g}) to resample into one 3D grid"
        )


def _nonzero_bbox(array: np.ndarray) -> tuple[slice, ...] | None:
    """The bounding box of non-zero voxels (nnU-Net's crop; filling holes never changes a box)."""
    slices = []
    for axis in range(array.ndim):
        others = tuple(a for a in range(array.ndim) if a != axis)
        present = np.flatnonzero(np.any(array != 0, axis=others))
        if present.size == 0:
            return None
        slices.append(slice(int(present[0]), int(present[-1]) + 1))
    return tuple(slices)


def normalize(image: np.ndarray, config: NetworkConfig, plans: dict) -> np.ndarray:
    """Intensity normalisation named in the plans, with nnU-Net's float32 arithmetic."""
    from scipy.ndimage import binary_fill_holes

    scheme = config.normalization_scheme
    image = image.astype(np.float32)
    if scheme == "ZScoreNormalization":
        if config.use_mask_for_norm:
            mask = binary_fill_holes(image != 0)
            mean, std = image[mask].mean(), image[mask].std()
            image[mask] = (image[mask] - mean) / max(std, 1e-8)
        else:
            mean, std = image.mean(), image.std()
            image -= mean
            image /= max(std, 1e-8)
        return image
    if scheme == "CTNormalization":
        props = plans.get("foreground_intensity_properties_per_channel", {}).get("0", {})
        try:
            low, high = props["percentile_00_5"], props["percentile_99_5"]
            mean, std = props["mean"], props["std"]
        except KeyError as exc:
            raise ModelFolderError(f"plans.json lacks the CT intensity property {exc}") from exc
        np.clip(image, low, high, out=image)
        image -= mean
        image /= max(std, 1e-8)
        return image
    if scheme == "NoNormalization":
        return image
    if scheme == "RescaleTo01Normalization":
        image -= image.min()
        image /= np.clip(image.max(), a_min=1e-8, a_max=None)
        return image
    raise ModelFolderError(f"normalisation scheme '{scheme}' in plans.json is not supported")


class SegmentationEngine:
    """Runs a model profile's nnU-Net v2 parts on volumes in memory.

    ``profile`` is a :class:`ModelProfile` or a profile name/path; ``models_root`` the MONAI Deploy model
    folder (``-m``; ``HOLOSCAN_MODEL_PATH`` when None); ``device`` None (auto), ``"cpu"`` or ``"cuda"``;
    ``fast`` selects the profile's fast variant. ``compile_cache``: on CPU, a folder of networks compiled
    ahead of time (compiled there on first use; None runs them eagerly, bit-identical to ``nnUNetPredictor``).
    Networks are loaded once, here, so model problems surface before any image is read.
    """

    def __init__(
        self,
        profile: ModelProfile | str,
        models_root: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        fast: bool = False,
        tile_batch_size: int | None = None,
        use_amp: bool | None = None,
        num_threads: int | None = None,
        compile_cache: str | os.PathLike | None = None,
    ) -> None:
        if isinstance(profile, ModelProfile):
            self.profile = load_profile(profile.source, fast=True) if fast and profile.source else profile
            if fast and not profile.source:
                raise ProfileError("fast=True needs a profile loaded from a file (it names its fast variant)")
        else:
            self.profile = load_profile(profile, fast=fast)
        self.device = choose_device(device)
        self.use_amp = self.device.type == "cuda" if use_amp is None else use_amp
        # one tile per forward pass, as nnUNetPredictor: other batch sizes may pick other conv algorithms
        self.tile_batch_size = tile_batch_size or 1
        if self.device.type == "cpu":
            torch.set_num_threads(num_threads or available_cpu_count())
        else:
            torch.set_num_threads(num_threads or 1)  # CPU threads only feed the GPU here
        self.compile_cache = (
            CompiledNetworkCache(compile_cache)
            if compile_cache is not None and self.device.type == "cpu"
            else None
        )
        self.load_notes: list[str] = []
        self.parts = [self._load(p) for p in resolve_parts(self.profile, models_root)]
        self.last_run = EngineRun()
        # The tile loop runs on a worker thread, as nnUNetPredictor pairs its loop with a producer thread:
        # on a busy CPU, libgomp's team first used from the main thread measured 3-4x slower here.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sliding-window")

    @property
    def classes(self) -> dict[int, str]:
        return dict(self.profile.classes)

    def _load(self, resolved: ResolvedPart) -> _LoadedPart:
        network, config = load_part_network(resolved)
        target_in_network_order = np.asarray(self.profile.target_spacing_mm)[::-1][
            list(config.transpose_forward)
        ]
        if not np.allclose(config.spacing, target_in_network_order, rtol=1e-4):
            raise ModelFolderError(
                f"{resolved.folder}: plans spacing {list(config.spacing)} (network axis order) differs from "
                f"the profile's target spacing {list(self.profile.target_spacing_mm)}; nnU-Net would "
                f"resample a second time. Set target_spacing_mm in profile '{self.profile.name}' to the "
                "plans spacing."
            )
        n_channels = dataset_label_count(resolved.dataset_json, str(resolved.folder))
        lut = np.zeros(n_channels, dtype=np.uint8)
        for channel, label in resolved.part.labels.items():
            lut[channel] = label
        network.to(self.device)
        # Computed once per patch size and cached: 0.03 s for the demo patch, 0.45 s for 128^3, which the
        # first volume would otherwise pay inside its sliding window.
        gaussian_importance_map(tuple(int(p) for p in config.patch_size))
        part = _LoadedPart(resolved, network, config, n_channels, lut)
        if self.compile_cache:
            part.compiled = self._compiled(part)
            if part.compiled is not None:
                part.arithmetic = self._compiled_arithmetic(part)
        return part

    def _compiled(self, part: _LoadedPart) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The part's compiled CPU forward, or None (eager) when this machine cannot compile it."""
        config = part.config
        key = CompileKey.for_network(
            part.checkpoint_sha256,
            {"class": config.network_class_name, "kwargs": config.arch_kwargs, "outputs": part.num_channels},
            (self.tile_batch_size, 1, *config.patch_size),  # one MR channel (build_network's input)
        )
        label = part.label
        try:
            compiled, _ = self.compile_cache.load_or_compile(part.network, key, label)  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001 - a failed compilation must not lose the case: eager is exact
            if not isinstance(exc, CompileUnavailableError | OSError):
                logger.exception("%s: compiling the network failed", label)
            note = f"{label}: network runs eagerly: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            logger.warning(note)
            self.load_notes.append(note)
            return None
        return compiled

    def _compiled_arithmetic(self, part: _LoadedPart) -> WindowArithmetic | None:
        """The part's sliding-window arithmetic compiled for this CPU (same bits as eager), or None (eager)."""
        patch = tuple(int(p) for p in part.config.patch_size)
        label = part.label
        try:
            return load_compiled_arithmetic(
                self.compile_cache,  # type: ignore[arg-type]
                part.num_channels,
                torch.from_numpy(gaussian_importance_map(patch)),
                label,
            )
        except Exception as exc:  # noqa: BLE001 - the eager arithmetic gives the same labels, only slower
            logger.warning(
                "%s: sliding-window arithmetic runs eagerly: %s: %s", label, type(exc).__name__, exc
            )
            return None

    @property
    def execution(self) -> str:
        """How the networks run: ``compiled`` when every part runs compiled on CPU, else ``eager``."""
        return "compiled" if self.parts and all(p.compiled is not None for p in self.parts) else "eager"

    def checkpoint_sha256(self) -> tuple[str, ...]:
        """SHA-256 of every checkpoint, in the order the parts run (for provenance)."""
        return tuple(p.checkpoint_sha256 for p in self.parts)

    def segment(self, volume: Volume) -> np.ndarray:
        """Labels (uint8, ``volume.shape``, 0 = background, values from ``self.classes``) for one volume."""
        run = EngineRun(notes=list(self.load_notes))
        self.last_run = run
        started = time.perf_counter()
        check_volume(volume)

        t0 = time.perf_counter()
        canonical = to_closest_canonical(np.asarray(volume.array), volume.affine_ras)
        run.timings["reorient"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        target = np.asarray(self.profile.target_spacing_mm, dtype=np.float64)
        new_shape = resampled_shape(canonical.array.shape, canonical.spacing, target)
        if min(new_shape) < 1:
            raise UnsupportedVolumeError(
                f"volume of shape {volume.shape} at {np.round(canonical.spacing, 3).tolist()} mm is smaller "
                f"than one voxel of {target.tolist()} mm along some axis"
            )
        if int(np.prod(new_shape, dtype=np.int64)) > MAX_MODEL_VOXELS:
            raise UnsupportedVolumeError(
                f"volume of shape {volume.shape} resamples to {new_shape} voxels at {target.tolist()} mm, "
                f"more than the supported {MAX_MODEL_VOXELS} voxels"
            )
        image, _ = image_to_spacing(
            canonical.array, canonical.spacing, target, self.profile.intensity_cast, available_cpu_count()
        )
        run.model_shape = tuple(image.shape)  # type: ignore[assignment]
        run.timings["resample_image"] = time.perf_counter() - t0

        combined = np.zeros(image.shape, dtype=np.uint8)
        if not np.any(image):
            run.notes.append("image is all zero (after resampling): empty segmentation, networks not run")
            logger.warning("volume %s is all zero; returning an empty segmentation", volume.label)
        else:
            for part in self.parts:
                labels = self._predict_part(part, image, run)
                t0 = time.perf_counter()
                mapped = part.lut[labels]
                np.copyto(combined, mapped, where=mapped != 0)
                run.timings["merge"] = run.timings.get("merge", 0.0) + time.perf_counter() - t0

        t0 = time.perf_counter()
        labels = labels_to_shape(combined, canonical.array.shape)
        result = np.ascontiguousarray(canonical.to_source(labels), dtype=np.uint8)
        run.timings["resample_labels"] = time.perf_counter() - t0
        run.timings["total"] = time.perf_counter() - started
        return result

    def _predict_part(self, part: _LoadedPart, image: np.ndarray, run: EngineRun) -> np.ndarray:
        """Labels of one part's classes on the canonical model grid (channel indices, uint8)."""
        t0 = time.perf_counter()
        forward = tuple(part.config.transpose_forward)
        backward = tuple(int(i) for i in np.argsort(forward))
        # nnU-Net's readers give SimpleITK's [z, y, x] order (C-contiguous), then transpose_forward
        network_order = np.ascontiguousarray(image.transpose(2, 1, 0)).transpose(forward)
        box = _nonzero_bbox(network_order)
        cropped = normalize(network_order[box], part.config, part.resolved.plans)
        run.timings["preprocess"] = run.timings.get("preprocess", 0.0) + time.perf_counter() - t0

        stats = WindowStats()
        cropped_labels = self._sliding_window(part, cropped, stats)
        run.tiles += stats.tiles
        run.notes.extend(stats.notes)
        run.timings["network_forward"] = run.timings.get("network_forward", 0.0) + stats.forward_seconds
        run.timings["sliding_window"] = run.timings.get("sliding_window", 0.0) + stats.total_seconds

        t0 = time.perf_counter()
        labels = np.zeros(network_order.shape, dtype=np.uint8)
        labels[box] = cropped_labels
        labels = labels.transpose(backward).transpose(2, 1, 0)
        run.timings["merge"] = run.timings.get("merge", 0.0) + time.perf_counter() - t0
        return labels

    def _sliding_window(self, part: _LoadedPart, image: np.ndarray, stats: WindowStats) -> np.ndarray:
        patch = tuple(part.config.patch_size)
        step = self.profile.tile_step_size

        def run(
            device: torch.device, batch_size: int, on_device: bool, amp: bool
        ) -> Callable[[], np.ndarray]:
            def attempt() -> np.ndarray:
                moved = device != self.device  # a CPU fallback of a GPU engine; .to() walks every module
                if moved:
                    part.network.to(device)
                # A part has a compiled forward only on a CPU engine. Its logits still go into predict_labels'
                # float16 sums, as nnUNetPredictor's: float32 sums were faster on CPU (demo: 0.14-0.17 s instead
                # of 0.21-0.31 s outside the forward passes) but took a random network's small class to Dice
                # 0.90 against nnUNetPredictor (test_engine_compiled.py)
                network = part.compiled or part.network
                try:
                    return self._worker.submit(
                        predict_labels,
                        network,
                        image,
                        patch,
                        part.num_channels,
                        step,  # type: ignore[arg-type]
                        device,
                        batch_size=batch_size,
                        accumulate_on_device=on_device,
                        use_amp=amp,
                        stats=stats,
                        arithmetic=part.arithmetic,  # compiled only on a CPU engine
                    ).result()
                finally:
                    if moved:
                        part.network.to(self.device)

            return attempt

        cpu = torch.device("cpu")
        if self.device.type != "cuda":
            return run(cpu, self.tile_batch_size, True, False)()
        return run_with_oom_fallback(
            [
                (
                    f"GPU, batch {self.tile_batch_size}",
                    run(self.device, self.tile_batch_size, True, self.use_amp),
                ),
                ("GPU, batch 1, accumulator in CPU memory", run(self.device, 1, False, self.use_amp)),
                ("CPU", run(cpu, 1, True, False)),
            ],
            stats.notes,
        )


def run_with_oom_fallback(attempts: list[tuple[str, Callable[[], T]]], notes: list[str]) -> T:
    """Run the first attempt that does not run out of GPU memory; later attempts need less of it.

    Each fallback is logged and noted; out-of-memory in the last attempt, and any other error, propagates.
    """
    for index, (description, attempt) in enumerate(attempts):
        try:
            return attempt()
        except torch.cuda.OutOfMemoryError:
            if index == len(attempts) - 1:
                raise
            note = f"out of GPU memory with {description}; retrying with {attempts[index + 1][0]}"
            logger.warning(note)
            notes.append(note)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    raise ValueError("no attempts given")


def segment_volumes(
    engine: SegmentationEngine, volumes: list[Volume], algorithm_name: str, version: str
) -> list[SegmentationResult]:
    """Segment every volume; one :class:`SegmentationResult` each, in order, with per-stage timings."""
    weights = engine.checkpoint_sha256()
    device = str(engine.device)
    if engine.device.type == "cuda":
        device += f" ({torch.cuda.get_device_name(engine.device)})"
    elif engine.execution == "compiled":
        device += " (networks compiled ahead of time, AOTInductor)"
    algorithm = AlgorithmInfo(
        name=algorithm_name,
        version=version,
        model_profile=engine.profile.name,
        weights_sha256=weights,
        device=device,
    )
    results = []
    for volume in volumes:
        labels = engine.segment(volume)
        run = engine.last_run
        logger.info(
            "%s: segmented in %.1f s (%d tiles, model grid %s)",
            volume.label,
            run.timings.get("total", 0.0),
            run.tiles,
            run.model_shape,
        )
        results.append(
            SegmentationResult(
                volume=volume,
                labels=labels,
                classes=engine.classes,
                algorithm=algorithm,
                timings=dict(run.timings),
            )
        )
    return results
