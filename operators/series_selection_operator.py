"""Holoscan operator: decide which series/stacks to segment."""

from __future__ import annotations

from monai.deploy.core import Fragment, Operator, OperatorSpec

from operators.errors import NoEligibleSeriesError
from operators.run_state import RunState, stop_on_user_error
from operators.selection_rules import SelectionRules
from operators.series_selection import select_series


class SeriesSelectionOperator(Operator):
    """Receives a DicomIndex on ``index``, emits a SelectionResult on ``selection``."""

    def __init__(self, fragment: Fragment, *args, state: RunState, rules: SelectionRules, **kwargs):
        self.state = state
        self.rules = rules
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("index")
        spec.output("selection")

    @stop_on_user_error
    def compute(self, op_input, op_output, context):
        selection = select_series(op_input.receive("index"), self.rules)
        self.state.selection = selection
        if not selection.selected_stacks:
            raise NoEligibleSeriesError(
                f"no eligible series among {len(selection.decisions)} series; reasons in selection.json"
            )
        op_output.emit(selection, "selection")
