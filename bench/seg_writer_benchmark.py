"""How long the DICOM SEG writer takes for 50 segments on a 512x512x200 MR series (target: < 10 s).

Writes a synthetic classic MR source series (200 single-frame instances) to a temporary folder, a label
volume with all 50 total_mr classes (each an ellipsoid spanning 20-80 slices, like abdominal organs and
muscles), then times ``write_segmentation`` for the option sets given on the command line.

    python bench/seg_writer_benchmark.py                      # BINARY, omit empty frames (the default)
    python bench/seg_writer_benchmark.py --variants all       # also LABELMAP and keeping empty frames
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from operators.anatomy_codes import load_anatomy_table  # noqa: E402
from operators.seg_writer import SegWriterOptions, read_source_datasets, write_segmentation  # noqa: E402
from operators.segmentation_result import AlgorithmInfo, SegmentationResult  # noqa: E402
from tests.result_writer_sources import write_classic_series  # noqa: E402

logger = logging.getLogger("seg_writer_benchmark")

VARIANTS = {
    "binary": SegWriterOptions(segmentation_type="BINARY", omit_empty_frames=True),
    "labelmap": SegWriterOptions(segmentation_type="LABELMAP", omit_empty_frames=True),
    "binary_keep_empty": SegWriterOptions(segmentation_type="BINARY", omit_empty_frames=False),
}


def ellipsoid_labels(shape: tuple[int, int, int], n_classes: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype=np.uint8)
    ii, jj = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    for label in range(1, n_classes + 1):
        extent = int(rng.integers(20, 81))
        k0 = int(rng.integers(0, shape[2] - extent))
        ci, cj = rng.integers(60, shape[0] - 60), rng.integers(60, shape[1] - 60)
        ri, rj = rng.integers(10, 50), rng.integers(10, 50)
        for k in range(k0, k0 + extent):
            t = 1 - ((k - k0 - extent / 2) / (extent / 2)) ** 2
            if t <= 0:
                continue
            inside = ((ii - ci) / ri) ** 2 + ((jj - cj) / rj) ** 2 <= t
            labels[:, :, k][inside] = label
    return labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--variants", default="binary", help="comma list of " + ",".join(VARIANTS) + " or all"
    )
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    names = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    table = load_anatomy_table()
    classes = {entry.label: name for name, entry in table.items()}
    with tempfile.TemporaryDirectory(prefix="seg-bench-") as tmp:
        started = time.perf_counter()
        series = write_classic_series(
            Path(tmp) / "src", shape=(args.size, args.size, args.slices), spacing=(0.8, 0.8, 1.5)
        )
        labels = ellipsoid_labels(series.volume.shape, len(classes))
        logger.info("source series + labels made in %.1f s", time.perf_counter() - started)
        result = SegmentationResult(
            series.volume, labels, classes, AlgorithmInfo("TotalSegmentator MRI", "bench", "total_mr")
        )
        sources = read_source_datasets(result)
        report = {}
        for name in names:
            started = time.perf_counter()
            outcome = write_segmentation(result, Path(tmp) / f"{name}.dcm", VARIANTS[name], sources)
            seconds = time.perf_counter() - started
            size_mb = outcome.path.stat().st_size / 1e6  # type: ignore[union-attr]
            report[name] = {
                "seconds": round(seconds, 2),
                "segments": len(outcome.segment_numbers),
                "frames": int(outcome.dataset.NumberOfFrames),
                "file_mb": round(size_mb, 1),
            }
            logger.info("%s: %s", name, report[name])
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
