"""What one application run has produced so far, shared by the operators of its graph.

Holoscan logs a Python traceback for any exception raised in ``compute()``. A user error (an empty input
folder, nothing eligible, an unwritable output) is not a bug, so operators record it here and stop
emitting; the graph then winds down and the application raises it after ``run()`` returns, where the
CLI prints it as one line.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path

from operators.dicom_index import DicomIndex
from operators.errors import TotalSegMRIError
from operators.output_staging import StagedOutput, write_json_atomic
from operators.selection_report import build_report
from operators.series_selection import SelectionResult
from operators.volume import Volume

logger = logging.getLogger(__name__)


@dataclass
class RunState:
    input_path: Path
    output_path: Path
    model_path: Path | None = None
    index: DicomIndex | None = None
    selection: SelectionResult | None = None
    volumes: list[Volume] = field(default_factory=list)
    error: TotalSegMRIError | None = None
    timings: dict[str, float] = field(default_factory=dict)
    staged: StagedOutput | None = None

    def begin(self) -> None:
        """Check the output folder is writable and open the staging folder results are written into."""
        self.staged = StagedOutput(self.output_path)

    def finish(self, crash: BaseException | None = None) -> None:
        """Move staged results into place (or drop them on failure) and write ``selection.json``.

        ``selection.json`` is written in both cases, so a failed run still says what it saw and why.
        """
        failure = self.error or crash
        if self.staged is not None:
            if failure is None:
                self.staged.commit()
            else:
                self.staged.abort()
        message = None if failure is None else str(failure) or type(failure).__name__
        report = build_report(self.index, self.selection, self.volumes, message)
        try:
            write_json_atomic(Path(self.output_path) / "selection.json", report)
        except OSError as exc:
            logger.error("could not write selection.json into %s: %s", self.output_path, exc)


def stop_on_user_error(compute):
    """Decorate an operator's ``compute``: skip once the run failed; record a user error and stop."""

    @functools.wraps(compute)
    def wrapper(self, op_input, op_output, context):
        state: RunState = self.state
        if state.error is not None:
            return
        try:
            compute(self, op_input, op_output, context)
        except TotalSegMRIError as exc:
            state.error = exc
            logger.debug("run stopped by %s: %s", type(exc).__name__, exc)

    return wrapper
