"""Write nnU-Net v2 results folders holding randomly initialised networks (for tests and benchmarks).

The folders have exactly the layout and file keys nnU-Net 2.8 and TotalSegmentator read
(``dataset.json``, ``plans.json`` and ``fold_K/checkpoint_final.pth`` with ``network_weights``,
``trainer_name``, ``init_args`` and ``inference_allowed_mirroring_axes``), so the same folder can be run by
this engine, by ``nnUNetPredictor`` and by the TotalSegmentator CLI. Weights are seeded, so a folder is
reproducible; compute cost does not depend on weight values, which makes a random full-size network a fair
stand-in for timing the real ``total_mr`` models.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from operators.network_builder import NetworkConfig, build_network


@dataclass(frozen=True)
class SyntheticModelSpec:
    """The shape of an nnU-Net 3d_fullres PlainConvUNet model and its folder names."""

    dataset: str
    label_names: tuple[str, ...]  # foreground classes, output channels 1..N in this order
    trainer: str = "nnUNetTrainer"
    plans_name: str = "nnUNetPlans"
    configuration: str = "3d_fullres"
    fold: int = 0
    patch_size: tuple[int, int, int] = (32, 32, 32)
    spacing: tuple[float, float, float] = (1.5, 1.5, 1.5)
    features_per_stage: tuple[int, ...] = (4, 8, 16)
    # convolutions per encoder / decoder stage; None: nnU-Net's default of 2 everywhere
    n_conv_per_stage: tuple[int, ...] | None = None
    n_conv_per_stage_decoder: tuple[int, ...] | None = None
    transpose_forward: tuple[int, int, int] = (0, 1, 2)
    use_mask_for_norm: bool = False
    image_reader_writer: str = "SimpleITKIO"
    seed: int = 0
    weight_scale: float = 1.0  # multiplies the He-initialised weights; >1 gives more varied argmax maps
    extra_dataset_json: dict = field(default_factory=dict)

    @property
    def folder_name(self) -> str:
        return f"{self.trainer}__{self.plans_name}__{self.configuration}"


def arch_kwargs(spec: SyntheticModelSpec) -> dict:
    n = len(spec.features_per_stage)
    return {
        "n_stages": n,
        "features_per_stage": list(spec.features_per_stage),
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3]] * n,
        "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
        "n_conv_per_stage": list(spec.n_conv_per_stage or [2] * n),
        "n_conv_per_stage_decoder": list(spec.n_conv_per_stage_decoder or [2] * (n - 1)),
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }


# A plausible MR foreground intensity fingerprint for models that were not planned from data.
DEFAULT_INTENSITY_PROPERTIES = {
    "max": 1000.0,
    "mean": 300.0,
    "median": 280.0,
    "min": 0.0,
    "percentile_00_5": 10.0,
    "percentile_99_5": 900.0,
    "std": 150.0,
}


def plans_json(
    spec: SyntheticModelSpec,
    median_shape: tuple[int, int, int] = (128, 128, 128),
    intensity_properties: dict[str, float] | None = None,
) -> dict:
    """A plans.json in nnU-Net 2.8's format for one 3d_fullres configuration."""
    backward = [spec.transpose_forward.index(i) for i in range(3)]
    return {
        "dataset_name": spec.dataset,
        "plans_name": spec.plans_name,
        "original_median_spacing_after_transp": list(spec.spacing),
        "original_median_shape_after_transp": [int(v) for v in median_shape],
        "image_reader_writer": spec.image_reader_writer,
        "transpose_forward": list(spec.transpose_forward),
        "transpose_backward": backward,
        "configurations": {
            spec.configuration: {
                "data_identifier": f"{spec.plans_name}_{spec.configuration}",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": list(spec.patch_size),
                "median_image_size_in_voxels": [float(v) for v in median_shape],
                "spacing": list(spec.spacing),
                "normalization_schemes": ["ZScoreNormalization"],
                "use_mask_for_norm": [spec.use_mask_for_norm],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": {
                    "is_seg": False,
                    "order": 3,
                    "order_z": 0,
                    "force_separate_z": None,
                },
                "resampling_fn_seg_kwargs": {
                    "is_seg": True,
                    "order": 1,
                    "order_z": 0,
                    "force_separate_z": None,
                },
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {
                    "is_seg": False,
                    "order": 1,
                    "order_z": 0,
                    "force_separate_z": None,
                },
                "architecture": {
                    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                    "arch_kwargs": arch_kwargs(spec),
                    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
                },
                "batch_dice": False,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": dict(intensity_properties or DEFAULT_INTENSITY_PROPERTIES)
        },
    }


def dataset_json(spec: SyntheticModelSpec) -> dict:
    labels = {"background": 0}
    labels.update({name: i + 1 for i, name in enumerate(spec.label_names)})
    return {
        "channel_names": {"0": "MRI"},
        "labels": labels,
        "numTraining": 0,
        "file_ending": ".nii.gz",
        **spec.extra_dataset_json,
    }


def network_config(spec: SyntheticModelSpec) -> NetworkConfig:
    """The network configuration the spec's plans.json describes."""
    return NetworkConfig(
        patch_size=spec.patch_size,
        spacing=spec.spacing,
        transpose_forward=spec.transpose_forward,
        normalization_scheme="ZScoreNormalization",
        use_mask_for_norm=spec.use_mask_for_norm,
        network_class_name="dynamic_network_architectures.architectures.unet.PlainConvUNet",
        arch_kwargs=arch_kwargs(spec),
        kw_requires_import=("conv_op", "norm_op", "dropout_op", "nonlin"),
    )


def random_network(spec: SyntheticModelSpec) -> torch.nn.Module:
    """The spec's network in eval mode, holding :func:`random_network_weights`."""
    network = _network(spec)
    network.load_state_dict(_seeded_weights(network, spec))
    return network.eval()


def random_network_weights(spec: SyntheticModelSpec) -> dict[str, torch.Tensor]:
    """Seeded random weights for the spec's network, InstanceNorm affine parameters randomised too."""
    return _seeded_weights(_network(spec), spec)


def _network(spec: SyntheticModelSpec) -> torch.nn.Module:
    return build_network(network_config(spec), len(spec.label_names) + 1)


def _seeded_weights(network: torch.nn.Module, spec: SyntheticModelSpec) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(spec.seed)
    weights = {}
    for name, tensor in network.state_dict().items():
        if tensor.dtype.is_floating_point and tensor.ndim >= 2:
            fan_in = tensor[0].numel()
            values = (
                torch.randn(tensor.shape, generator=generator) * (2.0 / fan_in) ** 0.5 * spec.weight_scale
            )
        elif tensor.dtype.is_floating_point and name.endswith("weight"):
            values = 1.0 + 0.2 * torch.randn(tensor.shape, generator=generator)  # InstanceNorm scale
        elif tensor.dtype.is_floating_point:
            values = 0.1 * torch.randn(tensor.shape, generator=generator)  # biases
        else:
            values = tensor.clone()
        weights[name] = values.contiguous()
    return weights


def write_model_folder(results_root: str | Path, spec: SyntheticModelSpec) -> Path:
    """Write ``<results_root>/<dataset>/<trainer>__<plans>__<cfg>/``; returns that folder.

    Written into a temporary folder first and moved into place, so a half-written model never exists.
    """
    results_root = Path(results_root)
    final = results_root / spec.dataset / spec.folder_name
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".model-", dir=final.parent))
    try:
        (staging / "dataset.json").write_text(json.dumps(dataset_json(spec), indent=2))
        (staging / "plans.json").write_text(json.dumps(plans_json(spec), indent=2))
        fold_dir = staging / f"fold_{spec.fold}"
        fold_dir.mkdir()
        checkpoint = {
            "network_weights": random_network_weights(spec),
            "optimizer_state": None,
            "grad_scaler_state": None,
            "logging": {},
            "_best_ema": None,
            "current_epoch": 0,
            "init_args": {
                "plans": plans_json(spec),
                "configuration": spec.configuration,
                "fold": spec.fold,
                "dataset_json": dataset_json(spec),
            },
            "trainer_name": spec.trainer,
            "inference_allowed_mirroring_axes": None,
        }
        torch.save(checkpoint, fold_dir / "checkpoint_final.pth")
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


# The full-size stand-in for TotalSegmentator's total_mr parts: nnU-Net's default 3d_fullres plan for
# 1.5 mm isotropic body MR (patch 128^3, 6 stages, 32..320 features).
TOTAL_MR_STANDIN_PATCH = (128, 128, 128)
TOTAL_MR_STANDIN_FEATURES = (32, 64, 128, 256, 320, 320)
