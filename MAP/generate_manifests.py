"""Generate MAP/app.json and MAP/pkg.json from MAP/app.yaml with holoscan-cli's own packager code.

The manifests are what `monai-deploy package` writes into the image at /etc/holoscan/app.json and
/etc/holoscan/pkg.json. Generating them with the packager's classes (ApplicationConfiguration,
PackageBuildParameters) keeps our Dockerfile-built image and a `monai-deploy package`-built MAP identical
in what the MONAI Deploy Workflow Manager reads. `--check` exits 1 when the committed files are stale (CI).

    python MAP/generate_manifests.py            # rewrite MAP/app.json and MAP/pkg.json
    python MAP/generate_manifests.py --check    # verify they are current
    python MAP/generate_manifests.py --task demo --out /etc/holoscan   # in an image build
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

from holoscan_cli.common.enum_types import SdkType
from holoscan_cli.packager.config_reader import ApplicationConfiguration
from holoscan_cli.packager.parameters import PackageBuildParameters

logger = logging.getLogger("generate_manifests")

MAP_DIR = Path(__file__).resolve().parent
REPO = MAP_DIR.parent
DEMO_MODEL_FOLDER = "Dataset999_TotalSegMRIDemo"
DEFAULT_TASK = "total_mr"  # what the committed manifests describe: the default image build


def model_folders(task: str) -> list[str]:
    """Dataset folders an image built for ``task`` carries under /opt/holoscan/models (pkg.json "models")."""
    if task == "demo":
        return [DEMO_MODEL_FOLDER]
    registry = json.loads((REPO / "app" / "weights_registry.json").read_text())
    if task not in registry["tasks"]:
        raise SystemExit(f"unknown task {task!r}; choose demo or one of {', '.join(registry['tasks'])}")
    return list(registry["tasks"][task])


def build_manifests(config_path: Path, task: str = DEFAULT_TASK) -> dict[str, str]:
    """Return {"app.json": text, "pkg.json": text} exactly as they should be committed."""
    config = ApplicationConfiguration()
    config.read(config_path)
    params = PackageBuildParameters()
    # The packager derives the command from the application path: a folder with __main__.py runs as
    # ["python3", "/opt/holoscan/app"]. The repository's app/ package is such a folder.
    params.application = REPO / "app"
    params.uid = 1000
    params.gid = 1000
    params.models = {name: Path("/opt/holoscan/models") / name for name in model_folders(task)}
    params.sdk = SdkType.MonaiDeploy
    params.monai_deploy_app_sdk_version = version("monai-deploy-app-sdk")
    params.version = None  # take application.version from app.yaml
    app_manifest = config.populate_app_manifest(params)
    app_manifest.sdk = SdkType.MonaiDeploy.value
    app_manifest.sdk_version = params.monai_deploy_app_sdk_version
    pkg_manifest = config.populate_package_manifest(params)
    pkg_manifest.platform_config = "dgpu"
    return {
        "app.json": json.dumps(app_manifest.data, indent=2, default=str) + "\n",
        "pkg.json": json.dumps(pkg_manifest.data, indent=2, default=str) + "\n",
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=MAP_DIR / "app.yaml")
    parser.add_argument("--out", type=Path, default=MAP_DIR)
    parser.add_argument(
        "--task", default=DEFAULT_TASK, help="weights baked into the image (demo, total_mr, ...)"
    )
    parser.add_argument("--check", action="store_true", help="fail if the files in --out are not current")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    manifests = build_manifests(args.config, args.task)
    if args.check:
        stale = [
            n
            for n, text in manifests.items()
            if not (args.out / n).is_file() or (args.out / n).read_text() != text
        ]
        if stale:
            logger.error(
                "%s stale; run `python MAP/generate_manifests.py` and commit the result", ", ".join(stale)
            )
            return 1
        logger.info("app.json and pkg.json are current")
        return 0
    for name, text in manifests.items():
        (args.out / name).write_text(text)
        logger.info("wrote %s", args.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
