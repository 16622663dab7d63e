"""The weights fetcher against a real HTTP server on 127.0.0.1 serving zips built here."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from app import weights
from app.weights import WeightsError

SUBFOLDER = "nnUNetTrainer_2000epochs_NoMirroring__nnUNetPlans__3d_fullres"
DS_A = "Dataset850_TotalSegMRI_part1_organs_1088subj"
DS_B = "Dataset851_TotalSegMRI_part2_muscles_1088subj"


def _checkpoint_bytes(seed: int) -> bytes:
    """A real torch checkpoint (zip container) like nnU-Net's checkpoint_final.pth; random, incompressible."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    buffer = io.BytesIO()
    torch.save(
        {"network_weights": {"w": torch.rand(64, 64, generator=generator)}, "trainer_name": "x"}, buffer
    )
    return buffer.getvalue()


def make_model_zip(
    dataset: str, seed: int = 0, *, extra: dict[str, bytes] | None = None, drop: tuple[str, ...] = ()
) -> bytes:
    files = {
        f"{dataset}/{SUBFOLDER}/dataset.json": json.dumps(
            {"labels": {"background": 0, "spleen": 1}}
        ).encode(),
        f"{dataset}/{SUBFOLDER}/plans.json": json.dumps({"configurations": {"3d_fullres": {}}}).encode(),
        f"{dataset}/{SUBFOLDER}/fold_0/checkpoint_final.pth": _checkpoint_bytes(seed),
    }
    files = {k: v for k, v in files.items() if not any(k.endswith(d) for d in drop)}
    files.update(extra or {})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


class WeightsServer:
    """Serves {path: bytes} with HTTP Range support; behaviours simulate broken networks and servers."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.cut_after: dict[str, int] = {}  # path -> bytes sent before the connection drops
        self.cuts_left: dict[str, int] = {}  # path -> how many responses are cut (then served whole)
        self.ignore_range = False
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def do_GET(self) -> None:
                outer.requests.append((self.path, self.headers.get("Range")))
                data = outer.files.get(self.path)
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                range_header = self.headers.get("Range")
                if range_header and not outer.ignore_range:
                    start = int(range_header.removeprefix("bytes=").split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if outer.cuts_left.get(self.path, 0) > 0:
                    outer.cuts_left[self.path] -= 1
                    self.wfile.write(body[: outer.cut_after[self.path]])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/release"

    def add(self, dataset: str, data: bytes) -> None:
        self.files[f"/release/{dataset}.zip"] = data


@pytest.fixture
def server():
    srv = WeightsServer()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def make_registry(
    tmp_path: Path,
    archives: dict[str, bytes],
    *,
    sha: dict[str, str | None] | None = None,
    size: dict[str, int] | None = None,
) -> weights.WeightsRegistry:
    """Registry like app/weights_registry.json but describing the test archives."""
    data = json.loads(weights.REGISTRY_PATH.read_text())
    sha = sha or {}
    size = size or {}
    data["datasets"] = {
        name: {"size": size.get(name, len(blob)), "sha256": sha.get(name, hashlib.sha256(blob).hexdigest())}
        for name, blob in archives.items()
    }
    data["tasks"] = {"total_mr": list(archives)}
    path = tmp_path / "registry.json"
    path.write_text(json.dumps(data))
    return weights.load_registry(path)


def leftovers(models: Path) -> list[str]:
    return sorted(p.name for p in models.iterdir() if p.name.startswith("."))


def test_shipped_registry_matches_release_facts():
    registry = weights.load_registry()
    archives = {a.dataset: a for a in registry.archives("total_mr")}
    assert list(archives) == [DS_A, DS_B]
    assert archives[DS_A].size == 231_681_650 and archives[DS_B].size == 232_156_399
    assert archives[DS_A].url == (
        "https://github.com/wasserth/TotalSegmentator/releases/download/v2.5.0-weights/" + DS_A + ".zip"
    )
    fast = registry.archives("total_mr_fast")
    assert [(a.dataset, a.size) for a in fast] == [("Dataset852_TotalSegMRI_total_3mm_1088subj", 126_399_352)]
    assert registry.archives("total_mr_fastest")[0].size == 44_657_261
    with pytest.raises(WeightsError, match="unknown task"):
        registry.archives("total")


def test_fetch_installs_every_part_byte_identical(tmp_path, server, caplog):
    blobs = {DS_A: make_model_zip(DS_A, 1), DS_B: make_model_zip(DS_B, 2)}
    for name, blob in blobs.items():
        server.add(name, blob)
    registry = make_registry(tmp_path, blobs)
    models = tmp_path / "models"
    with caplog.at_level(logging.INFO, logger="app.weights"):
        result = weights.fetch_weights("total_mr", models, registry=registry, base_url=server.url)
    assert [(r.dataset, r.action) for r in result] == [(DS_A, "installed"), (DS_B, "installed")]
    assert [r.sha256 for r in result] == [hashlib.sha256(b).hexdigest() for b in blobs.values()]
    for name, blob in blobs.items():
        with zipfile.ZipFile(io.BytesIO(blob)) as zf:
            for member in zf.namelist():
                assert (models / member).read_bytes() == zf.read(member)
        assert weights.model_folder_problems(models / name, registry) == []
    assert leftovers(models) == []  # no .part, no staging folder
    assert weights.verify_models("total_mr", models, registry=registry) == [models / DS_A, models / DS_B]

    # A second fetch finds valid folders and does not touch the network.
    server.requests.clear()
    again = weights.fetch_weights("total_mr", models, registry=registry, base_url=server.url)
    assert [r.action for r in again] == ["already-present", "already-present"]
    assert server.requests == []


def test_unrecorded_digest_is_logged_and_accepted(tmp_path, server, caplog):
    blob = make_model_zip(DS_A, 3)
    server.add(DS_A, blob)
    registry = make_registry(tmp_path, {DS_A: blob}, sha={DS_A: None})
    with caplog.at_level(logging.WARNING, logger="app.weights"):
        result = weights.fetch_weights("total_mr", tmp_path / "m", registry=registry, base_url=server.url)
    digest = hashlib.sha256(blob).hexdigest()
    assert result[0].sha256 == digest
    assert digest in caplog.text and "record it" in caplog.text


def test_wrong_checksum_installs_nothing(tmp_path, server):
    blob = make_model_zip(DS_A, 4)
    server.add(DS_A, blob)
    registry = make_registry(tmp_path, {DS_A: blob}, sha={DS_A: "0" * 64})
    models = tmp_path / "models"
    with pytest.raises(WeightsError, match="SHA-256 .* must have 0000"):
        weights.fetch_weights("total_mr", models, registry=registry, base_url=server.url)
    assert not (models / DS_A).exists()
    assert leftovers(models) == []  # the bad download is discarded, not resumed later


def test_truncated_download_keeps_part_and_explains(tmp_path, server):
    blob = make_model_zip(DS_A, 5)
    server.add(DS_A, blob)
    path = f"/release/{DS_A}.zip"
    server.cut_after[path], server.cuts_left[path] = 1000, 99
    registry = make_registry(tmp_path, {DS_A: blob})
    models = tmp_path / "models"
    with pytest.raises(
        WeightsError, match=rf"incomplete: \d+ of {len(blob)} bytes.*run the same command again"
    ):
        weights.fetch_weights("total_mr", models, registry=registry, base_url=server.url, retries=2)
    assert not (models / DS_A).exists()
    part = models / f".{DS_A}.zip.part"
    assert part.stat().st_size == 3000  # three attempts, each resumed where the last stopped
    assert blob.startswith(part.read_bytes())
    assert [r for _, r in server.requests] == [None, "bytes=1000-", "bytes=2000-"]


def test_interrupted_download_resumes_in_a_later_run(tmp_path, server):
    blob = make_model_zip(DS_A, 6)
    server.add(DS_A, blob)
    path = f"/release/{DS_A}.zip"
    server.cut_after[path], server.cuts_left[path] = len(blob) // 3, 1
    registry = make_registry(tmp_path, {DS_A: blob})
    models = tmp_path / "models"
    with pytest.raises(WeightsError, match="incomplete"):
        weights.fetch_weights("total_mr", models, registry=registry, base_url=server.url, retries=0)
    assert (models / f".{DS_A}.zip.part").stat().st_size == len(blob) // 3
    result = weights.fetch_weights("total_mr", models, registry=registry, base_url=server.url, retries=0)
    assert result[0].sha256 == hashlib.sha256(blob).hexdigest()
    assert server.requests[-1] == (path, f"bytes={len(blob) // 3}-")
    assert weights.model_folder_problems(models / DS_A, registry) == []
    assert leftovers(models) == []


def test_server_without_range_support_restarts_cleanly(tmp_path, server):
    blob = make_model_zip(DS_A, 7)
    server.add(DS_A, blob)
    path = f"/release/{DS_A}.zip"
    server.cut_after[path], server.cuts_left[path] = 5000, 1
    server.ignore_range = True
    registry = make_registry(tmp_path, {DS_A: blob})
    result = weights.fetch_weights(
        "total_mr", tmp_path / "m", registry=registry, base_url=server.url, retries=1
    )
    assert result[0].sha256 == hashlib.sha256(blob).hexdigest()
    assert [r for _, r in server.requests] == [None, "bytes=5000-"]


def test_path_traversal_member_is_refused(tmp_path, server):
    blob = make_model_zip(DS_A, 8, extra={f"{DS_A}/../../escaped.txt": b"owned"})
    server.add(DS_A, blob)
    registry = make_registry(tmp_path, {DS_A: blob})
    models = tmp_path / "deep" / "models"
    with pytest.raises(WeightsError, match="unsafe member"):
        weights.fetch_weights("total_mr", models, registry=registry, base_url=server.url)
    assert not (models / DS_A).exists()
    assert not list(tmp_path.rglob("escaped.txt"))
    assert leftovers(models) == []


def test_size_mismatch_and_corrupt_zip_and_404(tmp_path, server):
    blob = make_model_zip(DS_A, 9)
    server.add(DS_A, blob)
    registry = make_registry(tmp_path, {DS_A: blob}, size={DS_A: len(blob) - 10})
    with pytest.raises(WeightsError, match="has .* bytes but the release asset"):
        weights.fetch_weights("total_mr", tmp_path / "a", registry=registry, base_url=server.url)

    # Flip bytes inside the compressed checkpoint: right size, no digest recorded, CRC must catch it.
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        info = zf.getinfo(f"{DS_A}/{SUBFOLDER}/fold_0/checkpoint_final.pth")
    offset = info.header_offset + 30 + len(info.filename) + 200
    damaged = blob[:offset] + bytes(b ^ 0xFF for b in blob[offset : offset + 64]) + blob[offset + 64 :]
    server.add(DS_A, damaged)
    registry = make_registry(tmp_path, {DS_A: damaged}, sha={DS_A: None})
    with pytest.raises(WeightsError, match="corrupt|not a readable zip"):
        weights.fetch_weights("total_mr", tmp_path / "b", registry=registry, base_url=server.url)
    assert not (tmp_path / "b" / DS_A).exists()

    server.files.clear()
    with pytest.raises(WeightsError, match="HTTP 404"):
        weights.fetch_weights("total_mr", tmp_path / "c", registry=registry, base_url=server.url)


def test_zip_without_checkpoint_is_not_installed(tmp_path, server):
    blob = make_model_zip(DS_A, 10, drop=("checkpoint_final.pth",))
    server.add(DS_A, blob)
    registry = make_registry(tmp_path, {DS_A: blob})
    models = tmp_path / "models"
    with pytest.raises(WeightsError, match="does not hold a usable model: .*checkpoint_final.pth is missing"):
        weights.fetch_weights("total_mr", models, registry=registry, base_url=server.url)
    assert not (models / DS_A).exists() and leftovers(models) == []


def test_existing_broken_folder_needs_force(tmp_path, server):
    blob = make_model_zip(DS_A, 11)
    server.add(DS_A, blob)
    registry = make_registry(tmp_path, {DS_A: blob})
    models = tmp_path / "models"
    (models / DS_A / SUBFOLDER).mkdir(parents=True)
    with pytest.raises(WeightsError, match="exists but is not usable.*--force"):
        weights.fetch_weights("total_mr", models, registry=registry, base_url=server.url)
    result = weights.fetch_weights("total_mr", models, registry=registry, base_url=server.url, force=True)
    assert result[0].action == "installed"
    assert weights.model_folder_problems(models / DS_A, registry) == []
    assert leftovers(models) == []


def test_offline_install_from_copied_zips(tmp_path):
    blob = make_model_zip(DS_A, 12)
    copied = tmp_path / "usb"
    copied.mkdir()
    (copied / f"{DS_A}.zip").write_bytes(blob)
    registry = make_registry(tmp_path, {DS_A: blob})
    weights.fetch_weights(
        "total_mr",
        tmp_path / "models",
        registry=registry,
        source_dir=copied,
        base_url="http://127.0.0.1:9/unreachable",
    )
    assert weights.model_folder_problems(tmp_path / "models" / DS_A, registry) == []
    assert (copied / f"{DS_A}.zip").read_bytes() == blob  # the user's copy is left alone
    with pytest.raises(WeightsError, match="not found"):
        weights.fetch_weights("total_mr", tmp_path / "other", registry=registry, source_dir=tmp_path / "none")


def test_verify_reports_each_problem_of_a_hand_copied_folder(tmp_path):
    blob = make_model_zip(DS_A, 13)
    registry = make_registry(tmp_path, {DS_A: blob, DS_B: blob})
    models = tmp_path / "models"
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        zf.extractall(models)
    model_dir = models / DS_A / SUBFOLDER
    (model_dir / "plans.json").write_text("{not json")
    checkpoint = model_dir / "fold_0" / "checkpoint_final.pth"
    checkpoint.write_bytes(checkpoint.read_bytes()[:500])  # copy interrupted half-way
    with pytest.raises(WeightsError) as info:
        weights.verify_models("total_mr", models, registry=registry)
    message = str(info.value)
    assert "plans.json is not valid JSON" in message
    assert "checkpoint_final.pth is not a torch checkpoint" in message
    assert f"{DS_B} does not exist" in message


def test_cli_exit_codes_and_single_error_line(tmp_path, server, caplog):
    blob = make_model_zip(DS_A, 14)
    server.add(DS_A, blob)
    make_registry(tmp_path, {DS_A: blob})
    models = tmp_path / "models"
    argv = ["fetch", "-m", str(models), "--registry", str(registry_path(tmp_path)), "--base-url", server.url]
    assert weights.main(argv) == 0
    assert weights.main(["verify", "-m", str(models), "--registry", str(registry_path(tmp_path))]) == 0
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="app.weights"):
        code = weights.main(["verify", "-m", str(tmp_path / "empty"), "--task", "total_mr_fast"])
    assert code == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "weights verify failed" in errors[0].getMessage()
    assert "Dataset852_TotalSegMRI_total_3mm_1088subj does not exist" in errors[0].getMessage()


def registry_path(tmp_path: Path) -> Path:
    return tmp_path / "registry.json"


def test_weights_subcommand_plugs_into_a_parent_cli(tmp_path):
    import argparse

    parser = argparse.ArgumentParser(prog="totalseg-mri")
    sub = parser.add_subparsers(dest="command")
    weights.add_subparsers(sub)
    args = parser.parse_args(["weights", "verify", "-m", str(tmp_path), "--task", "total_mr_fast"])
    assert args.command == "weights" and args.weights_action == "verify"
    assert weights.run(args) == 1
