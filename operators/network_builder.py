"""Build the network of an nnU-Net v2 model folder from its ``plans.json`` and load its checkpoint.

The network classes are the ones nnU-Net itself instantiates (``dynamic_network_architectures``, Apache-2.0):
``plans["configurations"][cfg]["architecture"]`` names the class (``network_class_name``), its keyword
arguments (``arch_kwargs``) and which of those are import strings (``_kw_requires_import``, e.g.
``torch.nn.modules.conv.Conv3d``). Plans written before nnU-Net 2.4 (``UNet_class_name`` and friends) are
translated to the same keyword arguments nnU-Net derives for them. Only classes from
``dynamic_network_architectures`` and ``torch.nn`` are imported, so a model folder cannot make the
application import arbitrary code through its plans.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from operators.model_store import ModelFolderError, ResolvedPart, dataset_label_count

logger = logging.getLogger(__name__)

ARCHITECTURES = "dynamic_network_architectures.architectures"
ALLOWED_IMPORT_PREFIXES = ("dynamic_network_architectures.", "torch.nn.")


@dataclass(frozen=True)
class NetworkConfig:
    """What inference needs from one plans configuration."""

    patch_size: tuple[int, ...]  # in network axis order
    spacing: tuple[float, ...]  # in network axis order
    transpose_forward: tuple[int, ...]
    normalization_scheme: str
    use_mask_for_norm: bool
    network_class_name: str
    arch_kwargs: dict[str, Any]
    kw_requires_import: tuple[str, ...]


def resolve_configuration(plans: dict, name: str, where: str = "plans.json") -> dict:
    """The configuration dict with nnU-Net's ``inherits_from`` chain applied (child keys win)."""
    configurations = plans.get("configurations", {})
    chain: list[str] = []
    current: str | None = name
    while current is not None:
        if current in chain:
            raise ModelFolderError(f"{where}: circular 'inherits_from' in configuration {name}")
        if current not in configurations:
            raise ModelFolderError(f"{where}: configuration '{current}' not found")
        chain.append(current)
        current = configurations[current].get("inherits_from")
    merged: dict = {}
    for cfg in reversed(chain):
        merged.update({k: v for k, v in configurations[cfg].items() if k != "inherits_from"})
    return merged


def _architecture_from_legacy(cfg: dict, where: str) -> dict:
    """The ``architecture`` entry for plans from nnU-Net < 2.4, with the kwargs nnU-Net derives for them."""
    try:
        class_name = cfg["UNet_class_name"]
        n_stages = len(cfg["n_conv_per_stage_encoder"])
        dim = len(cfg["patch_size"])
        blocks_key = {"PlainConvUNet": "n_conv_per_stage", "ResidualEncoderUNet": "n_blocks_per_stage"}
        if class_name not in blocks_key:
            raise ModelFolderError(f"{where}: legacy architecture {class_name} is not supported")
        return {
            "network_class_name": f"{ARCHITECTURES}.unet.{class_name}",
            "arch_kwargs": {
                "n_stages": n_stages,
                "features_per_stage": [
                    min(cfg["UNet_base_num_features"] * 2**i, cfg["unet_max_num_features"])
                    for i in range(n_stages)
                ],
                "conv_op": f"torch.nn.modules.conv.Conv{dim}d",
                "kernel_sizes": cfg["conv_kernel_sizes"],
                "strides": cfg["pool_op_kernel_sizes"],
                blocks_key[class_name]: cfg["n_conv_per_stage_encoder"],
                "n_conv_per_stage_decoder": cfg["n_conv_per_stage_decoder"],
                "conv_bias": True,
                "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                "dropout_op": None,
                "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU",
                "nonlin_kwargs": {"inplace": True},
            },
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        }
    except KeyError as exc:
        raise ModelFolderError(f"{where}: legacy plans lack {exc}") from exc


def network_config(plans: dict, configuration: str, where: str = "plans.json") -> NetworkConfig:
    """Read the inference-relevant settings of one configuration from ``plans.json``."""
    cfg = resolve_configuration(plans, configuration, where)
    arch = cfg.get("architecture") or _architecture_from_legacy(cfg, where)
    try:
        patch = tuple(int(p) for p in cfg["patch_size"])
        spacing = tuple(float(s) for s in cfg["spacing"])
        schemes = list(cfg["normalization_schemes"])
        mask_for_norm = [bool(m) for m in cfg.get("use_mask_for_norm", [False])]
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFolderError(f"{where}: configuration '{configuration}' lacks {exc}") from exc
    if len(patch) != 3:
        raise ModelFolderError(
            f"{where}: only 3D configurations are supported, '{configuration}' is {len(patch)}D"
        )
    if len(schemes) != 1:
        raise ModelFolderError(
            f"{where}: only single-channel models are supported, this one has {len(schemes)}"
        )
    transpose = tuple(int(t) for t in plans.get("transpose_forward", [0, 1, 2]))
    if sorted(transpose) != [0, 1, 2]:
        raise ModelFolderError(f"{where}: transpose_forward {transpose} is not a permutation of 0, 1, 2")
    return NetworkConfig(
        patch_size=patch,
        spacing=spacing,
        transpose_forward=transpose,
        normalization_scheme=schemes[0],
        use_mask_for_norm=mask_for_norm[0],
        network_class_name=str(arch["network_class_name"]),
        arch_kwargs=dict(arch["arch_kwargs"]),
        kw_requires_import=tuple(arch.get("_kw_requires_import", ())),
    )


def _locate(dotted: str, where: str):
    if not dotted.startswith(ALLOWED_IMPORT_PREFIXES):
        raise ModelFolderError(
            f"{where}: refusing to import '{dotted}' (only {ALLOWED_IMPORT_PREFIXES} allowed)"
        )
    module_name, _, attr = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ModelFolderError(f"{where}: cannot import '{dotted}': {exc}") from exc


def build_network(
    config: NetworkConfig, num_output_channels: int, where: str = "plans.json"
) -> torch.nn.Module:
    """Instantiate the architecture named in the plans, without deep supervision, in eval mode."""
    kwargs = dict(config.arch_kwargs)
    for key in config.kw_requires_import:
        if kwargs.get(key) is not None:
            kwargs[key] = _locate(str(kwargs[key]), where)
    try:
        network_class = _locate(config.network_class_name, where)
    except ModelFolderError:
        # classes move between modules across versions (nnU-Net searches for them the same way)
        name = config.network_class_name.rpartition(".")[2]
        if not config.network_class_name.startswith(ARCHITECTURES):
            raise
        network_class = _locate(f"{ARCHITECTURES}.unet.{name}", where)
    kwargs["deep_supervision"] = False
    try:
        network = network_class(input_channels=1, num_classes=num_output_channels, **kwargs)
    except TypeError as exc:
        raise ModelFolderError(
            f"{where}: architecture arguments do not fit {config.network_class_name}: {exc}"
        ) from exc
    return network.eval()


def _load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as safe_exc:  # noqa: BLE001 - retried below, reported if that fails too
        logger.debug("weights-only load of %s failed (%s); loading the full pickle", path, safe_exc)
    try:
        # nnU-Net checkpoints carry numpy objects in their training metadata; model folders are trusted input
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any failure means an unusable checkpoint
        raise ModelFolderError(f"checkpoint {path} cannot be loaded: {exc}") from exc


def load_part_network(part: ResolvedPart) -> tuple[torch.nn.Module, NetworkConfig]:
    """Build the network of a resolved part and load its checkpoint weights."""
    where = str(part.folder / "plans.json")
    config = network_config(part.plans, part.part.configuration, where)
    n_out = dataset_label_count(part.dataset_json, str(part.folder))
    network = build_network(config, n_out, where)
    checkpoint = _load_checkpoint(part.checkpoint_path)
    weights = checkpoint.get("network_weights") if isinstance(checkpoint, dict) else None
    if not isinstance(weights, dict):
        raise ModelFolderError(
            f"checkpoint {part.checkpoint_path} has no 'network_weights' (not an nnU-Net v2 checkpoint)"
        )
    weights = {k.removeprefix("_orig_mod.").removeprefix("module."): v for k, v in weights.items()}
    try:
        network.load_state_dict(weights)
    except RuntimeError as exc:
        raise ModelFolderError(
            f"checkpoint {part.checkpoint_path} does not fit the network in plans.json with {n_out} output "
            f"channels (dataset.json): {' '.join(str(exc).split())[:400]}"
        ) from exc
    return network, config
