"""Write results into a hidden staging folder inside the output folder and move them into place at the end.

The output folder itself may be a mount point (XNAT's ``/output``, MONAI Deploy's ``/var/holoscan/output``)
that cannot be replaced, so each top-level entry is renamed into place on commit. A run that fails before
``commit()`` leaves no partial files: ``abort()`` removes the staging folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from operators.errors import OutputError


def ensure_writable(folder: Path) -> Path:
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise OutputError(f"output folder {folder} is not writable: {exc.strerror or exc}") from None
    return folder


def write_json_atomic(path: Path, data: object) -> None:
    """Write JSON next to ``path`` and rename it over ``path``: readers never see a half-written file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, ensure_ascii=False)
            handle.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are read by other users (XNAT, PACS export)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class StagedOutput:
    """A staging folder whose contents replace the same-named entries of ``output_dir`` on commit."""

    def __init__(self, output_dir: Path):
        self.output_dir = ensure_writable(Path(output_dir))
        self.staging = Path(tempfile.mkdtemp(dir=self.output_dir, prefix=".staging-"))
        self.staging.chmod(0o755)

    def path(self, relative: str | Path) -> Path:
        target = self.staging / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def commit(self) -> list[Path]:
        moved = []
        for entry in sorted(self.staging.iterdir()):
            destination = self.output_dir / entry.name
            if destination.is_dir() and not destination.is_symlink():
                shutil.rmtree(destination)
            elif destination.exists():
                destination.unlink()
            os.replace(entry, destination)
            moved.append(destination)
        self.staging.rmdir()
        return moved

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
