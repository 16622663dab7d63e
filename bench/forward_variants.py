"""Benchmark: CPU forward time of one total_mr-sized tile under different torch execution modes.

    .venv/bin/python bench/forward_variants.py [--repeat 2] [--variants eager channels_last jit_freeze
        inductor_freeze aoti]

The network is the full-size total_mr stand-in (nnU-Net 3d_fullres PlainConvUNet, 6 stages, 32..320
features, 30 outputs) with seeded random weights, run on one 128^3 tile. Each variant is timed side by side
in one process (after one warm-up pass) and compared with eager mode: time ratio and largest logit
difference, and the first call's time (tracing or compilation included), which a run pays once per part. The
forward passes are most of the engine's CPU time and their number is fixed by parity with the official tool
(tile step 0.8), so this is where a CPU speed-up would have to come from. ``aoti`` is what the engine runs
with a compile cache (``operators/compiled_network.py``): the same frozen inductor graph compiled ahead of time
into a package; its "first call" column is the compilation plus the first pass.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from operators.model_factory import (  # noqa: E402
    TOTAL_MR_STANDIN_FEATURES,
    TOTAL_MR_STANDIN_PATCH,
    SyntheticModelSpec,
    random_network,
)

logger = logging.getLogger("forward_variants")
VARIANTS = ("eager", "channels_last", "jit_freeze", "inductor_freeze", "aoti")


def standin_network() -> torch.nn.Module:
    return random_network(
        SyntheticModelSpec(
            dataset="Dataset850_TotalSegMRI_part1_organs_1088subj",
            label_names=tuple(f"class{i}" for i in range(1, 30)),
            patch_size=TOTAL_MR_STANDIN_PATCH,
            features_per_stage=TOTAL_MR_STANDIN_FEATURES,
        )
    )


def prepare(variant: str, network: torch.nn.Module, tile: torch.Tensor):
    """(callable, input) for one execution mode."""
    if variant == "eager":
        return network, tile
    if variant == "channels_last":
        return network.to(memory_format=torch.channels_last_3d), tile.contiguous(
            memory_format=torch.channels_last_3d
        )
    if variant == "jit_freeze":
        with torch.no_grad():
            return torch.jit.freeze(torch.jit.trace(network, tile)), tile
    if variant == "inductor_freeze":
        # torch.compile with the weights frozen into the graph (prepacked oneDNN convolutions); inductor's
        # on-disk cache skips graphs with frozen weights, so every process compiles again
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        return torch.compile(network.eval(), dynamic=False), tile
    if variant == "aoti":
        return _AheadOfTime(network, tile), tile
    raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")


class _AheadOfTime:
    """Compiles on its first call (into a temporary cache, so the compile time shows), then runs compiled."""

    def __init__(self, network: torch.nn.Module, tile: torch.Tensor):
        self.network, self.shape, self.forward = network, tuple(tile.shape), None

    def __call__(self, tile: torch.Tensor) -> torch.Tensor:
        if self.forward is None:
            import tempfile

            from operators.compiled_network import CompiledNetworkCache, CompileKey

            with tempfile.TemporaryDirectory() as folder:
                key = CompileKey.for_network("random-weights", {"variant": "standin"}, self.shape)
                self.forward, _ = CompiledNetworkCache(folder).load_or_compile(self.network, key)
        return self.forward(tile)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="timed passes per variant (after one warm-up)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    tile = torch.randn(1, 1, *TOTAL_MR_STANDIN_PATCH, generator=torch.Generator().manual_seed(0))
    logger.info("torch %s, %d threads, tile %s", torch.__version__, torch.get_num_threads(), list(tile.shape))
    reference, eager_seconds = None, None
    for variant in ["eager", *(v for v in args.variants if v != "eager")]:  # eager is the reference
        function, inputs = prepare(variant, standin_network(), tile)
        with torch.inference_mode():
            started = time.perf_counter()
            out = function(inputs)  # warm-up (and tracing or compilation)
            first_seconds = time.perf_counter() - started
            started = time.perf_counter()
            for _ in range(args.repeat):
                out = function(inputs)
            seconds = (time.perf_counter() - started) / args.repeat
        out = out.float().contiguous()
        if reference is None:
            reference, eager_seconds = out, seconds
        logger.info(
            "%-16s %7.2f s/tile  ratio %.2f  first call %6.1f s  max |logit diff| %.1e  argmax agreement %.6f",
            variant,
            seconds,
            seconds / eager_seconds,
            first_seconds,
            float((out - reference).abs().max()),
            float((out.argmax(1) == reference.argmax(1)).float().mean()),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
