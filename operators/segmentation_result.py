"""What the segmentation engine hands to the result writers: one labelled volume plus its provenance.

Plain data, no Holoscan: the results-writer operator receives a list of these on its input port, and the
writers (DICOM SEG, TID 1500 SR, PDF, statistics) each read what they need from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from operators.errors import TotalSegMRIError
from operators.volume import Volume


class ResultWriterError(TotalSegMRIError, ValueError):
    """A segmentation result cannot be written: inconsistent labels/geometry, unknown class, bad source."""


def label_counts(labels: np.ndarray) -> np.ndarray:
    """Voxels per label value, slice by slice (bincount widens to int64: a whole 512x512x200 volume at
    once would need a 400 MB temporary)."""
    counts = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.int64)
    for k in range(labels.shape[-1]):
        plane = np.bincount(labels[..., k].ravel(), minlength=counts.size)
        counts += plane
    return counts


@dataclass(frozen=True)
class AlgorithmInfo:
    """The algorithm that produced a label volume (SEG and SR Algorithm Identification)."""

    name: str  # e.g. "TotalSegmentator MRI"
    version: str  # software version of this application, e.g. "0.1.0"
    model_profile: str  # e.g. "total_mr" or "demo"
    weights_sha256: tuple[str, ...] = ()  # one checksum per weights file, in the order the models ran
    device: str = ""  # what the model ran on, e.g. "cpu" or "cuda:0 (NVIDIA H100)"

    def parameters(self) -> dict[str, str]:
        """Algorithm Parameters (0066,0032): how to reproduce this result."""
        params = {"model_profile": self.model_profile}
        if self.weights_sha256:
            params["weights_sha256"] = ",".join(self.weights_sha256)
        return params


@dataclass
class SegmentationResult:
    """One segmented volume: the label array on the volume's own grid and the class map of its values."""

    volume: Volume
    labels: np.ndarray  # uint8/uint16, same shape as volume.array, 0 = background
    classes: dict[int, str]  # label value -> TotalSegmentator structure name
    algorithm: AlgorithmInfo
    timings: dict[str, float] = field(default_factory=dict)  # stage name -> seconds
    # Voxel counts are needed by every writer; counted once. The labels must not be changed in place
    # once the result is handed to the writers (a new array is noticed, an in-place edit is not).
    _counts: tuple[np.ndarray, np.ndarray] | None = field(default=None, init=False, repr=False, compare=False)

    def _label_counts(self) -> np.ndarray:
        if self._counts is None or self._counts[0] is not self.labels:
            self._counts = (self.labels, label_counts(self.labels))
        return self._counts[1]

    def validate(self) -> dict[int, int]:
        """Raise ResultWriterError when labels, geometry and sources do not fit; return the voxel counts."""
        if self.labels.shape != self.volume.shape:
            raise ResultWriterError(
                f"label volume shape {self.labels.shape} differs from image volume shape {self.volume.shape} "
                f"for series {self.volume.series_instance_uid}"
            )
        if not np.issubdtype(self.labels.dtype, np.integer) or self.labels.dtype.itemsize > 2:
            raise ResultWriterError(f"label volume must hold uint8 or uint16 values, got {self.labels.dtype}")
        if self.labels.size and int(self.labels.min()) < 0:
            raise ResultWriterError("label volume holds negative values")
        if not self.volume.sources:
            raise ResultWriterError(f"volume {self.volume.label} has no source frames to reference")
        if self.volume.slices_match_sources and len(self.volume.sources) != self.volume.shape[2]:
            raise ResultWriterError(
                f"volume {self.volume.label} has {len(self.volume.sources)} source frames for "
                f"{self.volume.shape[2]} slices; derived DICOM objects need one source frame per slice"
            )
        counts = self._label_counts()
        unknown = sorted(int(v) for v in np.flatnonzero(counts) if v != 0 and int(v) not in self.classes)
        if unknown:
            raise ResultWriterError(f"label values {unknown} are not in the class map of this result")
        return {label: int(counts[label]) if label < counts.size else 0 for label in sorted(self.classes)}

    def voxel_counts(self) -> dict[int, int]:
        """Number of voxels per class label (every class in the map, zero where absent)."""
        counts = self._label_counts()
        return {label: int(counts[label]) if label < counts.size else 0 for label in sorted(self.classes)}

    def present_labels(self, counts: dict[int, int] | None = None) -> list[int]:
        """Class labels with at least one voxel, in ascending order."""
        counts = counts if counts is not None else self.voxel_counts()
        return [label for label, n in counts.items() if n > 0]

    def absent_structures(self, counts: dict[int, int] | None = None) -> list[str]:
        """Names of classes the model can produce but that are empty in this volume."""
        counts = counts if counts is not None else self.voxel_counts()
        return [self.classes[label] for label, n in counts.items() if n == 0]
