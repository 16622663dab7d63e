"""Encapsulated PDF Storage (PS3.3 A.45.1) so the PDF report travels with the study into the PACS.

Modules written: Patient, General Study (copied from a source instance of the study, Type 2 attributes
present even when the source lacks them), Encapsulated Document Series (Modality DOC, new series), General
Equipment, SC Equipment (Conversion Type WSD: workstation), Encapsulated Document (PS3.3 C.24.2) and SOP
Common.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import highdicom as hd
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

from operators.seg_writer import PATIENT_STUDY_TYPE2
from operators.segmentation_result import ResultWriterError

ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"
# Optional Patient and General Study attributes copied from the source when present (Type 2 ones: seg_writer).
_PATIENT_STUDY_OPTIONAL = ("IssuerOfPatientID", "StudyDescription", "PatientAge", "OtherPatientIDsSequence")


def build_encapsulated_pdf(
    pdf_path: Path,
    header: Dataset,
    *,
    series_number: int = 9000,
    title: str = "Automatic MR segmentation report",
    manufacturer: str = "totalseg-mri-deploy",
    software_version: str = "",
) -> Dataset:
    """An Encapsulated PDF instance in the study of ``header`` holding the bytes of ``pdf_path``."""
    document = pdf_path.read_bytes()
    if not document.startswith(b"%PDF"):
        raise ResultWriterError(f"{pdf_path} is not a PDF file")
    if "StudyInstanceUID" not in header:
        raise ResultWriterError(
            "the source instance has no StudyInstanceUID; cannot place the report in a study"
        )
    sop_instance_uid = hd.UID()
    now = dt.datetime.now()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ENCAPSULATED_PDF_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = sop_instance_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: names may be non-ASCII
    ds.SOPClassUID = ENCAPSULATED_PDF_STORAGE
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyInstanceUID = header.StudyInstanceUID
    for keyword in PATIENT_STUDY_TYPE2:
        setattr(ds, keyword, header.get(keyword, None) or "")
    for keyword in _PATIENT_STUDY_OPTIONAL:
        if keyword in header and header[keyword].value not in (None, ""):
            setattr(ds, keyword, header[keyword].value)
    # Encapsulated Document Series
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = hd.UID()
    ds.SeriesNumber = series_number
    ds.SeriesDescription = title[:64]
    # General Equipment + SC Equipment
    ds.Manufacturer = manufacturer
    ds.SoftwareVersions = software_version or "unknown"
    ds.ConversionType = "WSD"
    # Encapsulated Document
    ds.InstanceNumber = 1
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "YES"  # the document shows patient identification
    ds.DocumentTitle = title[:64]
    ds.ConceptNameCodeSequence = DicomSequence()  # Type 2: no coded document title
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = document + (b"\0" if len(document) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(document)
    ds.InstanceCreationDate = ds.ContentDate
    ds.InstanceCreationTime = ds.ContentTime
    return ds


def write_encapsulated_pdf(pdf_path: Path, header: Dataset, path: Path, **kwargs) -> Dataset:
    ds = build_encapsulated_pdf(pdf_path, header, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds
