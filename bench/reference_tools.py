"""The two reference implementations the engine is checked against (test and benchmark dependencies only).

* :func:`nnunet_reference_segment`: TotalSegmentator 2.18's own preprocessing functions
  (``nib.as_closest_canonical``, ``totalsegmentator.resampling.change_spacing`` with order 1 and int32, the
  part merge, nearest-neighbour ``change_spacing`` back, ``undo_canonical``) around nnU-Net 2.8.1's
  ``nnUNetPredictor`` run in memory on each model folder.
* ``bench/parity_totalsegmentator.py`` runs the TotalSegmentator CLI itself.

``nnUNetPredictor.initialize_from_trained_model_folder`` finds the trainer class by importing every trainer
module; one of them imports timm and torchvision, which cannot be imported beside the CPU torch used here.
:func:`install_direct_trainer_lookup` makes that lookup import only the trainer module that defines the
class (nothing numeric changes: the trainer only supplies ``build_network_architecture``).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

from operators.model_profile import ModelProfile
from operators.model_store import resolve_parts
from operators.volume import Volume

_TRAINERS = "nnunetv2.training.nnUNetTrainer"
_LENGTH_VARIANTS = f"{_TRAINERS}.variants.training_length.nnUNetTrainer_Xepochs_NoMirroring"
TRAINER_MODULES = {
    "nnUNetTrainer": f"{_TRAINERS}.nnUNetTrainer",
    "nnUNetTrainerNoMirroring": f"{_TRAINERS}.variants.data_augmentation.nnUNetTrainerNoMirroring",
    "nnUNetTrainer_2000epochs_NoMirroring": _LENGTH_VARIANTS,
    "nnUNetTrainer_4000epochs_NoMirroring": _LENGTH_VARIANTS,
}


def find_trainer_class(name: str):
    """Import the one module that defines trainer ``name`` and return the class."""
    if name not in TRAINER_MODULES:
        raise KeyError(f"trainer {name} has no known module; add it to TRAINER_MODULES")
    return getattr(importlib.import_module(TRAINER_MODULES[name]), name)


def install_direct_trainer_lookup() -> None:
    """Make nnU-Net's predictor (and TotalSegmentator's wrapper of it) use :func:`find_trainer_class`."""
    import nnunetv2.inference.predict_from_raw_data as predict_module
    import nnunetv2.utilities.find_objects as find_objects

    predict_module.recursive_find_trainer_class_by_name = find_trainer_class
    find_objects.recursive_find_trainer_class_by_name = find_trainer_class


def nnunet_predictor(
    model_folder: Path, fold: int | str, checkpoint: str, tile_step_size: float, device: str = "cpu"
):
    """An ``nnUNetPredictor`` configured as TotalSegmentator configures it (Gaussian on, no mirroring)."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    install_direct_trainer_lookup()
    predictor = nnUNetPredictor(
        tile_step_size=tile_step_size,
        use_gaussian=True,
        use_mirroring=False,
        perform_everything_on_device=True,
        device=torch.device(device),
        verbose=False,
        verbose_preprocessing=False,
        allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(
        str(model_folder), use_folds=(fold,), checkpoint_name=checkpoint
    )
    return predictor


def nnunet_predict_canonical(predictor, image_xyz: np.ndarray, spacing_xyz) -> np.ndarray:
    """Run the predictor on a canonical [x, y, z] array the way nnU-Net's NIfTI readers hand it over."""
    data = np.ascontiguousarray(image_xyz.transpose(2, 1, 0))[None]  # SimpleITK order [c, z, y, x]
    properties = {"spacing": [float(s) for s in list(spacing_xyz)[::-1]]}
    seg = predictor.predict_single_npy_array(data, properties, None, None, False)
    return np.asarray(seg).transpose(2, 1, 0)


def nnunet_reference_segment(volume: Volume, profile: ModelProfile, models_root: Path) -> np.ndarray:
    """TotalSegmentator's image flow with nnUNetPredictor in memory; labels on the volume's grid (uint8)."""
    import nibabel as nib
    from totalsegmentator.alignment import undo_canonical
    from totalsegmentator.resampling import change_spacing

    # a NIfTI round trip, as the CLI reads a file (sform stored as float32)
    img_file = nib.Nifti1Image.from_bytes(volume.to_nifti().to_bytes())
    img_in = nib.Nifti1Image(img_file.get_fdata(), img_file.affine)
    img_can = nib.as_closest_canonical(img_in)
    spacing = list(profile.target_spacing_mm)
    img_rsp = change_spacing(img_can, spacing, order=1, dtype=np.int32, nr_cpus=1)
    image = np.asanyarray(img_rsp.dataobj)
    combined = np.zeros(image.shape, dtype=np.uint8)
    for part in resolve_parts(profile, models_root):
        predictor = nnunet_predictor(
            part.folder, part.part.fold, part.part.checkpoint, profile.tile_step_size
        )
        seg = nnunet_predict_canonical(predictor, image, img_rsp.header.get_zooms()[:3]).astype(np.uint8)
        lut = np.zeros(len(part.part.labels) + 1, dtype=np.uint8)
        for channel, label in part.part.labels.items():
            lut[channel] = label
        mapped = lut[seg]
        np.copyto(combined, mapped, where=mapped != 0)
    img_pred = nib.Nifti1Image(combined, img_rsp.affine)
    img_back = change_spacing(
        img_pred, spacing, img_can.shape, order=0, dtype=np.uint8, nr_cpus=1, force_affine=img_can.affine
    )
    return np.asanyarray(undo_canonical(img_back, img_in).dataobj).astype(np.uint8)


def dice_per_class(a: np.ndarray, b: np.ndarray, classes) -> dict[int, float]:
    """Dice of every class present in either array (1.0 where both are empty is left out)."""
    scores = {}
    for label in classes:
        in_a, in_b = a == label, b == label
        total = int(in_a.sum()) + int(in_b.sum())
        if total:
            scores[int(label)] = 2.0 * int(np.logical_and(in_a, in_b).sum()) / total
    return scores
