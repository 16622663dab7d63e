"""Write every result of a run: DICOM SEG + TID 1500 SR per volume, PDF (+ Encapsulated PDF) per study,
overlay PNGs, statistics (JSON per volume, one CSV) and run.json, in the layout of
:mod:`operators.output_layout`.

:func:`write_results` writes into a folder the caller stages (the application's
:class:`~operators.output_staging.StagedOutput`); :func:`write_results_atomically` does the staging itself
for callers without one. Nothing is written for any volume until every result has passed validation
(shapes, class codes), so bad input fails before the first file.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from operators.anatomy_codes import check_classes_coded
from operators.encapsulated_pdf import write_encapsulated_pdf
from operators.output_layout import ResultsLayout
from operators.output_staging import StagedOutput, write_json_atomic
from operators.overlays import write_overlay_pngs
from operators.pdf_report import ReportVolume, write_pdf_report
from operators.run_provenance import build_run_record, relative_outputs
from operators.seg_writer import SegWriterOptions, read_source_datasets, write_segmentation
from operators.segmentation_result import ResultWriterError, SegmentationResult
from operators.sr_writer import write_measurement_report
from operators.statistics import compute_statistics, csv_rows, write_statistics_csv, write_statistics_json

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResultsWriterOptions:
    seg: SegWriterOptions = field(default_factory=SegWriterOptions)
    write_sr: bool = True
    write_pdf: bool = True
    write_png: bool = True


@dataclass
class WrittenResults:
    root: Path
    files: list[str]  # relative to root
    omitted_structures: dict[str, list[str]]  # volume label -> empty structures (not in its SEG)
    volumes_without_seg: list[str]  # volumes where nothing was found (no SEG / SR possible)
    timings: dict[str, float]


def _timed(timings: dict[str, float], stage: str, started: float) -> None:
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - started


def write_results(
    results: list[SegmentationResult],
    root: Path,
    options: ResultsWriterOptions | None = None,
    *,
    started_at: dt.datetime | None = None,
    run_timings: dict[str, float] | None = None,
) -> WrittenResults:
    """Write all outputs for ``results`` under ``root``; raises ResultWriterError on unusable input.

    ``run_timings`` (stage -> seconds of the steps before this one, e.g. the application's RunState
    timings) go into run.json next to the writers' own.
    """
    options = options or ResultsWriterOptions()
    started_at = started_at or dt.datetime.now(dt.timezone.utc)  # the run's start if the caller knows it
    if not results:
        raise ResultWriterError("no segmentation results to write")
    for result in results:  # validate everything before writing anything
        result.validate()
        check_classes_coded(result.classes)
    layout = ResultsLayout(Path(root))
    timings: dict[str, float] = {}
    rows: list[dict[str, object]] = []
    omitted: dict[str, list[str]] = {}
    without_seg: list[str] = []
    by_study: dict[str, list[tuple[ReportVolume, object]]] = defaultdict(list)
    pngs: dict[str, list[Path]] = {}
    # PNGs double as the PDF's pictures; when only the PDF is wanted they are drawn in a scratch folder.
    png_folder = layout.png_folder() if options.write_png else layout.root / ".overlay-scratch"

    for result in results:
        label = result.volume.label
        t = time.perf_counter()
        stats = compute_statistics(result)
        write_statistics_json(stats, layout.statistics_json(label))
        if result is results[0]:
            write_statistics_json(stats, layout.primary_statistics_json)
        rows.extend(csv_rows(result, stats))
        _timed(timings, "statistics", t)

        t = time.perf_counter()
        sources = read_source_datasets(result)
        _timed(timings, "read_sources", t)
        if result.present_labels():
            t = time.perf_counter()
            seg = write_segmentation(result, layout.seg(label), options.seg, sources)
            omitted[label] = seg.omitted_structures
            _timed(timings, "dicom_seg", t)
            if options.write_sr:
                t = time.perf_counter()
                write_measurement_report(result, seg, stats, sources, layout.sr(label))
                _timed(timings, "dicom_sr", t)
        else:
            logger.warning("no structure found in %s: no DICOM SEG or SR written for it", label)
            without_seg.append(label)
            omitted[label] = result.absent_structures()
        if (options.write_png or options.write_pdf) and result.present_labels():
            t = time.perf_counter()
            pngs[label] = write_overlay_pngs(result, png_folder, label)
            _timed(timings, "overlays_png", t)
        by_study[result.volume.study_instance_uid].append((ReportVolume(result, stats), sources[0]))

    t = time.perf_counter()
    write_statistics_csv(rows, layout.statistics_csv)
    _timed(timings, "statistics", t)

    if options.write_pdf:
        for study_uid, entries in by_study.items():
            t = time.perf_counter()
            header = entries[0][1]
            pdf_path = write_pdf_report(
                header,
                [rv for rv, _ in entries],
                layout.pdf(study_uid),
                pngs,  # type: ignore[arg-type]
            )
            _timed(timings, "pdf_report", t)
            t = time.perf_counter()
            first = entries[0][0].result
            write_encapsulated_pdf(
                pdf_path,
                header,  # type: ignore[arg-type]
                path=layout.encapsulated_pdf(study_uid),
                series_number=9000 + (first.volume.series_number or 0),
                software_version=first.algorithm.version,
            )
            _timed(timings, "encapsulated_pdf", t)

    if not options.write_png and png_folder.exists():
        shutil.rmtree(png_folder)
    files = relative_outputs(layout.root) + [layout.relative(layout.run_json)]
    stage_timings = {**(run_timings or {}), **{f"writer.{k}": v for k, v in timings.items()}}
    record = build_run_record(
        results, files, stage_timings, device=results[0].algorithm.device or None, started_at=started_at
    )
    write_json_atomic(layout.run_json, record)
    return WrittenResults(layout.root, sorted(files), omitted, without_seg, timings)


def write_results_atomically(
    results: list[SegmentationResult], output_dir: Path, options: ResultsWriterOptions | None = None
) -> WrittenResults:
    """Stage everything in a hidden folder inside ``output_dir``; move it into place only on success."""
    staged = StagedOutput(Path(output_dir))
    try:
        written = write_results(results, staged.staging, options)
    except BaseException:
        staged.abort()
        raise
    staged.commit()
    written.root = Path(output_dir)
    return written
