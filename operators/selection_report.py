"""``selection.json``: every file and series seen, what was selected and why the rest was not."""

from __future__ import annotations

from pathlib import Path

from operators.dicom_index import DicomIndex
from operators.series_selection import SelectionResult, StackDecision
from operators.volume import Volume

REPORT_VERSION = 1


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def _stack_entry(decision: StackDecision, volumes: dict[tuple[str, str], Volume], root: Path) -> dict:
    key = (decision.series.series_instance_uid, decision.stack.stack_id)
    entry: dict = {
        "stack_id": decision.stack.stack_id,
        "frames": decision.stack.n_frames,
        "selected": decision.selected,
        "reasons": [r.as_dict() for r in decision.reasons],
    }
    if decision.matched_selection:
        entry["matched_selection"] = decision.matched_selection
    volume = volumes.get(key)
    if volume is not None and decision.selected:
        entry["volume"] = {
            "label": volume.label,
            "shape": list(volume.shape),
            "spacing_mm": [round(s, 6) for s in volume.spacing],
            "affine_lps": [[round(float(v), 6) for v in row] for row in volume.affine_lps],
            "notes": volume.notes,
        }
    return entry


def build_report(
    index: DicomIndex | None,
    selection: SelectionResult | None,
    volumes: list[Volume] | None = None,
    error: str | None = None,
) -> dict:
    """The report as a JSON-ready dict; works with whatever stage the run reached."""
    by_key = {(v.series_instance_uid, v.stack_id): v for v in volumes or []}
    root = index.root if index is not None else Path(".")
    report: dict = {
        "version": REPORT_VERSION,
        "status": "error" if error else "ok",
        "input": str(root),
        "files_seen": index.files_seen if index else 0,
        "skipped_files": [
            {"path": _relative(s.path, root), "reason": s.reason} for s in (index.skipped if index else [])
        ],
        "studies": [],
        "selected_volumes": sum(1 for d in selection.selected_stacks) if selection else 0,
    }
    if error:
        report["error"] = error
    if selection is None:
        return report
    studies: dict[str, list[dict]] = {}
    for decision in selection.decisions:
        series = decision.series
        studies.setdefault(series.study_instance_uid, []).append(
            {
                "series_instance_uid": series.series_instance_uid,
                "series_number": series.series_number,
                "series_description": series.series_description,
                "modality": series.modality,
                "instances": series.instance_count,
                "frames": len(series.frames),
                "selected": decision.selected,
                "reasons": [r.as_dict() for r in decision.reasons],
                "stacks": [_stack_entry(s, by_key, root) for s in decision.stacks],
            }
        )
    report["studies"] = [{"study_instance_uid": uid, "series": series} for uid, series in studies.items()]
    return report
