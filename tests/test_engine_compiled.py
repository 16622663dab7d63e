"""Networks compiled ahead of time for CPU (operators/compiled_network.py): parity, cache reuse, fallbacks.

Compiled logits differ from eager ones by rounding, so the bar is the parity bar against nnUNetPredictor
(per-class Dice >= 0.999), not bit equality. Compiling needs g++ (``make setup-test`` installs it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.reference_tools import nnunet_reference_segment  # noqa: E402
from operators.compiled_network import (  # noqa: E402
    CompiledNetworkCache,
    CompileKey,
    cache_folder_for,
    default_cache_folder,
)
from operators.segmentation_engine import SegmentationEngine, segment_volumes  # noqa: E402
from operators.window_kernels import CompiledArithmetic  # noqa: E402
from tests.conftest import require_tool  # noqa: E402
from tests.engine_helpers import FINAL, make_volume, smooth_image  # noqa: E402
from tests.test_engine_parity_nnunet import assert_parity  # noqa: E402


@pytest.fixture(scope="module")
def compiled_cache(tmp_path_factory, two_parts):
    """A cache holding both parts compiled (one engine construction compiles them)."""
    require_tool("g++", "g++")
    root, profile = two_parts
    cache = tmp_path_factory.mktemp("compiled")
    engine = SegmentationEngine(profile, root, device="cpu", compile_cache=cache)
    assert engine.execution == "compiled", engine.load_notes
    return cache


def test_compiled_engine_matches_nnunet_and_the_next_engine_loads_the_cache(two_parts, compiled_cache):
    root, profile = two_parts
    packages = sorted(compiled_cache.glob("*.pt2"))
    written = {p: p.stat().st_mtime_ns for p in packages}

    engine = SegmentationEngine(profile, root, device="cpu", compile_cache=compiled_cache)
    assert engine.execution == "compiled" and not engine.load_notes
    # one network per part, and the window arithmetic (accumulation, argmax) per class count and patch
    assert all(isinstance(p.arithmetic, CompiledArithmetic) for p in engine.parts)
    kernel_sets = {(p.num_channels, tuple(p.config.patch_size)) for p in engine.parts}
    assert len(packages) == len(engine.parts) + 2 * len(kernel_sets)
    assert {p: p.stat().st_mtime_ns for p in compiled_cache.glob("*.pt2")} == written  # loaded, not rebuilt
    assert not list(compiled_cache.glob(".*"))  # no temporary files left behind

    volume = make_volume(smooth_image((50, 40, 18), seed=0))
    ours = engine.segment(volume)
    assert_parity(ours, nnunet_reference_segment(volume, profile, root), FINAL, min_classes=4)
    eager = SegmentationEngine(profile, root, device="cpu").segment(volume)
    assert eager.shape == ours.shape and np.mean(eager == ours) > 0.999
    # the run's provenance says how the networks ran
    (result,) = segment_volumes(engine, [volume], "TotalSegmentator MRI", "test")
    assert result.algorithm.device == "cpu (networks compiled ahead of time, AOTInductor)"


def test_the_cache_key_separates_what_the_compiled_code_depends_on():
    base = CompileKey.for_network("a" * 64, {"features": [4, 8]}, (1, 1, 24, 32, 40))
    assert (
        base.digest() == CompileKey.for_network("a" * 64, {"features": [4, 8]}, (1, 1, 24, 32, 40)).digest()
    )
    assert base.threads == torch.get_num_threads() and base.torch_version == torch.__version__
    variants = [
        CompileKey.for_network("b" * 64, {"features": [4, 8]}, (1, 1, 24, 32, 40)),  # other weights
        CompileKey.for_network("a" * 64, {"features": [4, 16]}, (1, 1, 24, 32, 40)),  # other architecture
        CompileKey.for_network("a" * 64, {"features": [4, 8]}, (2, 1, 24, 32, 40)),  # other tile batch
    ]
    other_isa = "AVX2" if base.cpu_isa == "AVX512" else "AVX512"
    for field, value in (("threads", base.threads + 1), ("cpu_isa", other_isa), ("torch_version", "0.0")):
        variants.append(CompileKey(**{**base.__dict__, field: value}))
    digests = {base.digest(), *(v.digest() for v in variants)}
    assert len(digests) == 1 + len(variants)


def test_a_truncated_package_is_compiled_again_and_other_batch_shapes_run_eagerly(tmp_path):
    require_tool("g++", "g++")
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 3, 3, padding=1), torch.nn.LeakyReLU()).eval()
    key = CompileKey.for_network("c" * 64, {"test": "conv"}, (1, 1, 8, 8, 8))
    cache = CompiledNetworkCache(tmp_path / "cache")
    cache.folder.mkdir()
    cache.path_for(key).write_bytes(b"PK\x03\x04 cut off mid-write")
    forward, compiled_now = cache.load_or_compile(network, key)
    assert compiled_now
    assert cache.path_for(key).stat().st_size > 1000
    tile = torch.randn(1, 1, 8, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(forward(tile), network(tile), rtol=1e-4, atol=1e-5)
        two = torch.randn(2, 1, 8, 8, 8)  # not the compiled shape: the eager network answers
        assert torch.equal(forward(two), network(two))
    _, compiled_now = cache.load_or_compile(network, key)
    assert not compiled_now


def test_without_a_compiler_the_engine_runs_eagerly_and_says_why(two_parts, tmp_path, monkeypatch):
    root, profile = two_parts
    monkeypatch.setenv("CXX", "no-such-compiler-g++")
    engine = SegmentationEngine(profile, root, device="cpu", compile_cache=tmp_path / "cache")
    assert engine.execution == "eager"
    assert len(engine.load_notes) == 2 and all("no C++ compiler" in n for n in engine.load_notes)
    assert all(p.arithmetic is None for p in engine.parts)  # the eager arithmetic, as nnUNetPredictor's
    volume = make_volume(smooth_image((30, 28, 12), seed=1))
    labels = engine.segment(volume)
    assert engine.last_run.notes[:2] == engine.load_notes  # the run record carries the reason
    assert np.array_equal(labels, SegmentationEngine(profile, root, device="cpu").segment(volume))
    # "auto" means: compile only where a compiler exists
    assert cache_folder_for("auto") is None


def test_an_unwritable_cache_folder_falls_back_to_eager(two_parts, tmp_path):
    require_tool("g++", "g++")
    root, profile = two_parts
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    engine = SegmentationEngine(profile, root, device="cpu", compile_cache=blocker / "cache")
    assert engine.execution == "eager"
    assert engine.load_notes and all("NotADirectoryError" in n for n in engine.load_notes)


def test_cache_setting_words(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CXX", sys.executable)  # any executable on PATH counts as a compiler here
    assert cache_folder_for("off") is None and cache_folder_for("OFF") is None
    assert cache_folder_for("auto") == default_cache_folder() == tmp_path / "totalseg-mri" / "compiled"
    assert cache_folder_for("") == default_cache_folder()
    assert cache_folder_for(str(tmp_path / "mine")) == tmp_path / "mine"
