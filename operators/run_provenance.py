"""``run.json``: what went in, what ran, on what, how long each stage took, and what came out.

Enough to reproduce or audit a result: input Study / Series / SOP Instance UIDs per volume, the model
profile and the SHA-256 of every weights file, versions of this application and the libraries that
shape the output, the compute device, timings per stage, and the relative paths of every file written.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import platform
import sys
from pathlib import Path

from operators.segmentation_result import SegmentationResult

SCHEMA_VERSION = 1
_VERSIONED_PACKAGES = (
    "totalseg-mri-deploy",
    "monai-deploy-app-sdk",
    "holoscan-cu13",
    "torch",
    "nnunetv2",
    "numpy",
    "scipy",
    "pydicom",
    "highdicom",
    "nibabel",
    "matplotlib",
)


def package_versions() -> dict[str, str | None]:
    """Installed versions, read from package metadata (nothing is imported, so torch stays unloaded)."""
    versions: dict[str, str | None] = {}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def volume_provenance(result: SegmentationResult) -> dict[str, object]:
    v = result.volume
    instances = []
    for frame in v.sources:
        entry: dict[str, object] = {
            "sop_instance_uid": frame.sop_instance_uid,
            "sop_class_uid": frame.sop_class_uid,
        }
        if frame.frame_number is not None:
            entry["frame_number"] = frame.frame_number
        instances.append(entry)
    return {
        "volume_label": v.label,
        "study_instance_uid": v.study_instance_uid,
        "series_instance_uid": v.series_instance_uid,
        "series_number": v.series_number,
        "series_description": v.series_description,
        "stack_id": v.stack_id,
        "frame_of_reference_uid": v.frame_of_reference_uid,
        "shape": list(v.shape),
        "spacing_mm": [round(s, 6) for s in v.spacing],
        "notes": list(v.notes),
        "source_frames": instances,
        "structures_found": [result.classes[label] for label in result.present_labels()],
        "structures_absent": result.absent_structures(),
        "timings_s": {k: round(float(s), 4) for k, s in result.timings.items()},
    }


def build_run_record(
    results: list[SegmentationResult],
    outputs: list[str],
    writer_timings: dict[str, float],
    *,
    device: str | None = None,
    started_at: dt.datetime | None = None,
) -> dict[str, object]:
    """The content of run.json (a plain dict ready for json.dump)."""
    algorithm = results[0].algorithm if results else None
    return {
        "schema_version": SCHEMA_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "started": started_at.isoformat(timespec="seconds") if started_at else None,
        "algorithm": None
        if algorithm is None
        else {
            "name": algorithm.name,
            "version": algorithm.version,
            "model_profile": algorithm.model_profile,
            "weights_sha256": list(algorithm.weights_sha256),
        },
        "device": device,
        "platform": {
            "python": sys.version.split()[0],
            "system": platform.platform(),
            "machine": platform.machine(),
        },
        "versions": package_versions(),
        "volumes": [volume_provenance(r) for r in results],
        "timings_s": {k: round(float(s), 4) for k, s in writer_timings.items()},
        "outputs": sorted(outputs),
    }


def relative_outputs(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
