"""The MONAI Deploy application: an MR DICOM study in; segmentations as DICOM SEG/SR/PDF, statistics and NIfTI out."""

from __future__ import annotations

from pathlib import Path

from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application

from app import __version__
from app.options import RunOptions, detect_task
from operators.dicom_index_operator import DicomIndexOperator
from operators.errors import OutputError
from operators.nifti_export_operator import NiftiExportOperator
from operators.results_writer_operator import ResultsWriterOperator
from operators.run_state import RunState
from operators.segmentation_operator import SegmentationOperator
from operators.series_selection_operator import SeriesSelectionOperator
from operators.volume_builder_operator import VolumeBuilderOperator


class TotalSegMRIApp(Application):
    """Load DICOM -> select series -> build volumes -> segment -> write DICOM SEG/SR/PDF, statistics, NIfTI."""

    name = "totalseg-mri"
    description = "TotalSegmentator MRI: whole-body MR segmentation from DICOM studies"

    def __init__(self, argv: list[str] | None = None, options: RunOptions | None = None):
        super().__init__(argv)
        self.run_options = options
        self.state: RunState | None = None

    def compose(self):
        state = self.state
        load = DicomIndexOperator(self, CountCondition(self, 1), state=state, name="dicom_index")
        select = SeriesSelectionOperator(self, state=state, rules=self.run_options.rules, name="series_selection")
        build = VolumeBuilderOperator(self, state=state, name="volume_builder")
        segment = SegmentationOperator(self, state=state, profile=self.run_options.task,
                                       fast=self.run_options.fast, device=self.run_options.device,
                                       compile_cache=self.run_options.compile_cache,
                                       version=__version__, name="segmentation")
        write = ResultsWriterOperator(self, state=state, name="results_writer")
        export = NiftiExportOperator(self, state=state, name="nifti_export")

        self.add_flow(load, select, {("index", "index")})
        self.add_flow(select, build, {("selection", "selection")})
        self.add_flow(build, segment, {("volumes", "volumes")})
        self.add_flow(segment, write, {("results", "results")})
        self.add_flow(segment, export, {("results", "results")})

    def run(self, *args, **kwargs):
        """Run the graph once; raise the user error that stopped it, if any, after writing selection.json."""
        if self.run_options is None:
            self.run_options = RunOptions.from_env()
        try:
            context = Application.init_app_context(self.argv)
        except OSError as exc:  # the SDK creates the output folder while parsing -o
            raise OutputError(f"output folder cannot be created: {exc.strerror}: {exc.filename}") from None
        self.state = RunState(
            input_path=Path(context.input_path),
            output_path=Path(context.output_path),
            model_path=Path(context.model_path) if context.model_path else None,
        )
        if not self.run_options.task:
            self.run_options.task = detect_task(self.state.model_path, self.run_options.fast)
        self.state.begin()
        try:
            super().run(*args, **kwargs)
        except BaseException as exc:
            self.state.finish(crash=exc)
            raise
        self.state.finish()
        if self.state.error is not None:
            raise self.state.error
