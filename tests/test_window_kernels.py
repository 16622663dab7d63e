"""The sliding window's float16 arithmetic compiled for this CPU (operators/window_kernels.py) gives the eager
bits: same accumulator contents, same argmax ties, same overflow errors, same labels. Needs g++."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from operators.compiled_network import CompiledNetworkCache  # noqa: E402
from operators.sliding_window import (  # noqa: E402
    EagerArithmetic,
    gaussian_importance_map,
    predict_labels,
    weighted_argmax,
)
from operators.window_kernels import CompiledArithmetic, load_compiled_arithmetic  # noqa: E402
from tests.conftest import require_tool  # noqa: E402

CLASSES = 5
PATCH = (8, 12, 16)


def _gaussian() -> torch.Tensor:
    return torch.from_numpy(gaussian_importance_map(PATCH))


@pytest.fixture(scope="module")
def kernels(tmp_path_factory) -> tuple[CompiledArithmetic, Path]:
    require_tool("g++", "g++")
    folder = tmp_path_factory.mktemp("kernels")
    arithmetic = load_compiled_arithmetic(CompiledNetworkCache(folder), CLASSES, _gaussian(), "test")
    return arithmetic, folder


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16)  # compares NaN payloads and signed zeros too


def test_accumulation_writes_the_eager_bits_into_the_accumulator_at_every_corner(kernels):
    arithmetic, _ = kernels
    gen = torch.Generator().manual_seed(0)
    grid = (13, 20, 17)  # not a multiple of the patch: tiles overlap unevenly and touch every border
    # large and small magnitudes: many sums land between float16 values, where rounding order shows
    start = (torch.randn((CLASSES, *grid), generator=gen) * 300).half()
    corners = [(0, 0, 0), (5, 8, 1), (5, 0, 0), (2, 4, 0), (0, 8, 1), (5, 8, 1)]  # repeats overlap
    ours, eager = start.clone(), start.clone()
    for corner in corners:
        logits = torch.randn((CLASSES, *PATCH), generator=gen) * 40
        arithmetic.accumulate(ours, logits.clone(), _gaussian(), corner)
        EagerArithmetic().accumulate(eager, logits.clone(), _gaussian(), corner)
    assert not torch.equal(_bits(ours), _bits(start))
    assert torch.equal(_bits(ours), _bits(eager))
    # a float32 sum rounded once differs from summing float16-rounded products: the test can tell them apart
    rounded_twice = start.clone()
    logits = torch.randn((CLASSES, *PATCH), generator=gen) * 40
    rounded_twice[:, :8, :12, :16] += (logits * _gaussian()).half()
    once = start.clone()
    arithmetic.accumulate(once, logits, _gaussian(), (0, 0, 0))
    assert not torch.equal(_bits(once), _bits(rounded_twice))


def test_accumulation_outside_the_compiled_case_goes_eager(kernels):
    """A float32 accumulator (models whose logits overflow float16), another tile shape or other weights: the
    eager arithmetic answers."""
    arithmetic, _ = kernels
    gen = torch.Generator().manual_seed(1)
    for summed, logits, corner in (
        (torch.zeros((CLASSES, 9, 12, 16)), torch.randn((CLASSES, *PATCH), generator=gen), (1, 0, 0)),
        (torch.zeros((CLASSES, 9, 12, 16), dtype=torch.float16), torch.randn((CLASSES, 4, 4, 4)), (0, 0, 0)),
        (torch.zeros((CLASSES, 9, 12, 16), dtype=torch.float16), torch.randn((CLASSES, *PATCH)), (1, 0, 0)),
    ):
        ours, eager = summed.clone(), summed.clone()
        gaussian = torch.from_numpy(gaussian_importance_map(tuple(logits.shape[1:])))
        if logits.shape[1:] == PATCH and summed.dtype == torch.float16:
            gaussian = torch.ones(PATCH)  # not the Gaussian compiled into the package
        arithmetic.accumulate(ours, logits.clone(), gaussian, corner)
        EagerArithmetic().accumulate(eager, logits.clone(), gaussian, corner)
        assert torch.equal(ours, eager) and ours.abs().sum() > 0


def test_argmax_rounds_each_quotient_to_float16_and_gives_ties_to_the_lower_class(kernels):
    arithmetic, _ = kernels
    rng = np.random.default_rng(3)
    for shape in ((9, 10, 11), (23, 4, 70)):  # one package, any grid size
        summed = torch.from_numpy(np.round(rng.normal(0, 4, (CLASSES, *shape))) / 4).half()
        # near ties: the next float16 above class 0; their float32 quotients differ, the float16 ones mostly not
        summed[3] = torch.nextafter(summed[0], torch.tensor(float("inf"), dtype=torch.float16))
        weights = torch.from_numpy(rng.choice([0.5, 3.0, 7.0], shape)).half()
        expected = weighted_argmax(summed, weights)
        unrounded = (summed.float() / weights.float()).argmax(0).to(torch.uint8)
        assert not torch.equal(unrounded, expected)  # rounding the quotient decides some voxels
        assert torch.equal(arithmetic.argmax(summed, weights), expected)
        # a slab of rows (not contiguous in the class axis), as the rolling accumulator passes it
        rows = slice(2, shape[0] - 1)
        assert torch.equal(arithmetic.argmax(summed[:, rows], weights[rows]), expected[rows])


def test_argmax_rejects_an_overflowed_winner_but_not_an_overflowed_loser(kernels):
    arithmetic, _ = kernels
    summed = torch.zeros((CLASSES, 3, 4, 5), dtype=torch.float16)
    summed[1] = 1.0
    weights = torch.ones((3, 4, 5), dtype=torch.float16)
    summed[2, 0, 0, 0] = -float("inf")
    assert torch.equal(arithmetic.argmax(summed, weights), torch.ones((3, 4, 5), dtype=torch.uint8))
    for bad in (float("inf"), float("nan")):
        broken = summed.clone()
        broken[0, 1, 1, 1] = bad
        with pytest.raises(FloatingPointError, match="accumulate_dtype=torch.float32"):
            arithmetic.argmax(broken, weights)


@pytest.mark.parametrize("max_bytes", [0, 2**30], ids=["rolling-slabs", "whole-image"])
def test_sliding_window_labels_are_identical_with_the_compiled_arithmetic(kernels, max_bytes):
    arithmetic, _ = kernels
    torch.manual_seed(0)
    network = torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv3d(4, CLASSES, 1)
    )
    image = np.random.default_rng(0).normal(size=(30, 29, 40)).astype(np.float32)
    args = (network, image, PATCH, CLASSES, 0.5, torch.device("cpu"))
    eager = predict_labels(*args, max_accumulator_bytes=max_bytes)
    ours = predict_labels(*args, max_accumulator_bytes=max_bytes, arithmetic=arithmetic)
    assert len(np.unique(eager)) == CLASSES
    assert np.array_equal(ours, eager)


def test_the_kernels_are_compiled_once_and_then_loaded(kernels):
    _, folder = kernels
    packages = sorted(folder.glob("*.pt2"))
    assert len(packages) == 2  # accumulation and argmax
    written = {p: p.stat().st_mtime_ns for p in packages}
    again = load_compiled_arithmetic(CompiledNetworkCache(folder), CLASSES, _gaussian(), "test")
    assert {p: p.stat().st_mtime_ns for p in folder.glob("*.pt2")} == written
    summed = torch.randn((CLASSES, 4, 5, 6)).half()
    weights = torch.ones((4, 5, 6), dtype=torch.float16)
    assert torch.equal(again.argmax(summed, weights), weighted_argmax(summed, weights))
