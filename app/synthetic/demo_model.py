"""The embedded demo model: an nnU-Net v2 results folder trained on the synthetic torso phantoms.

The real TotalSegmentator weights cannot be downloaded everywhere, so the repository ships a small model in
exactly the nnU-Net v2 (2.8.1) results layout::

    models/demo/Dataset999_TotalSegMRIDemo/nnUNetTrainer__nnUNetPlans__3d_fullres/
        dataset.json  plans.json  fold_0/checkpoint_final.pth

This module defines what that folder contains (label order, plans, network architecture); the application
loads it like any other nnU-Net v2 folder (``operators/segmentation_engine.py`` with the profile
``operators/profiles/demo.json``). The network sees arrays in SimpleITK order ``[z, y, x]`` of the RAS+
canonical image (``nib.as_closest_canonical``) at 3 mm isotropic spacing, z-score normalised, like the
official TotalSegmentator MR models fed through nnU-Net's ``SimpleITKIO``.

Model class indices are consecutive (0 = background, 1..N); :func:`model_label_map` gives the final
TotalSegmentator MR label number and name of each.
"""

from __future__ import annotations

import pydoc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from operators.errors import TotalSegMRIError

DATASET_NAME = "Dataset999_TotalSegMRIDemo"
TRAINER_NAME = "nnUNetTrainer"
PLANS_NAME = "nnUNetPlans"
CONFIGURATION = "3d_fullres"
MODEL_SUBFOLDER = f"{TRAINER_NAME}__{PLANS_NAME}__{CONFIGURATION}"
FOLD = 0
CHECKPOINT_NAME = "checkpoint_final.pth"

# 3 mm: a perfect model scores 0.956 held-out behind this resampling (2.5 mm: 0.966, 2 mm: 0.975), but the
# network needs the context of the 3 mm patch. At 2 mm with the same patch in voxels (96 x 128 x 128 mm),
# trained for 9500 iterations, held-out mean Dice fell from 0.883 to 0.779 (liver 0.96 -> 0.74, stomach
# 0.86 -> 0.56; 2026-12-03, models/demo/README.md).
SPACING_MM = 3.0
# [z, y, x] in network order: 144 x 192 x 192 mm at 3 mm. Wider, 48 x 80 x 80 (also the late training
# patch), gave 0.884 against 0.883 at 9500 iterations and took 2112 s to train instead of 1463 (2026-12-03):
# not kept.
PATCH_SIZE = (48, 64, 64)
# 16 features at full resolution: the thin structures (discs, vertebrae, cord) are drawn there, and with 8 they
# stayed near 0.75-0.79 held-out Dice however long the network trained (models/demo/README.md). Most of the
# CPU cost is in that stage; bfloat16 training convolutions (train_demo_model.BFLOAT16_CONVOLUTIONS) pay for it.
FEATURES_PER_STAGE = (16, 16, 32, 64, 80)
# One convolution in the full-resolution encoder stage and in every decoder stage (nnU-Net's default is two
# everywhere): the full-resolution stage costs half as much, and a training step 0.82x as long
# (`bench/demo_training_step.py`).
N_CONV_PER_STAGE = (1, 2, 2, 2, 2)
N_CONV_PER_STAGE_DECODER = (1, 1, 1, 1)

NETWORK_CLASS_NAME = "dynamic_network_architectures.architectures.unet.PlainConvUNet"


class DemoModelError(TotalSegMRIError, ValueError):
    """The demo model folder is missing, incomplete or not in the nnU-Net v2 layout this project expects."""


@dataclass(frozen=True)
class ModelClass:
    """One output channel of the demo network."""

    index: int  # consecutive model class index (channel of the logits)
    label: int  # final TotalSegmentator MR label number (1..50)
    name: str  # TotalSegmentator MR class name


def model_label_map(labels: dict[int, str]) -> list[ModelClass]:
    """Model classes 1..N for the phantom's labels, in increasing final label number."""
    if not labels:
        raise DemoModelError("the phantom defines no labels to train on")
    if 0 in labels:
        raise DemoModelError("label 0 is background and cannot be a structure")
    return [ModelClass(i + 1, int(lab), labels[lab]) for i, lab in enumerate(sorted(labels))]


def factory_spec(**overrides: Any):
    """The demo network's ``SyntheticModelSpec`` (folder names, patch, spacing, widths, convolutions per
    stage); ``overrides`` replace fields, e.g. ``label_names`` and ``weight_scale`` for a random stand-in."""
    from dataclasses import replace

    from operators.model_factory import SyntheticModelSpec

    spec = SyntheticModelSpec(
        dataset=DATASET_NAME,
        label_names=(),
        trainer=TRAINER_NAME,
        plans_name=PLANS_NAME,
        configuration=CONFIGURATION,
        fold=FOLD,
        patch_size=PATCH_SIZE,
        spacing=(SPACING_MM,) * 3,
        features_per_stage=FEATURES_PER_STAGE,
        n_conv_per_stage=N_CONV_PER_STAGE,
        n_conv_per_stage_decoder=N_CONV_PER_STAGE_DECODER,
    )
    return replace(spec, **overrides)


def arch_kwargs() -> dict[str, Any]:
    """Keyword arguments of ``PlainConvUNet`` as nnU-Net stores them (import strings for the op classes)."""
    from operators import model_factory

    return model_factory.arch_kwargs(factory_spec())


def build_dataset_json(classes: list[ModelClass], num_training: int) -> dict[str, Any]:
    """nnU-Net v2 ``dataset.json``: one MRI channel, labels named with TotalSegmentator MR names."""
    labels = {"background": 0}
    labels.update({c.name: c.index for c in classes})
    return {
        "channel_names": {"0": "MRI"},
        "labels": labels,
        "numTraining": int(num_training),
        "file_ending": ".nii.gz",
        "name": DATASET_NAME,
        "description": "Demo model trained on procedural torso phantoms (app/synthetic/phantom.py); "
        "not for clinical use",
        "totalsegmentator_mr_labels": {str(c.index): {"label": c.label, "name": c.name} for c in classes},
    }


def build_plans(
    median_shape_zyx: tuple[int, int, int], intensity_properties: dict[str, float]
) -> dict[str, Any]:
    """nnU-Net v2 ``plans.json`` with a single ``3d_fullres`` configuration at 3 mm isotropic."""
    from operators import model_factory

    return model_factory.plans_json(factory_spec(), median_shape_zyx, intensity_properties)


def model_folder(models_root: str | Path) -> Path:
    """The trainer/plans/configuration folder inside a ``models`` root such as ``models/demo``."""
    return Path(models_root) / DATASET_NAME / MODEL_SUBFOLDER


def build_network(plans: dict[str, Any], num_classes: int, deep_supervision: bool = False):
    """A ``PlainConvUNet`` built from the plans' architecture entry, as nnU-Net does (inference: no deep
    supervision; the state dict is the same either way)."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    try:
        arch = plans["configurations"][CONFIGURATION]["architecture"]
    except (KeyError, TypeError) as exc:
        raise DemoModelError(f"plans.json has no configurations.{CONFIGURATION}.architecture entry") from exc
    if arch.get("network_class_name") != NETWORK_CLASS_NAME:
        raise DemoModelError(
            f"plans.json names network {arch.get('network_class_name')!r}; "
            f"only {NETWORK_CLASS_NAME} is supported"
        )
    kwargs = dict(arch["arch_kwargs"])
    for key in arch["_kw_requires_import"]:
        if kwargs.get(key) is not None:
            located = pydoc.locate(kwargs[key])
            if located is None:
                raise DemoModelError(f"plans.json names {key}={kwargs[key]!r}, which cannot be imported")
            kwargs[key] = located
    return PlainConvUNet(
        input_channels=1, num_classes=num_classes, deep_supervision=deep_supervision, **kwargs
    )


def classes_from_dataset_json(dataset_json: dict[str, Any]) -> list[ModelClass]:
    """Model classes (index, final label, name) recorded in a demo ``dataset.json``."""
    try:
        mapping = dataset_json["totalsegmentator_mr_labels"]
        labels = dataset_json["labels"]
        classes = [ModelClass(int(i), int(v["label"]), str(v["name"])) for i, v in mapping.items()]
    except (KeyError, TypeError, ValueError) as exc:
        raise DemoModelError("dataset.json lacks a valid totalsegmentator_mr_labels map") from exc
    classes.sort(key=lambda c: c.index)
    if [c.index for c in classes] != list(range(1, len(classes) + 1)) or any(
        labels.get(c.name) != c.index for c in classes
    ):
        raise DemoModelError(
            "dataset.json labels are not consecutive or disagree with totalsegmentator_mr_labels"
        )
    return classes
