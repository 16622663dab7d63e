"""Sort a finished run's results into the folders the XNAT output handlers upload, then optionally push ROIs.

``xnat_command.json`` runs ``python3 -m app.xnat_outputs /output/totalseg /output/xnat [--push-roi ...]``
after the segmentation. XNAT output handlers select files only by folder and glob, while the application
writes every DICOM object into one ``dicom/`` folder, so this step classifies the objects by SOP Class UID
(PS3.4 Annex B) and links them into ``xnat/SEG``, ``xnat/SR`` and ``xnat/PDF``; the PDF report, PNG overlays
and statistics files join ``xnat/PDF``, ``xnat/QC`` and ``xnat/STATS``.

It fails (one log line, exit status 1) when a required kind is missing, so a job never ends "Complete" with
nothing uploaded; the staging folder is built under a temporary name and renamed into place at the end.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from app.xnat_upload import (
    SEGMENTATION_STORAGE,
    XnatCredentials,
    XnatUploadError,
    push_roi_collection,
    roi_collection_label,
)

logger = logging.getLogger(__name__)

ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"
SR_STORAGE_PREFIX = "1.2.840.10008.5.1.4.1.1.88."  # every Structured Report storage class (PS3.4 B.5)
STATISTICS_FILES = ("statistics.json", "statistics.csv", "run.json", "selection.json")
KINDS = ("SEG", "SR", "PDF", "QC", "STATS")
REQUIRED_KINDS = ("SEG", "SR", "PDF", "QC", "STATS")


class XnatOutputError(ValueError):
    """The results folder lacks something every XNAT upload needs."""


def dicom_kind(path: Path) -> str | None:
    """'SEG', 'SR' or 'PDF' from the file's SOP Class UID; None for other or non-DICOM files."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return None
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class == SEGMENTATION_STORAGE:
        return "SEG"
    if sop_class == ENCAPSULATED_PDF_STORAGE:
        return "PDF"
    if sop_class.startswith(SR_STORAGE_PREFIX):
        return "SR"
    return None


def classify_results(results_dir: Path) -> dict[str, list[Path]]:
    """Which result files go to which XNAT resource."""
    found: dict[str, list[Path]] = {kind: [] for kind in KINDS}
    dicom_dir = results_dir / "dicom"
    if dicom_dir.is_dir():
        for path in sorted(p for p in dicom_dir.rglob("*") if p.is_file()):
            kind = dicom_kind(path)
            if kind is None:
                logger.warning("not uploading %s: not a SEG, SR or Encapsulated PDF", path)
            else:
                found[kind].append(path)
    report_dir = results_dir / "report"
    if report_dir.is_dir():
        found["PDF"].extend(sorted(report_dir.glob("*.pdf")))
        found["QC"].extend(sorted(report_dir.glob("*.png")))
    found["STATS"].extend(results_dir / name for name in STATISTICS_FILES if (results_dir / name).is_file())
    # Per-volume statistics (statistics/<volume>/statistics.json) are staged as <volume>_statistics.json.
    per_volume = results_dir / "statistics"
    if per_volume.is_dir():
        found["STATS"].extend(sorted(p for p in per_volume.rglob("*") if p.is_file()))
    return found


def _place(source: Path, folder: Path, used: set[str]) -> None:
    name = source.name
    if name in used:  # same file name from two sub-folders: keep both
        name = f"{source.parent.name}_{name}"
    used.add(name)
    target = folder / name
    try:
        os.link(source, target)  # same file system: no copy of large SEGs
    except OSError:
        shutil.copy2(source, target)


def stage_for_xnat(results_dir: Path, staging_dir: Path) -> dict[str, list[Path]]:
    """Build ``staging_dir/{SEG,SR,PDF,QC,STATS}``; raise `XnatOutputError` if a required kind is missing."""
    results_dir, staging_dir = Path(results_dir), Path(staging_dir)
    if not results_dir.is_dir():
        raise XnatOutputError(f"{results_dir} does not exist: the segmentation run produced no results")
    found = classify_results(results_dir)
    missing = [kind for kind in REQUIRED_KINDS if not found[kind]]
    if "statistics.json" not in {p.name for p in found["STATS"]}:
        missing.append("STATS (statistics.json)")
    if missing:
        raise XnatOutputError(
            f"results in {results_dir} lack {', '.join(dict.fromkeys(missing))}; nothing uploaded"
        )
    if staging_dir.exists():
        raise XnatOutputError(f"{staging_dir} already exists; refusing to mix two runs' uploads")
    staging_dir.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{staging_dir.name}.", dir=staging_dir.parent))
    try:
        staged: dict[str, list[Path]] = {}
        for kind, sources in found.items():
            folder = temporary / kind
            folder.mkdir()
            used: set[str] = set()
            for source in sources:
                _place(source, folder, used)
            staged[kind] = sorted(staging_dir / kind / name for name in used)
        os.replace(temporary, staging_dir)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    for kind in KINDS:
        logger.info("XNAT resource %s: %d file(s)", kind, len(staged[kind]))
    return staged


def push_segmentations(
    seg_files: Sequence[Path], project: str, session: str, prefix: str, credentials: XnatCredentials
) -> list[str]:
    """Store every SEG as an ROI collection of the session; returns the labels used."""
    labels = []
    for seg in seg_files:
        label = roi_collection_label(seg, prefix)
        push_roi_collection(seg, project, session, label, credentials)
        labels.append(label)
    return labels


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app.xnat_outputs", description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path, help="output folder of `totalseg-mri run`")
    parser.add_argument("staging_dir", type=Path, help="folder the XNAT output handlers upload from")
    parser.add_argument(
        "--push-roi", action="store_true", help="also store each SEG as an XNAT ROI collection"
    )
    parser.add_argument("--project", default="", help="XNAT project ID")
    parser.add_argument("--session", default="", help="XNAT experiment ID of the session")
    parser.add_argument("--roi-label-prefix", default="TotalSegMRI", help="prefix of ROI collection labels")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        staged = stage_for_xnat(args.results_dir, args.staging_dir)
        if args.push_roi:
            credentials = XnatCredentials.from_environment()
            push_segmentations(staged["SEG"], args.project, args.session, args.roi_label_prefix, credentials)
    except (XnatOutputError, XnatUploadError, OSError) as exc:
        logger.error("XNAT upload preparation failed: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
