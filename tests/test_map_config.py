"""MAP manifests (made by holoscan-cli's own code), the Workflow Manager workflow, the gateway config."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
MAP = REPO / "MAP"


@pytest.fixture(scope="module")
def generator():
    spec = importlib.util.spec_from_file_location("generate_manifests", MAP / "generate_manifests.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_manifests_are_current_and_stale_ones_are_caught(generator, tmp_path):
    assert generator.main(["--check"]) == 0
    shutil.copy(MAP / "app.json", tmp_path / "app.json")
    pkg = json.loads((MAP / "pkg.json").read_text())
    pkg["resources"]["memory"] = "4Gi"
    (tmp_path / "pkg.json").write_text(json.dumps(pkg, indent=2) + "\n")
    assert generator.main(["--check", "--out", str(tmp_path)]) == 1
    assert generator.main(["--out", str(tmp_path)]) == 0
    assert generator.main(["--check", "--out", str(tmp_path)]) == 0


def test_app_yaml_uses_only_keys_holoscan_cli_reads():
    config = yaml.safe_load((MAP / "app.yaml").read_text())
    assert set(config) == {"application", "resources"}
    assert set(config["application"]) <= {
        "title",
        "version",
        "input-formats",
        "output-formats",
        "pip-packages",
    }
    assert config["application"]["title"]


def test_manifests_describe_the_map_layout(generator):
    app = json.loads((MAP / "app.json").read_text())
    pkg = json.loads((MAP / "pkg.json").read_text())
    assert json.loads(app["command"]) == ["python3", "/opt/holoscan/app"]
    env = app["environment"]
    assert env["HOLOSCAN_MODEL_PATH"] == "/opt/holoscan/models"
    assert env["HOLOSCAN_APP_MANIFEST_PATH"] == "/etc/holoscan/app.json"
    assert env["HOLOSCAN_PKG_MANIFEST_PATH"] == "/etc/holoscan/pkg.json"
    assert app["workingDirectory"] == "/var/holoscan"
    assert Path(app["workingDirectory"], app["input"]["path"]) == Path("/var/holoscan/input")
    assert Path(app["workingDirectory"], app["output"]["path"]) == Path("/var/holoscan/output")
    assert pkg["applicationRoot"] == "/opt/holoscan/app" and pkg["modelRoot"] == "/opt/holoscan/models"
    registry = json.loads((REPO / "app" / "weights_registry.json").read_text())
    assert list(pkg["models"]) == registry["tasks"]["total_mr"]
    demo = json.loads(generator.build_manifests(MAP / "app.yaml", "demo")["pkg.json"])
    assert demo["models"] == {"Dataset999_TotalSegMRIDemo": "/opt/holoscan/models/Dataset999_TotalSegMRIDemo"}
    assert (
        app["version"]
        == pkg["version"]
        == yaml.safe_load((MAP / "app.yaml").read_text())["application"]["version"]
    )


def test_resource_requests_parse_as_holoscan_run_reads_them():
    from holoscan_cli.common.utils import get_requested_gpus
    from holoscan_cli.runner.resources import get_shared_memory_size

    pkg = json.loads((MAP / "pkg.json").read_text())
    assert get_requested_gpus(pkg) == 1
    assert (
        get_shared_memory_size(pkg, worker=False, driver=False, fragments=None, user_shm_size="config")
        == 2 * 1024**3
    )
    assert pkg["resources"]["memory"] == "16Gi" and pkg["resources"]["gpuMemory"] == "8Gi"


def test_workflow_routes_mr_to_the_map_and_exports_to_the_gateway_destination():
    workflow = json.loads((MAP / "workflow.json").read_text())
    gateway = MAP / "informatics-gateway"
    ae = json.loads((gateway / "monai-ae.json").read_text())
    source = json.loads((gateway / "source-pacs.json").read_text())
    destination = json.loads((gateway / "destination-pacs.json").read_text())
    assert len(workflow["name"]) <= 15
    ig = workflow["informatics_gateway"]
    assert ig["ae_title"] == ae["aeTitle"] and len(ae["aeTitle"]) <= 16
    assert ig["data_origins"] == [source["name"]] and ig["export_destinations"] == [destination["name"]]
    assert "1.2.840.10008.5.1.4.1.1.4" in ae["allowedSopClasses"]  # MR Image Storage
    tasks = {t["id"]: t for t in workflow["tasks"]}
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,50}", task_id) for task_id in tasks)
    for task in workflow["tasks"]:
        for target in task.get("task_destinations", []):
            assert target["name"] in tasks
    router = workflow["tasks"][0]
    assert router["type"] == "router"
    assert router["task_destinations"][0]["conditions"] == [
        "{{ context.dicom.series.any('0008','0060') }} == 'MR'"
    ]

    run = tasks[router["task_destinations"][0]["name"]]
    assert run["type"] == "docker"
    args = run["args"]
    for key in ("server_url", "entrypoint", "command", "container_image", "temp_storage_container_path"):
        assert args[key], key  # the Docker plug-in refuses a task without these
    for artifact in run["artifacts"]["input"] + run["artifacts"]["output"]:
        assert artifact["name"] in args  # the plug-in mounts each artifact at args[name]
    app = json.loads((MAP / "app.json").read_text())
    assert [args["entrypoint"], args["command"]] == json.loads(app["command"])
    for variable in ("HOLOSCAN_INPUT_PATH", "HOLOSCAN_OUTPUT_PATH"):
        relative = app["environment"][variable]
        assert args[f"env_{variable}"] == str(Path(app["workingDirectory"], relative))
    assert args["input-dicom"] == args["env_HOLOSCAN_INPUT_PATH"]
    assert args["results"] == args["env_HOLOSCAN_OUTPUT_PATH"]
    assert args["user"] == "1000:1000"  # the MAP's uid/gid: the plug-in chowns the folders to it
    image, tag = args["container_image"].rsplit(":", 1)
    assert tag == app["version"]

    export = tasks[run["task_destinations"][0]["name"]]
    assert export["type"] == "export"
    assert [d["name"] for d in export["export_destinations"]] == ig["export_destinations"]
    assert (
        export["artifacts"]["input"][0]["value"]
        == "{{ context.executions." + run["id"] + ".artifacts.results }}"
    )
