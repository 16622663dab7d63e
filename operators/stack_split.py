"""Split the frames of one series into 3D stacks.

A series may hold several 3D stacks at the same slice positions: Dixon in-phase/opposed-phase/water/fat
images, several echoes, diffusion b-values, dynamic time points, repeated acquisitions, magnitude and
phase. A series whose slice positions do not repeat is one stack, whatever else varies between its
images (vendors vary AcquisitionNumber per slice in 2D multi-slice acquisitions, for example). Where
positions repeat, the attributes below are tried in order and a group is split by the first one that
varies within it, until every stack has distinct positions or no attribute tells the duplicates apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from operators.dicom_index import FrameInfo

# (name shown in stack ids and reports, how to read it from a frame)
SPLIT_ATTRIBUTES: tuple[tuple[str, Callable[[FrameInfo], object]], ...] = (
    ("ImageType", lambda f: "\\".join(f.image_type)),
    ("ComplexImageComponent", lambda f: f.complex_component),
    ("StackID", lambda f: f.stack_id),
    ("EchoNumbers", lambda f: f.echo_number),
    ("EchoTime", lambda f: f.echo_time),
    ("DiffusionBValue", lambda f: f.b_value),
    ("TemporalPositionIdentifier", lambda f: f.temporal_position),
    ("TriggerTime", lambda f: f.trigger_time),
    ("AcquisitionNumber", lambda f: f.acquisition_number),
)

POSITION_DECIMALS = 2  # 0.01 mm: finer than any real slice spacing, coarser than float noise in headers


@dataclass
class Stack:
    """Frames that together form one candidate 3D volume."""

    stack_id: str  # "1" for an unsplit series, else "Attribute=value;..." naming what set it apart
    frames: list[FrameInfo]
    duplicate_positions: int = 0  # frames whose position repeats one already in the stack

    @property
    def n_frames(self) -> int:
        return len(self.frames)


def _position_key(frame: FrameInfo) -> tuple | None:
    if frame.position is None:
        return None
    orientation = tuple(round(v, 3) for v in frame.orientation) if frame.orientation else None
    return tuple(round(v, POSITION_DECIMALS) for v in frame.position), orientation


def count_duplicate_positions(frames: list[FrameInfo]) -> int:
    keys = [_position_key(f) for f in frames]
    known = [k for k in keys if k is not None]
    return len(known) - len(set(known))


def _format_value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def split_series(frames: list[FrameInfo]) -> list[Stack]:
    """Split a series' frames into stacks with distinct slice positions (see module docstring)."""
    groups: list[tuple[list[str], list[FrameInfo]]] = [([], list(frames))]
    for name, read in SPLIT_ATTRIBUTES:
        next_groups: list[tuple[list[str], list[FrameInfo]]] = []
        for labels, group in groups:
            values = [read(f) for f in group]
            distinct = list(dict.fromkeys(values))
            if count_duplicate_positions(group) == 0 or len(distinct) < 2:
                next_groups.append((labels, group))
                continue
            for value in distinct:
                members = [f for f, v in zip(group, values, strict=True) if v == value]
                next_groups.append((labels + [f"{name}={_format_value(value)}"], members))
        groups = next_groups
    stacks = [
        Stack(
            stack_id=";".join(labels) if labels else "1",
            frames=group,
            duplicate_positions=count_duplicate_positions(group),
        )
        for labels, group in groups
    ]
    return stacks
