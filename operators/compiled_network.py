"""Networks compiled ahead of time for CPU inference (AOTInductor), cached on disk between runs.

On CPU, inductor with the weights frozen into the graph runs the convolutions through prepacked oneDNN kernels
and fuses instance norm and LeakyReLU: on a 2-core AVX2 CPU a 128^3 tile of the full-size ``total_mr`` network
took 0.64-0.72x its eager time and a demo-model tile about 0.3x (``bench/forward_variants.py``). The logits
differ from eager ones by rounding only (largest difference about 1e-4; argmax agreement 0.999995 on a
random-weight tile), so the labels stay within the parity bar (per-class Dice >= 0.999) but are no longer
voxel-for-voxel those of ``nnUNetPredictor``.

Compiling takes 20-50 s per network and needs a C++ compiler. Loading a compiled package needs none and took
0.01 s for the demo network. So a package is compiled once per (weights, architecture, tile shape, torch
build, CPU instruction set, thread count) and kept in a cache folder; every later run on that machine loads
it. A package is written under a temporary name and renamed into place, so a crash or a concurrent run never
leaves half a file under a name that is read. The same cache holds the weight-free kernels of
:mod:`operators.window_kernels` under keys of their own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

OFF_WORDS = {"0", "off", "no", "false", "none"}


class CompileUnavailableError(RuntimeError):
    """This machine cannot compile networks (no C++ compiler); eager execution is used instead."""


@dataclass(frozen=True)
class CompileKey:
    """Everything a compiled package depends on; its digest names the cached file."""

    checkpoint_sha256: str
    architecture: str  # the plans' network description (JSON) and output channel count
    input_shape: tuple[int, ...]  # the tile batch, [batch, channels, *patch]
    torch_version: str
    cpu_isa: str  # the vector instruction set the generated code uses (AVX2, AVX512, ...)
    threads: int  # OpenMP threads, fixed in the generated code

    @classmethod
    def for_network(
        cls, checkpoint_sha256: str, architecture: dict, input_shape: tuple[int, ...]
    ) -> CompileKey:
        return cls(
            checkpoint_sha256=checkpoint_sha256,
            architecture=json.dumps(architecture, sort_keys=True, default=str),
            input_shape=tuple(int(s) for s in input_shape),
            torch_version=torch.__version__,
            # ATen's dispatch level (DEFAULT, AVX2, AVX512, ...); inductor generates vector code for the same
            # level, and importing inductor's own probe would cost every run 1.6 s
            cpu_isa=torch.backends.cpu.get_cpu_capability(),
            threads=torch.get_num_threads(),
        )

    @classmethod
    def for_kernel(cls, name: str, input_shape: tuple[int, ...]) -> CompileKey:
        """The key of a weight-free arithmetic kernel: ``name`` says what it computes (and its version)."""
        return cls.for_network("", {"kernel": name}, input_shape)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:32]


def default_cache_folder() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "totalseg-mri" / "compiled"


def cache_folder_for(setting: str | None) -> Path | None:
    """The compile cache folder a run option names: ``off`` -> None (eager); ``auto`` (or empty) -> the default
    folder when a C++ compiler is present, else None; anything else is a folder path."""
    value = (setting or "").strip()
    if value.lower() in OFF_WORDS:
        return None
    if value.lower() in ("", "auto"):
        if cxx_compiler() is None:
            logger.info(
                "no C++ compiler on PATH: networks run eagerly (install g++ to compile them for this CPU)"
            )
            return None
        return default_cache_folder()
    return Path(value)


def cxx_compiler_name() -> str:
    """The C++ compiler inductor (torch.compile and AOTInductor) calls on Linux: $CXX, else g++."""
    return os.environ.get("CXX", "g++")


def cxx_compiler() -> str | None:
    """The path of :func:`cxx_compiler_name` when it is on PATH."""
    return shutil.which(cxx_compiler_name())


class CompiledForward:
    """Callable like the network: float32 CPU tiles of the compiled shape run through the compiled package, any
    other batch (a smaller last one) through the eager network, so every batch still gets an answer."""

    def __init__(self, runner, network: torch.nn.Module, input_shape: tuple[int, ...]):
        self.runner = runner
        self.network = network
        self.input_shape = tuple(input_shape)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if (
            tuple(batch.shape) == self.input_shape
            and batch.device.type == "cpu"
            and batch.dtype == torch.float32
        ):
            # the compiled code indexes memory with the example's (contiguous) strides
            return self.runner.run([batch.contiguous()])[0]
        return self.network(batch)


def load_package(path: Path):
    """The package's runner, through torch's C++ loader: ``torch._inductor.aoti_load_package`` wraps the same
    loader but imports inductor first, 2.2 s a process against 0.01 s for the load itself (demo model)."""
    return torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, -1)


class CompiledNetworkCache:
    """A folder of AOTInductor packages (``<key digest>.pt2``), one per :class:`CompileKey`."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def path_for(self, key: CompileKey) -> Path:
        return self.folder / f"{key.digest()}.pt2"

    def load_or_compile(
        self, network: torch.nn.Module, key: CompileKey, label: str = "network"
    ) -> tuple[CompiledForward, bool]:
        """The compiled forward for ``network`` and whether it was compiled now (False: loaded from cache).

        Raises :class:`CompileUnavailableError` when a package has to be compiled and no C++ compiler exists,
        ``OSError`` when the cache folder cannot be written; inductor's own errors propagate.
        """
        network.eval()
        runner, compiled_now = self.load_or_compile_module(
            key,
            label,
            lambda: (network, (torch.zeros(key.input_shape, dtype=torch.float32),), None),
            # freezing: weights folded in, oneDNN prepacking (applies to no-grad graphs)
            inductor_configs={"freezing": True},
        )
        return CompiledForward(runner, network, key.input_shape), compiled_now

    def load_or_compile_module(
        self,
        key: CompileKey,
        label: str,
        build: Callable[[], tuple[torch.nn.Module, tuple[torch.Tensor, ...], tuple | None]],
        inductor_configs: dict | None = None,
    ):
        """The package runner for ``key`` (``runner.run(list_of_tensors) -> list_of_tensors``) and whether it
        was compiled now. ``build()`` gives what to compile: the module, example inputs and the
        ``dynamic_shapes`` of ``torch.export.export`` (sizes left free); it is called only when compiling, since
        creating export dimensions imports sympy (0.5 s a process). Errors as :meth:`load_or_compile`."""
        path = self.path_for(key)
        if path.is_file():
            try:
                started = time.perf_counter()
                runner = load_package(path)
                logger.info(
                    "%s: compiled package loaded from %s in %.2f s",
                    label,
                    path,
                    time.perf_counter() - started,
                )
                return runner, False
            except Exception as exc:  # a truncated or foreign file: compile it again
                logger.warning("%s: cached package %s is unusable (%s); compiling again", label, path, exc)
        if cxx_compiler() is None:
            raise CompileUnavailableError(
                f"no C++ compiler ({cxx_compiler_name()}) on PATH to compile {label} for this CPU"
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        import torch._inductor  # compiling only: loading a package does not need inductor
        import torch.export

        started = time.perf_counter()
        logger.info(
            "%s: compiling for this CPU (once per machine; about 10-50 s), cache %s", label, self.folder
        )
        handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".pt2", dir=self.folder)
        os.close(handle)
        try:
            module, example_inputs, dynamic_shapes = build()
            with torch.no_grad():
                exported = torch.export.export(module, example_inputs, dynamic_shapes=dynamic_shapes)
                torch._inductor.aoti_compile_and_package(
                    exported, package_path=temporary, inductor_configs=inductor_configs or {}
                )
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
        runner = load_package(path)
        logger.info("%s: compiled in %.1f s -> %s", label, time.perf_counter() - started, path)
        return runner, True
