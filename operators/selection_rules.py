"""User-supplied series-selection rules: a superset of the MONAI Deploy SDK's DICOMSeriesSelectorOperator JSON.

The SDK format is accepted as it is::

    {"selections": [{"name": "T1 axial",
                     "conditions": {"Modality": "MR", "ImageOrientationPatient": "Axial",
                                    "SliceThickness": [2, ">"], "ImageType": ["PRIMARY", "!SECONDARY"]}}]}

with the SDK's matching semantics: strings match case-insensitively, exactly or by regular-expression
search; numbers match exactly, by inclusive ``[min, max]`` range, by ``[value, op]`` with op one of
``> >= < <= !=``, or by a regular expression (full match) given as a string; multi-valued attributes
(ImageType) match a list of terms that must all be present, ``!term`` meaning must be absent;
``ImageOrientationPatient`` matches ``Axial``, ``Coronal`` or ``Sagittal`` by the dominant axis of the
slice normal. A condition whose value is empty/null is ignored; a missing attribute does not match.

Additions (all optional): a top-level ``"policy"`` object setting :class:`SelectionPolicy` fields
(``modalities``, ``min_slices``, ``best_per_study``, ``apply_default_filters``), and ``"StackID"``
conditions matched against the stack a split series produced (e.g. ``"ImageType=.*\\\\W$"`` for Dixon water).
A series is selected when it passes the default policy and matches at least one selection.
"""

from __future__ import annotations

import json
import numbers
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from operators.errors import RulesError

ORIENTATIONS = ("Sagittal", "Coronal", "Axial")  # dominant axis of the slice normal: x, y, z
RELATIONS = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    "!=": lambda a, b: a != b,
}


@dataclass
class SelectionPolicy:
    """What the default policy accepts; every field can be set from a rules file's ``policy`` object."""

    modalities: tuple[str, ...] = ("MR",)
    min_slices: int = 10  # fewer slices cannot cover anatomy in 3D at the model's 1.5-3 mm spacing
    best_per_study: bool = False
    apply_default_filters: bool = True  # localizer, derived/projection, mosaic filters


@dataclass
class Selection:
    name: str
    conditions: dict[str, object]


@dataclass
class SelectionRules:
    selections: list[Selection] = field(default_factory=list)
    policy: SelectionPolicy = field(default_factory=SelectionPolicy)

    @classmethod
    def from_json(cls, text: str, source: str = "rules") -> SelectionRules:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RulesError(f"{source}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise RulesError(f"{source}: expected a JSON object with 'selections' and/or 'policy'")
        unknown = set(data) - {"selections", "policy"}
        if unknown:
            raise RulesError(f"{source}: unknown top-level key(s) {sorted(unknown)}")
        selections = []
        for i, item in enumerate(data.get("selections") or []):
            if not isinstance(item, dict) or not isinstance(item.get("conditions", {}), dict):
                raise RulesError(f"{source}: selections[{i}] must be an object with a 'conditions' object")
            selections.append(Selection(str(item.get("name", f"selection {i + 1}")), dict(item["conditions"])))
            for key, value in item["conditions"].items():
                _validate_condition(f"{source}: selections[{i}].conditions.{key}", key, value)
        policy = SelectionPolicy()
        policy_data = data.get("policy") or {}
        if not isinstance(policy_data, dict):
            raise RulesError(f"{source}: 'policy' must be an object")
        known = {f.name for f in fields(SelectionPolicy)}
        for key, value in policy_data.items():
            if key not in known:
                raise RulesError(f"{source}: unknown policy key {key!r} (known: {sorted(known)})")
            if key == "modalities":
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise RulesError(f"{source}: policy.modalities must be a list of strings")
                value = tuple(v.upper() for v in value)
            elif key == "min_slices" and (not isinstance(value, int) or value < 2):
                raise RulesError(f"{source}: policy.min_slices must be an integer >= 2")
            elif key in {"best_per_study", "apply_default_filters"} and not isinstance(value, bool):
                raise RulesError(f"{source}: policy.{key} must be true or false")
            setattr(policy, key, value)
        return cls(selections, policy)

    @classmethod
    def from_file(cls, path: Path) -> SelectionRules:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise RulesError(f"cannot read rules file {path}: {exc.strerror or exc}") from None
        return cls.from_json(text, source=str(path))

    def first_match(self, attributes: dict[str, object]) -> str | None:
        """Name of the first selection whose conditions all hold; '' when there are no selections."""
        if not self.selections:
            return ""
        for selection in self.selections:
            if all(matches(key, value, attributes) for key, value in selection.conditions.items()):
                return selection.name
        return None


def _validate_condition(where: str, key: str, value: object) -> None:
    if key == "ImageOrientationPatient" and value and str(value).capitalize() not in ORIENTATIONS:
        raise RulesError(f"{where}: must be one of {', '.join(ORIENTATIONS)}")
    if isinstance(value, list) and len(value) == 2 and isinstance(value[1], str) and isinstance(
        value[0], numbers.Number
    ):
        if value[1] not in RELATIONS:
            raise RulesError(f"{where}: unsupported operator {value[1]!r} (use one of {' '.join(RELATIONS)})")
    if isinstance(value, str):
        try:
            re.compile(value)
        except re.error as exc:
            raise RulesError(f"{where}: invalid regular expression ({exc})") from None


def orientation_name(iop: object) -> str | None:
    try:
        values = np.asarray([float(v) for v in iop], dtype=float)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    if values.shape != (6,):
        return None
    normal = np.cross(values[:3], values[3:])
    if not np.any(normal):
        return None
    return ORIENTATIONS[int(np.argmax(np.abs(normal)))]


def matches(key: str, expected: object, attributes: dict[str, object]) -> bool:
    """One SDK-style condition against study/series/stack attributes (semantics in the module docstring)."""
    if expected is None or expected == "" or expected == []:
        return True
    actual = attributes.get(key)
    if actual is None or actual == "" or actual == []:
        return False
    if key == "ImageOrientationPatient":
        return orientation_name(actual) == str(expected).strip().capitalize()
    if isinstance(actual, bool):
        return actual == expected
    if isinstance(actual, numbers.Number):
        return _match_number(expected, float(actual))  # type: ignore[arg-type]
    if isinstance(actual, str):
        if not isinstance(expected, str):
            return _match_number(expected, float(actual)) if _is_number(actual) else False
        return actual.casefold() == expected.casefold() or re.search(expected, actual, re.IGNORECASE) is not None
    if isinstance(actual, (list, tuple)):
        values = [str(v).lower() for v in actual]
        terms = expected if isinstance(expected, list) else [expected]
        for term in (str(t).lower() for t in terms):
            # Substring match within values, as the SDK does on the attribute's text form.
            present = any(term.lstrip("!") in v for v in values)
            if present == term.startswith("!"):
                return False
        return True
    return False


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _match_number(expected: object, actual: float) -> bool:
    if isinstance(expected, list) and len(expected) == 2:
        if isinstance(expected[1], str):
            return RELATIONS[expected[1]](actual, float(expected[0]))
        return float(expected[0]) <= actual <= float(expected[1])
    if isinstance(expected, str):
        return re.fullmatch(expected, f"{actual:g}") is not None
    if isinstance(expected, numbers.Number):
        return actual == float(expected)
    return False
