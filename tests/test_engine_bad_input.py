"""Bad input to the segmentation engine: each case is a clear error or a documented behaviour."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from operators.errors import InputError, TotalSegMRIError  # noqa: E402
from operators.segmentation_engine import (  # noqa: E402
    SegmentationEngine,
    UnsupportedVolumeError,
    choose_device,
    run_with_oom_fallback,
)
from tests.engine_helpers import make_volume, smooth_image, two_part_models  # noqa: E402


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return SegmentationEngine(two_part_models(root), root, device="cpu")


def test_2d_array_is_rejected(engine):
    volume = make_volume(np.ones((20, 20), dtype=np.float32))
    with pytest.raises(UnsupportedVolumeError, match="3D volume is required"):
        engine.segment(volume)


def test_single_slice_is_rejected_as_2d(engine):
    with pytest.raises(UnsupportedVolumeError, match="single slice"):
        engine.segment(make_volume(np.ones((20, 20, 1), dtype=np.float32)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels_are_rejected(engine, bad):
    image = smooth_image((20, 20, 8))
    image[3, 4, 5] = bad
    image[6, 7, 1] = bad
    with pytest.raises(UnsupportedVolumeError, match="2 voxels are NaN or infinite"):
        engine.segment(make_volume(image))


def test_errors_are_user_facing_value_errors(engine):
    with pytest.raises(ValueError) as info:
        engine.segment(make_volume(np.zeros((20, 20, 1), dtype=np.float32)))
    assert isinstance(info.value, InputError) and isinstance(info.value, TotalSegMRIError)


def test_all_zero_image_gives_an_empty_segmentation_without_running_networks(engine):
    labels = engine.segment(make_volume(np.zeros((20, 18, 6), dtype=np.float32)))
    assert labels.shape == (20, 18, 6) and labels.dtype == np.uint8 and not labels.any()
    assert engine.last_run.tiles == 0
    assert "all zero" in engine.last_run.notes[0]


def test_image_that_truncates_to_zero_is_empty_too(engine):
    """Intensities in (-1, 1) become 0 after TotalSegmentator's int32 cast: nothing to segment."""
    labels = engine.segment(make_volume(np.full((20, 18, 6), 0.7, dtype=np.float32)))
    assert not labels.any() and engine.last_run.tiles == 0


def test_extreme_anisotropy_is_rejected(engine):
    affine = np.diag([0.3, 0.3, 12.0, 1.0])
    with pytest.raises(UnsupportedVolumeError, match="too anisotropic"):
        engine.segment(make_volume(smooth_image((40, 40, 4)), affine))


def test_strong_but_supported_anisotropy_runs(engine):
    affine = np.diag([0.5, 0.5, 8.0, 1.0])  # ratio 16, e.g. a thick-slice HASTE stack
    labels = engine.segment(make_volume(smooth_image((60, 60, 4)), affine))
    assert labels.shape == (60, 60, 4) and labels.any()


def test_degenerate_affine_is_rejected(engine):
    affine = np.diag([1.0, 1.0, 0.0, 1.0])
    with pytest.raises(UnsupportedVolumeError, match="spacing"):
        engine.segment(make_volume(smooth_image((10, 10, 4)), affine))


def test_explicit_cuda_without_a_gpu_is_an_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="no CUDA device"):
        choose_device("cuda")
    assert choose_device(None).type == "cpu"


def test_oom_fallback_tries_each_attempt_in_order_and_keeps_the_case():
    """GPU out-of-memory: smaller batch / CPU accumulation, then CPU, instead of losing the case."""
    calls = []

    def attempt(name, fail):
        def run():
            calls.append(name)
            if fail:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
            return name

        return run

    notes: list[str] = []
    result = run_with_oom_fallback(
        [
            ("batch 4 on GPU", attempt("a", True)),
            ("batch 1, CPU accumulator", attempt("b", True)),
            ("CPU", attempt("c", False)),
        ],
        notes,
    )
    assert result == "c" and calls == ["a", "b", "c"]
    assert len(notes) == 2 and "out of GPU memory with batch 4 on GPU" in notes[0]
    with pytest.raises(RuntimeError, match="not memory"):
        run_with_oom_fallback([("x", lambda: (_ for _ in ()).throw(RuntimeError("not memory")))], [])
