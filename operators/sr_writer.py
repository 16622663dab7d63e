"""DICOM Comprehensive 3D SR following TID 1500 "Measurement Report" for one segmented volume (highdicom.sr).

One TID 1411 Volumetric ROI measurement group per segment of the SEG, each referencing that segment
(Referenced Segment, with the source series) and holding volume (SCT 118565006, mL) and the mean and
median MR signal intensity (DCM 110852 with derivation SCT 373098007 Mean / 373099004 Median). The
observer is the algorithm as a device (TID 1004) and every measurement carries Algorithm Identification
(TID 4019). Flags are set honestly (PS3.3 C.17.2): CompletionFlag COMPLETE (every structure found is
reported), VerificationFlag UNVERIFIED and PreliminaryFlag PRELIMINARY (no person has reviewed it).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from operators.anatomy_codes import anatomy_for
from operators.seg_writer import SEG_MANUFACTURER, SEG_MODEL_NAME, SegWriteOutcome
from operators.segmentation_result import ResultWriterError, SegmentationResult
from operators.statistics import StructureStatistics

logger = logging.getLogger(__name__)

VOLUME = hd.sr.CodedConcept("118565006", "SCT", "Volume")
MR_SIGNAL_INTENSITY = hd.sr.CodedConcept("110852", "DCM", "MR signal intensity")
MEAN = hd.sr.CodedConcept("373098007", "SCT", "Mean")
MEDIAN = hd.sr.CodedConcept("373099004", "SCT", "Median")
MILLILITER = hd.sr.CodedConcept("ml", "UCUM", "milliliter")
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
MR_PROCEDURE = hd.sr.CodedConcept("113091000", "SCT", "Magnetic resonance imaging")


def _algorithm_id(result: SegmentationResult) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=result.algorithm.name[:64],
        version=result.algorithm.version or "unknown",
        parameters=[f"{k}={v}" for k, v in result.algorithm.parameters().items()],
    )


def build_measurement_report(
    result: SegmentationResult,
    seg: SegWriteOutcome,
    stats: list[StructureStatistics],
    source_datasets: list[Dataset],
    options_series_number: int | None = None,
) -> hd.sr.Comprehensive3DSR:
    """Build the SR for the segments of ``seg``; ``stats`` supplies the numbers (same result)."""
    by_label = {s.label: s for s in stats}
    algorithm_id = _algorithm_id(result)
    seg_ds = seg.dataset
    tracking_uids = {
        int(item.SegmentNumber): str(item.TrackingUID)
        for item in seg_ds.SegmentSequence
        if "TrackingUID" in item
    }
    groups = []
    for label, segment_number in seg.segment_numbers.items():
        s = by_label.get(label)
        if s is None or not s.present:
            raise ResultWriterError(f"segment {segment_number} ({result.classes[label]}) has no statistics")
        anatomy = anatomy_for(result.classes[label])
        site = hd.sr.FindingSite(
            anatomic_location=anatomy.property_type.concept(),
            laterality=anatomy.type_modifier.concept() if anatomy.type_modifier else None,
        )
        measurements = [
            hd.sr.Measurement(
                name=VOLUME, value=round(s.volume_ml, 6), unit=MILLILITER, algorithm_id=algorithm_id
            ),
            hd.sr.Measurement(
                name=MR_SIGNAL_INTENSITY,
                value=round(float(s.mean_intensity), 6),  # type: ignore[arg-type]
                unit=NO_UNITS,
                derivation=MEAN,
                algorithm_id=algorithm_id,
            ),
            hd.sr.Measurement(
                name=MR_SIGNAL_INTENSITY,
                value=round(float(s.median_intensity), 6),  # type: ignore[arg-type]
                unit=NO_UNITS,
                derivation=MEDIAN,
                algorithm_id=algorithm_id,
            ),
        ]
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=tracking_uids.get(segment_number, hd.UID()), identifier=anatomy.name
                ),
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=seg_ds.SOPClassUID,
                    sop_instance_uid=seg_ds.SOPInstanceUID,
                    segment_number=segment_number,
                    source_series=hd.sr.SourceSeriesForSegmentation(result.volume.series_instance_uid),
                ),
                finding_type=anatomy.property_type.concept(),
                finding_category=anatomy.category.concept(),
                finding_sites=[site],
                algorithm_id=algorithm_id,
                measurements=measurements,
            )
        )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(),
            name=result.algorithm.name[:64],
            manufacturer_name=SEG_MANUFACTURER,
            model_name=SEG_MODEL_NAME,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=MR_PROCEDURE,
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
    )
    series_number = options_series_number
    if series_number is None:
        series_number = 8000 + (result.volume.series_number or 0)
    description = f"SR {result.algorithm.model_profile} of {result.volume.series_description or 'series'}"
    try:
        sr = hd.sr.Comprehensive3DSR(
            evidence=[seg_ds, *source_datasets],
            content=report,
            series_instance_uid=hd.UID(),
            series_number=series_number,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=SEG_MANUFACTURER,
            is_complete=True,
            is_final=False,
            is_verified=False,
            series_description=description[:64],
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise ResultWriterError(
            f"highdicom refused the measurement report of {result.volume.label}: {exc}"
        ) from exc
    sr.SpecificCharacterSet = "ISO_IR 192"  # UTF-8 for copied patient / study text, PS3.5 6.1.2.3
    return sr


def write_measurement_report(
    result: SegmentationResult,
    seg: SegWriteOutcome,
    stats: list[StructureStatistics],
    source_datasets: list[Dataset],
    path: Path,
) -> hd.sr.Comprehensive3DSR:
    started = time.perf_counter()
    sr = build_measurement_report(result, seg, stats, source_datasets)
    path.parent.mkdir(parents=True, exist_ok=True)
    sr.save_as(path, enforce_file_format=True)
    logger.info(
        "wrote SR %s: %d measurement groups, %.2f s",
        path.name,
        len(seg.segment_numbers),
        time.perf_counter() - started,
    )
    return sr
