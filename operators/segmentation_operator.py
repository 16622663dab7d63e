"""Holoscan operator: segment every built volume with the configured model profile.

A thin wrapper over :class:`operators.segmentation_engine.SegmentationEngine`: it receives ``list[Volume]``
on ``volumes`` and emits ``list[SegmentationResult]`` on ``results``. The engine (and with it the model
folders) is loaded on the first ``compute`` from the run's models folder (``-m`` / ``HOLOSCAN_MODEL_PATH``),
so a missing model stops the run with a readable error instead of a traceback. ``compile_cache`` (auto, off or
a folder) says where CPU runs keep networks compiled for this CPU.
"""

from __future__ import annotations

import time

from monai.deploy.core import Fragment, Operator, OperatorSpec

from operators.compiled_network import cache_folder_for
from operators.run_state import RunState, stop_on_user_error
from operators.segmentation_engine import SegmentationEngine, segment_volumes


class SegmentationOperator(Operator):
    """Receives ``list[Volume]`` on ``volumes``; emits ``list[SegmentationResult]`` on ``results``."""

    def __init__(
        self,
        fragment: Fragment,
        *args,
        state: RunState,
        profile: str = "total_mr",
        fast: bool = False,
        device: str | None = None,
        compile_cache: str = "off",
        algorithm_name: str = "TotalSegmentator MRI",
        version: str = "0.1.0",
        **kwargs,
    ):
        self.state = state
        self.profile = profile
        self.fast = fast
        self.device = device
        self.compile_cache = compile_cache
        self.algorithm_name = algorithm_name
        self.version = version
        self.engine: SegmentationEngine | None = None
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("volumes")
        spec.output("results")

    @stop_on_user_error
    def compute(self, op_input, op_output, context):
        volumes = op_input.receive("volumes")
        started = time.perf_counter()
        if self.engine is None:
            self.engine = SegmentationEngine(
                self.profile,
                self.state.model_path,
                device=self.device,
                fast=self.fast,
                compile_cache=cache_folder_for(self.compile_cache),
            )
            self.state.timings["model_load"] = time.perf_counter() - started
        results = segment_volumes(self.engine, list(volumes), self.algorithm_name, self.version)
        self.state.timings["segmentation"] = time.perf_counter() - started
        op_output.emit(results, "results")
