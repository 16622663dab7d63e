"""Per-structure numbers of one segmented volume, and the files research pipelines aggregate.

* ``statistics.json`` in TotalSegmentator's shape, ``{structure: {"volume": mm3, "intensity": mean}}``, for
  every class of the model (absent ones 0.0, as TotalSegmentator writes them). Unlike TotalSegmentator's
  default, structures touching the volume border keep their values; the CSV flags them instead.
* ``statistics.csv``: one row per structure and series (every volume of the run in one table).

Intensities are the volume's real-world values (RescaleSlope/Intercept applied by the volume builder),
not TotalSegmentator's int16-cast image, so means may differ from its output in the decimals.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from operators.segmentation_result import SegmentationResult

CSV_COLUMNS = (
    "study_instance_uid",
    "series_instance_uid",
    "series_number",
    "series_description",
    "stack_id",
    "volume_label",
    "label",
    "structure",
    "voxel_count",
    "volume_mm3",
    "volume_ml",
    "mean_intensity",
    "median_intensity",
    "touches_border",
)


@dataclass(frozen=True)
class StructureStatistics:
    label: int
    structure: str
    voxel_count: int
    volume_mm3: float
    mean_intensity: float | None  # None when the structure is empty
    median_intensity: float | None
    touches_border: bool

    @property
    def volume_ml(self) -> float:
        return self.volume_mm3 / 1000.0

    @property
    def present(self) -> bool:
        return self.voxel_count > 0


def compute_statistics(result: SegmentationResult) -> list[StructureStatistics]:
    """Statistics of every class in ``result.classes`` (label order), absent classes with zero volume."""
    counts = result.validate()
    voxel_mm3 = float(abs(np.linalg.det(np.asarray(result.volume.affine_lps, dtype=np.float64)[:3, :3])))
    image = result.volume.array
    labels = result.labels
    boxes = ndimage.find_objects(labels)  # bounding box per label value, index label-1
    stats = []
    for label in sorted(result.classes):
        n = counts[label]
        box = boxes[label - 1] if 0 < label <= len(boxes) else None
        if n == 0 or box is None:
            stats.append(StructureStatistics(label, result.classes[label], 0, 0.0, None, None, False))
            continue
        values = image[box][labels[box] == label].astype(np.float64)
        touches = any(s.start == 0 or s.stop == dim for s, dim in zip(box, labels.shape, strict=True))
        stats.append(
            StructureStatistics(
                label=label,
                structure=result.classes[label],
                voxel_count=n,
                volume_mm3=n * voxel_mm3,
                mean_intensity=float(values.mean()),
                median_intensity=float(np.median(values)),
                touches_border=bool(touches),
            )
        )
    return stats


def totalsegmentator_statistics(stats: list[StructureStatistics]) -> dict[str, dict[str, float]]:
    """The dict TotalSegmentator's ``-s`` writes: volume in mm3 and mean intensity, rounded to 4 places."""
    return {
        s.structure: {
            "volume": round(s.volume_mm3, 4),
            "intensity": round(s.mean_intensity, 4) if s.mean_intensity is not None else 0.0,
        }
        for s in stats
    }


def write_statistics_json(stats: list[StructureStatistics], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(totalsegmentator_statistics(stats), indent=2) + "\n", encoding="utf-8")
    return path


def csv_rows(result: SegmentationResult, stats: list[StructureStatistics]) -> list[dict[str, object]]:
    volume = result.volume
    rows = []
    for s in stats:
        row = asdict(s)
        row.update(
            study_instance_uid=volume.study_instance_uid,
            series_instance_uid=volume.series_instance_uid,
            series_number="" if volume.series_number is None else volume.series_number,
            series_description=volume.series_description,
            stack_id=volume.stack_id,
            volume_label=volume.label,
            volume_mm3=round(s.volume_mm3, 4),
            volume_ml=round(s.volume_ml, 6),
            mean_intensity="" if s.mean_intensity is None else round(s.mean_intensity, 4),
            median_intensity="" if s.median_intensity is None else round(s.median_intensity, 4),
            touches_border=int(s.touches_border),
        )
        rows.append({column: row[column] for column in CSV_COLUMNS})
    return rows


def write_statistics_csv(rows: list[dict[str, object]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path
