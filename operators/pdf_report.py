"""The human-readable report of one study: a PDF rendered with matplotlib (PdfPages, no other PDF library).

Page 1: patient and study identification, the series used, the algorithm, a notice that the result is
automatic and unverified, and a table of structures with volumes and mean intensities (continued on
further pages when long). Then one page per volume and view with the overlay mosaics of
:mod:`operators.overlays`. Structures the model looked for but did not find are listed per series.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402

from operators.anatomy_codes import anatomy_for, load_anatomy_table  # noqa: E402
from operators.overlays import VIEWS, mosaic_figure  # noqa: E402
from operators.segmentation_result import SegmentationResult  # noqa: E402
from operators.statistics import StructureStatistics  # noqa: E402

logger = logging.getLogger(__name__)

A4_PORTRAIT = (8.27, 11.69)
ROWS_PER_PAGE = 34
NOT_GIVEN = "(not given)"


@dataclass
class ReportVolume:
    """One segmented volume as it appears in the report."""

    result: SegmentationResult
    stats: list[StructureStatistics]


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, None)
    text = str(value) if value is not None else ""
    return text.strip() or NOT_GIVEN


def identification_lines(ds: Dataset) -> list[tuple[str, str]]:
    """Patient / study identification from a source instance's header (missing tags shown as such)."""
    return [
        ("Patient name", _text(ds, "PatientName")),
        ("Patient ID", _text(ds, "PatientID")),
        ("Birth date", _text(ds, "PatientBirthDate")),
        ("Sex", _text(ds, "PatientSex")),
        ("Study date", _text(ds, "StudyDate")),
        ("Study description", _text(ds, "StudyDescription")),
        ("Accession number", _text(ds, "AccessionNumber")),
        ("Study ID", _text(ds, "StudyID")),
        ("Study Instance UID", _text(ds, "StudyInstanceUID")),
    ]


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _title_page(pdf: PdfPages, header: Dataset, volumes: list[ReportVolume]) -> None:
    fig = plt.figure(figsize=A4_PORTRAIT)
    y = 0.95
    fig.text(0.07, y, "Automatic MR segmentation report", fontsize=16, weight="bold")
    y -= 0.03
    fig.text(
        0.07,
        y,
        "Produced by software without human review: NOT VERIFIED, not for diagnosis alone.",
        fontsize=9,
        color="darkred",
    )
    y -= 0.04
    for key, value in identification_lines(header):
        fig.text(0.07, y, f"{key}:", fontsize=9, weight="bold")
        fig.text(0.32, y, _shorten(value, 70), fontsize=9)
        y -= 0.022
    algorithm = volumes[0].result.algorithm
    y -= 0.015
    fig.text(0.07, y, "Algorithm:", fontsize=9, weight="bold")
    fig.text(
        0.32,
        y,
        _shorten(f"{algorithm.name} {algorithm.version}, profile {algorithm.model_profile}", 70),
        fontsize=9,
    )
    y -= 0.022
    for checksum in algorithm.weights_sha256:
        fig.text(0.32, y, f"weights sha256 {checksum}", fontsize=6, family="monospace")
        y -= 0.016
    y -= 0.015
    fig.text(0.07, y, "Series used:", fontsize=9, weight="bold")
    y -= 0.022
    for rv in volumes:
        v = rv.result.volume
        line = (
            f"#{v.series_number if v.series_number is not None else '-'} "
            f"{v.series_description or NOT_GIVEN} [stack {v.stack_id}] "
            f"{v.shape[0]}x{v.shape[1]}x{v.shape[2]} "
            f"voxels, {v.spacing[0]:.2f}x{v.spacing[1]:.2f}x{v.spacing[2]:.2f} mm"
        )
        fig.text(0.09, y, _shorten(line, 100), fontsize=8)
        y -= 0.018
        fig.text(0.11, y, f"Series Instance UID {v.series_instance_uid}", fontsize=6, family="monospace")
        y -= 0.018
        for note in v.notes:
            fig.text(0.11, y, _shorten(f"note: {note}", 110), fontsize=6)
            y -= 0.016
        absent = [s.structure for s in rv.stats if not s.present]
        if absent:
            fig.text(0.11, y, _shorten("not found: " + ", ".join(absent), 130), fontsize=6)
            y -= 0.016
    pdf.savefig(fig)
    plt.close(fig)


def _table_pages(pdf: PdfPages, volumes: list[ReportVolume]) -> None:
    rows = []
    for rv in volumes:
        v = rv.result.volume
        series = _shorten(
            f"#{v.series_number if v.series_number is not None else '-'} {v.series_description}", 28
        )
        for s in rv.stats:
            if not s.present:
                continue
            rows.append(
                [
                    series,
                    s.structure,
                    f"{s.volume_ml:.2f}",
                    f"{s.mean_intensity:.1f}",
                    f"{s.median_intensity:.1f}",
                    "yes" if s.touches_border else "",
                ]
            )
    header = ["Series", "Structure", "Volume (mL)", "Mean int.", "Median int.", "At border"]
    for start in range(0, max(len(rows), 1), ROWS_PER_PAGE):
        chunk = rows[start : start + ROWS_PER_PAGE] or [["-", "no structure found", "", "", "", ""]]
        fig = plt.figure(figsize=A4_PORTRAIT)
        fig.text(0.07, 0.95, "Structures found", fontsize=13, weight="bold")
        ax = fig.add_axes((0.05, 0.05, 0.9, 0.86))
        ax.axis("off")
        table = ax.table(
            cellText=chunk,
            colLabels=header,
            loc="upper center",
            cellLoc="left",
            colWidths=[0.28, 0.28, 0.12, 0.11, 0.11, 0.1],
        )
        table.auto_set_font_size(False)
        table.set_fontsize(7)
        table.scale(1.0, 1.25)
        for row, cells in enumerate(chunk, start=1):  # tint each structure with its overlay colour
            if cells[1] in load_anatomy_table():
                rgb = np.array(anatomy_for(cells[1]).color_rgb) / 255.0
                table[row, 1].set_facecolor((*rgb, 0.35))
        pdf.savefig(fig)
        plt.close(fig)


def _picture_page(pdf: PdfPages, png: Path) -> None:
    fig = plt.figure(figsize=A4_PORTRAIT)
    ax = fig.add_axes((0.03, 0.03, 0.94, 0.94))
    ax.imshow(plt.imread(png))
    ax.axis("off")
    pdf.savefig(fig)
    plt.close(fig)


def write_pdf_report(
    header: Dataset,
    volumes: list[ReportVolume],
    path: Path,
    overlay_pngs: dict[str, list[Path]] | None = None,
) -> Path:
    """Write the report of one study to ``path``; ``header`` is any source instance of that study.

    ``overlay_pngs`` (volume label -> PNG files) puts the very pictures written for platforms into the
    PDF; volumes without them get their mosaics rendered here.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    overlay_pngs = overlay_pngs or {}
    metadata = {"Title": "Automatic MR segmentation report", "Creator": "totalseg-mri-deploy"}
    with PdfPages(path, metadata=metadata) as pdf:
        _title_page(pdf, header, volumes)
        _table_pages(pdf, volumes)
        for rv in volumes:
            if not any(s.present for s in rv.stats):
                continue
            pngs = overlay_pngs.get(rv.result.volume.label)
            if pngs:
                for png in pngs:
                    _picture_page(pdf, png)
                continue
            for view in VIEWS:
                fig = mosaic_figure(rv.result, view)
                pdf.savefig(fig)
                plt.close(fig)
    logger.info("wrote PDF report %s", path.name)
    return path
