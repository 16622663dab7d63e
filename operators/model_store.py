"""Locate the nnU-Net v2 results folders a model profile needs under a models root.

The models root follows the MONAI Deploy convention: the ``-m`` argument or ``HOLOSCAN_MODEL_PATH``. Inside it
the dataset folders are found in the first of these places that holds them:

* ``<root>/<DatasetNNN_Name>/...`` (the root is an nnU-Net ``results`` folder: ``TOTALSEG_WEIGHTS_PATH``);
* ``<root>/<profile name>/<DatasetNNN_Name>/...`` (one sub-folder per model, as a MAP's ``models/<name>/``);
* ``<root>/nnunet/results/<DatasetNNN_Name>/...`` (a TotalSegmentator home folder).

Each part needs ``dataset.json``, ``plans.json`` and ``fold_<K>/<checkpoint>`` in
``<DatasetNNN_Name>/<trainer>__<plans>__<configuration>/``. Anything missing is reported in one error that
names every missing path and how to obtain the model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from operators.errors import TotalSegMRIError
from operators.model_profile import ModelPart, ModelProfile

logger = logging.getLogger(__name__)

MODEL_PATH_ENV = "HOLOSCAN_MODEL_PATH"


class ModelFolderError(TotalSegMRIError, ValueError):
    """A model folder is missing, incomplete, unreadable or disagrees with its profile."""

    exit_code = 4


@dataclass(frozen=True)
class ResolvedPart:
    """A profile part together with the files that implement it."""

    part: ModelPart
    folder: Path  # .../<DatasetNNN_Name>/<trainer>__<plans>__<configuration>
    dataset_json: dict
    plans: dict

    @property
    def checkpoint_path(self) -> Path:
        return self.folder / f"fold_{self.part.fold}" / self.part.checkpoint

    def checkpoint_sha256(self) -> str:
        digest = hashlib.sha256()
        with self.checkpoint_path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()


def models_root_from_env(models_root: str | Path | None) -> Path:
    """The explicit models root, else ``$HOLOSCAN_MODEL_PATH``; an error when neither is given."""
    if models_root is not None and str(models_root) != "":
        return Path(models_root)
    env = os.environ.get(MODEL_PATH_ENV)
    if env:
        return Path(env)
    raise ModelFolderError(f"no models folder given: pass -m MODELS or set {MODEL_PATH_ENV}")


def _candidate_bases(root: Path, profile: ModelProfile) -> list[Path]:
    return [root, root / profile.name, root / "nnunet" / "results"]


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"{path} cannot be read as JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path} must hold a JSON object")
    return data


def dataset_label_count(dataset_json: dict, where: str) -> int:
    """Number of output channels nnU-Net derives from dataset.json (background included; no regions)."""
    labels = dataset_json.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ModelFolderError(f"{where}: dataset.json has no 'labels' map")
    if any(isinstance(v, (list, tuple)) for v in labels.values()):
        raise ModelFolderError(
            f"{where}: region-based models (label lists in dataset.json) are not supported"
        )
    values = sorted(int(v) for k, v in labels.items() if k != "ignore")
    if values != list(range(len(values))):
        raise ModelFolderError(f"{where}: dataset.json label values must be 0..N without gaps, got {values}")
    return len(values)


def resolve_parts(profile: ModelProfile, models_root: str | Path | None = None) -> list[ResolvedPart]:
    """Find and check every part of ``profile``; raise :class:`ModelFolderError` naming what is missing."""
    root = models_root_from_env(models_root)
    if not root.is_dir():
        raise ModelFolderError(f"models folder {root} does not exist. {_how_to_get(profile)}")
    first = profile.parts[0].dataset
    base = next((b for b in _candidate_bases(root, profile) if (b / first).is_dir()), root)
    missing: list[str] = []
    for part in profile.parts:
        folder = base / part.dataset / part.folder_name
        for needed in (folder / "dataset.json", folder / "plans.json", base / part.relative_checkpoint):
            if not needed.is_file():
                missing.append(str(needed))
    if missing:
        raise ModelFolderError(
            f"model '{profile.name}' is incomplete under {root}; missing: {', '.join(missing)}. "
            f"{_how_to_get(profile)}"
        )
    resolved = []
    for part in profile.parts:
        folder = base / part.dataset / part.folder_name
        dataset_json = _read_json(folder / "dataset.json")
        plans = _read_json(folder / "plans.json")
        n_channels = dataset_label_count(dataset_json, str(folder))
        if n_channels != len(part.labels) + 1:
            raise ModelFolderError(
                f"{folder}: the model has {n_channels - 1} foreground classes (dataset.json) but profile "
                f"'{profile.name}' maps {len(part.labels)} for this part; the profile does not fit this model"
            )
        _warn_on_name_mismatch(profile, part, dataset_json, folder)
        if part.configuration not in plans.get("configurations", {}):
            raise ModelFolderError(
                f"{folder}/plans.json has no configuration '{part.configuration}' "
                f"(has {sorted(plans.get('configurations', {}))})"
            )
        resolved.append(ResolvedPart(part=part, folder=folder, dataset_json=dataset_json, plans=plans))
    return resolved


def _warn_on_name_mismatch(profile: ModelProfile, part: ModelPart, dataset_json: dict, folder: Path) -> None:
    """Log channels whose dataset.json name differs from the profile's (counts are checked strictly)."""
    by_channel = {int(v): k for k, v in dataset_json["labels"].items() if k != "ignore"}
    differing = [
        f"{channel}: {by_channel.get(channel)!r} vs {profile.classes[label]!r}"
        for channel, label in part.labels.items()
        if by_channel.get(channel) != profile.classes[label]
    ]
    if differing:
        logger.warning(
            "%s: dataset.json names differ from profile '%s': %s", folder, profile.name, "; ".join(differing)
        )


def _how_to_get(profile: ModelProfile) -> str:
    layout = ", ".join(str(p.relative_checkpoint.parent.parent) for p in profile.parts)
    hint = profile.weights_hint or "copy the nnU-Net v2 results folders into the models folder"
    return f"Expected nnU-Net v2 results folder(s) {layout}; to get them: {hint}."
