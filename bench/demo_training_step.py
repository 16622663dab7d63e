"""Benchmark: CPU time of one demo-model training step, the committed recipe against nnU-Net's defaults.

    .venv/bin/python bench/demo_training_step.py [--repeat 6] [--threads 2]

One step = forward, deep-supervision Dice + cross-entropy loss, backward and an Adam update on a batch of two
[48, 64, 64] patches with 19 classes, as ``app/synthetic/train_demo_model.py`` trains. Variants, timed
side by side in one process (median of ``--repeat`` steps after one warm-up step each):

- ``nnunet_default``: two convolutions in every stage, NCDHW tensors, the loss from a one-hot target;
- ``one_conv_decoder``: the demo's convolutions per stage (``demo_model.N_CONV_PER_STAGE*``), same layout and
  loss;
- ``+channels_last``: also NDHWC (``channels_last_3d``) network and input;
- ``+compiled_network``: also ``torch.compile`` of the network (nnU-Net's modules) and the training script's
  loss (``training_network.dice_ce_loss``) outside the compiled graph: the recipe until 2026-12-02;
- ``demo_recipe_float32``: the network in its training form and the loss compiled with it
  (``training_network.training_form`` and ``compiled_loss``; compilation happens in the untimed warm-up
  step): what the script runs with ``--precision float32``, and with ``auto`` on a CPU without native
  bfloat16;
- ``demo_recipe``: also bfloat16 convolutions (``train_demo_model.BFLOAT16_CONVOLUTIONS``), as the committed
  weights were trained; emulated by oneDNN, so about 100x slower, on a CPU without native bfloat16 (skipped
  there unless ``--emulated-bfloat16``);
- ``+compiled_network_early``, ``demo_recipe_float32_early``, ``demo_recipe_early``: those on the smaller
  patches of the script's first iterations (``train_demo_model.EARLY_PATCH_SIZE``).

The variants' steps are interleaved round by round (this host's speed drifts by tens of percent).

The demo training budget (30 minutes on a 2-core CPU) makes the seconds per sample the figure that decides
how many iterations the committed weights get.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.synthetic import demo_model as dm  # noqa: E402
from app.synthetic import train_demo_model as tdm  # noqa: E402
from app.synthetic import training_network as tn  # noqa: E402
from operators.model_factory import random_network  # noqa: E402

logger = logging.getLogger("demo_training_step")
N_CLASSES = 19
BATCH = 2


def one_hot_dice_ce(logits: torch.Tensor, target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """The textbook formulation the training script's loss replaced (same value and gradient)."""
    ce = F.cross_entropy(logits, target)
    probs = torch.softmax(logits, dim=1)
    onehot = F.one_hot(target, n_classes).permute(0, 4, 1, 2, 3).to(probs.dtype)
    intersect = (probs * onehot).sum((0, 2, 3, 4))[1:]
    denom = probs.sum((0, 2, 3, 4))[1:] + onehot.sum((0, 2, 3, 4))[1:]
    return ce + 1 - ((2 * intersect + 1e-5) / (denom + 1e-5)).mean()


def network(n_conv: tuple[int, ...] | None, n_conv_decoder: tuple[int, ...] | None) -> torch.nn.Module:
    net = random_network(
        dm.factory_spec(
            label_names=tuple(f"class{i}" for i in range(1, N_CLASSES)),
            n_conv_per_stage=n_conv,
            n_conv_per_stage_decoder=n_conv_decoder,
        )
    )
    net.decoder.deep_supervision = True
    return net.train()


@dataclass(frozen=True)
class Variant:
    """One training-step recipe; each row of the module docstring adds one change to the row before."""

    one_conv: bool
    channels_last: bool
    loss: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
    compiled: bool = False  # torch.compile of the network (loss outside the graph)
    training_form: bool = False  # the script's training form and its loss compiled with it (``loss`` unused)
    bfloat16: bool = False  # with training_form: convolutions in bfloat16
    patch: tuple[int, int, int] = dm.PATCH_SIZE


VARIANTS = {
    "nnunet_default": Variant(one_conv=False, channels_last=False, loss=one_hot_dice_ce),
    "one_conv_decoder": Variant(one_conv=True, channels_last=False, loss=one_hot_dice_ce),
    "+channels_last": Variant(one_conv=True, channels_last=True, loss=one_hot_dice_ce),
    "+compiled_network": Variant(one_conv=True, channels_last=True, loss=tn.dice_ce_loss, compiled=True),
    "demo_recipe_float32": Variant(
        one_conv=True, channels_last=True, loss=tn.dice_ce_loss, training_form=tdm.COMPILE_NETWORK
    ),
}
VARIANTS["demo_recipe"] = replace(VARIANTS["demo_recipe_float32"], bfloat16=tdm.BFLOAT16_CONVOLUTIONS)
if tdm.EARLY_PATCH_SIZE is not None:
    for _name in ("+compiled_network", "demo_recipe_float32", "demo_recipe"):
        VARIANTS[f"{_name}_early"] = replace(VARIANTS[_name], patch=tdm.EARLY_PATCH_SIZE)


def step_function(variant: Variant, stack: ExitStack) -> Callable[[], None]:
    """One training step of ``variant`` on fixed random data, warmed up (oneDNN primitives, compilation)."""
    torch.manual_seed(0)
    net = network(
        dm.N_CONV_PER_STAGE if variant.one_conv else None,
        dm.N_CONV_PER_STAGE_DECODER if variant.one_conv else None,
    )
    x = torch.randn(BATCH, 1, *variant.patch)
    y = torch.randint(0, N_CLASSES, (BATCH, *variant.patch))
    if variant.channels_last:
        net = net.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    if variant.training_form:
        trained = stack.enter_context(tn.training_form(net, bfloat16=variant.bfloat16))
        loss_of = tn.compiled_loss(trained, N_CLASSES, compile_graph=True)
    else:
        forward = torch.compile(net, dynamic=False) if variant.compiled else net

        def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return tn.deep_supervision_loss(forward(x), y, N_CLASSES, variant.loss)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_of(x, y).backward()
        optimizer.step()

    step()
    return step


def time_variants(names: tuple[str, ...], repeat: int) -> dict[str, float]:
    """Median seconds per sample of one training step, the variants' steps interleaved round by round so
    that a change in the shared host's speed affects them alike."""
    times: dict[str, list[float]] = {name: [] for name in names}
    with ExitStack() as stack:
        steps = {name: step_function(VARIANTS[name], stack) for name in names}
        for _ in range(repeat):
            for name in names:
                start = time.perf_counter()
                steps[name]()
                times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) / BATCH for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=6, help="timed steps per variant")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the training script's default)")
    parser.add_argument(
        "--emulated-bfloat16",
        action="store_true",
        help="time the bfloat16 variants also on a CPU without native bfloat16 (about 16 s a step)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    variants = tuple(VARIANTS)
    if not (tdm.bfloat16_is_native() or args.emulated_bfloat16):
        variants = tuple(name for name in variants if not VARIANTS[name].bfloat16)
        logger.info("no native bfloat16 on this CPU: bfloat16 variants skipped (--emulated-bfloat16 times them)")
    seconds = time_variants(variants, args.repeat)
    base = seconds["nnunet_default"]
    logger.info("%-24s %12s %10s", "variant", "s / sample", "ratio")
    for name in variants:
        logger.info("%-24s %12.3f %10.2f", name, seconds[name], seconds[name] / base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
