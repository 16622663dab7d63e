"""Store a DICOM SEG in XNAT as an ROI collection so XNAT's OHIF viewer shows it.

XNAT's ROI plugin takes the SEG bytes at
``PUT {XNAT_HOST}/xapi/roi/projects/{project}/sessions/{session}/collections/{label}?type=SEG&overwrite=true``
(``application/octet-stream``) and creates an ``icr:roiCollectionData`` assessor on the session; it answers
422 when the label exists and ``overwrite`` is false. The container service gives every container
``XNAT_HOST``, ``XNAT_USER`` and ``XNAT_PASS`` (an alias token), which is all this needs: plain urllib with
HTTP basic authentication, no extra dependency.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pydicom

logger = logging.getLogger(__name__)

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"  # PS3.4 B.5, Segmentation Storage SOP Class


class XnatUploadError(ValueError):
    """The ROI collection could not be stored (missing credentials, not a SEG, refused by XNAT)."""


@dataclass(frozen=True)
class XnatCredentials:
    host: str
    user: str
    password: str

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> XnatCredentials:
        """Read XNAT_HOST / XNAT_USER / XNAT_PASS as set by the container service at launch."""
        env = os.environ if environ is None else environ
        missing = [k for k in ("XNAT_HOST", "XNAT_USER", "XNAT_PASS") if not env.get(k)]
        if missing:
            raise XnatUploadError(
                f"cannot push ROI collections: {', '.join(missing)} not set (XNAT sets them when it launches "
                "the container)"
            )
        return cls(env["XNAT_HOST"].rstrip("/"), env["XNAT_USER"], env["XNAT_PASS"])


def roi_collection_label(seg_path: Path, prefix: str = "TotalSegMRI") -> str:
    """A label stable for one SEG: prefix, the SEG's SeriesNumber and a digest of its SOP Instance UID.

    Re-running on the same series replaces the collection (overwrite=true) only if the SEG instance is the
    same; XNAT labels allow letters, digits, ``_`` and ``-``.
    """
    ds = pydicom.dcmread(seg_path, stop_before_pixels=True, specific_tags=["SeriesNumber", "SOPInstanceUID"])
    series = str(ds.get("SeriesNumber", "") or "x")
    digest = hashlib.sha1(str(ds.SOPInstanceUID).encode()).hexdigest()[:8]
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"{prefix}_{series}_{digest}")


def push_roi_collection(
    seg_path: Path,
    project: str,
    session: str,
    label: str,
    credentials: XnatCredentials,
    *,
    timeout: float = 120,
) -> int:
    """PUT one SEG as ROI collection ``label`` of ``session``; returns the HTTP status."""
    ds = pydicom.dcmread(seg_path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    if ds.get("SOPClassUID") != SEGMENTATION_STORAGE:
        raise XnatUploadError(f"{seg_path} is not a DICOM Segmentation (SOP Class {ds.get('SOPClassUID')})")
    if not project or not session:
        raise XnatUploadError("cannot push ROI collections: the XNAT project and session IDs are missing")
    quote = urllib.parse.quote
    url = (
        f"{credentials.host}/xapi/roi/projects/{quote(project, safe='')}/sessions/{quote(session, safe='')}"
        f"/collections/{quote(label, safe='')}?type=SEG&overwrite=true"
    )
    token = base64.b64encode(f"{credentials.user}:{credentials.password}".encode()).decode()
    request = urllib.request.Request(
        url,
        data=Path(seg_path).read_bytes(),
        method="PUT",
        headers={"Authorization": f"Basic {token}", "Content-Type": "application/octet-stream"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        body = exc.read(300).decode("utf-8", "replace").strip()
        raise XnatUploadError(
            f"XNAT refused ROI collection {label!r} for session {session}: HTTP {exc.code} {exc.reason}"
            + (f" ({body})" if body else "")
        ) from exc
    except (urllib.error.URLError, OSError) as exc:
        raise XnatUploadError(f"cannot reach XNAT at {credentials.host}: {exc}") from exc
    logger.info(
        "stored %s as ROI collection %s of session %s (HTTP %d)", seg_path.name, label, session, status
    )
    return status
