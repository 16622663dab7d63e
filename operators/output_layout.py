"""Where every result file goes. The layout is fixed, documented here, and the same on every run.

::

    <output>/
      dicom/                            every DICOM object, and nothing else (MONAI Deploy export and
        <volume>_seg.dcm                  XNAT output handlers pick up dicom/*.dcm)
        <volume>_sr.dcm                 TID 1500 measurement report referencing the SEG
        <study>_report_pdf.dcm          Encapsulated PDF of the study's report
      report/
        <study>_report.pdf              human-readable report
        <volume>_axial.png              overlay mosaics (also inside the PDF), e.g. for XNAT snapshots
        <volume>_coronal.png
        <volume>_sagittal.png
      statistics.json                   TotalSegmentator's shape, {structure: {"volume": mm3,
                                        "intensity": mean}}, of the first (primary) volume of the run
      statistics/
        <volume>/statistics.json        the same for every volume
      statistics.csv                    one row per structure and series, all volumes of the run
      run.json                          provenance: inputs, model profile and weights, versions, timings

``<volume>`` is :attr:`operators.volume.Volume.label` (``series<number>_<uid tail>_<stack>``), unique
within a study; ``<study>`` is ``study_`` plus the last 12 characters of the Study Instance UID. Files are
written into the run's staging folder (:mod:`operators.output_staging`) and only moved into the output
folder when everything succeeded, so a crash leaves no partial files there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DICOM_FOLDER = "dicom"
REPORT_FOLDER = "report"
STATISTICS_FOLDER = "statistics"
STATISTICS_CSV = "statistics.csv"
RUN_JSON = "run.json"


def study_key(study_instance_uid: str) -> str:
    tail = "".join(c if c.isalnum() else "_" for c in study_instance_uid[-12:])
    return f"study_{tail}"


@dataclass(frozen=True)
class ResultsLayout:
    """Paths of the result files under one root (the staging folder while writing)."""

    root: Path

    @property
    def dicom(self) -> Path:
        return self.root / DICOM_FOLDER

    @property
    def report(self) -> Path:
        return self.root / REPORT_FOLDER

    def seg(self, volume_label: str) -> Path:
        return self.dicom / f"{volume_label}_seg.dcm"

    def sr(self, volume_label: str) -> Path:
        return self.dicom / f"{volume_label}_sr.dcm"

    def encapsulated_pdf(self, study_instance_uid: str) -> Path:
        return self.dicom / f"{study_key(study_instance_uid)}_report_pdf.dcm"

    def pdf(self, study_instance_uid: str) -> Path:
        return self.report / f"{study_key(study_instance_uid)}_report.pdf"

    def png_folder(self) -> Path:
        return self.report

    def statistics_json(self, volume_label: str) -> Path:
        return self.root / STATISTICS_FOLDER / volume_label / "statistics.json"

    @property
    def primary_statistics_json(self) -> Path:
        return self.root / "statistics.json"

    @property
    def statistics_csv(self) -> Path:
        return self.root / STATISTICS_CSV

    @property
    def run_json(self) -> Path:
        return self.root / RUN_JSON

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()
