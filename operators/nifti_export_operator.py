"""Holoscan operator: write every segmented volume and its label map as NIfTI into the run's staged output."""

from __future__ import annotations

from monai.deploy.core import Fragment, Operator, OperatorSpec

from operators.run_state import RunState, stop_on_user_error
from operators.volume_export import NIFTI_FOLDER, export_segmentations


class NiftiExportOperator(Operator):
    """Receives ``list[SegmentationResult]`` on ``results``; writes ``nifti/<label>.nii.gz`` and ``<label>_seg``."""

    def __init__(self, fragment: Fragment, *args, state: RunState, **kwargs):
        self.state = state
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("results")

    @stop_on_user_error
    def compute(self, op_input, op_output, context):
        export_segmentations(op_input.receive("results"), self.state.staged.path(NIFTI_FOLDER))
