"""Check an XNAT Container Service command JSON the way the service does before it accepts it.

XNAT has no JSON schema for commands: ``POST /xapi/commands`` runs Java validation (container-service
3.7.x, ``Command.validate()``) and answers HTTP 400 ``Invalid command:\\n\\t<message>`` with messages such as
``Command "x" - wrapper "w" - output handler ...``. `service_errors` re-implements those rules with the same
message wording so a broken ``xnat_command.json`` fails in our test suite instead of on a site's XNAT.

`usability_errors` adds what the service accepts but what makes a command useless in practice (the
commonest support requests): a wrapper without a description or context never shows in the "Run" menu, the
launch UI needs exactly one external input, the command line must stay within 2048 characters, replacement
keys that no input fills stay literally on the command line, shell operators need ``override-entrypoint``,
and inputs that feed mounts or command inputs must name ones that exist.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

NAME_PATTERN = re.compile(r"[^A-Za-z0-9_-]")
IMAGE_TAG_PATTERN = re.compile(r".+:[a-zA-Z0-9_.-]+$")
COMMAND_TYPES = ("docker", "docker-setup", "docker-wrapup")
VISIBILITIES = ("public", "private", "protected")
COMMAND_INPUT_TYPES = ("string", "boolean", "number", "select-one", "select-many", "file")
SELECT_TYPES = ("select-one", "select-many")
MULTIPLE_DELIMITERS = ("quoted-space", "space", "comma", "flag")
WRAPPER_INPUT_TYPES = (
    "string",
    "boolean",
    "number",
    "Directory",
    "File[]",
    "File",
    "Project",
    "ProjectAsset",
    "Subject",
    "SubjectAssessor",
    "Session",
    "Scan",
    "Assessor",
    "Resource",
    "Config",
    "file",
)
MOUNTABLE_TYPES = (
    "Project",
    "ProjectAsset",
    "SubjectAssessor",
    "Session",
    "Scan",
    "Assessor",
    "Resource",
    "File",
)
HANDLER_TYPES = ("Resource", "Assessor", "Scan")
RESERVED_ENV = ("XNAT_USER", "XNAT_PASS", "XNAT_HOST")
MAX_COMMAND_LINE = 2048
_REPLACEMENT_KEY = re.compile(r"#[A-Za-z0-9_-]+#")


class CommandValidationError(ValueError):
    """The command JSON would be refused by XNAT or could never be launched usefully."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("Invalid command:\n\t" + "\n\t".join(errors))


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _bad_name(name: object) -> bool:
    return NAME_PATTERN.search(str(name or "")) is not None


def _join(names: Iterable[str]) -> str:
    return ", ".join(names)


def _input_errors(item: dict) -> list[str]:
    name = item.get("name") or ""
    kind = item.get("type") or "string"
    errors = []
    if _blank(name):
        errors.append("Command input name cannot be blank")
    if _bad_name(name):
        errors.append(f'Command input "{name}" name should contain only alphanumeric, _ and - characters.')
    if kind not in COMMAND_INPUT_TYPES:
        errors.append(
            f'Command input "{name}" - Unknown type "{kind}". Known types: {_join(COMMAND_INPUT_TYPES)}'
        )
    delimiter = item.get("multiple-delimiter")
    if delimiter is not None and delimiter not in MULTIPLE_DELIMITERS:
        errors.append(f'Invalid multiple-delimiter "{delimiter}", choose from: {_join(MULTIPLE_DELIMITERS)}')
    select_values = list(item.get("select-values") or [])
    is_select = kind in SELECT_TYPES
    if is_select and not select_values:
        errors.append(
            f'Command input "{name}" is designated as type "{kind}" but doesn\'t list select-values. '
            "Note that command inputs with values provided by xnat inputs shouldn't be designated as "
            "select (they'll automatically render as a select if their xnat input resolves to more than "
            "one value)."
        )
    elif not is_select and select_values:
        errors.append(f'Command input "{name}" has select-values set, but is not a select type.')
    default = item.get("default-value")
    default_list = None
    if kind == "select-many" and default is not None:
        try:
            parsed = json.loads(default)
            default_list = parsed if isinstance(parsed, list) else None
        except ValueError:
            default_list = None
    if default_list is not None:
        if default_list and select_values and not set(default_list) <= set(select_values):
            errors.append(
                f'Command input "{name}" one or more default values in "{default_list}" is not in '
                f'the list of select-values "{select_values}"'
            )
    elif default is not None and select_values and default not in select_values:
        errors.append(
            f'Command input "{name}" default value "{default}" is not one of the '
            f'select-values "{select_values}"'
        )
    return errors


def _output_errors(item: dict) -> list[str]:
    name = item.get("name") or ""
    errors = []
    if _blank(name):
        errors.append("Output name cannot be blank.")
    if _blank(item.get("mount")):
        errors.append(f'Output "{name}" - mount cannot be blank.')
    if _bad_name(name):
        errors.append(f'Command output "{name}" name should contain only alphanumeric, _ and - characters.')
    return errors


def _wrapper_input_errors(item: dict, derived: bool) -> list[str]:
    name = item.get("name") or ""
    kind = item.get("type") or "string"
    errors = []
    if _blank(name):
        errors.append("Command wrapper input name cannot be blank.")
    if kind not in WRAPPER_INPUT_TYPES:
        errors.append(
            f'Command wrapper input "{name}" - Unknown type "{kind}". '
            f"Known types: {_join(WRAPPER_INPUT_TYPES)}"
        )
    setup = item.get("via-setup-command")
    if not _blank(setup) and _blank(item.get("provides-files-for-command-mount")):
        errors.append(
            f'Command wrapper input "{name}" - "via-setup-command": "{setup}" - You cannot set '
            '"via-setup-command" on an input that does not provide files for a command mount.'
        )
    if _bad_name(name):
        errors.append(
            f'Command wrapper input "{name}" name should contain only alphanumeric, _ and - characters.'
        )
    if derived:
        if _blank(item.get("derived-from-wrapper-input")):
            errors.append(
                f'Command wrapper input "{name}" - property "derived-from-wrapper-input" cannot be blank.'
            )
        if item.get("multiple"):
            if not _blank(item.get("provides-files-for-command-mount")):
                errors.append(
                    f'derived input "{name}" is designated as a "multiple" input, which means it cannot '
                    "provide files for command mounts (consider mounting the parent element)."
                )
            if _blank(item.get("provides-value-for-command-input")):
                errors.append(
                    f'derived input "{name}" is designated as a "multiple" input, which means it must '
                    "directly provide values for some command input."
                )
    return errors


def _handler_errors(item: dict) -> list[str]:
    name = item.get("name") or ""
    kind = item.get("type") or "Resource"
    errors = []
    if _blank(name):
        errors.append("Command wrapper output - name cannot be blank.")
    prefix = f'Command wrapper output "{name}" - '
    if _blank(item.get("accepts-command-output")):
        errors.append(prefix + 'property "accepts-command-output" cannot be blank.')
    if _blank(item.get("as-a-child-of")):
        errors.append(prefix + 'property "as-a-child-of" cannot be blank.')
    if kind not in HANDLER_TYPES:
        errors.append(prefix + f'Unknown type "{kind}". Known types: {_join(HANDLER_TYPES)}')
    if kind == "Resource" and _blank(item.get("label")):
        errors.append(prefix + "when type = Resource, label cannot be blank.")
    if _bad_name(name):
        errors.append(
            f'Command wrapper output "{name}" name should contain only alphanumeric, _ and - characters.'
        )
    return errors


def service_errors(command: dict) -> list[str]:
    """The messages XNAT's container service would answer for this command (empty: accepted)."""
    errors: list[str] = []
    name = command.get("name") or ""
    if _blank(name):
        errors.append("Command name cannot be blank.")
    cmd = f'Command "{name}" - '
    image = command.get("image")
    if _blank(image):
        errors.append(cmd + "image name cannot be blank.")
    if not IMAGE_TAG_PATTERN.match(str(image or "")):
        errors.append(cmd + "image name must include version tag. e.g. image_name:tag")
    kind = command.get("type") or "docker"
    if kind not in COMMAND_TYPES:
        errors.append(cmd + f'Cannot validate command of type "{kind}". Known types: {_join(COMMAND_TYPES)}')
    visibility = command.get("visibility")
    if visibility is not None and visibility not in VISIBILITIES:
        errors.append(cmd + f" has visibility set to an unknown value. Known types: {_join(VISIBILITIES)}")
    if kind != "docker":
        for key, what in (
            ("mounts", "mounts"),
            ("inputs", "inputs"),
            ("outputs", "outputs"),
            ("xnat", "wrappers"),
            ("environment-variables", "environment variables"),
            ("ports", "ports"),
            ("secrets", "secrets"),
        ):
            if command.get(key):
                setup_or_wrapup = "Setup" if kind == "docker-setup" else "Wrapup"
                errors.append(cmd + f" {setup_or_wrapup} commands cannot declare any {what}.")
        return errors
    errors.extend(_docker_command_errors(command, cmd))
    return errors


def _docker_command_errors(command: dict, cmd: str) -> list[str]:
    errors: list[str] = []
    for limit in (command.get("ulimits") or {}).values():
        if not limit or (":" in limit and len(limit.split(":")) > 2):
            errors.append(
                cmd
                + f" incorrect ulimit format: {limit}. "
                + 'Should be "name" : "softlimit:hardlimit" or "name" : "limit"'
            )
    # The service refuses reserved names for secrets and overwrites them in the environment at launch, so a
    # command that sets them itself would silently lose its value: refuse both.
    secret_env = {
        (s.get("destination") or {}).get("identifier")
        for s in command.get("secrets") or []
        if (s.get("destination") or {}).get("type") == "environment-variable"
    }
    env_names = set((command.get("environment-variables") or {}).keys())
    for env_name in sorted(secret_env & set(RESERVED_ENV)):
        errors.append(cmd + f' Secrets use reserved environment variable name "{env_name}"')
    for env_name in sorted(secret_env & env_names):
        errors.append(cmd + f' Secrets and environment variables both request name "{env_name}"')
    for env_name in sorted(env_names & set(RESERVED_ENV)):
        errors.append(cmd + f' Environment variables use reserved name "{env_name}"')

    mount_names: list[str] = []
    for mount in command.get("mounts") or []:
        mname = mount.get("name") or ""
        if mname in mount_names:
            errors.append(cmd + f'mount name "{mname}" is not unique.')
        else:
            mount_names.append(mname)
        if _blank(mname):
            errors.append(cmd + "Mount name cannot be blank.")
        if _blank(mount.get("path")):
            errors.append(cmd + f'Mount "{mname}" path cannot be blank.')

    inputs: dict[str, dict] = {}
    for item in command.get("inputs") or []:
        iname = item.get("name") or ""
        if iname in inputs:
            errors.append(cmd + f'input name "{iname}" is not unique.')
        else:
            inputs[iname] = item
        errors.extend(cmd + e for e in _input_errors(item))

    output_names: list[str] = []
    for item in command.get("outputs") or []:
        oname = item.get("name") or ""
        if oname in output_names:
            errors.append(cmd + f'output name "{oname}" is not unique.')
        else:
            output_names.append(oname)
        if item.get("mount") not in mount_names:
            errors.append(
                cmd + f'output "{oname}" references unknown mount "{item.get("mount")}". '
                f"Known mounts: {_join(mount_names)}"
            )
        errors.extend(cmd + e for e in _output_errors(item))

    wrapper_names: list[str] = []
    for wrapper in command.get("xnat") or []:
        wname = wrapper.get("name") or ""
        if wname in wrapper_names:
            errors.append(cmd + f'wrapper name "{wname}" is not unique.')
        else:
            wrapper_names.append(wname)
        errors.extend(_wrapper_errors(wrapper, cmd, inputs, output_names))
        if _blank(wname):
            errors.append(cmd + "Command wrapper name cannot be blank.")
    return errors


def _select_feed_error(prefix: str, kind: str, item: dict, inputs: dict[str, dict]) -> list[str]:
    target = inputs.get(item.get("provides-value-for-command-input") or "")
    if target is None:
        return []
    if (target.get("type") or "string") in SELECT_TYPES or target.get("select-values"):
        return [
            prefix
            + f'{kind} input "{item.get("name")}" provides values for command input "{target.get("name")}", '
            "which is a select type. Note that command inputs with values provided by xnat inputs "
            "shouldn't be designated as select (they'll automatically render as a select if their xnat "
            "input resolves to more than one value)."
        ]
    return []


def _wrapper_errors(wrapper: dict, cmd: str, inputs: dict[str, dict], output_names: list[str]) -> list[str]:
    errors: list[str] = []
    prefix = cmd + f'wrapper "{wrapper.get("name") or ""}" - '
    wrapper_inputs: dict[str, dict] = {}
    for item in wrapper.get("external-inputs") or []:
        iname = item.get("name") or ""
        if iname in wrapper_inputs:
            errors.append(prefix + f'external input name "{iname}" is not unique.')
        else:
            wrapper_inputs[iname] = item
        errors.extend(_select_feed_error(prefix, "external", item, inputs))
        errors.extend(prefix + e for e in _wrapper_input_errors(item, derived=False))

    multiple_inputs: set[str] = set()
    for item in wrapper.get("derived-inputs") or []:
        iname = item.get("name") or ""
        if iname in wrapper_inputs:
            errors.append(prefix + f'derived input name "{iname}" is not unique.')
        else:
            wrapper_inputs[iname] = item
        parent = item.get("derived-from-wrapper-input")
        if iname == parent:
            errors.append(prefix + f'derived input "{iname}" is derived from itself.')
        if parent not in wrapper_inputs:
            errors.append(
                prefix + f'derived input "{iname}" is derived from an unknown XNAT input "{parent}". '
                f"Known inputs: {_join(wrapper_inputs)}"
            )
        errors.extend(_select_feed_error(prefix, "derived", item, inputs))
        errors.extend(prefix + e for e in _wrapper_input_errors(item, derived=True))
        if item.get("multiple"):
            multiple_inputs.add(iname)

    handler_names: list[str] = []
    handled: set[str] = set()
    for handler in wrapper.get("output-handlers") or []:
        hname = handler.get("name") or ""
        accepted = handler.get("accepts-command-output")
        if accepted not in output_names:
            errors.append(
                prefix + f'output handler refers to unknown command output "{accepted}". '
                f"Known outputs: {_join(output_names)}."
            )
        else:
            handled.add(accepted)
        target = handler.get("as-a-child-of")
        if target not in wrapper_inputs and target not in handler_names:
            errors.append(
                prefix + "output handler does not refer to a known wrapper input or output. "
                f'"as-a-child-of": "{target}".\nKnown inputs: {_join(wrapper_inputs)}.'
                f"\nKnown outputs (so far): {_join(handler_names)}."
            )
        if target in multiple_inputs:
            errors.append(
                prefix
                + f'output handler "{hname}" has "as-a-child-of": "{target}", but that input is set to '
                "allow multiple values."
            )
        parent = wrapper_inputs.get(target or "")
        prop = (parent or {}).get("derived-from-xnat-object-property")
        if (
            parent is not None
            and "derived-from-wrapper-input" in parent
            and prop is not None
            and prop != "uri"
        ):
            errors.append(
                prefix
                + f'output handler "{hname}" has "as-a-child-of": "{target}", but that input\'s value is '
                f'set to "{prop}", which will cause the upload to fail (a "uri" is required for upload).'
            )
        if hname in handler_names:
            errors.append(prefix + f'output handler name "{hname}" is not unique.')
        else:
            handler_names.append(hname)
        errors.extend(prefix + e for e in _handler_errors(handler))

    for output in sorted(set(output_names) - handled):
        errors.append(prefix + f'command output "{output}" is not handled by any output handler.')
    return errors


def usability_errors(command: dict) -> list[str]:
    """Problems the service accepts but that break the command in XNAT's UI or at launch."""
    errors: list[str] = []
    cmd = f'Command "{command.get("name") or ""}" - '
    command_line = command.get("command-line") or ""
    if len(command_line) > MAX_COMMAND_LINE:
        errors.append(
            cmd + f"command-line has {len(command_line)} characters; the limit is {MAX_COMMAND_LINE}."
        )
    if _blank(command_line):
        errors.append(cmd + "command-line is blank.")
    inputs = command.get("inputs") or []
    keys = {item.get("replacement-key") or f"#{item.get('name')}#" for item in inputs}
    for key in sorted(set(_REPLACEMENT_KEY.findall(command_line)) - keys):
        errors.append(cmd + f'command-line uses replacement key "{key}" that no command input provides.')
    for item in inputs:
        key = item.get("replacement-key") or f"#{item.get('name')}#"
        if key not in command_line and not any(
            key in v for v in (command.get("environment-variables") or {}).values()
        ):
            errors.append(
                cmd + f'input "{item.get("name")}" ({key}) is used neither on the command-line nor in '
                "the environment."
            )
    if not command.get("override-entrypoint") and re.search(r"&&|\|\||;|\|", command_line):
        errors.append(
            cmd + 'command-line uses shell operators but "override-entrypoint" is not true, so they '
            "reach the program as literal arguments."
        )
    for key in ("reserve-memory", "limit-memory", "shm-size"):
        value = command.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            errors.append(cmd + f'"{key}" must be a positive integer, got {value!r}.')
    for key, value in (command.get("generic-resources") or {}).items():
        if not isinstance(value, str):
            errors.append(cmd + f'generic resource "{key}" must be a string such as "1", got {value!r}.')
    mounts = {m.get("name"): m for m in command.get("mounts") or []}
    input_names = {item.get("name") for item in inputs}
    for output in command.get("outputs") or []:
        mount = mounts.get(output.get("mount"))
        if mount is not None and not mount.get("writable"):
            errors.append(
                cmd + f'output "{output.get("name")}" is on mount "{mount.get("name")}", which is not '
                "writable."
            )
    wrappers = command.get("xnat") or []
    if not wrappers:
        errors.append(cmd + "has no XNAT wrappers, so it can never be launched from XNAT.")
    for wrapper in wrappers:
        prefix = cmd + f'wrapper "{wrapper.get("name") or ""}" - '
        if _blank(wrapper.get("description")):
            errors.append(prefix + "description is blank; XNAT leaves such wrappers out of the Run menu.")
        if not wrapper.get("contexts"):
            errors.append(prefix + "contexts is empty; the wrapper is offered on no XNAT object.")
        externals = wrapper.get("external-inputs") or []
        if len(externals) != 1:
            errors.append(prefix + f"has {len(externals)} external inputs; the launch UI needs exactly one.")
        fed_mounts = set()
        for item in externals + (wrapper.get("derived-inputs") or []):
            mount = item.get("provides-files-for-command-mount")
            if mount is not None:
                fed_mounts.add(mount)
                if mount not in mounts:
                    errors.append(
                        prefix + f'input "{item.get("name")}" provides files for unknown mount "{mount}".'
                    )
                elif (item.get("type") or "string") not in MOUNTABLE_TYPES:
                    errors.append(
                        prefix + f'input "{item.get("name")}" of type "{item.get("type")}" cannot provide '
                        "files for a mount."
                    )
            target = item.get("provides-value-for-command-input")
            if target is not None and target not in input_names:
                errors.append(
                    prefix + f'input "{item.get("name")}" provides a value for unknown command input '
                    f'"{target}".'
                )
        for mname, mount in mounts.items():
            if mname not in fed_mounts and not mount.get("writable"):
                errors.append(
                    prefix + f'read-only mount "{mname}" gets no files from any input, so it is empty.'
                )
    return errors


def validate_command(command: dict, *, strict: bool = True) -> None:
    """Raise `CommandValidationError` listing every problem (service rules, plus usability when strict)."""
    errors = service_errors(command)
    if strict:
        errors += usability_errors(command)
    if errors:
        raise CommandValidationError(errors)


def load_command(path: Path) -> dict:
    """Read a command JSON file; a syntax error becomes a `CommandValidationError` naming line and column."""
    try:
        command = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise CommandValidationError(
            [f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"]
        ) from exc
    if not isinstance(command, dict):
        raise CommandValidationError(
            [f"{path}: a command must be a JSON object, got {type(command).__name__}"]
        )
    return command
