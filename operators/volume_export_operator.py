"""Holoscan operator: write every built volume as NIfTI into the run's staged output."""

from __future__ import annotations

from monai.deploy.core import Fragment, Operator, OperatorSpec

from operators.run_state import RunState, stop_on_user_error
from operators.volume_export import NIFTI_FOLDER, export_volumes


class VolumeExportOperator(Operator):
    """Receives ``list[Volume]`` on ``volumes``; writes ``nifti/<label>.nii.gz`` for each."""

    def __init__(self, fragment: Fragment, *args, state: RunState, **kwargs):
        self.state = state
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("volumes")

    @stop_on_user_error
    def compute(self, op_input, op_output, context):
        export_volumes(op_input.receive("volumes"), self.state.staged.path(NIFTI_FOLDER))
