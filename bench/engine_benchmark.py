"""Benchmark: this engine vs nnU-Net's nnUNetPredictor vs the TotalSegmentator CLI, same input, same weights.

One command (from the repository root)::

    .venv/bin/python bench/engine_benchmark.py [--case demo|standin|all] [--workdir DIR]

Cases:

* ``demo``: the demo model (``models/demo``; a random-weight model of the same architecture when the trained
  one is absent) on a rendered torso phantom (``app/synthetic/phantom.py``), 224x168x64 voxels of
  1.5x1.5x5 mm, axial LPS. TotalSegmentator runs it as ``--task total_mr --fast`` with the demo model in the
  3 mm dataset folder (same 3 mm spacing, one model), its output channels mapped to labels like the engine's.
* ``standin``: the real ``total_mr`` architecture (nnU-Net 3d_fullres PlainConvUNet, patch 128^3, 6 stages,
  32..320 features) as two random-weight parts with 30 and 22 outputs, named like datasets 850/851, on a
  256x182x64 volume of 1.05x1.05x3 mm (179x127x128 voxels at 1.5 mm). Compute cost does not depend on the
  weight values.

Each tool runs in its own child process (one process tree): the engine and nnUNetPredictor from a volume in
memory to labels on the source grid (model loading timed apart), the CLI from NIfTI file to NIfTI file
(process start and imports included, as a user sees it). Peak RSS is the largest resident set of the
tool's process (for the CLI: of its process tree's largest process). Forward-pass time is the time spent
inside the network calls of the engine's own run; overhead = engine time / forward time.

``engine_compiled`` is the engine with its networks compiled ahead of time for this CPU
(``operators/compiled_network.py``; needs a C++ compiler): its first round compiles them into the case's
compile cache (in its model-load time, printed per round), later rounds load them from there, as every run
after the first on a machine does. With ``--repeat`` above 1 the compiling round does not count (its process
held inductor and the compiler's memory). Its networks and its sliding-window arithmetic
(``operators/window_kernels.py``) are compiled; ``bench/window_arithmetic.py`` times the arithmetic alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from operators.model_factory import (  # noqa: E402
    TOTAL_MR_STANDIN_FEATURES,
    TOTAL_MR_STANDIN_PATCH,
    SyntheticModelSpec,
    write_model_folder,
)
from operators.model_profile import load_profile, parse_profile  # noqa: E402
from operators.volume import LPS_TO_RAS, Volume  # noqa: E402

logger = logging.getLogger("engine_benchmark")
DEMO_MODELS = REPO / "models" / "demo"
FAST_DATASET = "Dataset852_TotalSegMRI_total_3mm_1088subj"
TS_TRAINER = "nnUNetTrainer_2000epochs_NoMirroring"


def _peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # kB on Linux


# ------------------------------------------------------------------------------------------- case set-up


def prepare_demo(case: Path) -> dict:
    from app.synthetic import demo_model as dm
    from app.synthetic import phantom as ph

    models = case / "models"
    demo = load_profile("demo")
    trained = (DEMO_MODELS / demo.parts[0].relative_checkpoint).is_file()
    source = models
    if trained:  # a snapshot: the committed folder may be replaced while the benchmark runs
        shutil.copytree(
            DEMO_MODELS / demo.parts[0].dataset, models / demo.parts[0].dataset, dirs_exist_ok=True
        )
    else:
        names = tuple(demo.classes[label] for label in demo.parts[0].labels.values())
        write_model_folder(
            models,
            dm.factory_spec(dataset=demo.parts[0].dataset, label_names=names),
        )
    # TotalSegmentator --fast reads the 3 mm dataset folder; the same files under that name
    ts_weights = case / "ts_weights"
    src = source / demo.parts[0].dataset / demo.parts[0].folder_name
    dst = ts_weights / FAST_DATASET / f"{TS_TRAINER}__nnUNetPlans__3d_fullres"
    (dst / "fold_0").mkdir(parents=True, exist_ok=True)
    for name in ("dataset.json", "plans.json", "fold_0/checkpoint_final.pth"):
        target = dst / name
        if not target.exists():
            os.symlink(src / name, target)
    rng = np.random.default_rng(0)
    affine = np.array([[1.5, 0, 0, -168.0], [0, 1.5, 0, -126.0], [0, 0, 5.0, -160.0], [0, 0, 0, 1]])
    image, _ = ph.render(ph.TorsoPhantom(3), (224, 168, 64), affine, ph.contrast("t2", rng), rng)
    image = image / max(float(image.max()), 1e-6) * 1000.0  # scanner-like integer range
    return {
        "profile": str(demo.source),
        "models": str(source),
        "trained_demo_model": trained,
        "ts_weights": str(ts_weights),
        "ts_fast": True,
        "ts_lut": _lut(demo),
        "image": image,
        "affine_lps": affine,
    }


def prepare_standin(case: Path) -> dict:
    from tests.engine_helpers import smooth_image

    total = load_profile("total_mr")
    models = case / "models"
    for index, part in enumerate(total.parts):
        names = tuple(total.classes[label] for label in part.labels.values())
        if not (models / part.relative_checkpoint).is_file():
            write_model_folder(
                models,
                SyntheticModelSpec(
                    dataset=part.dataset,
                    label_names=names,
                    trainer=part.trainer,
                    patch_size=TOTAL_MR_STANDIN_PATCH,
                    features_per_stage=TOTAL_MR_STANDIN_FEATURES,
                    spacing=(1.5, 1.5, 1.5),
                    seed=index,
                ),
            )
    affine = np.array([[1.05, 0, 0, -134.0], [0, 1.05, 0, -95.0], [0, 0, 3.0, -96.0], [0, 0, 0, 1]])
    image = smooth_image((256, 182, 64), seed=0, scale=1000.0, zero_border=0)
    return {
        "profile": str(total.source),
        "models": str(models),
        "ts_weights": str(models),
        "ts_fast": False,
        "ts_lut": None,
        "image": image,
        "affine_lps": affine,
    }


def _lut(profile) -> list[int]:
    part = profile.parts[0]
    lut = [0] * (len(part.labels) + 1)
    for channel, label in part.labels.items():
        lut[channel] = label
    return lut


def _volume_from_nifti(path: Path) -> Volume:
    img = nib.load(path)
    return Volume(
        array=np.asanyarray(img.dataobj).astype(np.float32),
        affine_lps=LPS_TO_RAS @ img.affine,
        study_instance_uid="2.25.1",
        series_instance_uid="2.25.2",
        stack_id="1",
    )


# ------------------------------------------------------------------------------------------------ workers


def worker_engine(case: Path, spec: dict, compile_cache: Path | None = None) -> dict:
    from operators.segmentation_engine import SegmentationEngine

    volume = _volume_from_nifti(case / "input.nii.gz")
    cached = compile_cache is not None and any(compile_cache.glob("*.pt2"))
    started = time.perf_counter()
    engine = SegmentationEngine(
        load_profile(spec["profile"]), spec["models"], device="cpu", compile_cache=compile_cache
    )
    load_seconds = time.perf_counter() - started
    if compile_cache is not None and engine.execution != "compiled":
        raise RuntimeError(f"the networks were not compiled: {engine.load_notes}")
    started = time.perf_counter()
    labels = engine.segment(volume)
    seconds = time.perf_counter() - started
    np.save(case / f"labels_{'engine_compiled' if compile_cache else 'engine'}.npy", labels)
    run = engine.last_run
    return {
        "seconds": seconds,
        "model_load_seconds": load_seconds,
        "model_load": "loaded from the compile cache"
        if cached
        else ("compiled" if compile_cache else "eager"),
        "peak_rss_mb": _peak_rss_mb(),
        "forward_seconds": run.timings["network_forward"],
        "tiles": run.tiles,
        "model_shape": list(run.model_shape),
        "stages": run.timings,
    }


def worker_engine_compiled(case: Path, spec: dict) -> dict:
    """The engine with networks compiled ahead of time for this CPU; the first round compiles them (timed in
    ``model_load_seconds``), later rounds load them from the case's compile cache."""
    return worker_engine(case, spec, compile_cache=case / "compile_cache")


def worker_nnunet(case: Path, spec: dict) -> dict:
    import torch

    from bench.reference_tools import nnunet_reference_segment

    torch.set_num_threads(os.cpu_count() or 1)  # as TotalSegmentator sets it for CPU runs
    volume = _volume_from_nifti(case / "input.nii.gz")
    profile = load_profile(spec["profile"])
    started = time.perf_counter()
    labels = nnunet_reference_segment(volume, profile, Path(spec["models"]))
    seconds = time.perf_counter() - started
    np.save(case / "labels_nnunet.npy", labels)
    return {"seconds": seconds, "peak_rss_mb": _peak_rss_mb(), "note": "includes model loading per part"}


def worker_totalsegmentator(case: Path, spec: dict) -> dict:
    from bench.parity_totalsegmentator import run_totalsegmentator_cli

    output = case / "totalsegmentator.nii.gz"
    seconds = run_totalsegmentator_cli(
        case / "input.nii.gz", output, Path(spec["ts_weights"]), case / "ts_home", fast=spec["ts_fast"]
    )
    labels = np.asanyarray(nib.load(output).dataobj).astype(np.uint8)
    if spec["ts_lut"] is not None:
        labels = np.asarray(spec["ts_lut"], dtype=np.uint8)[labels]
    np.save(case / "labels_totalsegmentator.npy", labels)
    return {
        "seconds": seconds,
        "peak_rss_mb": _peak_rss_mb(resource.RUSAGE_CHILDREN),
        "note": "CLI wall time incl. process start and imports",
    }


WORKERS = {
    "engine": worker_engine,
    "engine_compiled": worker_engine_compiled,
    "nnunet": worker_nnunet,
    "totalsegmentator": worker_totalsegmentator,
}
ENGINES = ("engine", "engine_compiled")


# ------------------------------------------------------------------------------------------------- driver


def write_case_input(case: Path, spec: dict) -> tuple[np.ndarray, np.ndarray]:
    """Move a prepared case's image out of ``spec`` into ``case/input.nii.gz``, the one file every tool reads;
    returns (image, affine_lps)."""
    image, affine = spec.pop("image"), spec.pop("affine_lps")
    nib.save(
        Volume(
            array=image.astype(np.float32),
            affine_lps=affine,
            study_instance_uid="2.25.1",
            series_instance_uid="2.25.2",
            stack_id="1",
        ).to_nifti(),
        case / "input.nii.gz",
    )
    return image, affine


def run_case(name: str, workdir: Path, tools: list[str], repeat: int = 1) -> dict:
    case = workdir / name
    case.mkdir(parents=True, exist_ok=True)
    spec = prepare_demo(case) if name == "demo" else prepare_standin(case)
    image, affine = write_case_input(case, spec)
    (case / "spec.json").write_text(json.dumps(spec))
    results: dict = {
        "case": name,
        "input_shape": list(image.shape),
        "input_spacing_mm": np.linalg.norm(affine[:3, :3], axis=0).round(3).tolist(),
        "tools": {},
    }
    for key in ("trained_demo_model",):
        if key in spec:
            results[key] = spec[key]
    # tools alternate and the fastest of ``repeat`` rounds counts: other jobs on a shared machine add noise
    history: dict[str, dict[str, list[float]]] = {}
    for round_index in range(repeat):
        for tool in tools:
            logger.info("%s: running %s (round %d) ...", name, tool, round_index + 1)
            done = subprocess.run(
                [sys.executable, __file__, "--worker", tool, "--case-dir", str(case)],
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise RuntimeError(f"{tool} worker failed:\n{done.stderr[-4000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            logger.info("%s: %s took %.1f s", name, tool, result["seconds"])
            seen = history.setdefault(tool, {"all_seconds": [], "all_model_load_seconds": []})
            seen["all_seconds"].append(round(result["seconds"], 2))
            if "model_load_seconds" in result:
                seen["all_model_load_seconds"].append(round(result["model_load_seconds"], 2))
            # A round that compiled ran in a process holding inductor and the compiler's memory (its peak RSS
            # is not a run's); with later rounds, which load the cache as every run after the first does,
            # only those count.
            counts = result.get("model_load") != "compiled" or repeat == 1
            best = results["tools"].get(tool)
            if counts and (best is None or result["seconds"] < best["seconds"]):
                results["tools"][tool] = result
            if tool in results["tools"]:
                results["tools"][tool].update({k: list(v) for k, v in seen.items() if v})
    results["agreement_min_dice_vs_engine"] = _agreement(case, tools, spec["profile"])
    return results


def _agreement(case: Path, tools: list[str], profile_path: str) -> dict:
    from bench.reference_tools import dice_per_class

    if "engine" not in tools:
        return {}
    classes = parse_profile(json.loads(Path(profile_path).read_text())).classes
    ours = np.load(case / "labels_engine.npy")
    agreement = {}
    for tool in tools:
        if tool != "engine":
            scores = dice_per_class(ours, np.load(case / f"labels_{tool}.npy"), classes)
            agreement[tool] = round(min(scores.values()), 6) if scores else None
    return agreement


def machine() -> dict:
    import torch

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        # the vector instructions torch's CPU kernels use here (e.g. AVX2, AVX512): ratios depend on it
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "load_average_at_start": os.getloadavg(),
    }


def print_table(results: list[dict]) -> None:
    lines = []
    for r in results:
        tools = r["tools"]
        engines = [e for e in ENGINES if e in tools]
        lines.append(f"\n{r['case']}: input {r['input_shape']} at {r['input_spacing_mm']} mm")
        lines.append(
            f"{'tool':<18}{'wall s':>10}{'peak RSS MB':>14}"
            + "".join(f"{e + ' / tool':>24}" for e in engines)
        )
        for tool, t in tools.items():
            ratios = "".join(f"{tools[e]['seconds'] / t['seconds']:>24.2f}" for e in engines)
            lines.append(
                f"{tool:<18}{t['seconds']:>10.1f}{t['peak_rss_mb']:>14.0f}{ratios}   rounds {t['all_seconds']}"
            )
        for e in engines:
            t = tools[e]
            lines.append(
                f"{e + ' / its forward passes':<34}{t['seconds'] / t['forward_seconds']:.2f}"
                f"   (forward {t['forward_seconds']:.1f} s, {t['tiles']} tiles, model grid {t['model_shape']};"
                f" model load s {t['all_model_load_seconds']})"
            )
        lines.append(f"agreement (min per-class Dice vs the engine): {r['agreement_min_dice_vs_engine']}")
    sys.stdout.write("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=["demo", "standin", "all"], default="all")
    parser.add_argument("--tools", nargs="+", choices=list(WORKERS), default=list(WORKERS))
    parser.add_argument("--workdir", type=Path, help="keep inputs, models and outputs here")
    parser.add_argument("--repeat", type=int, default=1, help="rounds per tool; the fastest counts")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--case-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.worker:
        spec = json.loads((args.case_dir / "spec.json").read_text())
        result = WORKERS[args.worker](args.case_dir, spec)
        sys.stdout.write(json.dumps(result) + "\n")
        return 0
    cases = ["demo", "standin"] if args.case == "all" else [args.case]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        report = {
            "machine": machine(),
            "results": [run_case(c, workdir, args.tools, args.repeat) for c in cases],
        }
    print_table(report["results"])
    sys.stdout.write(json.dumps(report["machine"]) + "\n")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
