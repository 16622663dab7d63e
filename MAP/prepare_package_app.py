"""Assemble the application folder that `monai-deploy package` expects (a folder with __main__.py).

The packager copies one folder to /opt/holoscan/app and runs it as ``python3 /opt/holoscan/app``; it installs
``requirements.txt`` from that folder. Our code lives in two packages (app/, operators/), so this script
builds ``build/map-app/`` = ``__main__.py`` + ``app/`` + ``operators/`` + ``requirements.txt`` (the
dependencies of pyproject.toml), ready for:

    python MAP/prepare_package_app.py
    monai-deploy package build/map-app -c MAP/app.yaml -t totalseg-mri:0.1.0 --platform x86_64 -m MODELS
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parent.parent
logger = logging.getLogger("prepare_package_app")

MAIN = '''"""MAP entry point: ``python3 /opt/holoscan/app`` (HOLOSCAN_* variables or -i/-o/-m)."""

from app.cli import run_sdk_style

run_sdk_style()
'''


def prepare(out: Path) -> Path:
    """Write the package folder at ``out`` (replaced if it exists); return it."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("app", "operators"):
        shutil.copytree(REPO / package, out / package, ignore=ignore)
    (out / "__main__.py").write_text(MAIN)
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (out / "requirements.txt").write_text("\n".join(dependencies) + "\n")
    logger.info("wrote %s (%d requirements)", out, len(dependencies))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "build" / "map-app")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    prepare(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
