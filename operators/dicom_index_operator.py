"""Holoscan operator: index the DICOM files of the input folder (headers only)."""

from __future__ import annotations

import time

from monai.deploy.core import Fragment, Operator, OperatorSpec

from operators.dicom_index import scan_folder
from operators.errors import InputError
from operators.run_state import RunState, stop_on_user_error


class DicomIndexOperator(Operator):
    """Emits a :class:`~operators.dicom_index.DicomIndex` of ``state.input_path`` on port ``index``."""

    def __init__(self, fragment: Fragment, *args, state: RunState, **kwargs):
        self.state = state
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.output("index")

    @stop_on_user_error
    def compute(self, op_input, op_output, context):
        start = time.perf_counter()
        index = scan_folder(self.state.input_path)
        self.state.index = index
        self.state.timings["dicom_index"] = time.perf_counter() - start
        if index.files_seen == 0:
            raise InputError(f"input folder {self.state.input_path} is empty")
        if not index.series:
            raise InputError(
                f"no DICOM image found in {self.state.input_path} "
                f"({index.files_seen} file(s) seen, all skipped; see selection.json)"
            )
        op_output.emit(index, "index")
