"""Model profiles: which nnU-Net v2 model folders form a segmentation task and how their outputs combine.

A profile is a small JSON file (``operators/profiles/<name>.json``) that names, for one task:

* ``classes``: the final class map, label value -> structure name (TotalSegmentator numbering);
* ``parts``: one or more nnU-Net v2 results folders
  (``<dataset>/<trainer>__<plans>__<configuration>/fold_<fold>/<checkpoint>``), each with a ``labels`` map
  from the part's own output channel index to a final structure name;
* ``target_spacing_mm``: the grid the image is resampled to before the networks run;
* ``tile_step_size``: sliding-window step as a fraction of the patch (0.8 for TotalSegmentator total_mr);
* ``intensity_cast``: what happens to intensities after resampling (``"int32_truncate"``, TotalSegmentator's
  behaviour, or ``"none"``);
* optional ``fast_variant``: the name of a profile to use when the fast mode is requested.

Parts run in order; where a later part labels a voxel it overwrites an earlier part (TotalSegmentator's
merge rule). Any other nnU-Net v2 model becomes usable by writing such a file; no code changes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from operators.errors import TotalSegMRIError

PROFILES_DIR = Path(__file__).with_name("profiles")
INTENSITY_CASTS = ("int32_truncate", "none")


class ProfileError(TotalSegMRIError, ValueError):
    """A model profile is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class ModelPart:
    """One nnU-Net v2 model folder and how its output channels map onto the final classes."""

    dataset: str  # e.g. "Dataset850_TotalSegMRI_part1_organs_1088subj"
    trainer: str
    plans: str
    configuration: str
    fold: int | str  # an int, or "all" as nnU-Net names the fold trained on all cases
    checkpoint: str
    labels: dict[int, int]  # part output channel -> final label value (0 = background is implicit)

    @property
    def folder_name(self) -> str:
        """nnU-Net's results sub-folder name ``<trainer>__<plans>__<configuration>``."""
        return f"{self.trainer}__{self.plans}__{self.configuration}"

    @property
    def relative_checkpoint(self) -> Path:
        return Path(self.dataset) / self.folder_name / f"fold_{self.fold}" / self.checkpoint


@dataclass(frozen=True)
class ModelProfile:
    """A segmentation task: its parts, final classes and inference settings."""

    name: str
    description: str
    classes: dict[int, str]
    parts: tuple[ModelPart, ...]
    target_spacing_mm: tuple[float, float, float]
    tile_step_size: float
    intensity_cast: str
    fast_variant: str | None = None
    weights_hint: str = ""  # how a user obtains the model folders, shown in "model missing" errors
    source: Path | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _require(data: dict, key: str, where: str):
    if key not in data:
        raise ProfileError(f"{where}: required key '{key}' is missing")
    return data[key]


def _parse_part(raw: dict, classes: dict[int, str], where: str) -> ModelPart:
    if not isinstance(raw, dict):
        raise ProfileError(f"{where}: each part must be a JSON object")
    name_to_label = {name: label for label, name in classes.items()}
    raw_labels = _require(raw, "labels", where)
    if not isinstance(raw_labels, dict) or not raw_labels:
        raise ProfileError(f"{where}: 'labels' must map output channel numbers to structure names")
    labels: dict[int, int] = {}
    for channel, name in raw_labels.items():
        try:
            index = int(channel)
        except ValueError:
            raise ProfileError(f"{where}: output channel '{channel}' is not an integer") from None
        if index < 1:
            raise ProfileError(f"{where}: output channel {index} must be >= 1 (0 is background)")
        if name not in name_to_label:
            raise ProfileError(
                f"{where}: structure '{name}' of channel {index} is not in the profile's classes"
            )
        labels[index] = name_to_label[name]
    expected = set(range(1, len(labels) + 1))
    if set(labels) != expected:
        raise ProfileError(f"{where}: output channels must be numbered 1..{len(labels)} without gaps")
    fold = raw.get("fold", 0)
    if fold != "all":
        try:
            fold = int(fold)
        except (TypeError, ValueError):
            raise ProfileError(f'{where}: fold must be an integer or "all", got {fold!r}') from None
    return ModelPart(
        dataset=str(_require(raw, "dataset", where)),
        trainer=str(raw.get("trainer", "nnUNetTrainer")),
        plans=str(raw.get("plans", "nnUNetPlans")),
        configuration=str(raw.get("configuration", "3d_fullres")),
        fold=fold,
        checkpoint=str(raw.get("checkpoint", "checkpoint_final.pth")),
        labels=labels,
    )


def parse_profile(data: dict, source: Path | None = None) -> ModelProfile:
    """Validate a profile's JSON content and build a :class:`ModelProfile`."""
    where = f"model profile {source}" if source else "model profile"
    if not isinstance(data, dict):
        raise ProfileError(f"{where}: top level must be a JSON object")
    name = str(_require(data, "name", where))
    raw_classes = _require(data, "classes", where)
    if not isinstance(raw_classes, dict) or not raw_classes:
        raise ProfileError(f"{where}: 'classes' must map label values to structure names")
    try:
        classes = {int(k): str(v) for k, v in raw_classes.items()}
    except ValueError:
        raise ProfileError(f"{where}: class label values must be integers") from None
    if min(classes) < 1 or max(classes) > 255:
        raise ProfileError(f"{where}: class label values must lie in 1..255 (label volumes are 8-bit)")
    if len(set(classes.values())) != len(classes):
        raise ProfileError(f"{where}: structure names in 'classes' must be unique")
    raw_parts = _require(data, "parts", where)
    if not isinstance(raw_parts, list) or not raw_parts:
        raise ProfileError(f"{where}: 'parts' must be a non-empty list")
    parts = tuple(_parse_part(p, classes, f"{where}, part {i + 1}") for i, p in enumerate(raw_parts))
    covered = {label for part in parts for label in part.labels.values()}
    missing = sorted(set(classes) - covered)
    if missing:
        raise ProfileError(f"{where}: classes {missing} are produced by no part")
    spacing = _require(data, "target_spacing_mm", where)
    if isinstance(spacing, (int, float)):
        spacing = [spacing] * 3
    if (
        not isinstance(spacing, list)
        or len(spacing) != 3
        or not all(isinstance(s, (int, float)) and s > 0 for s in spacing)
    ):
        raise ProfileError(f"{where}: 'target_spacing_mm' must be a positive number or three of them")
    step = float(data.get("tile_step_size", 0.5))
    if not 0 < step <= 1:
        raise ProfileError(f"{where}: 'tile_step_size' must lie in (0, 1], got {step}")
    cast = str(data.get("intensity_cast", "int32_truncate"))
    if cast not in INTENSITY_CASTS:
        raise ProfileError(f"{where}: 'intensity_cast' must be one of {INTENSITY_CASTS}, got {cast!r}")
    return ModelProfile(
        name=name,
        description=str(data.get("description", "")),
        classes=dict(sorted(classes.items())),
        parts=parts,
        target_spacing_mm=tuple(float(s) for s in spacing),  # type: ignore[arg-type]
        tile_step_size=step,
        intensity_cast=cast,
        fast_variant=data.get("fast_variant"),
        weights_hint=str(data.get("weights_hint", "")),
        source=source,
    )


def available_profiles() -> list[str]:
    """Names of the profiles shipped with the application."""
    return sorted(p.stem for p in PROFILES_DIR.glob("*.json"))


def load_profile(name_or_path: str | Path, fast: bool = False) -> ModelProfile:
    """Load a shipped profile by name (``"total_mr"``) or any profile file by path.

    With ``fast=True`` the profile's ``fast_variant`` is loaded instead (an error if it has none).
    """
    path = Path(name_or_path)
    if path.suffix != ".json" and not path.exists():
        path = PROFILES_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise ProfileError(
            f"model profile '{name_or_path}' not found; shipped profiles: {', '.join(available_profiles())}"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ProfileError(f"model profile {path} cannot be read: {exc}") from exc
    profile = parse_profile(data, source=path)
    if fast:
        if not profile.fast_variant:
            raise ProfileError(f"model profile '{profile.name}' has no fast variant")
        variant = path.with_name(f"{profile.fast_variant}.json")
        return load_profile(variant if variant.is_file() else profile.fast_variant)
    return profile
