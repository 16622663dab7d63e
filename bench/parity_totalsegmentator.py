"""Parity of the engine with the official TotalSegmentator 2.18 CLI (``--task total_mr``) on the same weights.

One command (from the repository root)::

    .venv/bin/python bench/parity_totalsegmentator.py [--shape 64 56 24] [--keep DIR]

It writes random-weight nnU-Net folders named exactly like TotalSegmentator's ``total_mr`` parts
(``Dataset850_TotalSegMRI_part1_organs_1088subj`` and ``Dataset851_TotalSegMRI_part2_muscles_1088subj``,
trainer ``nnUNetTrainer_2000epochs_NoMirroring``, 29 + 21 classes with the official names) into a weights
folder, points ``TOTALSEG_WEIGHTS_PATH`` at it, switches usage statistics off in a fresh
``TOTALSEG_HOME_DIR``, blocks network access in the CLI process, and runs the CLI on an oblique, anisotropic
synthetic volume saved as NIfTI. The engine runs on the same volume in memory with the shipped ``total_mr``
profile and that weights folder as its models root. Exit status 0 when every class reaches Dice >= 0.999.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.reference_tools import dice_per_class  # noqa: E402
from operators.model_factory import SyntheticModelSpec, write_model_folder  # noqa: E402
from operators.model_profile import load_profile  # noqa: E402
from operators.segmentation_engine import SegmentationEngine  # noqa: E402
from tests.engine_helpers import OBLIQUE_AFFINE_LPS, make_volume, smooth_image  # noqa: E402

logger = logging.getLogger("parity_totalsegmentator")
DICE_BAR = 0.999


def write_total_mr_standins(weights: Path, patch=(32, 32, 32), features=(4, 8, 16), seed=0) -> None:
    """Random-weight stand-ins for parts 850/851 in the exact folder layout TotalSegmentator expects."""
    profile = load_profile("total_mr")
    for index, part in enumerate(profile.parts):
        names = tuple(profile.classes[label] for label in part.labels.values())
        write_model_folder(
            weights,
            SyntheticModelSpec(
                dataset=part.dataset,
                label_names=names,
                trainer=part.trainer,
                patch_size=patch,
                features_per_stage=features,
                spacing=profile.target_spacing_mm,
                seed=seed + index,
                weight_scale=1.5,
            ),
        )


def run_totalsegmentator_cli(
    image: Path, output: Path, weights: Path, home: Path, fast: bool = False
) -> float:
    """Run the official CLI offline; returns its wall time in seconds."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.json").write_text(
        json.dumps(
            {
                "totalseg_id": "totalseg_parity",
                "send_usage_stats": False,
                "prediction_counter": 0,
                "statistics_disclaimer_shown": True,
            }
        )
    )
    env = {
        **os.environ,
        "TOTALSEG_HOME_DIR": str(home),
        "TOTALSEG_WEIGHTS_PATH": str(weights),
        "PYTHONPATH": str(REPO),
    }
    command = [
        sys.executable,
        str(REPO / "bench" / "totalsegmentator_offline.py"),
        "-i",
        str(image),
        "-o",
        str(output),
        "--ml",
        "--task",
        "total_mr",
        "--device",
        "cpu",
        "--quiet",
    ] + (["--fast"] if fast else [])
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0 or not output.exists():
        raise RuntimeError(
            f"TotalSegmentator failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return elapsed


def run_parity(workdir: Path, shape=(64, 56, 24), seed=0) -> dict:
    """Build models and input under ``workdir``, run both tools, return the comparison."""
    weights = workdir / "weights"
    write_total_mr_standins(weights, seed=seed)
    volume = make_volume(smooth_image(shape, seed=seed), OBLIQUE_AFFINE_LPS)
    image_path = workdir / "input.nii.gz"
    nib.save(volume.to_nifti(), image_path)
    output_path = workdir / "totalsegmentator.nii.gz"
    cli_seconds = run_totalsegmentator_cli(image_path, output_path, weights, workdir / "home")
    official = np.asanyarray(nib.load(output_path).dataobj).astype(np.uint8)

    profile = load_profile("total_mr")
    started = time.perf_counter()
    engine = SegmentationEngine(profile, weights, device="cpu")
    ours = engine.segment(volume)
    engine_seconds = time.perf_counter() - started
    scores = dice_per_class(ours, official, profile.classes)
    return {
        "shape": list(shape),
        "classes_compared": len(scores),
        "min_dice": min(scores.values()) if scores else None,
        "identical_voxels": float(np.mean(ours == official)),
        "dice": scores,
        "totalsegmentator_cli_seconds": round(cli_seconds, 2),
        "engine_seconds": round(engine_seconds, 2),
        "passed": bool(scores) and min(scores.values()) >= DICE_BAR and ours.shape == official.shape,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 56, 24))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        result = run_parity(args.keep, tuple(args.shape), args.seed)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = run_parity(Path(tmp), tuple(args.shape), args.seed)
    print(json.dumps(result, indent=2))  # the report is this tool's output
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
