"""A real PACS accepts the results: Debian's Orthanc (+ DICOMweb plugin), started on loopback by this
module, receives every DICOM object by C-STORE (pynetdicom) and returns it over REST and QIDO-RS with
the right study and series."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, StoragePresentationContexts, build_context

from operators.results_writer import write_results_atomically
from tests.result_writer_sources import make_result, write_classic_series, write_enhanced_mr

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
SR = "1.2.840.10008.5.1.4.1.1.88.34"
PDF = "1.2.840.10008.5.1.4.1.1.104.1"
CLASSES = {1: "spleen", 3: "kidney_left", 11: "lung_right", 20: "intervertebral_discs"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    exe = shutil.which("Orthanc")
    if exe is None:
        pytest.fail("Orthanc is not installed: apt-get install orthanc orthanc-dicomweb")
    if not DICOMWEB_PLUGIN.exists():
        pytest.fail(f"{DICOMWEB_PLUGIN} missing: apt-get install orthanc-dicomweb")
    root = tmp_path_factory.mktemp("orthanc")
    http_port, dicom_port = _free_port(), _free_port()
    config = {
        "Name": "totalseg-test",
        "StorageDirectory": str(root / "db"),
        "IndexDirectory": str(root / "db"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "DicomCheckCalledAet": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (root / "orthanc.json").write_text(json.dumps(config))
    log = (root / "orthanc.log").open("w")
    # Started directly (not through a shell), so this Popen's PID is Orthanc's own.
    process = subprocess.Popen([exe, str(root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{http_port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            _get(f"{base}/system")
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"Orthanc did not start: {(root / 'orthanc.log').read_text()[-2000:]}")
            time.sleep(0.2)
    yield {"http": base, "dicom_port": dicom_port}
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


def _c_store(paths: list[Path], port: int) -> list[int]:
    ae = AE(ae_title="TOTALSEG")
    contexts = [c for c in StoragePresentationContexts if c.abstract_syntax not in (SEG, SR, PDF)]
    ae.requested_contexts = [*contexts[:120], build_context(SEG), build_context(SR), build_context(PDF)]
    assoc = ae.associate("127.0.0.1", port, ae_title="ORTHANC")
    assert assoc.is_established, "no association with Orthanc"
    try:
        return [int(assoc.send_c_store(pydicom.dcmread(p)).Status) for p in paths]
    finally:
        assoc.release()


def test_orthanc_receives_seg_sr_and_pdf_by_c_store(orthanc, tmp_path):
    axial = make_result(write_classic_series(tmp_path / "a", patient_name="Pacs^Test"), CLASSES, seed=4)
    enhanced = make_result(write_enhanced_mr(tmp_path / "b"), CLASSES, seed=5)
    out = tmp_path / "out"
    write_results_atomically([axial, enhanced], out)
    paths = sorted((out / "dicom").glob("*.dcm"))
    assert len(paths) == 6
    assert _c_store(paths, orthanc["dicom_port"]) == [0] * len(paths)

    base = orthanc["http"]
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        found = json.loads(
            urllib.request.urlopen(
                urllib.request.Request(
                    f"{base}/tools/find",
                    data=json.dumps(
                        {"Level": "Instance", "Query": {"SOPInstanceUID": ds.SOPInstanceUID}, "Expand": True}
                    ).encode(),
                    method="POST",
                ),
                timeout=10,
            ).read()
        )
        assert len(found) == 1, f"{path.name} not stored in Orthanc"
        series = _get(f"{base}/series/{found[0]['ParentSeries']}")
        study = _get(f"{base}/studies/{series['ParentStudy']}")
        assert series["MainDicomTags"]["SeriesInstanceUID"] == ds.SeriesInstanceUID
        assert series["MainDicomTags"]["Modality"] == ds.Modality
        assert study["MainDicomTags"]["StudyInstanceUID"] == ds.StudyInstanceUID
        # QIDO-RS through the DICOMweb plugin lists the series in the source's study.
        qido = _get(f"{base}/dicom-web/studies/{ds.StudyInstanceUID}/series")
        listed = {item["0020000E"]["Value"][0]: item["00080060"]["Value"][0] for item in qido}
        assert listed[ds.SeriesInstanceUID] == ds.Modality
    modalities = {pydicom.dcmread(p, stop_before_pixels=True).Modality for p in paths}
    assert modalities == {"SEG", "SR", "DOC"}
    # Only the results were sent: Orthanc files them under the source studies' UIDs, nothing else.
    stored = _get(f"{base}/studies")
    studies = {_get(f"{base}/studies/{s}")["MainDicomTags"]["StudyInstanceUID"] for s in stored}
    assert studies == {axial.volume.study_instance_uid, enhanced.volume.study_instance_uid}
