"""The demo network's training-time form and loss: nnU-Net's function and parameters, computed in a form that
``torch.compile`` turns into fast CPU code.

The training script spends its 30-minute CPU budget on steps, and the network is under-trained, so a cheaper
step is more accuracy. Two things made inductor's code slow on the channels-last tensors the convolutions
want, and neither changes what is computed:

- ``nn.InstanceNorm3d`` goes through ``batch_norm`` on an ``[1, N*C, D, H, W]`` view, which inductor compiles
  to a strided reduction over a layout conversion (35 ms per full-resolution norm of a 48x64x64 batch of two
  on this 2-core CPU). :class:`InstanceNormForTraining` computes the same normalisation with ``var_mean``
  over the spatial axes, which inductor vectorises along the channels.
- The loss needed NCDHW logits (a 12 ms copy of the full-resolution output each way) and ``bincount``
  (a graph break). :func:`dice_ce_loss` works on channels-last logits and compiles into the same graph as
  the network (:func:`compiled_loss`).

Side by side in one process (``bench/demo_training_step.py``, 2026-12-02), a step then costs 0.66x (48x64x64)
and 0.75x (32x48x48) as much as with nnU-Net's modules compiled and the loss outside the graph. The norms are
swapped only while training (:func:`training_form`): the module tree saved in the checkpoint is nnU-Net's
``PlainConvUNet``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


class InstanceNormForTraining(nn.Module):
    """``nn.InstanceNorm3d(affine=True, track_running_stats=False)`` with the same parameter objects:
    ``(x - mean) / sqrt(var + eps) * weight + bias``, mean and biased variance per sample and channel."""

    def __init__(self, norm: nn.InstanceNorm3d):
        super().__init__()
        if not norm.affine or norm.track_running_stats:
            raise ValueError("only affine instance norms without running statistics have a training form")
        self.weight, self.bias, self.eps = norm.weight, norm.bias, float(norm.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()  # statistics in float32 also behind a bfloat16 convolution
        var, mean = torch.var_mean(x, dim=tuple(range(2, x.ndim)), keepdim=True, correction=0)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight.view(shape) + self.bias.view(shape)


class Float32(nn.Module):
    """``module`` with autocast off: its input cast to float32, its computation in float32."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self.module(x.float())


class BFloat16Convolutions(nn.Module):
    """``network`` under autocast to bfloat16: convolutions in bfloat16 (oneDNN's AVX512-BF16 kernels on
    CPU), everything autocast keeps in float32 (and the norms, see :class:`InstanceNormForTraining`) in
    float32; parameters and their gradients stay float32."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> list[torch.Tensor] | torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return self.network(x)


@contextmanager
def training_form(network: nn.Module, bfloat16: bool = False) -> Iterator[nn.Module]:
    """Within the block, every ``nn.InstanceNorm3d`` of ``network`` is replaced by an
    :class:`InstanceNormForTraining` sharing its parameters (a module reached under two names, as
    ``ConvDropoutNormReLU.norm`` and ``.all_modules[1]`` are, gets one replacement); afterwards the original
    modules are back, so ``network`` and its ``state_dict`` are nnU-Net's again. Yields the module to train:
    ``network``, or with ``bfloat16`` :class:`BFloat16Convolutions` of it.

    With ``bfloat16`` the deepest encoder stage stays in float32 (:class:`Float32`): on this host's torch
    2.13 CPU build, oneDNN's bfloat16 weight gradient of its 80-channel convolutions on 2x3x3 and 3x4x4
    inputs came back with values up to 1e34 in some calls and not in others (the same step repeated), so the
    runs were neither finite nor reproducible; the stage holds 1/4096 of the voxels, so float32 there costs
    nothing measurable. Every other parameter gradient was finite and the runs were repeatable with it."""
    swapped: dict[int, nn.Module] = {}
    replaced: list[tuple[nn.Module, str, nn.Module]] = []

    def swap(parent: nn.Module, name: str, replacement: nn.Module) -> None:
        replaced.append((parent, name, getattr(parent, name)))
        setattr(parent, name, replacement)

    for parent in list(network.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.InstanceNorm3d):
                if id(child) not in swapped:
                    swapped[id(child)] = InstanceNormForTraining(child)
                swap(parent, name, swapped[id(child)])
    if bfloat16:
        stages = network.encoder.stages
        swap(stages, str(len(stages) - 1), Float32(stages[-1]))
    try:
        yield BFloat16Convolutions(network) if bfloat16 else network
    finally:
        for parent, name, child in reversed(replaced):
            setattr(parent, name, child)


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Cross-entropy plus (1 - batch soft Dice over the foreground classes), as nnU-Net trains.

    Logits in any memory layout (the network's are channels-last). The one-hot target is a comparison that
    the compiler fuses into the reductions, so no ``[N, C, D, H, W]`` tensor is written when compiled.
    """
    log_probs = F.log_softmax(logits.float(), dim=1)
    classes = torch.arange(n_classes, device=target.device).view((1, -1) + (1,) * (target.ndim - 1))
    one_hot = target[:, None] == classes
    ce = -torch.where(one_hot, log_probs, 0.0).sum(1).mean()
    probs = log_probs.exp()
    spatial = (0, *range(2, logits.ndim))
    intersect = torch.where(one_hot, probs, 0.0).sum(spatial)[1:]
    denom = probs.sum(spatial)[1:] + one_hot.sum(spatial)[1:].to(probs.dtype)
    dice = (2 * intersect + 1e-5) / (denom + 1e-5)
    return ce + (1 - dice.mean())


def deep_supervision_loss(
    outputs: list[torch.Tensor],
    target: torch.Tensor,
    n_classes: int,
    loss: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor] | None = None,
) -> torch.Tensor:
    """nnU-Net's deep supervision: ``loss`` (default :func:`dice_ce_loss`) at every decoder resolution
    (targets downsampled by nearest neighbour), weighted 1, 1/2, 1/4, ... and normalised; speeds up learning
    of the deeper layers."""
    weights = [0.5**i for i in range(len(outputs))]
    total = 0.0
    for weight, out in zip(weights, outputs, strict=True):
        if out.shape[2:] == target.shape[1:]:
            tgt = target
        else:
            tgt = F.interpolate(target[:, None].float(), size=out.shape[2:], mode="nearest")[:, 0].long()
        total = total + weight * (loss or dice_ce_loss)(out, tgt, n_classes)
    return total / sum(weights)


def compiled_loss(
    network: nn.Module, n_classes: int, compile_graph: bool
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(x, y) -> deep_supervision_loss(network(x), y)``, compiled into one graph per input shape when
    ``compile_graph`` (the network's parameters are shared, not copied); ``network`` is what
    :func:`training_form` yields."""

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return deep_supervision_loss(network(x), y, n_classes)

    return torch.compile(loss_of, dynamic=False) if compile_graph else loss_of
