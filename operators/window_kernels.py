"""The sliding window's float16 arithmetic, compiled ahead of time for this CPU, bit for bit as eager torch.

:func:`operators.sliding_window.predict_labels` sums Gaussian-weighted logits into a float16 accumulator and
takes the argmax of the sums divided by the summed weights, rounding as ``nnUNetPredictor`` does (see that
module). This CPU has no float16 arithmetic, so in eager torch each mixed float16/float32 step is a pass
through memory of its own. Fused into one vectorised loop each (AOTInductor), inside the compiled engine on
the demo model (19 classes, 12 tiles of 48x64x64, a 112x84x107 grid; 2-core AVX2 CPU; rounds alternating in
one process, ``bench/window_arithmetic.py``), the weighting and summing took 35-43 ms instead of 68-107 ms
and the division and argmax 17-18 ms instead of 28-46 ms, against 0.45-0.55 s of forward passes; the argmax
exported on a larger example (ARGMAX_EXAMPLE_SIZE, 2026-12-06) runs on both threads: 9-10 ms instead of
18-20 ms in the same benchmark on a Zen 3 host, where the forward passes took 0.83-1.1 s.

The results are the eager ones bit for bit, not just close: ``emulate_precision_casts`` makes inductor round
every explicit float16 cast as eager torch does (without it the quotients stayed in float32 and 66 argmax
ties of 1.1 million voxels went the other way), and ``tests/test_window_kernels.py`` compares both on ties,
rounding-sensitive sums and non-finite values.

The kernels are weight-free, so one package serves every model with the same class count (and, for the
summing kernel, the same patch): they sit in the network compile cache under their own keys.
"""

from __future__ import annotations

import torch

from operators.compiled_network import CompiledNetworkCache, CompileKey
from operators.sliding_window import EagerArithmetic

# Bumped when the arithmetic below changes, so that older packages are not loaded for it.
ACCUMULATE_KERNEL = "gaussian-weighted float16 accumulation v1"
ARGMAX_KERNEL = "float16 weighted argmax v2"  # v2: exported at ARGMAX_EXAMPLE_SIZE, a parallel loop
# Every explicit .to(torch.float16) is a real rounding step, as in eager torch.
KERNEL_INDUCTOR_CONFIGS = {"emulate_precision_casts": True}
# Largest axis length of an accumulator the argmax kernel accepts (its three spatial sizes are free).
MAX_AXIS = 1 << 16
# Spatial size of the example the argmax kernel is exported with. Its sizes stay free, but inductor decides
# from the example whether a loop is worth splitting across threads: exported at 3x5x7 the kernel was one
# serial loop, 17.5 ms on the demo's 19 x 112 x 84 x 107 accumulator with one thread or two; at this size it
# is split across the threads, 10.6 ms (2-core Zen 3 EPYC, 2026-12-06), the same labels.
ARGMAX_EXAMPLE_SIZE = (64, 66, 68)


class _GaussianAccumulate(torch.nn.Module):
    """``summed[tile] += logits * gaussian`` in place for one tile at ``corner`` (a 3-element int64 tensor):
    float32 product and sum, rounded once to float16, which is what ``summed[tile] += logits.mul_(gaussian)``
    computes in eager torch. The accumulator's sizes are free; the corner is read at run time, so the package
    writes straight into the accumulator instead of into a copy of the tile's region."""

    def __init__(self, gaussian: torch.Tensor):
        super().__init__()
        self.register_buffer("gaussian", gaussian.to(torch.float32))
        self.patch = tuple(int(p) for p in gaussian.shape)

    def forward(self, logits: torch.Tensor, summed: torch.Tensor, corner: torch.Tensor) -> torch.Tensor:
        start = [corner[axis].item() for axis in range(3)]
        size0, size1, size2 = self.patch
        for axis, (first, size) in enumerate(zip(start, self.patch, strict=True)):
            torch._check(first >= 0)
            torch._check(first + size <= summed.shape[axis + 1])
        region = summed[
            :, start[0] : start[0] + size0, start[1] : start[1] + size1, start[2] : start[2] + size2
        ]
        region.copy_((region.to(torch.float32) + logits * self.gaussian).to(torch.float16))
        return corner.sum()  # a package needs an output; the result is the mutated accumulator


class _WeightedArgmax(torch.nn.Module):
    """:func:`operators.sliding_window.weighted_argmax` for a fixed class count, unrolled over the classes so
    that it compiles to one pass over the voxels: each quotient rounded to float16, a running maximum, the
    first class winning ties. Also returns whether every winning value is finite."""

    def forward(self, summed: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = weights.to(torch.float32)
        best = (summed[0].to(torch.float32) / w).to(torch.float16).to(torch.float32)
        winner = torch.zeros_like(w)  # a float index: a uint8 select did not vectorise
        for index in range(1, summed.shape[0]):
            value = (summed[index].to(torch.float32) / w).to(torch.float16).to(torch.float32)
            winner = torch.where(value > best, float(index), winner)
            best = torch.maximum(best, value)  # propagates NaN, which the finiteness check then reports
        return winner.to(torch.uint8), torch.isfinite(best).all()


class CompiledArithmetic:
    """The float16 accumulation and argmax of one class count and patch (Gaussian) through compiled packages;
    anything else (a float32 accumulator, another tile shape or Gaussian, GPU tensors) goes to
    :class:`EagerArithmetic`."""

    def __init__(self, accumulate_runner, argmax_runner, num_classes: int, gaussian: torch.Tensor):
        self._accumulate = accumulate_runner
        self._argmax = argmax_runner
        self.num_classes = num_classes
        self.gaussian = gaussian.to(torch.float32)  # the weights compiled into the accumulation
        self.patch_size = tuple(int(p) for p in gaussian.shape)
        self._eager = EagerArithmetic()
        self._checked: torch.Tensor | None = None  # the last Gaussian found equal to self.gaussian

    def _is_compiled_gaussian(self, gaussian: torch.Tensor) -> bool:
        # predict_labels passes the same tensor for every tile of a run: compare its values once, not per tile
        # (on the demo model the 12 comparisons took 3 ms of a 0.59 s run, cProfile)
        if gaussian is not self._checked:
            if not torch.equal(gaussian, self.gaussian):
                return False
            self._checked = gaussian
        return True

    def accumulate(
        self, summed: torch.Tensor, logits: torch.Tensor, gaussian: torch.Tensor, corner: tuple[int, ...]
    ) -> None:
        if (
            summed.dtype == torch.float16
            and logits.dtype == torch.float32
            and summed.device.type == logits.device.type == "cpu"
            and tuple(logits.shape) == (self.num_classes, *self.patch_size)
            and summed.shape[0] == self.num_classes
            and summed.is_contiguous()
            and self._is_compiled_gaussian(gaussian)
            and all(
                c >= 0 and c + p <= s
                for c, p, s in zip(corner, self.patch_size, summed.shape[1:], strict=True)
            )
        ):
            self._accumulate.run([logits.contiguous(), summed, torch.tensor(corner, dtype=torch.int64)])
        else:
            self._eager.accumulate(summed, logits, gaussian, corner)

    def argmax(self, summed: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if not (
            summed.dtype == weights.dtype == torch.float16
            and summed.device.type == weights.device.type == "cpu"
            and summed.shape[0] == self.num_classes
            and all(2 <= s <= MAX_AXIS for s in weights.shape)
        ):
            return self._eager.argmax(summed, weights)
        labels, finite = self._argmax.run([summed.contiguous(), weights.contiguous()])
        if not bool(finite):
            raise FloatingPointError(
                f"non-finite logits in the {summed.dtype} accumulator; use accumulate_dtype=torch.float32"
            )
        return labels


def load_compiled_arithmetic(
    cache: CompiledNetworkCache,
    num_classes: int,
    gaussian: torch.Tensor,
    label: str,
) -> CompiledArithmetic:
    """Both kernels for ``num_classes`` and the patch of ``gaussian`` (its importance map,
    :func:`operators.sliding_window.gaussian_importance_map`) from ``cache``, compiled there on first use
    (about 10-15 s each). Errors as :meth:`CompiledNetworkCache.load_or_compile_module`."""
    patch = tuple(int(p) for p in gaussian.shape)

    def accumulation_export():
        # any accumulator at least one patch large (distinct example sizes keep three free sizes in export)
        grid = [torch.export.Dim(f"grid{i}", min=p, max=MAX_AXIS) for i, p in enumerate(patch)]
        example = (
            torch.zeros((num_classes, *patch)),
            torch.zeros((num_classes, *(p + 1 + i for i, p in enumerate(patch))), dtype=torch.float16),
            torch.zeros(3, dtype=torch.int64),
        )
        return _GaussianAccumulate(gaussian), example, (None, {1: grid[0], 2: grid[1], 3: grid[2]}, None)

    def argmax_export():
        axes = [torch.export.Dim(f"axis{i}", min=2, max=MAX_AXIS) for i in range(3)]
        size = ARGMAX_EXAMPLE_SIZE
        example = (
            torch.zeros((num_classes, *size), dtype=torch.float16),
            torch.ones(size, dtype=torch.float16),
        )
        return (
            _WeightedArgmax(),
            example,
            ({1: axes[0], 2: axes[1], 3: axes[2]}, {0: axes[0], 1: axes[1], 2: axes[2]}),
        )

    accumulate, _ = cache.load_or_compile_module(
        CompileKey.for_kernel(ACCUMULATE_KERNEL, (num_classes, *patch)),
        f"{label}: tile accumulation",
        accumulation_export,
        KERNEL_INDUCTOR_CONFIGS,
    )
    argmax, _ = cache.load_or_compile_module(
        CompileKey.for_kernel(ARGMAX_KERNEL, (num_classes,)),
        f"{label}: weighted argmax",
        argmax_export,
        KERNEL_INDUCTOR_CONFIGS,
    )
    return CompiledArithmetic(accumulate, argmax, num_classes, gaussian)
