"""Resolve an XNAT launch of a command wrapper the way the container service does, without an XNAT.

Given the command JSON, a wrapper name, the XNAT object the user clicked "Run" on (in the JSON shape the
service serialises model objects: ``id``, ``label``, ``xsiType``, ``uri``, ``directory``, ``resources``,
``scans``, ``project-id``, ``session-id`` ...) and the values typed into the launch form, `resolve_launch`
returns the container's command line / argv, its mounts (host folder, container path, read-only or
writable), its environment and where every output will be uploaded. It follows container-service 3.7.x
(``CommandResolutionServiceImpl``):

* wrapper inputs resolve in order: the external input is the clicked object (its ``matcher``, a JSONPath
  filter, must accept it), derived inputs pick a child (``Resource`` of a scan or session by ``matcher``) or
  a property (``derived-from-xnat-object-property``) of their parent;
* a command input takes the value of the wrapper input that ``provides-value-for-command-input``, else the
  launch form value, else its ``default-value``; booleans become ``true-value``/``false-value``; values
  holding
  ``;``, ``&&``, ``||``, backquote or ``(`` are refused;
* on the command line a blank value becomes "" and otherwise ``command-line-flag`` +
  ``command-line-separator`` (a space when unset) + value; every ``#KEY#`` is replaced textually;
* a mount fed by an input is that object's archive folder (copied to a build folder when writable),
  any other mount is a fresh writable build folder; ``override-entrypoint`` runs ``/bin/sh -c <line>``,
  otherwise the line is split into arguments like a shell would.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import PurePosixPath

ILLEGAL_VALUE_STRINGS = (";", "&&", "||", "`", "(")
RESOURCE_TYPES = ("Resource",)


class LaunchResolutionError(ValueError):
    """The launch cannot be resolved (an input does not match, a required value is missing, ...)."""


@dataclass(frozen=True)
class XnatSite:
    """Site settings that shape mounts and the environment."""

    host: str = "https://xnat.example.org"
    user: str = "alias-token-user"
    password: str = "alias-token-secret"
    build_root: str = "/data/xnat/build"
    workflow_id: str = "12345"


@dataclass(frozen=True)
class ResolvedMount:
    name: str
    container_path: str
    host_path: str
    writable: bool
    source_input: str | None  # wrapper input that provided the files; None for an empty output mount


@dataclass(frozen=True)
class ResolvedUpload:
    output: str
    handler: str
    handler_type: str
    label: str | None
    parent_uri: str
    container_path: str
    host_path: str
    glob: str
    required: bool


@dataclass
class ResolvedLaunch:
    command_line: str
    argv: list[str]
    mounts: list[ResolvedMount]
    environment: dict[str, str]
    uploads: list[ResolvedUpload]
    input_values: dict[str, str | None] = field(default_factory=dict)

    def mount(self, name: str) -> ResolvedMount:
        return next(m for m in self.mounts if m.name == name)


# --- JSONPath filter expressions as used in matchers: @.a.b[*].c, '...', ==, !=, in, nin, &&, ||, ( ) ---

_TOKEN = re.compile(
    r"\s*(?:(?P<str>'[^']*'|\"[^\"]*\")|(?P<num>-?\d+(?:\.\d+)?)|(?P<path>@(?:\.[A-Za-z0-9_-]+|\[\*\])*)"
    r"|(?P<op>==|!=|&&|\|\||\(|\))|(?P<word>\b(?:in|nin|true|false|null)\b))"
)


def _tokenize(expression: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    expression = expression.strip()
    while pos < len(expression):
        match = _TOKEN.match(expression, pos)
        if not match or match.end() == pos:
            raise LaunchResolutionError(f"cannot parse matcher {expression!r} at {expression[pos:]!r}")
        kind = match.lastgroup
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


def _path_values(obj: object, path: str) -> tuple[object, bool]:
    """Evaluate '@.a[*].b' on obj; returns (value, is_list)."""
    steps = re.findall(r"\.([A-Za-z0-9_-]+)|(\[\*\])", path[1:])
    current: list[object] = [obj]
    is_list = False
    for key, wildcard in steps:
        nxt: list[object] = []
        for item in current:
            if wildcard:
                if isinstance(item, list):
                    nxt.extend(item)
            elif isinstance(item, dict) and key in item:
                nxt.append(item[key])
        current = nxt
        is_list = is_list or bool(wildcard)
    if is_list:
        return current, True
    return (current[0] if current else None), False


class _Matcher:
    def __init__(self, expression: str) -> None:
        self.expression = expression
        self.tokens = _tokenize(expression)

    def evaluate(self, obj: object) -> bool:
        self.pos = 0
        result = self._or(obj)
        if self.pos != len(self.tokens):
            raise LaunchResolutionError(f"cannot parse matcher {self.expression!r}")
        return bool(result)

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _or(self, obj: object) -> bool:
        value = self._and(obj)
        while self._peek() == ("op", "||"):
            self.pos += 1
            value = self._and(obj) or value
        return value

    def _and(self, obj: object) -> bool:
        value = self._comparison(obj)
        while self._peek() == ("op", "&&"):
            self.pos += 1
            value = self._comparison(obj) and value
        return value

    def _comparison(self, obj: object) -> bool:
        if self._peek() == ("op", "("):
            self.pos += 1
            value = self._or(obj)
            if self._peek() != ("op", ")"):
                raise LaunchResolutionError(f"unbalanced parentheses in matcher {self.expression!r}")
            self.pos += 1
            return value
        left = self._operand(obj)
        token = self._peek()
        if token is None or token[1] not in ("==", "!=", "in", "nin"):
            return bool(left)
        self.pos += 1
        right = self._operand(obj)
        if token[1] == "==":
            return left == right
        if token[1] == "!=":
            return left != right
        members = right if isinstance(right, list) else [right]
        return (left in members) if token[1] == "in" else (left not in members)

    def _operand(self, obj: object) -> object:
        token = self._peek()
        if token is None:
            raise LaunchResolutionError(f"matcher {self.expression!r} ends too early")
        self.pos += 1
        kind, text = token
        if kind == "str":
            return text[1:-1]
        if kind == "num":
            return float(text) if "." in text else int(text)
        if kind == "path":
            return _path_values(obj, text)[0]
        if kind == "word" and text in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[text]
        raise LaunchResolutionError(f"unexpected {text!r} in matcher {self.expression!r}")


def matches(matcher: str | None, obj: dict) -> bool:
    """Whether a wrapper input's ``matcher`` accepts an XNAT object (no matcher accepts everything)."""
    return True if not matcher else _Matcher(matcher).evaluate(obj)


# --- resolution ---


def _replacement_key(item: dict) -> str:
    return item.get("replacement-key") or f"#{item.get('name')}#"


def _check_legal(name: str, value: str | None) -> None:
    for illegal in ILLEGAL_VALUE_STRINGS:
        if value is not None and illegal in value:
            raise LaunchResolutionError(f'Input "{name}" has a value containing illegal string "{illegal}".')


def _command_line_value(item: dict, value: str | None) -> str:
    if value is None or not value.strip():
        return ""
    flag = item.get("command-line-flag")
    if not flag or not flag.strip():
        return value
    separator = item.get("command-line-separator")
    return flag + (" " if separator is None else separator) + value


def _resolve_wrapper_inputs(
    wrapper: dict, root: dict, form: dict[str, str]
) -> dict[str, tuple[str | None, dict | None]]:
    """Wrapper input name -> (value, XNAT object or None)."""
    resolved: dict[str, tuple[str | None, dict | None]] = {}
    externals = wrapper.get("external-inputs") or []
    for index, item in enumerate(externals):
        name = item["name"]
        if index == 0:
            # The clicked object is the root input; its matcher decides whether this item can run.
            obj = root if matches(item.get("matcher"), root) else None
            resolved[name] = ((obj or {}).get("uri"), obj)
        else:
            resolved[name] = (form.get(name, item.get("default-value")), None)
    for item in wrapper.get("derived-inputs") or []:
        name = item["name"]
        parent_value, parent_obj = resolved.get(item.get("derived-from-wrapper-input"), (None, None))
        kind = item.get("type") or "string"
        prop = item.get("derived-from-xnat-object-property")
        if parent_obj is None:
            resolved[name] = (None, None)
        elif kind in RESOURCE_TYPES:
            children = [r for r in parent_obj.get("resources") or [] if matches(item.get("matcher"), r)]
            if len(children) > 1:
                raise LaunchResolutionError(
                    f'Input "{name}"  does not have a unique, resolved value and multiple = true is not '
                    "set in command.json."
                )
            child = children[0] if children else None
            resolved[name] = ((child or {}).get("uri"), child)
        elif prop:
            value = parent_obj.get(prop)
            resolved[name] = (None if value is None else str(value), None)
        else:
            raise LaunchResolutionError(f'derived input "{name}" of type "{kind}" is not simulated')
    # Like the service, report an unresolved child only when its parent resolved (the root cause).
    missing = [
        item["name"]
        for item in externals + (wrapper.get("derived-inputs") or [])
        if item.get("required")
        and resolved[item["name"]][0] is None
        and resolved.get(item.get("derived-from-wrapper-input"), ("", None))[0] is not None
    ]
    if missing:
        plural = "" if len(missing) == 1 else "s"
        raise LaunchResolutionError(f"Missing values for required input{plural}: {', '.join(missing)}.")
    return resolved


def resolve_launch(
    command: dict,
    wrapper_name: str,
    root: dict,
    form: dict[str, str] | None = None,
    site: XnatSite | None = None,
) -> ResolvedLaunch:
    """Resolve what the container service would start for ``wrapper_name`` launched on ``root``."""
    form = dict(form or {})
    site = site or XnatSite()
    wrapper = next((w for w in command.get("xnat") or [] if w.get("name") == wrapper_name), None)
    if wrapper is None:
        raise LaunchResolutionError(f'Command "{command.get("name")}" has no wrapper "{wrapper_name}"')
    wrapper_values = _resolve_wrapper_inputs(wrapper, root, form)
    all_wrapper_inputs = (wrapper.get("external-inputs") or []) + (wrapper.get("derived-inputs") or [])
    feeds = {
        i["provides-value-for-command-input"]: i["name"]
        for i in all_wrapper_inputs
        if i.get("provides-value-for-command-input")
    }

    values: dict[str, str | None] = {}
    line_values: dict[str, str] = {}
    template_values: dict[str, str] = {}
    for item in all_wrapper_inputs:
        template_values[_replacement_key(item)] = wrapper_values[item["name"]][0] or ""
    for item in command.get("inputs") or []:
        name = item["name"]
        if name in feeds:
            value = wrapper_values[feeds[name]][0]
        elif name in form:
            value = form[name]
        else:
            value = item.get("default-value")
        kind = item.get("type") or "string"
        if kind == "boolean":
            truthy = str(value).lower() == "true"
            chosen = item.get("true-value") if truthy else item.get("false-value")
            value = value if chosen is None else chosen
        elif (
            kind in ("select-one",) and value not in (None, "") and value not in item.get("select-values", [])
        ):
            raise LaunchResolutionError(
                f'Input "{name}" value "{value}" is not one of {item.get("select-values")}'
            )
        _check_legal(name, value)
        if item.get("required") and (value is None or value == ""):
            raise LaunchResolutionError(f"Missing values for required input: {name}.")
        values[name] = value
        key = _replacement_key(item)
        template_values[key] = value or ""
        line_values[key] = _command_line_value(item, value)

    command_line = command.get("command-line") or ""
    for key, value in line_values.items():
        command_line = command_line.replace(key, value)

    mounts = _resolve_mounts(command, all_wrapper_inputs, wrapper_values, template_values, site)
    environment = {}
    for key, template in (command.get("environment-variables") or {}).items():
        for rkey, rvalue in template_values.items():
            template = template.replace(rkey, rvalue)
        environment[key] = template
    environment.update(
        XNAT_HOST=site.host, XNAT_USER=site.user, XNAT_PASS=site.password, XNAT_WORKFLOW_ID=site.workflow_id
    )
    if command.get("override-entrypoint"):
        argv = ["/bin/sh", "-c", command_line]
    else:
        argv = shlex.split(command_line)
    uploads = _resolve_uploads(command, wrapper, wrapper_values, mounts)
    return ResolvedLaunch(command_line, argv, mounts, environment, uploads, values)


def _resolve_mounts(
    command: dict, wrapper_inputs: list[dict], wrapper_values: dict, template_values: dict, site: XnatSite
) -> list[ResolvedMount]:
    sources = {
        i["provides-files-for-command-mount"]: i["name"]
        for i in wrapper_inputs
        if i.get("provides-files-for-command-mount")
    }
    mounts = []
    for index, mount in enumerate(command.get("mounts") or []):
        container_path = mount.get("path") or ""
        for key, value in template_values.items():
            container_path = container_path.replace(key, value)
        writable = bool(mount.get("writable"))
        source = sources.get(mount.get("name"))
        build = str(PurePosixPath(site.build_root) / f"{site.workflow_id}-{index}-{mount.get('name')}")
        if source is None:
            host = build  # output mount: an empty build folder
        else:
            obj = wrapper_values[source][1]
            if obj is None or not obj.get("directory"):
                raise LaunchResolutionError(
                    f'Mount "{mount.get("name")}" should have a root path but does not.'
                )
            # Read-only mounts bind the archive folder itself; writable ones get a copy in the build folder.
            host = build if writable else obj["directory"]
        mounts.append(ResolvedMount(mount.get("name"), container_path, host, writable, source))
    return mounts


def _resolve_uploads(
    command: dict, wrapper: dict, wrapper_values: dict, mounts: list[ResolvedMount]
) -> list[ResolvedUpload]:
    outputs = {o["name"]: o for o in command.get("outputs") or []}
    by_mount = {m.name: m for m in mounts}
    handler_parents: dict[str, str] = {}
    uploads = []
    for handler in wrapper.get("output-handlers") or []:
        output = outputs[handler["accepts-command-output"]]
        mount = by_mount[output["mount"]]
        parent = handler["as-a-child-of"]
        parent_uri = wrapper_values[parent][0] if parent in wrapper_values else handler_parents[parent]
        relative = output.get("path") or ""
        uploads.append(
            ResolvedUpload(
                output=output["name"],
                handler=handler["name"],
                handler_type=handler.get("type") or "Resource",
                label=handler.get("label"),
                parent_uri=parent_uri,
                container_path=str(PurePosixPath(mount.container_path) / relative),
                host_path=str(PurePosixPath(mount.host_path) / relative),
                glob=output.get("glob") or "",
                required=output.get("required", True) is not False,
            )
        )
        handler_parents[handler["name"]] = f"{parent_uri}/resources/{handler.get('label')}"
    return uploads
