"""Generate the ``org.nrg.commands`` image label from ``xnat_command.json`` (never copy it by hand).

XNAT reads the commands an image offers from its ``org.nrg.commands`` label: a JSON-encoded list of
commands. The list holds the command as written (it requests a GPU through ``generic-resources``) and a
derived CPU-only variant without the GPU request (device default ``cpu``), so sites without GPU nodes get a
command their scheduler can place. Both are validated against the container service's rules first.

    podman build --build-arg XNAT_COMMANDS="$(python3 -m app.xnat_command_label --image totalseg-mri:0.1.0)" .
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from app.xnat_command_validator import CommandValidationError, load_command, validate_command

logger = logging.getLogger(__name__)

COMMAND_PATH = Path(__file__).resolve().parent.parent / "xnat_command.json"


def cpu_variant(command: dict) -> dict:
    """The same command without a GPU request, defaulting to the CPU."""
    variant = copy.deepcopy(command)
    variant["name"] = f"{command['name']}-cpu"
    variant["label"] = f"{command.get('label') or command['name']} (CPU)"
    variant.pop("generic-resources", None)
    for item in variant.get("inputs") or []:
        if item.get("name") == "device":
            item["default-value"] = "cpu"
    for wrapper in variant.get("xnat") or []:
        wrapper["name"] = f"{wrapper['name']}-cpu"
        wrapper["label"] = f"{wrapper.get('label') or wrapper['name']} (CPU)"
    return variant


def label_commands(command: dict, image: str | None = None) -> list[dict]:
    """Validated list of commands for the label (``image`` replaces the command's image name)."""
    base = copy.deepcopy(command)
    if image:
        base["image"] = image
    commands = [base]
    if base.get("generic-resources"):
        commands.append(cpu_variant(base))
    for item in commands:
        validate_command(item)
    return commands


def label_value(command: dict, image: str | None = None) -> str:
    return json.dumps(label_commands(command, image), separators=(",", ":"), ensure_ascii=True)


def verify_label(command: dict, value: str) -> None:
    """Raise `CommandValidationError` unless ``value`` is exactly the label this command generates."""
    if not value.strip():
        raise CommandValidationError(
            [
                'the org.nrg.commands label is empty: build with --build-arg XNAT_COMMANDS="$(python3 -m '
                'app.xnat_command_label --image NAME:TAG)"'
            ]
        )
    try:
        given = json.loads(value)
        image = given[0]["image"]
    except (ValueError, LookupError, TypeError) as exc:
        raise CommandValidationError(
            [f"the org.nrg.commands label is not a JSON list of commands: {exc}"]
        ) from exc
    if given != label_commands(command, image):
        raise CommandValidationError(
            [
                "the org.nrg.commands label differs from what xnat_command.json generates; regenerate it: "
                "python3 -m app.xnat_command_label"
            ]
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.xnat_command_label", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--command", type=Path, default=COMMAND_PATH, help="command JSON (default: xnat_command.json)"
    )
    parser.add_argument("--image", default=None, help="image name:tag written into the commands")
    parser.add_argument(
        "--verify",
        metavar="LABEL",
        default=None,
        help="check that LABEL is exactly what the command generates (used by the Dockerfile)",
    )
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        command = load_command(args.command)
        if args.verify is not None:
            verify_label(command, args.verify)
            logger.info("org.nrg.commands label matches %s", args.command)
            return 0
        value = label_value(command, args.image)
    except CommandValidationError as exc:
        logger.error("%s: %s", args.command, str(exc).replace("\n\t", " | "))
        return 1
    sys.stdout.write(value + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
