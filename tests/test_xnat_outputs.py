"""Staging results for XNAT's output handlers, and the ROI-collection push against a local HTTP server."""

from __future__ import annotations

import base64
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from app import xnat_outputs
from app.xnat_outputs import XnatOutputError, stage_for_xnat
from app.xnat_upload import XnatCredentials, XnatUploadError, push_roi_collection, roi_collection_label

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"


def write_seg(path: Path, series_number: int = 100) -> bytes:
    """A real highdicom BINARY SEG on pydicom's MR_small (Toshiba MR, 64x64)."""
    source = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    mask = np.zeros((1, source.Rows, source.Columns), dtype=bool)
    mask[0, 20:40, 16:44] = True
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="liver",
        segmented_property_category=codes.SCT.Organ,
        segmented_property_type=codes.SCT.Liver,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="TotalSegmentator MRI", version="2.5.0", family=codes.cid7162.ArtificialIntelligence
        ),
    )
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="totalseg-mri",
        manufacturer_model_name="totalseg-mri",
        software_versions="0.1.0",
        device_serial_number="1",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return path.read_bytes()


def write_object(path: Path, sop_class: str) -> None:
    """A minimal DICOM Part 10 file of the given SOP class (classification reads only SOP Class UID)."""
    ds = pydicom.Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "SR" if sop_class == COMPREHENSIVE_3D_SR else "DOC"
    if sop_class == ENCAPSULATED_PDF:
        ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
        ds.EncapsulatedDocument = b"%PDF-1.4\n%%EOF\n"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def make_results(root: Path, *, seg_count: int = 2, with_sr: bool = True) -> Path:
    """A results folder in the layout the application writes."""
    for index in range(seg_count):
        write_seg(root / "dicom" / f"series{index}" / "seg.dcm", series_number=100 + index)
    if with_sr:
        write_object(root / "dicom" / "series0" / "sr.dcm", COMPREHENSIVE_3D_SR)
    write_object(root / "dicom" / "report_pdf.dcm", ENCAPSULATED_PDF)
    (root / "dicom" / "README.txt").write_text("not DICOM")
    (root / "report").mkdir(parents=True)
    (root / "report" / "report.pdf").write_bytes(b"%PDF-1.4\n%%EOF\n")
    (root / "report" / "axial.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (root / "statistics.json").write_text(json.dumps({"liver": {"volume": 1.0}}))
    (root / "statistics.csv").write_text("name,volume\nliver,1.0\n")
    (root / "run.json").write_text("{}")
    for volume in ("series0", "series1"):
        (root / "statistics" / volume).mkdir(parents=True)
        (root / "statistics" / volume / "statistics.json").write_text(json.dumps({volume: {}}))
    (root / "nifti").mkdir()
    return root


def test_staging_sorts_every_object_by_sop_class(tmp_path):
    results = make_results(tmp_path / "totalseg")
    staged = stage_for_xnat(results, tmp_path / "xnat")
    names = {kind: sorted(p.name for p in (tmp_path / "xnat" / kind).iterdir()) for kind in staged}
    assert names == {
        "SEG": ["seg.dcm", "series1_seg.dcm"],
        "SR": ["sr.dcm"],
        "PDF": ["report.pdf", "report_pdf.dcm"],
        "QC": ["axial.png"],
        "STATS": [
            "run.json",
            "series0_statistics.json",
            "series1_statistics.json",
            "statistics.csv",
            "statistics.json",
        ],
    }
    for seg in (tmp_path / "xnat" / "SEG").iterdir():
        assert pydicom.dcmread(seg).SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert (tmp_path / "xnat" / "SEG" / "series1_seg.dcm").read_bytes() == (
        results / "dicom" / "series1" / "seg.dcm"
    ).read_bytes()
    per_volume = tmp_path / "xnat" / "STATS" / "series1_statistics.json"
    assert json.loads(per_volume.read_text()) == {"series1": {}}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_missing_results_fail_with_one_clear_line(tmp_path, caplog):
    results = make_results(tmp_path / "totalseg", seg_count=0, with_sr=False)
    with pytest.raises(XnatOutputError, match=r"lack SEG, SR; nothing uploaded"):
        stage_for_xnat(results, tmp_path / "xnat")
    assert not (tmp_path / "xnat").exists()
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="app.xnat_outputs"):
        code = xnat_outputs.main([str(tmp_path / "absent"), str(tmp_path / "xnat")])
    assert code == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [
        f"XNAT upload preparation failed: {tmp_path / 'absent'} does not exist: the segmentation run "
        "produced no results"
    ]


class RoiServer:
    """Records what an XNAT ROI endpoint receives and answers with a chosen status."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.received: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.received.append({"path": self.path, "headers": dict(self.headers), "body": body})
                message = b"" if outer.status < 400 else b"Collection label already exists"
                self.send_response(outer.status)
                self.send_header("Content-Length", str(len(message)))
                self.end_headers()
                self.wfile.write(message)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def roi_server():
    server = RoiServer()
    yield server
    server.close()


def test_seg_is_put_as_roi_collection(tmp_path, roi_server):
    seg_bytes = write_seg(tmp_path / "seg.dcm", series_number=101)
    credentials = XnatCredentials(roi_server.url, "alias-user", "alias-secret")
    label = roi_collection_label(tmp_path / "seg.dcm", "TotalSegMRI")
    assert label.startswith("TotalSegMRI_101_") and len(label) == len("TotalSegMRI_101_") + 8
    status = push_roi_collection(tmp_path / "seg.dcm", "PROJ1", "XNAT_E00001", label, credentials)
    assert status == 200
    (request,) = roi_server.received
    assert (
        request["path"]
        == f"/xapi/roi/projects/PROJ1/sessions/XNAT_E00001/collections/{label}?type=SEG&overwrite=true"
    )
    assert request["body"] == seg_bytes
    assert request["headers"]["Content-Type"] == "application/octet-stream"
    assert (
        base64.b64decode(request["headers"]["Authorization"].removeprefix("Basic "))
        == b"alias-user:alias-secret"
    )


def test_staging_step_pushes_every_seg_when_asked(tmp_path, roi_server, monkeypatch):
    results = make_results(tmp_path / "totalseg")
    monkeypatch.setenv("XNAT_HOST", roi_server.url)
    monkeypatch.setenv("XNAT_USER", "u")
    monkeypatch.setenv("XNAT_PASS", "p")
    code = xnat_outputs.main(
        [
            str(results),
            str(tmp_path / "xnat"),
            "--push-roi",
            "--project",
            "PROJ1",
            "--session",
            "XNAT_E00001",
            "--roi-label-prefix",
            "TSM",
        ]
    )
    assert code == 0
    assert len(roi_server.received) == 2
    assert sorted(r["body"] for r in roi_server.received) == sorted(
        p.read_bytes() for p in (tmp_path / "xnat" / "SEG").iterdir()
    )
    assert all("/collections/TSM_10" in r["path"] for r in roi_server.received)


def test_push_refusals_are_explained(tmp_path):
    write_seg(tmp_path / "seg.dcm")
    write_object(tmp_path / "sr.dcm", COMPREHENSIVE_3D_SR)
    server = RoiServer(status=422)
    try:
        credentials = XnatCredentials(server.url, "u", "p")
        with pytest.raises(XnatUploadError, match=r"HTTP 422 .*Collection label already exists"):
            push_roi_collection(tmp_path / "seg.dcm", "P", "E1", "L", credentials)
        with pytest.raises(XnatUploadError, match="is not a DICOM Segmentation"):
            push_roi_collection(tmp_path / "sr.dcm", "P", "E1", "L", credentials)
        with pytest.raises(XnatUploadError, match="project and session IDs are missing"):
            push_roi_collection(tmp_path / "seg.dcm", "", "E1", "L", credentials)
    finally:
        server.close()
    with pytest.raises(XnatUploadError, match="XNAT_HOST, XNAT_PASS not set"):
        XnatCredentials.from_environment({"XNAT_USER": "u"})
