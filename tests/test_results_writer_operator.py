"""The thin Holoscan operator: in a real Holoscan graph it writes the results into the run's staged
output, which RunState moves into place; a bad result becomes the run's user error and nothing is left."""

from __future__ import annotations

import json
import sys

from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application, Fragment, Operator, OperatorSpec

from operators.results_writer_operator import ResultsWriterOperator
from operators.run_state import RunState
from operators.segmentation_result import ResultWriterError
from tests.result_writer_sources import make_result, write_classic_series

CLASSES = {1: "spleen", 5: "liver"}


class _EmitResults(Operator):
    def __init__(self, fragment: Fragment, *args, results, **kwargs):
        self.results = results
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.output("results")

    def compute(self, op_input, op_output, context):
        op_output.emit(self.results, "results")


class _WriterApp(Application):
    def __init__(self, *args, state: RunState, results, **kwargs):
        self.state = state
        self.results = results
        super().__init__(*args, **kwargs)

    def compose(self):
        emit = _EmitResults(self, CountCondition(self, 1), results=self.results, name="emit")
        write = ResultsWriterOperator(self, state=self.state, name="write_results")
        self.add_flow(emit, write, {("results", "results")})


def _run(tmp_path, results) -> RunState:
    state = RunState(input_path=tmp_path / "in", output_path=tmp_path / "out")
    state.timings["before_writing"] = 0.25
    state.begin()
    _WriterApp([sys.executable, "app"], state=state, results=results).run()
    state.finish()
    return state


def test_operator_writes_results_into_the_output_folder(tmp_path):
    result = make_result(write_classic_series(tmp_path / "src"), CLASSES)
    state = _run(tmp_path, [result])
    assert state.error is None
    out = tmp_path / "out"
    label = result.volume.label
    assert (out / "dicom" / f"{label}_seg.dcm").is_file()
    assert (out / "dicom" / f"{label}_sr.dcm").is_file()
    assert (out / "statistics.json").is_file() and (out / "run.json").is_file()
    assert "write_results" in state.timings
    run = json.loads((out / "run.json").read_text())
    assert run["timings_s"]["before_writing"] == 0.25  # the run's earlier stages are recorded too
    assert "writer.dicom_seg" in run["timings_s"]


def test_operator_turns_a_bad_result_into_a_user_error_without_partial_files(tmp_path):
    result = make_result(write_classic_series(tmp_path / "src"), {1: "spleen", 2: "no_such_organ"})
    state = _run(tmp_path, [result])
    assert isinstance(state.error, ResultWriterError)
    assert "no_such_organ" in str(state.error)
    leftovers = {p.name for p in (tmp_path / "out").iterdir()}
    assert leftovers <= {"selection.json"}
