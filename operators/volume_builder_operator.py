"""Holoscan operator: build a 3D volume for every selected stack (all series, not only the first)."""

from __future__ import annotations

import time

from monai.deploy.core import Fragment, Operator, OperatorSpec

from operators.errors import NoEligibleSeriesError
from operators.run_state import RunState, stop_on_user_error
from operators.volume_builder import build_selected_volumes


class VolumeBuilderOperator(Operator):
    """Receives a SelectionResult on ``selection``, emits ``list[Volume]`` on ``volumes``."""

    def __init__(self, fragment: Fragment, *args, state: RunState, **kwargs):
        self.state = state
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("selection")
        spec.output("volumes")

    @stop_on_user_error
    def compute(self, op_input, op_output, context):
        start = time.perf_counter()
        volumes = build_selected_volumes(op_input.receive("selection"))
        self.state.volumes = volumes
        self.state.timings["volume_build"] = time.perf_counter() - start
        if not volumes:
            raise NoEligibleSeriesError("no selected stack could be built into a volume; see selection.json")
        op_output.emit(volumes, "volumes")
