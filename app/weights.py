"""Fetch, check and install the official TotalSegmentator MRI weights (`totalseg-mri weights ...`).

The weights are nnU-Net v2 result folders shipped as one zip per dataset folder in the TotalSegmentator
GitHub release ``v2.5.0-weights`` (see ``app/weights_registry.json``). This module:

* downloads a zip to ``<models>/.<name>.zip.part`` with HTTP Range resume (an interrupted download
  continues where it stopped, within one call through retries or in a later call),
* checks the byte count, the SHA-256 digest (when one is recorded in the registry; otherwise it logs the
  digest so it can be recorded), the zip's CRCs and that no member escapes the target folder,
* unpacks into a temporary folder inside the models root, validates the nnU-Net layout
  (``dataset.json``, ``plans.json``, ``fold_0/checkpoint_final.pth``) and only then renames the dataset
  folder into place, so a models root never holds a half-written model,
* validates offline a models folder that a user copied by hand (``verify``), or installs zips the user
  downloaded elsewhere (``fetch --source-dir``).

Only the standard library is used (urllib, zipfile, hashlib) so an image build needs nothing extra.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import logging
import os
import shutil
import stat
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

logger = logging.getLogger(__name__)

REGISTRY_PATH = Path(__file__).with_name("weights_registry.json")
BASE_URL_ENV = "TOTALSEG_MRI_WEIGHTS_URL"
_CHUNK = 1 << 20
_USER_AGENT = "totalseg-mri-weights-fetcher"


class WeightsError(ValueError):
    """A weights archive or model folder is missing, incomplete, corrupt or unsafe."""


@dataclass(frozen=True)
class WeightsArchive:
    """One release asset: the zip of one nnU-Net dataset folder."""

    dataset: str
    url: str
    size: int
    sha256: str | None

    @property
    def filename(self) -> str:
        return f"{self.dataset}.zip"


@dataclass(frozen=True)
class WeightsRegistry:
    """Where the weights live and what an installed model folder must contain."""

    base_url: str
    model_subfolder: str
    fold: str
    checkpoint: str
    datasets: dict[str, dict]
    tasks: dict[str, list[str]]

    def archives(self, task: str, base_url: str | None = None) -> list[WeightsArchive]:
        """The archives a task needs; ``base_url`` (or $TOTALSEG_MRI_WEIGHTS_URL) replaces the release URL."""
        if task not in self.tasks:
            raise WeightsError(f"unknown task {task!r}; known tasks: {', '.join(sorted(self.tasks))}")
        base = (base_url or os.environ.get(BASE_URL_ENV) or self.base_url).rstrip("/")
        result = []
        for dataset in self.tasks[task]:
            entry = self.datasets[dataset]
            result.append(
                WeightsArchive(dataset, f"{base}/{dataset}.zip", int(entry["size"]), entry.get("sha256"))
            )
        return result


@dataclass(frozen=True)
class InstalledDataset:
    """What `fetch_weights` did for one dataset folder."""

    dataset: str
    path: Path
    action: str  # "installed" or "already-present"
    sha256: str | None


def load_registry(path: Path | None = None) -> WeightsRegistry:
    """Read the registry JSON (default: the one shipped next to this module)."""
    path = path or REGISTRY_PATH
    try:
        data = json.loads(Path(path).read_text())
        registry = WeightsRegistry(
            base_url=data["release_base_url"],
            model_subfolder=data["model_subfolder"],
            fold=data["fold"],
            checkpoint=data["checkpoint"],
            datasets=data["datasets"],
            tasks=data["tasks"],
        )
    except (OSError, ValueError, KeyError) as exc:
        raise WeightsError(f"cannot read weights registry {path}: {exc}") from exc
    for task, names in registry.tasks.items():
        missing = [n for n in names if n not in registry.datasets]
        if missing:
            raise WeightsError(f"weights registry {path}: task {task!r} names unknown datasets {missing}")
    return registry


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def download_archive(
    archive: WeightsArchive, part_path: Path, *, retries: int = 3, timeout: float = 60.0
) -> Path:
    """Download ``archive`` into ``part_path``, resuming from whatever bytes it already holds.

    Each attempt asks for ``Range: bytes=<have>-``; a server that answers 200 instead of 206 makes the
    download start over. A dropped connection is retried ``retries`` times; if bytes are still missing the
    ``.part`` file is kept so that running the same command again resumes it.
    """
    part_path.parent.mkdir(parents=True, exist_ok=True)
    last_problem = ""
    for attempt in range(retries + 1):
        have = part_path.stat().st_size if part_path.exists() else 0
        if have > archive.size:
            logger.warning("%s holds more bytes than the archive has; starting over", part_path.name)
            part_path.unlink()
            have = 0
        if have == archive.size:
            break
        headers = {"User-Agent": _USER_AGENT}
        if have:
            headers["Range"] = f"bytes={have}-"
            logger.info("resuming %s at byte %d of %d", archive.filename, have, archive.size)
        request = urllib.request.Request(archive.url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                mode = "ab"
                if have and response.status != 206:
                    logger.warning(
                        "server ignored the range request for %s; downloading it again", archive.filename
                    )
                    mode, have = "wb", 0
                elif response.status == 206:
                    content_range = response.headers.get("Content-Range", "")
                    if not content_range.startswith(f"bytes {have}-"):
                        raise WeightsError(
                            f"server answered range {content_range!r} for {archive.url}, "
                            f"expected bytes {have}-"
                        )
                with open(part_path, mode) as handle:
                    _copy_with_progress(response, handle, have, archive)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:
                # The kept partial file does not fit the server's file (it changed): start over.
                part_path.unlink(missing_ok=True)
                last_problem = "server refused to resume; starting over"
                continue
            # Other 4xx answers will not get better by retrying; a 5xx might.
            if exc.code < 500:
                raise WeightsError(f"download of {archive.url} failed: HTTP {exc.code} {exc.reason}") from exc
            last_problem = f"HTTP {exc.code} {exc.reason}"
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            last_problem = str(exc) or type(exc).__name__
        else:
            last_problem = ""
        got = part_path.stat().st_size if part_path.exists() else 0
        if got >= archive.size:
            break
        logger.warning(
            "download of %s stopped at %d of %d bytes (attempt %d of %d)%s",
            archive.filename,
            got,
            archive.size,
            attempt + 1,
            retries + 1,
            f": {last_problem}" if last_problem else "",
        )
    got = part_path.stat().st_size if part_path.exists() else 0
    if got < archive.size:
        raise WeightsError(
            f"download of {archive.url} is incomplete: {got} of {archive.size} bytes"
            f"{' (' + last_problem + ')' if last_problem else ''}; the partial file {part_path} is kept, "
            "run the same command again to resume"
        )
    return part_path


def _copy_with_progress(response, handle, have: int, archive: WeightsArchive) -> None:
    done = have
    next_report = 0.1
    while True:
        block = response.read(_CHUNK)
        if not block:
            break
        handle.write(block)
        done += len(block)
        if done / archive.size >= next_report:
            logger.info(
                "%s: %d%% (%d of %d bytes)",
                archive.filename,
                int(100 * done / archive.size),
                done,
                archive.size,
            )
            next_report += 0.1


def check_archive(zip_path: Path, archive: WeightsArchive) -> str:
    """Check size, SHA-256 and zip integrity of a downloaded or copied archive; return its digest."""
    size = zip_path.stat().st_size
    if size != archive.size:
        raise WeightsError(
            f"{zip_path} has {size} bytes but the release asset {archive.filename} has {archive.size}"
        )
    digest = sha256_of(zip_path)
    if archive.sha256 is None:
        logger.warning(
            "SHA-256 of %s is %s; no digest is recorded yet in %s, record it there so later downloads "
            "are checked against it",
            archive.filename,
            digest,
            REGISTRY_PATH.name,
        )
    elif digest != archive.sha256.lower():
        raise WeightsError(
            f"SHA-256 of {zip_path} is {digest} but {archive.filename} must have {archive.sha256}"
        )
    try:
        with zipfile.ZipFile(zip_path) as zf:
            _check_members(zf, zip_path)
            bad = zf.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, OSError, EOFError) as exc:
        raise WeightsError(f"{zip_path} is not a readable zip archive: {exc}") from exc
    if bad is not None:
        raise WeightsError(f"{zip_path} is corrupt: member {bad!r} fails its CRC check")
    return digest


def _check_members(zf: zipfile.ZipFile, zip_path: Path) -> None:
    """Refuse members that would land outside the unpack folder (absolute, '..', drive letters, links)."""
    for info in zf.infolist():
        name = info.filename
        parts = PurePosixPath(name.replace("\\", "/")).parts
        unsafe = (
            name.startswith(("/", "\\"))
            or (len(name) > 1 and name[1] == ":")
            or ".." in parts
            or stat.S_ISLNK(info.external_attr >> 16)
        )
        if unsafe:
            raise WeightsError(
                f"{zip_path} contains an unsafe member {name!r} (path outside the archive root)"
            )


def _extract(zf: zipfile.ZipFile, dest: Path) -> None:
    root = dest.resolve()
    for info in zf.infolist():
        target = (dest / info.filename).resolve()
        # Second line of defence after _check_members: nothing may resolve outside dest.
        if root != target and root not in target.parents:
            raise WeightsError(f"zip member {info.filename!r} resolves outside {dest}")
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out, _CHUNK)


def model_folder_problems(dataset_dir: Path, registry: WeightsRegistry) -> list[str]:
    """Everything wrong with an installed nnU-Net dataset folder (empty list: usable)."""
    if not dataset_dir.is_dir():
        return [f"{dataset_dir} does not exist"]
    model_dir = dataset_dir / registry.model_subfolder
    if not model_dir.is_dir():
        return [f"{model_dir} does not exist"]
    problems = []
    for name, required_key in (("dataset.json", "labels"), ("plans.json", "configurations")):
        path = model_dir / name
        try:
            content = json.loads(path.read_text())
        except FileNotFoundError:
            problems.append(f"{path} is missing")
            continue
        except (OSError, ValueError) as exc:
            problems.append(f"{path} is not valid JSON: {exc}")
            continue
        if not isinstance(content, dict) or required_key not in content:
            problems.append(f"{path} has no {required_key!r} entry")
    checkpoint = model_dir / registry.fold / registry.checkpoint
    if not checkpoint.is_file():
        problems.append(f"{checkpoint} is missing")
    elif not zipfile.is_zipfile(checkpoint):
        # torch.save writes zip containers (since torch 1.6); anything else is truncated or no checkpoint.
        problems.append(f"{checkpoint} is not a torch checkpoint (not a zip container)")
    else:
        try:
            with zipfile.ZipFile(checkpoint) as zf:
                bad = zf.testzip()
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
            bad = str(exc)
        if bad is not None:
            problems.append(f"{checkpoint} is corrupt ({bad})")
    return problems


def install_archive(
    zip_path: Path,
    archive: WeightsArchive,
    models_root: Path,
    registry: WeightsRegistry,
    *,
    force: bool = False,
) -> Path:
    """Unpack into a temporary folder inside ``models_root``, validate, then rename into place."""
    models_root.mkdir(parents=True, exist_ok=True)
    target = models_root / archive.dataset
    staging = Path(tempfile.mkdtemp(prefix=f".{archive.dataset}.", suffix=".unpack", dir=models_root))
    try:
        with zipfile.ZipFile(zip_path) as zf:
            _check_members(zf, zip_path)
            _extract(zf, staging)
        unpacked = staging / archive.dataset
        problems = model_folder_problems(unpacked, registry)
        if problems:
            raise WeightsError(f"{archive.filename} does not hold a usable model: {'; '.join(problems)}")
        extras = sorted(p.name for p in staging.iterdir() if p.name != archive.dataset)
        if extras:
            logger.info("%s: ignoring top-level entries %s", archive.filename, extras)
        if target.exists():
            if not force:
                raise WeightsError(f"{target} already exists; pass --force to replace it")
            retired = Path(tempfile.mkdtemp(prefix=f".{archive.dataset}.", suffix=".old", dir=models_root))
            os.replace(target, retired / archive.dataset)
            os.replace(unpacked, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(unpacked, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("installed %s", target)
    return target


def fetch_weights(
    task: str,
    models_root: Path,
    *,
    registry: WeightsRegistry | None = None,
    base_url: str | None = None,
    source_dir: Path | None = None,
    force: bool = False,
    retries: int = 3,
    timeout: float = 60.0,
) -> list[InstalledDataset]:
    """Make ``models_root`` hold every dataset folder that ``task`` needs.

    Valid folders already present are kept (no network access). With ``source_dir`` the zips are taken
    from that folder (offline install of archives copied by hand) and never deleted.
    """
    registry = registry or load_registry()
    models_root = Path(models_root)
    models_root.mkdir(parents=True, exist_ok=True)
    results = []
    for archive in registry.archives(task, base_url):
        target = models_root / archive.dataset
        if target.exists() and not force:
            problems = model_folder_problems(target, registry)
            if problems:
                raise WeightsError(
                    f"{target} exists but is not usable ({'; '.join(problems)}); pass --force to replace it"
                )
            logger.info("%s is already installed and valid; skipping", target)
            results.append(InstalledDataset(archive.dataset, target, "already-present", None))
            continue
        if source_dir is not None:
            zip_path = Path(source_dir) / archive.filename
            if not zip_path.is_file():
                raise WeightsError(f"{zip_path} not found (expected the release asset {archive.filename})")
            digest = check_archive(zip_path, archive)
            install_archive(zip_path, archive, models_root, registry, force=force)
        else:
            part = models_root / f".{archive.filename}.part"
            download_archive(archive, part, retries=retries, timeout=timeout)
            try:
                digest = check_archive(part, archive)
                install_archive(part, archive, models_root, registry, force=force)
            except WeightsError:
                # Complete but unusable bytes: resuming would only extend the damage.
                part.unlink(missing_ok=True)
                raise
            part.unlink(missing_ok=True)
        results.append(InstalledDataset(archive.dataset, target, "installed", digest))
    return results


def verify_models(task: str, models_root: Path, *, registry: WeightsRegistry | None = None) -> list[Path]:
    """Offline check of a models folder (e.g. copied by hand); raise `WeightsError` listing every problem."""
    registry = registry or load_registry()
    problems: list[str] = []
    folders = []
    for archive in registry.archives(task):
        folder = Path(models_root) / archive.dataset
        problems.extend(model_folder_problems(folder, registry))
        folders.append(folder)
    if problems:
        raise WeightsError(
            f"models for task {task!r} in {models_root} are not usable: " + "; ".join(problems)
        )
    return folders


def _default_models_root() -> str | None:
    return os.environ.get("HOLOSCAN_MODEL_PATH")


def add_subparsers(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``weights {fetch,verify,list}`` to the ``totalseg-mri`` command's subparsers."""
    parser = subparsers.add_parser(
        "weights", help="download, install and verify the TotalSegmentator MRI weights"
    )
    _add_weights_arguments(parser)
    parser.set_defaults(handler=run)
    return parser


def _add_weights_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="weights_action", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--task", default="total_mr", help="total_mr (default), total_mr_fast, total_mr_fastest"
    )
    common.add_argument(
        "-m",
        "--models",
        default=_default_models_root(),
        help="models root folder (default: $HOLOSCAN_MODEL_PATH)",
    )
    common.add_argument("--registry", type=Path, default=None, help=argparse.SUPPRESS)
    fetch = actions.add_parser("fetch", parents=[common], help="download (or copy) and install the weights")
    fetch.add_argument(
        "--source-dir",
        type=Path,
        default=None,
        help="install from release zips already copied into this folder (no network)",
    )
    fetch.add_argument(
        "--base-url",
        default=None,
        help=f"mirror URL holding <dataset>.zip (default: the GitHub release; env {BASE_URL_ENV})",
    )
    fetch.add_argument("--force", action="store_true", help="replace dataset folders that already exist")
    fetch.add_argument("--retries", type=int, default=3, help="resume attempts after a dropped connection")
    fetch.add_argument("--timeout", type=float, default=60.0, help="socket timeout in seconds")
    actions.add_parser("verify", parents=[common], help="check an installed models folder offline")
    actions.add_parser("list", parents=[common], help="show the archives a task needs")


def run(args: argparse.Namespace) -> int:
    """Execute a parsed ``weights`` command; errors end as one log line and exit status 1."""
    try:
        registry = load_registry(args.registry)
        if args.weights_action == "list":
            for archive in registry.archives(args.task):
                sys.stdout.write(
                    f"{archive.dataset}\t{archive.size}\t{archive.sha256 or '-'}\t{archive.url}\n"
                )
            return 0
        if not args.models:
            raise WeightsError("no models folder given: pass -m/--models or set HOLOSCAN_MODEL_PATH")
        models_root = Path(args.models)
        if args.weights_action == "verify":
            folders = verify_models(args.task, models_root, registry=registry)
            logger.info("models for task %s are complete: %s", args.task, ", ".join(f.name for f in folders))
            return 0
        results = fetch_weights(
            args.task,
            models_root,
            registry=registry,
            base_url=args.base_url,
            source_dir=args.source_dir,
            force=args.force,
            retries=args.retries,
            timeout=args.timeout,
        )
        for item in results:
            logger.info(
                "%s: %s%s", item.dataset, item.action, f" (sha256 {item.sha256})" if item.sha256 else ""
            )
        return 0
    except (WeightsError, OSError) as exc:
        logger.error("weights %s failed: %s", args.weights_action, exc)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m app.weights fetch|verify|list ...`` (same as ``totalseg-mri weights ...``)."""
    parser = argparse.ArgumentParser(prog="totalseg-mri weights", description=__doc__.splitlines()[0])
    _add_weights_arguments(parser)
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
