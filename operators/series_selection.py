"""Choose the MR stacks to segment from an indexed study, recording why every series was kept or not.

Default policy (each rejection is recorded with a reason code and a sentence):

- ``modality``: not one of the policy's modalities (MR by default; the model also accepts CT).
- ``localizer``: ImageType LOCALIZER, a localizer-like SeriesDescription, or a tri-plane pilot (images of
  several orientations in one series).
- ``derived``: DERIVED\\SECONDARY images, projections/MIPs (PROJECTION IMAGE, MIP, MINIP) and MPR
  reformats, and Secondary Capture objects. DERIVED\\PRIMARY images (Dixon water/fat, ADC) stay eligible.
- ``mosaic``: Siemens MOSAIC images (2D tiles of a multi-slice acquisition).
- ``geometry``: frames without ImagePositionPatient/ImageOrientationPatient/PixelSpacing, or colour images.
- ``orientation``: images of several orientations in a series that is not a localizer.
- ``too_few_slices``: fewer slices than ``min_slices`` in a stack.
- ``duplicate_positions``: slice positions repeat and no attribute tells the repeats apart.
- ``rules``: the user's selection rules match no selection.
- ``not_best``: ``best_per_study`` kept a better stack of the same study.

Series holding several 3D stacks are split first (see :mod:`operators.stack_split`); each stack is
decided on its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from operators.dicom_index import SECONDARY_CAPTURE_PREFIX, DicomIndex, FrameInfo, SeriesInfo
from operators.selection_rules import SelectionRules, orientation_name
from operators.stack_split import Stack, split_series

LOCALIZER_DESCRIPTION = re.compile(
    r"locali[sz]er|scout|survey|\bpilot|tri[- ]?plan|3[- ]?plan|\bloc\b|plan[- ]?scan", re.IGNORECASE
)
DERIVED_TERMS = {"PROJECTION IMAGE", "MIP", "MINIP", "MNIP", "MPR", "REFORMATTED", "CPR", "CURVED"}


@dataclass(frozen=True)
class Reason:
    code: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "detail": self.detail}


@dataclass
class StackDecision:
    series: SeriesInfo
    stack: Stack
    reasons: list[Reason] = field(default_factory=list)
    matched_selection: str | None = None

    @property
    def selected(self) -> bool:
        return not self.reasons

    def rank(self) -> tuple:
        """Best-per-study ranking: 3D acquisition, most slices, finest in-plane spacing, axial preferred."""
        first = self.stack.frames[0]
        is_3d = str(self.series.attributes.get("MRAcquisitionType", "")).upper() == "3D"
        spacing = first.pixel_spacing or (1e9, 1e9)
        axial = orientation_name(first.orientation) == "Axial" if first.orientation else False
        return (is_3d, self.stack.n_frames, -float(spacing[0] * spacing[1]), axial)


@dataclass
class SeriesDecision:
    series: SeriesInfo
    reasons: list[Reason] = field(default_factory=list)  # series-level rejections
    stacks: list[StackDecision] = field(default_factory=list)

    @property
    def selected(self) -> bool:
        return any(s.selected for s in self.stacks)


@dataclass
class SelectionResult:
    index: DicomIndex
    decisions: list[SeriesDecision]

    @property
    def selected_stacks(self) -> list[StackDecision]:
        return [s for d in self.decisions for s in d.stacks if s.selected]


def _orientations(frames: list[FrameInfo]) -> set[tuple[float, ...]]:
    return {tuple(round(v, 3) for v in f.orientation) for f in frames if f.orientation is not None}


def _series_reasons(series: SeriesInfo, rules: SelectionRules) -> list[Reason]:
    policy = rules.policy
    reasons: list[Reason] = []
    if series.modality not in policy.modalities:
        reasons.append(
            Reason("modality", f"modality {series.modality or 'missing'} is not in {list(policy.modalities)}")
        )
    if not policy.apply_default_filters:
        return reasons
    image_types = series.image_types
    n_orientations = len(_orientations(series.frames))
    if "LOCALIZER" in image_types:
        reasons.append(Reason("localizer", "ImageType contains LOCALIZER"))
    elif LOCALIZER_DESCRIPTION.search(series.series_description or ""):
        reasons.append(
            Reason("localizer", f"series description {series.series_description!r} names a localizer")
        )
    elif n_orientations in (2, 3) and len(series.frames) <= 5 * n_orientations:
        reasons.append(
            Reason("localizer", f"tri-plane pilot: {len(series.frames)} images in {n_orientations} orientations")
        )
    derived = sorted(image_types & DERIVED_TERMS)
    if derived:
        reasons.append(Reason("derived", f"ImageType {'/'.join(derived)}: a projection or reformat"))
    elif any(f.image_type[:2] == ("DERIVED", "SECONDARY") for f in series.frames):
        reasons.append(Reason("derived", "ImageType DERIVED\\SECONDARY: derived from other images"))
    elif any(uid.startswith(SECONDARY_CAPTURE_PREFIX) for uid in series.sop_class_uids):
        reasons.append(Reason("derived", "Secondary Capture images carry no acquisition geometry"))
    if "MOSAIC" in image_types:
        reasons.append(Reason("mosaic", "Siemens MOSAIC images (2D tiles of a multi-slice acquisition)"))
    return reasons


def _stack_reasons(stack: Stack, rules: SelectionRules) -> list[Reason]:
    frames = stack.frames
    reasons: list[Reason] = []
    missing = sorted(
        {
            name
            for f in frames
            for name, value in (
                ("ImagePositionPatient", f.position),
                ("ImageOrientationPatient", f.orientation),
                ("PixelSpacing", f.pixel_spacing),
            )
            if value is None
        }
    )
    if missing:
        reasons.append(Reason("geometry", f"missing {', '.join(missing)}: cannot place the slices in space"))
    if any(f.samples_per_pixel != 1 for f in frames):
        reasons.append(Reason("geometry", "colour images (SamplesPerPixel > 1)"))
    orientations = _orientations(frames)
    if len(orientations) > 1:
        reasons.append(Reason("orientation", f"images of {len(orientations)} different orientations"))
    if stack.duplicate_positions:
        reasons.append(
            Reason(
                "duplicate_positions",
                f"{stack.duplicate_positions} frames repeat a slice position and no attribute tells them apart",
            )
        )
    n_positions = stack.n_frames - stack.duplicate_positions
    if n_positions < rules.policy.min_slices:
        reasons.append(
            Reason(
                "too_few_slices",
                f"{n_positions} slice(s); at least {rules.policy.min_slices} are needed for a 3D volume",
            )
        )
    return reasons


def _rule_attributes(series: SeriesInfo, stack: Stack) -> dict[str, object]:
    attributes = dict(series.attributes)
    first = stack.frames[0]
    attributes["StackID"] = stack.stack_id
    attributes["NumberOfSlices"] = stack.n_frames
    if first.orientation is not None:
        attributes["ImageOrientationPatient"] = list(first.orientation)
    if first.image_type:
        attributes["ImageType"] = list(first.image_type)
    if first.echo_time is not None:
        attributes["EchoTime"] = first.echo_time
    if first.slice_thickness is not None:
        attributes["SliceThickness"] = first.slice_thickness
    return attributes


def select_series(index: DicomIndex, rules: SelectionRules | None = None) -> SelectionResult:
    """Decide every series and stack of ``index`` under the default policy and the user's rules."""
    rules = rules or SelectionRules()
    decisions = []
    for series in index.series.values():
        decision = SeriesDecision(series, _series_reasons(series, rules))
        for stack in split_series(series.frames):
            stack_decision = StackDecision(series, stack)
            if decision.reasons:
                stack_decision.reasons.append(Reason("series", "series rejected"))
            else:
                stack_decision.reasons.extend(_stack_reasons(stack, rules))
            if stack_decision.selected:
                matched = rules.first_match(_rule_attributes(series, stack))
                if matched is None:
                    stack_decision.reasons.append(
                        Reason("rules", "matches none of the user's selection rules")
                    )
                else:
                    stack_decision.matched_selection = matched or None
            decision.stacks.append(stack_decision)
        decisions.append(decision)
    result = SelectionResult(index, decisions)
    if rules.policy.best_per_study:
        _keep_best_per_study(result)
    return result


def _keep_best_per_study(result: SelectionResult) -> None:
    by_study: dict[str, list[StackDecision]] = {}
    for stack in result.selected_stacks:
        by_study.setdefault(stack.series.study_instance_uid, []).append(stack)
    for candidates in by_study.values():
        best = max(candidates, key=StackDecision.rank)
        for other in candidates:
            if other is not best:
                other.reasons.append(
                    Reason(
                        "not_best",
                        f"best-per-study kept series {best.series.series_number} stack {best.stack.stack_id}",
                    )
                )

