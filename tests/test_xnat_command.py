"""xnat_command.json against the container service's rules; launches resolved as XNAT resolves them."""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path

import pytest

from app import xnat_command_label, xnat_outputs
from app.xnat_command_validator import (
    CommandValidationError,
    load_command,
    service_errors,
    usability_errors,
    validate_command,
)
from app.xnat_launch import LaunchResolutionError, XnatSite, matches, resolve_launch

REPO = Path(__file__).resolve().parent.parent
COMMAND_FILE = REPO / "xnat_command.json"
ARCHIVE = "/data/xnat/archive/PROJ1/arc001/SUBJ1_MR1"
SESSION_URI = "/experiments/XNAT_E00001"
COMMAND_LINE_LENGTH = len(json.loads(COMMAND_FILE.read_text())["command-line"])


def scan_object(
    scan_id: str = "3", resources: tuple[str, ...] = ("DICOM", "SNAPSHOTS"), xsi_type: str = "xnat:mrScanData"
) -> dict:
    """A scan as the container service serialises it for matchers and derived inputs."""
    return {
        "type": "Scan",
        "id": scan_id,
        "label": scan_id,
        "xsiType": xsi_type,
        "modality": "MR",
        "uri": f"{SESSION_URI}/scans/{scan_id}",
        "directory": f"{ARCHIVE}/SCANS/{scan_id}",
        "project-id": "PROJ1",
        "session-id": "XNAT_E00001",
        "resources": [
            {
                "type": "Resource",
                "id": str(i),
                "label": label,
                "uri": f"{SESSION_URI}/scans/{scan_id}/resources/{i}",
                "directory": f"{ARCHIVE}/SCANS/{scan_id}/{label}",
            }
            for i, label in enumerate(resources)
        ],
    }


def session_object(scans: list[dict] | None = None) -> dict:
    return {
        "type": "Session",
        "id": "XNAT_E00001",
        "label": "SUBJ1_MR1",
        "xsiType": "xnat:mrSessionData",
        "uri": SESSION_URI,
        "directory": ARCHIVE,
        "project-id": "PROJ1",
        "subject-id": "XNAT_S00001",
        "scans": scans if scans is not None else [scan_object("3"), scan_object("4"), scan_object("1", ())],
        "resources": [],
    }


@pytest.fixture
def command() -> dict:
    return load_command(COMMAND_FILE)


def wrapper(cmd: dict, name: str) -> dict:
    return next(w for w in cmd["xnat"] if w["name"] == name)


def test_shipped_command_passes_every_rule(command):
    assert service_errors(command) == []
    assert usability_errors(command) == []
    validate_command(command)


def _mutations():
    """(id, mutation, expected message fragment) for each rule the service or the UI enforces."""

    def m(fn):
        return fn

    def set_input(name, key, value):
        return m(lambda c: next(i for i in c["inputs"] if i["name"] == name).__setitem__(key, value))

    def scan_wrapper(c):
        return wrapper(c, "totalseg-mri-scan")

    def session_wrapper(c):
        return wrapper(c, "totalseg-mri-session")

    cmd = 'Command "totalseg-mri" - '
    scan = cmd + 'wrapper "totalseg-mri-scan" - '
    session = cmd + 'wrapper "totalseg-mri-session" - '
    return [
        ("blank-name", lambda c: c.__setitem__("name", ""), "Command name cannot be blank."),
        (
            "untagged-image",
            lambda c: c.__setitem__("image", "totalseg-mri"),
            cmd + "image name must include version tag. e.g. image_name:tag",
        ),
        (
            "unknown-type",
            lambda c: c.__setitem__("type", "singularity"),
            cmd + 'Cannot validate command of type "singularity"',
        ),
        (
            "duplicate-mount",
            lambda c: c["mounts"].append({"name": "in", "path": "/other"}),
            cmd + 'mount name "in" is not unique.',
        ),
        (
            "mount-without-path",
            lambda c: c["mounts"][0].__setitem__("path", ""),
            cmd + 'Mount "in" path cannot be blank.',
        ),
        (
            "duplicate-input",
            lambda c: c["inputs"].append(copy.deepcopy(c["inputs"][0])),
            cmd + 'input name "fast" is not unique.',
        ),
        (
            "input-name-characters",
            set_input("fast", "name", "fast mode"),
            cmd + 'Command input "fast mode" name should contain only alphanumeric, _ and - characters.',
        ),
        (
            "select-default-not-offered",
            set_input("device", "default-value", "gpu"),
            cmd
            + 'Command input "device" default value "gpu" is not one of the select-values '
            + "\"['auto', 'cuda', 'cpu']\"",
        ),
        (
            "select-without-values",
            set_input("device", "select-values", []),
            cmd
            + 'Command input "device" is designated as type "select-one" but doesn\'t list select-values.',
        ),
        (
            "values-on-non-select",
            set_input("fast", "select-values", ["true"]),
            cmd + 'Command input "fast" has select-values set, but is not a select type.',
        ),
        (
            "output-unknown-mount",
            lambda c: c["outputs"][0].__setitem__("mount", "nowhere"),
            cmd + 'output "seg" references unknown mount "nowhere". Known mounts: in, out',
        ),
        (
            "duplicate-output",
            lambda c: c["outputs"].append(copy.deepcopy(c["outputs"][0])),
            cmd + 'output name "seg" is not unique.',
        ),
        (
            "reserved-env",
            lambda c: c["environment-variables"].__setitem__("XNAT_HOST", "http://x"),
            cmd + ' Environment variables use reserved name "XNAT_HOST"',
        ),
        (
            "bad-ulimit",
            lambda c: c.__setitem__("ulimits", {"nofile": "1:2:3"}),
            cmd + " incorrect ulimit format: 1:2:3.",
        ),
        (
            "duplicate-wrapper",
            lambda c: c["xnat"].append(copy.deepcopy(c["xnat"][0])),
            cmd + 'wrapper name "totalseg-mri-scan" is not unique.',
        ),
        (
            "derived-from-unknown",
            lambda c: scan_wrapper(c)["derived-inputs"][0].__setitem__("derived-from-wrapper-input", "scann"),
            scan
            + 'derived input "scan-dicom" is derived from an unknown XNAT input "scann". '
            + "Known inputs: scan, scan-dicom",
        ),
        (
            "derived-from-itself",
            lambda c: scan_wrapper(c)["derived-inputs"][0].__setitem__(
                "derived-from-wrapper-input", "scan-dicom"
            ),
            scan + 'derived input "scan-dicom" is derived from itself.',
        ),
        (
            "wrapper-input-type",
            lambda c: scan_wrapper(c)["external-inputs"][0].__setitem__("type", "Scans"),
            scan + 'Command wrapper input "scan" - Unknown type "Scans".',
        ),
        (
            "feeds-select-input",
            lambda c: scan_wrapper(c)["derived-inputs"][1].__setitem__(
                "provides-value-for-command-input", "device"
            ),
            scan
            + 'derived input "scan-project" provides values for command input "device", '
            + "which is a select type.",
        ),
        (
            "unhandled-output",
            lambda c: session_wrapper(c)["output-handlers"].pop(),
            session + 'command output "nifti" is not handled by any output handler.',
        ),
        (
            "handler-unknown-output",
            lambda c: scan_wrapper(c)["output-handlers"][0].__setitem__(
                "accepts-command-output", "segmentation"
            ),
            scan
            + 'output handler refers to unknown command output "segmentation". Known outputs: seg, sr, pdf,',
        ),
        (
            "handler-unknown-parent",
            lambda c: session_wrapper(c)["output-handlers"][0].__setitem__("as-a-child-of", "experiment"),
            session
            + "output handler does not refer to a known wrapper input or output. "
            + '"as-a-child-of": "experiment".',
        ),
        (
            "handler-parent-is-a-property",
            lambda c: session_wrapper(c)["output-handlers"][0].__setitem__("as-a-child-of", "session-id"),
            session
            + 'output handler "seg-resource" has "as-a-child-of": "session-id", '
            + "but that input's value is set "
            'to "id", which will cause the upload to fail',
        ),
        (
            "resource-without-label",
            lambda c: scan_wrapper(c)["output-handlers"][2].__setitem__("label", ""),
            scan + 'Command wrapper output "pdf-resource" - when type = Resource, label cannot be blank.',
        ),
        (
            "handler-type",
            lambda c: scan_wrapper(c)["output-handlers"][2].__setitem__("type", "Folder"),
            scan
            + 'Command wrapper output "pdf-resource" - Unknown type "Folder". '
            + "Known types: Resource, Assessor, Scan",
        ),
        (
            "duplicate-handler",
            lambda c: scan_wrapper(c)["output-handlers"].append(
                copy.deepcopy(scan_wrapper(c)["output-handlers"][0])
            ),
            scan + 'output handler name "seg-resource" is not unique.',
        ),
        (
            "no-description",
            lambda c: scan_wrapper(c).__setitem__("description", ""),
            scan + "description is blank; XNAT leaves such wrappers out of the Run menu.",
        ),
        (
            "no-contexts",
            lambda c: session_wrapper(c).__setitem__("contexts", []),
            session + "contexts is empty; the wrapper is offered on no XNAT object.",
        ),
        (
            "two-external-inputs",
            lambda c: scan_wrapper(c)["external-inputs"].append({"name": "other", "type": "Session"}),
            scan + "has 2 external inputs; the launch UI needs exactly one.",
        ),
        (
            "command-line-too-long",
            lambda c: c.__setitem__("command-line", c["command-line"] + " " * 2048),
            cmd + f"command-line has {COMMAND_LINE_LENGTH + 2048} characters; the limit is 2048.",
        ),
        (
            "unknown-replacement-key",
            lambda c: c.__setitem__("command-line", c["command-line"] + " #MODEL#"),
            cmd + 'command-line uses replacement key "#MODEL#" that no command input provides.',
        ),
        (
            "unused-input",
            lambda c: c.__setitem__("command-line", c["command-line"].replace("#FAST#", "")),
            cmd + 'input "fast" (#FAST#) is used neither on the command-line nor in the environment.',
        ),
        (
            "shell-without-override",
            lambda c: c.__setitem__("override-entrypoint", False),
            cmd + 'command-line uses shell operators but "override-entrypoint" is not true',
        ),
        (
            "files-for-unknown-mount",
            lambda c: scan_wrapper(c)["derived-inputs"][0].__setitem__(
                "provides-files-for-command-mount", "input"
            ),
            scan + 'input "scan-dicom" provides files for unknown mount "input".',
        ),
        (
            "output-on-read-only-mount",
            lambda c: c["outputs"][0].__setitem__("mount", "in"),
            cmd + 'output "seg" is on mount "in", which is not writable.',
        ),
        (
            "memory-as-string",
            lambda c: c.__setitem__("reserve-memory", "8G"),
            cmd + "\"reserve-memory\" must be a positive integer, got '8G'.",
        ),
        (
            "gpu-as-number",
            lambda c: c.__setitem__("generic-resources", {"gpu": 1}),
            cmd + 'generic resource "gpu" must be a string such as "1", got 1.',
        ),
    ]


@pytest.mark.parametrize("mutate,expected", [pytest.param(m, e, id=i) for i, m, e in _mutations()])
def test_each_rule_fires_on_a_broken_copy(command, mutate, expected):
    broken = copy.deepcopy(command)
    mutate(broken)
    with pytest.raises(CommandValidationError) as info:
        validate_command(broken)
    assert any(error.startswith(expected) for error in info.value.errors), info.value.errors
    assert str(info.value).startswith("Invalid command:\n\t")


def test_json_syntax_error_names_the_line(tmp_path):
    broken = tmp_path / "command.json"
    broken.write_text(COMMAND_FILE.read_text().replace('"type": "docker",', '"type": "docker"', 1))
    with pytest.raises(CommandValidationError, match=r"not valid JSON: Expecting ',' delimiter at line 10"):
        load_command(broken)


def test_matchers_offer_the_command_only_on_mr_data_with_dicom(command):
    scan_matcher = wrapper(command, "totalseg-mri-scan")["external-inputs"][0]["matcher"]
    session_matcher = wrapper(command, "totalseg-mri-session")["external-inputs"][0]["matcher"]
    assert matches(scan_matcher, scan_object())
    assert not matches(scan_matcher, scan_object(resources=("NIFTI", "SNAPSHOTS")))
    assert matches(session_matcher, session_object())
    assert not matches(session_matcher, session_object([scan_object("1", ("SNAPSHOTS",))]))
    assert wrapper(command, "totalseg-mri-scan")["contexts"] == ["xnat:mrScanData"]
    assert set(wrapper(command, "totalseg-mri-session")["contexts"]) == {
        "xnat:mrSessionData",
        "xnat:petmrSessionData",
    }
    assert matches("@.label == 'DICOM' && (@.id == '0' || @.id == '7')", {"label": "DICOM", "id": "7"})
    assert not matches("'X' nin @.a[*].b", {"a": [{"b": "X"}]})


def _split_chain(command_line: str) -> tuple[list[str], list[str]]:
    run_part, stage_part = command_line.split("&&")
    return shlex.split(run_part), shlex.split(stage_part)


def test_scan_launch_resolves_command_line_mounts_and_uploads(command):
    site = XnatSite(host="https://xnat.example.org", build_root="/data/xnat/build", workflow_id="77")
    launch = resolve_launch(command, "totalseg-mri-scan", scan_object(), {}, site)
    assert launch.command_line == (
        "totalseg-mri run -i /input -o /output/totalseg  --device auto   && python3 -m app.xnat_outputs "
        "/output/totalseg /output/xnat  --project PROJ1 --session XNAT_E00001 --roi-label-prefix TotalSegMRI"
    )
    assert launch.argv == ["/bin/sh", "-c", launch.command_line]
    inp, out = launch.mount("in"), launch.mount("out")
    assert (inp.container_path, inp.host_path, inp.writable, inp.source_input) == (
        "/input",
        f"{ARCHIVE}/SCANS/3/DICOM",
        False,
        "scan-dicom",
    )
    assert (out.container_path, out.writable, out.source_input) == ("/output", True, None)
    assert out.host_path.startswith("/data/xnat/build/77")
    assert launch.environment["HOLOSCAN_MODEL_PATH"] == "/opt/holoscan/models"
    assert launch.environment["XNAT_HOST"] == "https://xnat.example.org"
    uploads = {u.output: u for u in launch.uploads}
    assert {u.label for u in uploads.values()} == {
        "TOTALSEG_MRI_SEG",
        "TOTALSEG_MRI_SR",
        "TOTALSEG_MRI_PDF",
        "TOTALSEG_MRI_QC",
        "TOTALSEG_MRI_STATS",
        "TOTALSEG_MRI_NIFTI",
    }
    assert all(u.parent_uri == f"{SESSION_URI}/scans/3" for u in uploads.values())
    assert uploads["seg"].host_path == out.host_path + "/xnat/SEG" and uploads["seg"].glob == "*.dcm"
    assert uploads["nifti"].required is False and uploads["seg"].required is True

    # Both halves of the chain parse with the real argument parsers of the programs they call.
    from app.cli import build_parser

    run_argv, stage_argv = _split_chain(launch.command_line)
    assert run_argv[0] == "totalseg-mri"
    args = build_parser().parse_args(run_argv[1:])
    assert (args.command, args.input, args.output, args.device, args.fast) == (
        "run",
        Path("/input"),
        Path("/output/totalseg"),
        "auto",
        False,
    )
    assert stage_argv[:3] == ["python3", "-m", "app.xnat_outputs"]
    stage = xnat_outputs.build_parser().parse_args(stage_argv[3:])
    assert (stage.results_dir, stage.staging_dir) == (Path("/output/totalseg"), Path("/output/xnat"))
    assert (stage.project, stage.session, stage.push_roi) == ("PROJ1", "XNAT_E00001", False)
    # Every upload path lies inside what the staging step writes (or the app's nifti folder).
    for upload in launch.uploads:
        assert upload.container_path.startswith(("/output/xnat/", "/output/totalseg/"))


def test_launch_form_values_reach_the_programs(command):
    form = {
        "fast": "true",
        "device": "cpu",
        "push-roi": "true",
        "series-rules": "/opt/rules/dixon.json",
        "best-per-study": "true",
        "roi-label-prefix": "TSM",
    }
    launch = resolve_launch(command, "totalseg-mri-scan", scan_object(), form)
    from app.cli import build_parser

    run_argv, stage_argv = _split_chain(launch.command_line)
    args = build_parser().parse_args(run_argv[1:])
    assert (args.fast, args.device, args.rules, args.best_per_study) == (
        True,
        "cpu",
        Path("/opt/rules/dixon.json"),
        True,
    )
    stage = xnat_outputs.build_parser().parse_args(stage_argv[3:])
    assert (stage.push_roi, stage.roi_label_prefix) == (True, "TSM")


def test_session_launch_mounts_the_session_folder(command):
    launch = resolve_launch(command, "totalseg-mri-session", session_object())
    inp = launch.mount("in")
    assert (inp.host_path, inp.container_path, inp.writable, inp.source_input) == (
        ARCHIVE,
        "/input",
        False,
        "session",
    )
    assert "--session XNAT_E00001" in launch.command_line and "--project PROJ1" in launch.command_line
    assert {u.parent_uri for u in launch.uploads} == {SESSION_URI}
    assert launch.input_values["session"] == "XNAT_E00001"


def test_launch_refusals_match_the_service(command):
    with pytest.raises(LaunchResolutionError, match=r"^Missing values for required input: scan\.$"):
        resolve_launch(command, "totalseg-mri-scan", scan_object(resources=("NIFTI",)))
    with pytest.raises(LaunchResolutionError, match=r"^Missing values for required input: session\.$"):
        resolve_launch(command, "totalseg-mri-session", session_object([scan_object("1", ("SNAPSHOTS",))]))
    with pytest.raises(
        LaunchResolutionError, match='Input "series-rules" has a value containing illegal string ";"'
    ):
        resolve_launch(command, "totalseg-mri-scan", scan_object(), {"series-rules": "/x.json;rm -rf /"})
    with pytest.raises(LaunchResolutionError, match="does not have a unique, resolved value"):
        resolve_launch(command, "totalseg-mri-scan", scan_object(resources=("DICOM", "DICOM")))
    with pytest.raises(LaunchResolutionError, match="is not one of"):
        resolve_launch(command, "totalseg-mri-scan", scan_object(), {"device": "tpu"})


def test_label_is_generated_from_the_command_file(command, tmp_path):
    commands = json.loads(
        xnat_command_label.label_value(command, image="registry.example.org/totalseg-mri:0.1.0")
    )
    gpu, cpu = commands
    expected = copy.deepcopy(command)
    expected["image"] = "registry.example.org/totalseg-mri:0.1.0"
    assert gpu == expected
    assert cpu["name"] == "totalseg-mri-cpu" and "generic-resources" not in cpu
    assert next(i for i in cpu["inputs"] if i["name"] == "device")["default-value"] == "cpu"
    assert [w["name"] for w in cpu["xnat"]] == ["totalseg-mri-scan-cpu", "totalseg-mri-session-cpu"]
    for item in commands:
        validate_command(item)
    # A broken command file yields no label at all.
    broken = copy.deepcopy(command)
    broken["xnat"][0]["description"] = ""
    path = tmp_path / "command.json"
    path.write_text(json.dumps(broken))
    assert xnat_command_label.main(["--command", str(path)]) == 1
