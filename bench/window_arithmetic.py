"""Benchmark: the sliding window's float16 arithmetic compiled (``operators/window_kernels.py``) against eager
torch, side by side in one process, inside the compiled engine on the demo phantom.

One command (from the repository root; needs g++, compiles into the case's cache on first use)::

    .venv/bin/python bench/window_arithmetic.py [--rounds 6] [--workdir DIR]

Rounds alternate between the two arithmetics on one engine (same networks, same volume), so both see the same
host load. Per round it prints the engine time, its forward passes, their ratio (the target is 1.2), and the
time spent accumulating tiles and taking the argmax; the labels must be identical.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.engine_benchmark import _volume_from_nifti, prepare_demo, write_case_input  # noqa: E402
from operators.model_profile import load_profile  # noqa: E402
from operators.segmentation_engine import SegmentationEngine  # noqa: E402
from operators.sliding_window import EagerArithmetic  # noqa: E402


class _Timed:
    """Wraps an arithmetic and adds up the seconds of its two calls."""

    def __init__(self, inner):
        self.inner = inner
        self.seconds: dict[str, float] = defaultdict(float)

    def accumulate(self, *args):
        started = time.perf_counter()
        self.inner.accumulate(*args)
        self.seconds["accumulate"] += time.perf_counter() - started

    def argmax(self, *args):
        started = time.perf_counter()
        labels = self.inner.argmax(*args)
        self.seconds["argmax"] += time.perf_counter() - started
        return labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="rounds per arithmetic, alternating")
    parser.add_argument("--workdir", type=Path, help="keep the case (and its compile cache) here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="window-arithmetic-"))
    case = workdir / "demo"
    case.mkdir(parents=True, exist_ok=True)
    spec = prepare_demo(case)
    write_case_input(case, spec)
    volume = _volume_from_nifti(case / "input.nii.gz")
    engine = SegmentationEngine(
        load_profile(spec["profile"]), spec["models"], device="cpu", compile_cache=case / "compile_cache"
    )
    (part,) = engine.parts
    if part.compiled is None or part.arithmetic is None:
        print(f"not compiled (a C++ compiler is needed): {engine.load_notes}")
        return 1
    arithmetics = {"compiled": part.arithmetic, "eager": EagerArithmetic()}
    engine.segment(volume)  # warm-up
    ratios: dict[str, list[float]] = defaultdict(list)
    reference = None
    print(
        f"{'arithmetic':<10}{'engine s':>10}{'forward s':>11}{'ratio':>8}{'accumulate ms':>15}{'argmax ms':>11}"
    )
    for _ in range(args.rounds):
        for name, arithmetic in arithmetics.items():
            part.arithmetic = timed = _Timed(arithmetic)
            started = time.perf_counter()
            labels = engine.segment(volume)
            seconds = time.perf_counter() - started
            forward = engine.last_run.timings["network_forward"]
            ratios[name].append(seconds / forward)
            reference = labels if reference is None else reference
            if not np.array_equal(labels, reference):
                print(f"{name}: labels differ from the first round")
                return 1
            print(
                f"{name:<10}{seconds:>10.3f}{forward:>11.3f}{seconds / forward:>8.3f}"
                f"{timed.seconds['accumulate'] * 1e3:>15.1f}{timed.seconds['argmax'] * 1e3:>11.1f}"
            )
    for name, values in ratios.items():
        print(
            f"{name}: engine / forward passes median {statistics.median(values):.3f} "
            f"(range {min(values):.3f}-{max(values):.3f})"
        )
    print("labels identical in every round")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
