"""Holoscan operator: write SEG, SR, PDF, PNG, statistics and run.json for every segmented volume."""

from __future__ import annotations

import logging
import time

from monai.deploy.core import Fragment, Operator, OperatorSpec

from operators.results_writer import ResultsWriterOptions, write_results
from operators.run_state import RunState, stop_on_user_error

logger = logging.getLogger(__name__)


class ResultsWriterOperator(Operator):
    """Receives ``list[SegmentationResult]`` on ``results``; writes them into the run's staged output.

    The staged output is moved into the output folder by ``RunState.finish()`` only if the whole run
    succeeded, so a failure here leaves no partial result files.
    """

    def __init__(
        self,
        fragment: Fragment,
        *args,
        state: RunState,
        options: ResultsWriterOptions | None = None,
        **kwargs,
    ):
        self.state = state
        self.options = options or ResultsWriterOptions()
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("results")

    @stop_on_user_error
    def compute(self, op_input, op_output, context):
        started = time.perf_counter()
        written = write_results(
            op_input.receive("results"),
            self.state.staged.staging,
            self.options,
            run_timings=self.state.timings,
        )
        self.state.timings["write_results"] = time.perf_counter() - started
        for label, names in written.omitted_structures.items():
            if names:
                logger.info("%s: not found, so not in its SEG: %s", label, ", ".join(names))
