"""The Holoscan segmentation operator in a real (tiny) Holoscan graph."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monai.deploy.conditions import CountCondition  # noqa: E402
from monai.deploy.core import Application, Operator, OperatorSpec  # noqa: E402

from operators.model_factory import SyntheticModelSpec, write_model_folder  # noqa: E402
from operators.model_profile import load_profile  # noqa: E402
from operators.model_store import ModelFolderError  # noqa: E402
from operators.run_state import RunState  # noqa: E402
from operators.segmentation_engine import SegmentationEngine  # noqa: E402
from operators.segmentation_operator import SegmentationOperator  # noqa: E402
from tests.engine_helpers import make_volume, smooth_image  # noqa: E402


class _Source(Operator):
    def __init__(self, fragment, *args, volumes, **kwargs):
        self.volumes = volumes
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.output("volumes")

    def compute(self, op_input, op_output, context):
        op_output.emit(self.volumes, "volumes")


class _Sink(Operator):
    def __init__(self, fragment, *args, received, **kwargs):
        self.received = received
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("results")

    def compute(self, op_input, op_output, context):
        self.received.extend(op_input.receive("results"))


class _App(Application):
    def __init__(self, volumes, state, received, profile):
        self.volumes, self.state, self.received, self.profile_path = volumes, state, received, profile
        super().__init__([sys.executable, "app"])

    def compose(self):
        source = _Source(self, CountCondition(self, 1), volumes=self.volumes, name="source")
        segment = SegmentationOperator(self, state=self.state, profile=self.profile_path, name="segmentation")
        sink = _Sink(self, received=self.received, name="sink")
        self.add_flow(source, segment, {("volumes", "volumes")})
        self.add_flow(segment, sink, {("results", "results")})


def _demo_like_models(root: Path) -> None:
    """A random-weight model in the demo profile's folder layout (the trained demo model is not needed)."""
    demo = load_profile("demo")
    names = tuple(demo.classes[label] for label in demo.parts[0].labels.values())
    write_model_folder(
        root / "demo",
        SyntheticModelSpec(
            dataset="Dataset999_TotalSegMRIDemo",
            label_names=names,
            patch_size=(32, 32, 32),
            spacing=(3.0, 3.0, 3.0),
        ),
    )


def test_operator_emits_one_result_per_volume_with_labels_on_the_source_grid(tmp_path):
    _demo_like_models(tmp_path / "models")
    volumes = [make_volume(smooth_image((40, 36, 12), seed=s)) for s in (1, 2)]
    state = RunState(input_path=tmp_path, output_path=tmp_path / "out", model_path=tmp_path / "models")
    received: list = []
    _App(volumes, state, received, "demo").run()
    assert state.error is None
    assert [r.volume for r in received] == volumes
    engine = SegmentationEngine("demo", tmp_path / "models", device="cpu")
    for result, volume in zip(received, volumes, strict=True):
        assert result.labels.shape == volume.shape and result.labels.dtype == np.uint8
        assert np.array_equal(result.labels, engine.segment(volume))
        assert result.classes == load_profile("demo").classes
        assert result.algorithm.model_profile == "demo" and len(result.algorithm.weights_sha256) == 1
        assert result.timings["total"] > 0 and result.timings["network_forward"] > 0
    assert "segmentation" in state.timings


def test_missing_model_stops_the_run_with_the_user_error(tmp_path):
    state = RunState(input_path=tmp_path, output_path=tmp_path / "out", model_path=tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    received: list = []
    _App([make_volume(smooth_image((20, 20, 6)))], state, received, "demo").run()
    assert isinstance(state.error, ModelFolderError) and "Dataset999_TotalSegMRIDemo" in str(state.error)
    assert received == []
