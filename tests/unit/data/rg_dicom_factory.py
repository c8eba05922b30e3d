"""Small real DICOM objects for the ingest tests: CT slices with planted PHI and highdicom SEGs.

Everything is built with pydicom and highdicom as a hospital export would be (CT Image Storage,
Explicit VR Little Endian, a SEG referencing its source slices), only tiny: 32 x 32 pixels.
"""

from __future__ import annotations

import csv
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

#: Identifiers planted in every header; none may survive ingest (strings searched byte-wise).
PHI = {
    "PatientName": "Zebulon^Quixote",
    "PatientBirthDate": "19410317",
    "AccessionNumber": "ACC99887766",
    "InstitutionName": "Saint Wolfgang Infirmary",
    "InstitutionAddress": "12 Larkspur Lane Oxbridge",
    "ReferringPhysicianName": "Dr^Hieronymus^Bosch",
    "PerformingPhysicianName": "Dr^Philippa^Quartermain",
    "OperatorsName": "Tech^Ulrike",
    "StationName": "CT-NORTHWING",
    "StudyID": "STUDY-ZX81",
    "ImageComments": "Patient complains of cough, call wife Griselda",
    "PatientComments": "allergic to Penicillamine-Vortex",
    "OtherPatientIDs": "OTHERMRN-555123",
    "StudyDescription": "CT THORAX Quixote followup",
}
PRIVATE_MRN = "PRIVMRN-424242"


#: Distinctive parts of the planted values, as they could appear in any output (PN parts split).
PLANTED_TOKENS = ["Zebulon", "Quixote", "19410317", "ACC99887766", "Wolfgang", "Larkspur", "Hieronymus",
                  "Philippa", "Quartermain", "Ulrike", "NORTHWING", "STUDY-ZX81", "Griselda",
                  "Penicillamine", "OTHERMRN-555123", "SN-DELINEATOR-77", PRIVATE_MRN]


def planted_strings(patient_id: str) -> list[str]:
    """Every identifying string planted for ``patient_id``."""
    return [patient_id, *PLANTED_TOKENS]


def tumour_mask(shape: tuple[int, int, int], centre: tuple[float, float, float], radius: float) -> np.ndarray:
    z, r, c = np.indices(shape)
    d = np.sqrt(((z - centre[0]) * 2.0) ** 2 + (r - centre[1]) ** 2 + (c - centre[2]) ** 2)
    return (d <= radius).astype(np.uint8)


def ct_slices(patient_id: str, n_slices: int = 8, size: int = 32, spacing: float = 0.8,
              thickness: float = 2.0, study_uid: str | None = None, series_uid: str | None = None,
              mask: np.ndarray | None = None, seed: int = 0, manufacturer: str = "ACME") -> list[Dataset]:
    """CT slices of a phantom (lung -850 HU, tumour 30 HU where ``mask``), with PHI planted."""
    rng = np.random.default_rng(seed)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    vol = np.full((n_slices, size, size), -850.0) + rng.normal(0, 20, (n_slices, size, size))
    if mask is not None:
        vol[mask > 0] = 30.0 + rng.normal(0, 10, int(mask.sum()))
    out = []
    for k in range(n_slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        sop = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = sop
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = "CT"
        ds.PatientID = patient_id
        for keyword, value in PHI.items():
            setattr(ds, keyword, value)
        ds.StudyDate = "20240105"
        ds.SeriesDate = "20240105"
        ds.ContentDate = "20240105"
        ds.StudyTime = "101500"
        ds.PatientSex = "F"
        ds.PatientAge = "083Y"
        ds.Manufacturer = manufacturer
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PixelSpacing = [spacing, spacing]
        ds.SliceThickness = thickness
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-size * spacing / 2, -size * spacing / 2, -100.0 + k * thickness]
        ds.Rows = size
        ds.Columns = size
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        stored = np.clip(np.round(vol[k] + 1024), 0, 4095).astype(np.uint16)
        ds.PixelData = stored.tobytes()
        block = ds.private_block(0x0029, "HOSPITAL MRN", create=True)
        block.add_new(0x01, "LO", PRIVATE_MRN)
        other = Dataset()
        other.PatientID = PHI["OtherPatientIDs"]
        ds.OtherPatientIDsSequence = DicomSequence([other])
        out.append(ds)
    return out


def seg_for(slices: list[Dataset], mask: np.ndarray, only_tumour_slices: bool = True) -> Dataset:
    """A highdicom binary SEG of ``mask`` (Z, R, C) on ``slices`` (position order), tumour frames only."""
    desc = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="tumour",
        segmented_property_category=hd.sr.CodedConcept("49755003", "SCT", "Morphologically Altered Structure"),
        segmented_property_type=hd.sr.CodedConcept("108369006", "SCT", "Neoplasm"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    keep = [k for k in range(len(slices)) if mask[k].any()] if only_tumour_slices else list(range(len(slices)))
    seg = hd.seg.Segmentation(
        source_images=[slices[k] for k in keep],
        pixel_array=mask[keep].astype(bool),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[desc],
        series_instance_uid=generate_uid(),
        series_number=99,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="ACME SEG",
        manufacturer_model_name="Delineator",
        software_versions="1.0",
        device_serial_number="SN-DELINEATOR-77",
        content_creator_name="Dr^Hieronymus^Bosch",
    )
    return seg


def write_patient(cohort: Path, patient_id: str, seed: int, n_slices: int = 8, size: int = 32,
                  with_seg: bool = True, radius: float = 4.0) -> list[Dataset]:
    """Write one patient's CT (shuffled file names) and SEG into ``cohort/ct/<patient_id>/``."""
    rng = np.random.default_rng(seed)
    centre = (n_slices / 2 + rng.uniform(-1, 1), size / 2 + rng.uniform(-4, 4), size / 2 + rng.uniform(-4, 4))
    mask = tumour_mask((n_slices, size, size), centre, radius)
    slices = ct_slices(patient_id, n_slices, size, mask=mask, seed=seed)
    series_dir = cohort / "ct" / patient_id / str(slices[0].SeriesInstanceUID)
    series_dir.mkdir(parents=True)
    for j, k in enumerate(rng.permutation(len(slices))):
        slices[k].save_as(series_dir / f"img{j:03d}.dcm", enforce_file_format=True)
    if with_seg:
        seg_dir = cohort / "ct" / patient_id / "seg"
        seg_dir.mkdir()
        seg_for(slices, mask).save_as(seg_dir / "seg.dcm", enforce_file_format=True)
    return slices


GENES = ["EGFR", "KRAS", "TP53", "MKI67", "HIF1A", "VIM"]


def write_tables(cohort: Path, gene_ids: list[str], clinical_ids: list[str], seed: int = 0) -> None:
    """genes.tsv (genes x samples, one missing cell) and clinical.csv for the given source ids."""
    rng = np.random.default_rng(seed)
    with open(cohort / "genes.tsv", "w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t")
        w.writerow(["gene_symbol", *gene_ids])
        for g_i, gene in enumerate(GENES):
            values = [f"{v:.3f}" for v in rng.lognormal(3, 1, len(gene_ids))]
            if g_i == 1 and values:
                values[0] = ""
            w.writerow([gene, *values])
    with open(cohort / "clinical.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["patient_id", "age", "sex", "smoking_status", "pack_years", "histology",
                    "egfr_status", "kras_status", "survival_months", "event"])
        for i, pid in enumerate(clinical_ids):
            w.writerow([pid, 95 if i == 0 else 60 + i, "F", "former", 20.5, "adenocarcinoma",
                        "wildtype", "mutant", 30.0, 1])
