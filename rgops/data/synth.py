"""The synthetic radiogenomic cohort generator (``rgops synth OUT``).

A cohort is what a hospital would hand over (docs/architecture.md, "Cohort folder"): one real DICOM
CT series and one DICOM SEG of the tumour per patient, a GEO-style genes x samples expression table
and a clinical table, with realistic PHI in every DICOM header so de-identification has something to
remove. The ground truth that made it (latent programs, phenotype parameters, gene modules) is
written apart, to ``<OUT>-truth/``, for evaluation only.

Generative story, per patient ``i`` (each patient has its own random stream ``(seed, stream, i)``,
so the first patients of a cohort do not change when ``n_patients`` grows):

1. K = 6 latent programs ``z ~ N(0, I)`` (:data:`PROGRAMS`); four are imaging-linked, two are decoys.
2. A site: scanner manufacturer (and model) drawn from the real NSCLC Radiogenomics shares, a
   reconstruction kernel, hence blur and noise. The site is not biology.
3. Phenotype parameters, smooth functions of the imaging programs plus small noise
   (:func:`phenotypes_from_programs`).
4. A CT volume rendered from the phenotype (:mod:`rgops.data.phantom`), slice thickness drawn from
   the real distribution, slice count from the real one scaled by ``slice_scale``.
5. Expression: genes in modules loaded on the programs (log-normal), the rest unrelated; clinical
   variables partly driven by the programs (EGFR mutation by ``egfr_signalling``, survival by
   ``proliferation`` and ``immune``).

Everything is deterministic for a seed: pixel data, tables and UIDs (``2.25`` UIDs hashed from the
seed) are byte-identical between runs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rgops.config import to_dict
from rgops.data.genomics import CLINICAL_COLUMNS
from rgops.data.idc_reference import load_reference
from rgops.data.phantom import Geometry, Scanner, Tumour, render
from rgops.errors import CohortError, ConfigError

log = logging.getLogger(__name__)

COHORT_FORMAT = "rgops-cohort/1"
GENERATOR = "rgops.data.synth/1"

PROGRAMS: tuple[str, ...] = ("proliferation", "hypoxia", "emt", "egfr_signalling", "immune", "interferon")
IMAGING_LINKED: tuple[str, ...] = ("proliferation", "hypoxia", "emt", "egfr_signalling")
DECOYS: tuple[str, ...] = ("immune", "interferon")
PHENOTYPES: tuple[str, ...] = ("diameter_mm", "spiculation", "ggo_fraction", "necrosis", "heterogeneity",
                               "attenuation_hu")
PHENOTYPE_DRIVER: dict[str, str] = {
    "diameter_mm": "proliferation",
    "attenuation_hu": "proliferation",
    "necrosis": "hypoxia",
    "heterogeneity": "hypoxia",
    "spiculation": "emt",
    "ggo_fraction": "egfr_signalling",
}

# Real marker genes first in each module (published signatures: proliferation, hallmark hypoxia,
# EMT, EGFR/MAPK output, cytotoxic T cells, interferon response); the rest of a module and the
# genes outside modules get generated LOC-style names.
MARKERS: dict[str, tuple[str, ...]] = {
    "proliferation": ("MKI67", "TOP2A", "CCNB1", "CDK1", "BUB1", "AURKA", "PCNA", "MCM2", "TYMS", "CCNA2",
                      "BIRC5", "CENPF"),
    "hypoxia": ("CA9", "VEGFA", "SLC2A1", "PGK1", "LDHA", "BNIP3", "NDRG1", "ADM", "ANKRD37", "P4HA1",
                "EGLN3", "ENO1"),
    "emt": ("VIM", "SNAI2", "ZEB1", "TWIST1", "CDH2", "FN1", "SPARC", "COL1A1", "MMP2", "TGFBI", "SERPINE1",
            "ACTA2"),
    "egfr_signalling": ("EGFR", "DUSP6", "ERBB3", "SPRY4", "ETV4", "ETV5", "PHLDA1", "EREG", "AREG", "SPRY2",
                        "DUSP4", "ETV1"),
    "immune": ("CD8A", "GZMB", "CD3E", "PRF1", "CD2", "CXCL9", "CXCL13", "LCK", "NKG7", "GZMA", "CD8B",
               "IL2RG"),
    "interferon": ("ISG15", "IFIT1", "IFIT3", "MX1", "OAS1", "IFI44L", "RSAD2", "IFI6", "IFITM1", "STAT1",
                   "OAS2", "XAF1"),
}
# Unrelated real genes (housekeeping and others) placed outside every module.
OTHER_GENES: tuple[str, ...] = ("ACTB", "GAPDH", "B2M", "RPLP0", "TBP", "HPRT1", "PGK2", "GUSB", "TFRC", "YWHAZ",
                                "SDHA", "HMBS", "UBC", "PPIA", "POLR2A", "KRAS", "TP53", "STK11", "KEAP1", "NKX2-1",
                                "NAPSA", "SFTPC", "KRT5", "TP63", "SOX2")

# Reconstruction kernels per manufacturer: (name, sharpness, blur mm). Sharpness (roughly the
# Siemens B-number) sets the noise: sharp kernels keep edges and amplify noise.
_KERNELS: dict[str, tuple[tuple[str, int, float], ...]] = {
    "GE MEDICAL SYSTEMS": (("STANDARD", 31, 0.77), ("LUNG", 70, 0.35), ("BONE", 60, 0.28)),
    "Philips": (("B", 31, 0.7), ("C", 45, 0.42), ("D", 60, 0.28)),
    "TOSHIBA": (("FC10", 31, 0.84), ("FC52", 60, 0.56)),
}

# Fictional institutions by patient-id prefix (the real collection has two sites).
_INSTITUTIONS: dict[str, tuple[str, str]] = {
    "R01": ("Palo Verde University Medical Center", "300 Pasteur Way, Palo Verde, CA 94305, USA"),
    "AMC": ("Mission Hills Veterans Health Care System", "3801 Miranda Blvd, Palo Verde, CA 94304, USA"),
}
_FIRST_M = ("James", "Robert", "John", "Michael", "David", "William", "Richard", "Joseph", "Thomas", "Charles",
            "Daniel", "Matthew", "Anthony", "Donald", "Paul", "Steven", "Kenneth", "George", "Edward", "Ronald")
_FIRST_F = ("Mary", "Patricia", "Linda", "Barbara", "Elizabeth", "Jennifer", "Maria", "Susan", "Margaret",
            "Dorothy", "Lisa", "Nancy", "Karen", "Betty", "Helen", "Sandra", "Donna", "Carol", "Ruth", "Sharon")
_LAST = ("Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez",
         "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore", "Jackson", "Martin",
         "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez", "Clark", "Ramirez", "Lewis", "Robinson",
         "Walker", "Young", "Allen", "King", "Wright", "Scott", "Torres", "Nguyen", "Hill", "Flores")
_STREETS = ("Oak St", "Maple Ave", "El Camino Real", "University Ave", "Alma St", "Middlefield Rd", "Page Mill Rd")

# Random streams: (seed, stream, patient index) keeps patients independent of cohort size.
_S_PATIENT, _S_RENDER, _S_PHI, _S_CLINICAL, _S_GENES, _S_GENE_NOISE, _S_MISSING = range(1, 8)


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of the synthetic cohort (params.yaml section ``synth``).

    Attributes:
        n_patients: number of patients.
        seed: random seed; the same seed gives byte-identical pixels, tables and UIDs.
        n_genes: genes in the expression table (at least all module genes).
        genes_per_module: genes loaded on each of the six programs.
        missing_fraction: fraction of expression cells left empty (at least one when > 0).
        image_size: rows = columns of every CT slice.
        field_of_view_mm: reconstruction diameter; pixel spacing = field_of_view_mm / image_size.
        slice_scale: real slice counts (NSCLC Radiogenomics) are multiplied by this for speed.
        min_slices, max_slices: bounds on the slice count; at least the tumour plus a margin is
            covered whenever max_slices allows.
        slice_thickness_mm: thicknesses to draw from uniformly; empty: the real distribution.
        phenotype_noise: standard deviation of the noise added to each phenotype's driver (in program
            units); larger makes the phenotypes harder to recover from the programs.
        expression_noise: standard deviation (log2 units) of module-gene noise.
        write_seg: write the DICOM SEG of the tumour.
    """

    n_patients: int = 150
    seed: int = 42
    n_genes: int = 2000
    genes_per_module: int = 40
    missing_fraction: float = 0.001
    image_size: int = 256
    field_of_view_mm: float = 360.0
    slice_scale: float = 0.06
    min_slices: int = 12
    max_slices: int = 32
    slice_thickness_mm: tuple[float, ...] = ()
    phenotype_noise: float = 0.35
    expression_noise: float = 0.6
    write_seg: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.n_patients >= 1, "n_patients", self.n_patients, ">= 1"),
            (self.genes_per_module >= 2, "genes_per_module", self.genes_per_module, ">= 2"),
            (self.n_genes >= len(PROGRAMS) * self.genes_per_module, "n_genes", self.n_genes,
             f">= {len(PROGRAMS)} x genes_per_module = {len(PROGRAMS) * self.genes_per_module}"),
            (0.0 <= self.missing_fraction < 0.5, "missing_fraction", self.missing_fraction, "in [0, 0.5)"),
            (32 <= self.image_size <= 1024, "image_size", self.image_size, "in [32, 1024]"),
            (100.0 <= self.field_of_view_mm <= 600.0, "field_of_view_mm", self.field_of_view_mm, "in [100, 600]"),
            (0.0 < self.slice_scale <= 1.0, "slice_scale", self.slice_scale, "in (0, 1]"),
            (1 <= self.min_slices <= self.max_slices, "min_slices", self.min_slices,
             f"in [1, max_slices={self.max_slices}]"),
            (all(0.3 <= t <= 10.0 for t in self.slice_thickness_mm), "slice_thickness_mm",
             list(self.slice_thickness_mm), "values in [0.3, 10] mm"),
            (0.0 <= self.phenotype_noise <= 5.0, "phenotype_noise", self.phenotype_noise, "in [0, 5]"),
            (0.0 < self.expression_noise <= 5.0, "expression_noise", self.expression_noise, "in (0, 5]"),
        ]
        for ok, key, value, expected in checks:
            if not ok:
                raise ConfigError(f"synth.{key}: got {value!r}, expected {expected}")

    @property
    def pixel_spacing_mm(self) -> float:
        return self.field_of_view_mm / self.image_size


# --------------------------------------------------------------------------------------------------
# Patients: programs, site, phenotypes


def _sigmoid(x: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def phenotypes_from_programs(z: np.ndarray, eps: np.ndarray) -> dict[str, np.ndarray]:
    """Phenotype parameters from programs: smooth, monotone, each driven by one imaging program.

    Args:
        z: ``(n, 6)`` program z-scores in :data:`PROGRAMS` order.
        eps: ``(n, 6)`` noise already scaled (program units), one column per phenotype in
            :data:`PHENOTYPES` order.

    Returns:
        phenotype name -> ``(n,)`` values.
    """
    p = {name: z[:, PROGRAMS.index(name)] for name in IMAGING_LINKED}
    e = {name: eps[:, j] for j, name in enumerate(PHENOTYPES)}
    return {
        "diameter_mm": 12.0 + 30.0 * _sigmoid(1.1 * (p["proliferation"] + e["diameter_mm"])),
        "spiculation": _sigmoid(1.4 * (p["emt"] + e["spiculation"]) - 0.2),
        "ggo_fraction": 0.6 * _sigmoid(1.4 * (p["egfr_signalling"] + e["ggo_fraction"]) - 0.6),
        "necrosis": _sigmoid(1.4 * (p["hypoxia"] + e["necrosis"]) - 0.3),
        "heterogeneity": 0.15 + 0.8 * _sigmoid(1.2 * (p["hypoxia"] + e["heterogeneity"])),
        "attenuation_hu": 35.0 + 22.0 * np.tanh(0.7 * (p["proliferation"] + e["attenuation_hu"])),
    }


def _choice(rng: np.random.Generator, shares: dict[str, float]) -> str:
    keys = list(shares)
    w = np.asarray([shares[k] for k in keys], dtype=np.float64)
    return keys[int(rng.choice(len(keys), p=w / w.sum()))]


def _kernel(manufacturer: str, rng: np.random.Generator, ref: dict[str, Any]) -> tuple[str, float, float]:
    """(kernel name, blur mm, noise HU) for a manufacturer."""
    if manufacturer.upper().startswith("SIEMENS"):
        name = _choice(rng, ref["siemens_kernels"]["shares"])
        sharp = int(name[1:3])
        blur = max(0.15, 1.3 - sharp / 55.0)
    else:
        kernels = _KERNELS.get(manufacturer, _KERNELS["GE MEDICAL SYSTEMS"])
        name, sharp, blur = kernels[int(rng.integers(len(kernels)))]
    noise = 8.0 + 0.42 * sharp
    return name, float(blur), float(noise)


def sample_patients(config: SynthConfig) -> pd.DataFrame:
    """Programs, site and phenotypes of every patient, without rendering anything.

    Returns:
        One row per patient: ``patient_id``, the six programs, the six phenotypes, ``site``, and the
        acquisition choices (``manufacturer``, ``model``, ``kernel``, ``blur_mm``, ``noise_hu``,
        ``slice_thickness_mm``, ``n_slices``).
    """
    ref = load_reference()
    n = config.n_patients
    z = np.empty((n, len(PROGRAMS)))
    eps = np.empty((n, len(PHENOTYPES)))
    rows: list[dict[str, Any]] = []
    prefix_count: dict[str, int] = {}
    real_q = np.asarray(ref["slices_per_series"]["quantiles"], dtype=np.float64)
    real_v = np.asarray(ref["slices_per_series"]["values"], dtype=np.float64)
    for i in range(n):
        rng = np.random.default_rng([config.seed, _S_PATIENT, i])
        z[i] = rng.standard_normal(len(PROGRAMS))
        eps[i] = rng.standard_normal(len(PHENOTYPES)) * config.phenotype_noise
        prefix = _choice(rng, ref["patient_id_prefixes"])
        prefix_count[prefix] = prefix_count.get(prefix, 0) + 1
        manufacturer = _choice(rng, ref["manufacturers"])
        if manufacturer == "Siemens Molecular Imaging":  # a PET/CT; its CT is a Siemens CT
            manufacturer = "SIEMENS"
        models = ref["models"].get(manufacturer)
        model = _choice(rng, models) if models else {"SIEMENS": "SOMATOM Definition AS",
                                                     "Philips": "Brilliance 64"}.get(manufacturer, "Aquilion")
        kernel, blur, noise = _kernel(manufacturer, rng, ref)
        if config.slice_thickness_mm:
            thickness = float(config.slice_thickness_mm[int(rng.integers(len(config.slice_thickness_mm)))])
        else:
            thickness = float(_choice(rng, ref["slice_thickness_mm"]["shares"]))
        real_slices = float(np.interp(rng.uniform(), real_q, real_v))
        rows.append({"patient_id": f"{prefix}-{prefix_count[prefix]:03d}", "manufacturer": manufacturer,
                     "model": model, "kernel": kernel, "blur_mm": round(blur, 3), "noise_hu": round(noise, 2),
                     "slice_thickness_mm": thickness, "real_slices": real_slices})
    df = pd.DataFrame(rows)
    for j, name in enumerate(PROGRAMS):
        df[name] = z[:, j]
    for name, values in phenotypes_from_programs(z, eps).items():
        df[name] = values
    # Cover the tumour body plus a margin when max_slices allows (thin slices may cut it, as a
    # limited z-range reconstruction would).
    reach = df["diameter_mm"] + 12.0
    needed = np.ceil(reach / df["slice_thickness_mm"]).astype(int)
    scaled = np.rint(df["real_slices"] * config.slice_scale).astype(int)
    df["n_slices"] = np.clip(np.maximum(scaled, needed), config.min_slices, config.max_slices)
    df["site"] = df["manufacturer"] + "|" + df["kernel"]
    return df.drop(columns="real_slices")


# --------------------------------------------------------------------------------------------------
# Expression


def gene_modules(config: SynthConfig) -> tuple[list[str], dict[str, list[str]]]:
    """The ordered gene list and the module membership (program -> genes)."""
    modules: dict[str, list[str]] = {}
    serial = 0
    for program in PROGRAMS:
        genes = list(MARKERS[program][: config.genes_per_module])
        while len(genes) < config.genes_per_module:
            serial += 1
            genes.append(f"LOC{100000 + serial}")
        modules[program] = genes
    genes = [g for program in PROGRAMS for g in modules[program]]
    others = list(OTHER_GENES[: config.n_genes - len(genes)])
    while len(genes) + len(others) < config.n_genes:
        serial += 1
        others.append(f"LOC{100000 + serial}")
    # Interleave modules and other genes so that table order says nothing about membership.
    order = np.random.default_rng([config.seed, _S_GENES, 0]).permutation(config.n_genes)
    all_genes = genes + others
    return [all_genes[k] for k in order], modules


def sample_expression(config: SynthConfig, programs: np.ndarray, sample_ids: list[str]) -> pd.DataFrame:
    """Raw, non-negative, log-normal expression: genes x samples, ``gene_symbol`` as first column.

    Module genes: ``log2(x + 1) = base + loading * z_program + noise``; other genes have no
    loading. Roughly one in five module genes is negatively loaded (repressed by its program).
    """
    genes, modules = gene_modules(config)
    index = {g: k for k, g in enumerate(genes)}
    grng = np.random.default_rng([config.seed, _S_GENES, 1])
    G = len(genes)
    base = np.clip(grng.normal(6.0, 2.0, G), 1.5, 13.0)
    sd = grng.uniform(0.25, 0.6, G)
    loading = np.zeros((G, len(PROGRAMS)))
    for k, program in enumerate(PROGRAMS):
        idx = [index[g] for g in modules[program]]
        sign = np.where(grng.uniform(size=len(idx)) < 0.2, -1.0, 1.0)
        sign[0] = 1.0  # the first marker (MKI67, CA9, ...) goes up with its program
        loading[idx, k] = sign * grng.uniform(0.7, 1.3, len(idx))
        sd[idx] = config.expression_noise * grng.uniform(0.8, 1.2, len(idx))
    n = len(sample_ids)
    noise = np.stack([np.random.default_rng([config.seed, _S_GENE_NOISE, i]).standard_normal(G) for i in range(n)],
                     axis=1) if n else np.zeros((G, 0))
    log2x = base[:, None] + loading @ programs.T + sd[:, None] * noise
    values = np.exp2(np.clip(log2x, 0.0, 18.0)) - 1.0
    if config.missing_fraction > 0 and n:
        mrng = np.random.default_rng([config.seed, _S_MISSING, n])
        n_missing = max(1, int(round(config.missing_fraction * values.size)))
        flat = mrng.choice(values.size, size=n_missing, replace=False)
        values.ravel()[flat] = np.nan
    table = pd.DataFrame(np.round(values, 3), columns=sample_ids)
    table.insert(0, "gene_symbol", genes)
    return table


# --------------------------------------------------------------------------------------------------
# Clinical and PHI


def sample_clinical(config: SynthConfig, patients: pd.DataFrame) -> pd.DataFrame:
    """Clinical table, partly driven by the programs (EGFR mutation, survival)."""
    ref = load_reference()
    rows = []
    for i, p in enumerate(patients.itertuples(index=False)):
        rng = np.random.default_rng([config.seed, _S_CLINICAL, i])
        age = int(np.clip(round(rng.normal(ref["age"]["mean"], ref["age"]["std"])), 35, 95))
        sex = _choice(rng, ref["sex"])
        smoking = _choice(rng, {"never": 0.17, "former": 0.62, "current": 0.21})
        pack_years = 0.0 if smoking == "never" else round(float(rng.gamma(3.0, 12.0)), 1)
        histology = _choice(rng, {"adenocarcinoma": 0.72, "squamous cell carcinoma": 0.2 + 0.1 * (smoking == "current"),
                                  "NSCLC NOS": 0.05})
        egfr_logit = -2.0 + 1.4 * p.egfr_signalling + 1.3 * (smoking == "never") + 0.5 * (histology == "adenocarcinoma")
        egfr_mut = rng.uniform() < float(_sigmoid(egfr_logit))
        kras_mut = (not egfr_mut) and smoking != "never" and rng.uniform() < 0.3
        egfr = "unknown" if rng.uniform() < 0.08 else ("mutant" if egfr_mut else "wildtype")
        kras = "unknown" if rng.uniform() < 0.12 else ("mutant" if kras_mut else "wildtype")
        hazard = math.exp(math.log(1 / 48.0) + 0.55 * p.proliferation - 0.35 * p.immune + 0.01 * (age - 67))
        death = float(rng.exponential(1 / hazard))
        follow_up = float(rng.uniform(6.0, 96.0))
        rows.append({"patient_id": p.patient_id, "age": age, "sex": sex, "smoking_status": smoking,
                     "pack_years": pack_years, "histology": histology, "egfr_status": egfr, "kras_status": kras,
                     "survival_months": round(min(death, follow_up), 1), "event": int(death <= follow_up)})
    return pd.DataFrame(rows, columns=list(CLINICAL_COLUMNS))


@dataclass(frozen=True)
class _Phi:
    """Identifying header values of one patient (never written to the ground truth)."""

    name: str  # DICOM PN "Last^First"
    display: str  # "First Last"
    birth_date: str
    sex: str
    age: str
    mrn: str
    accession: str
    study_id: str
    study_date: str
    study_time: str
    institution: str
    institution_address: str
    patient_address: str
    phone: str
    referring: str
    operator: str


def _phi(config: SynthConfig, i: int, patient_id: str, age: int, sex: str) -> _Phi:
    ref = load_reference()
    rng = np.random.default_rng([config.seed, _S_PHI, i])
    first = (_FIRST_M if sex == "M" else _FIRST_F)[int(rng.integers(20))]
    last = _LAST[int(rng.integers(len(_LAST)))]
    lo = dt.date.fromisoformat(ref["study_dates"]["min"])
    hi = dt.date.fromisoformat(ref["study_dates"]["max"])
    study = lo + dt.timedelta(days=int(rng.integers((hi - lo).days + 1)))
    birth = study - dt.timedelta(days=int(age * 365.25 + rng.integers(0, 365)))
    inst, inst_addr = _INSTITUTIONS.get(patient_id.split("-")[0], next(iter(_INSTITUTIONS.values())))
    doc_first, doc_last = _FIRST_F[int(rng.integers(20))], _LAST[int(rng.integers(len(_LAST)))]
    op_first, op_last = _FIRST_M[int(rng.integers(20))], _LAST[int(rng.integers(len(_LAST)))]
    return _Phi(
        name=f"{last}^{first}", display=f"{first} {last}", birth_date=birth.strftime("%Y%m%d"), sex=sex,
        age=f"{age:03d}Y", mrn=f"{int(rng.integers(1_000_000, 9_999_999))}",
        accession=f"A{int(rng.integers(10_000_000, 99_999_999))}", study_id=f"{int(rng.integers(1000, 99999))}",
        study_date=study.strftime("%Y%m%d"),
        study_time=f"{int(rng.integers(7, 19)):02d}{int(rng.integers(60)):02d}{int(rng.integers(60)):02d}",
        institution=inst, institution_address=inst_addr,
        patient_address=f"{int(rng.integers(10, 9999))} {_STREETS[int(rng.integers(len(_STREETS)))]}, Palo Verde, CA",
        phone=f"(650) {int(rng.integers(200, 999))}-{int(rng.integers(1000, 9999))}",
        referring=f"{doc_last}^{doc_first}^^^Dr", operator=f"{op_last}^{op_first}",
    )


# --------------------------------------------------------------------------------------------------
# DICOM


_UID_NAMESPACE = uuid.UUID("5b0e7c1e-3a47-5d0b-9a0e-72676f707331")


def _uid(config: SynthConfig, *parts: object) -> str:
    # A name-based (v5) UUID under the 2.25 root: unique per (seed, parts), identical across runs.
    name = "|".join([GENERATOR, str(config.seed), *map(str, parts)])
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"


def _file_name(uid: str) -> str:
    # A hash of the UID: unique, stable, and unrelated to slice order (as in real exports).
    return hashlib.sha1(uid.encode()).hexdigest()[:16] + ".dcm"


PRIVATE_GROUP = 0x0009
PRIVATE_CREATOR = "RGOPS SITE PACS"


def _patient_study_modules(ds: Any, config: SynthConfig, i: int, p: Any, phi: _Phi) -> None:
    """The attributes every slice of a patient's CT shares: patient (with planted PHI), study,
    equipment and acquisition."""
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = phi.study_date
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = phi.study_time
    ds.AccessionNumber = phi.accession
    ds.Modality = "CT"
    ds.Manufacturer = p.manufacturer
    ds.InstitutionName = phi.institution
    ds.InstitutionAddress = phi.institution_address
    ds.ReferringPhysicianName = phi.referring
    ds.StationName = f"CT{1 + i % 3:02d}"
    ds.StudyDescription = "CT CHEST WITH CONTRAST"
    ds.SeriesDescription = f"{p.slice_thickness_mm:g}mm CHEST {p.kernel}"
    ds.OperatorsName = phi.operator
    ds.ManufacturerModelName = p.model
    ds.PatientName = phi.name
    ds.PatientID = p.patient_id
    ds.PatientBirthDate = phi.birth_date
    ds.PatientSex = phi.sex
    ds.OtherPatientIDs = f"MRN{phi.mrn}"
    ds.PatientAge = phi.age
    ds.PatientAddress = phi.patient_address
    ds.PatientTelephoneNumbers = phi.phone
    ds.PatientComments = f"{phi.display}, DOB {phi.birth_date}, MRN {phi.mrn}; contrast allergy: none"
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = f"{p.slice_thickness_mm:g}"
    ds.KVP = "120"
    ds.SpacingBetweenSlices = f"{p.slice_thickness_mm:g}"
    ds.DataCollectionDiameter = f"{config.field_of_view_mm + 140:g}"
    ds.ReconstructionDiameter = f"{config.field_of_view_mm:g}"
    ds.ConvolutionKernel = p.kernel
    ds.PatientPosition = "HFS"


def _ct_datasets(config: SynthConfig, i: int, p: Any, phi: _Phi, hu: np.ndarray) -> list[Any]:
    """One pydicom Dataset per slice (CT Image Storage), slice k at z = -k * thickness."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    study_uid = _uid(config, p.patient_id, "study")
    series_uid = _uid(config, p.patient_id, "series")
    frame_uid = _uid(config, p.patient_id, "frame")
    signed = p.manufacturer == "GE MEDICAL SYSTEMS"
    spacing = config.pixel_spacing_mm
    n, rows, cols = hu.shape
    origin = -(rows - 1) / 2 * spacing
    stored = (hu.astype(np.int32) + 1024).clip(0, 4095)
    stored = stored.astype(np.int16 if signed else np.uint16)
    out = []
    for k in range(n):
        sop_uid = _uid(config, p.patient_id, "ct", k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        _patient_study_modules(ds, config, i, p, phi)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = phi.study_id
        ds.SeriesNumber = 2
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        z = -k * p.slice_thickness_mm
        ds.ImagePositionPatient = [f"{origin:.10g}", f"{origin:.10g}", f"{z:.10g}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = f"{z:.10g}"
        ds.ImageComments = f"Staging CT for {phi.display} ({phi.mrn}), RUL/LUL nodule follow-up"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = cols
        ds.PixelSpacing = [f"{spacing:.10g}", f"{spacing:.10g}"]
        ds.BitsAllocated = 16
        ds.BitsStored = 16 if signed else 12
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 1 if signed else 0
        ds.WindowCenter = "-600"
        ds.WindowWidth = "1500"
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
        block.add_new(0x01, "LO", phi.mrn)
        block.add_new(0x02, "LO", phi.display)
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        out.append(ds)
    return out


def _seg_dataset(config: SynthConfig, p: Any, phi: _Phi, sources: list[Any], mask: np.ndarray) -> Any:
    """The DICOM SEG (binary, one segment "Tumor") of the tumour slices, referencing ``sources``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    desc = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Tumor",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[desc],
        series_instance_uid=_uid(config, p.patient_id, "seg-series"),
        series_number=300,
        sop_instance_uid=_uid(config, p.patient_id, "seg"),
        instance_number=1,
        manufacturer="rgops",
        manufacturer_model_name="rgops synth",
        software_versions=GENERATOR,
        device_serial_number="0",
        series_description="Tumor segmentation",
        omit_empty_frames=True,
    )
    # highdicom stamps "now" (creation, content, contribution) and random dimension-organisation
    # UIDs; pin them so a seed gives byte-identical files.
    seg.InstanceCreationDate = seg.ContentDate = seg.SeriesDate = phi.study_date
    seg.InstanceCreationTime = seg.ContentTime = seg.SeriesTime = phi.study_time
    dim_uid = _uid(config, p.patient_id, "seg-dimension")

    def pin(ds: Any) -> None:
        for elem in ds:
            if elem.keyword == "DimensionOrganizationUID":
                elem.value = dim_uid
            elif elem.keyword == "ContributionDateTime":
                elem.value = phi.study_date + phi.study_time
            elif elem.VR == "SQ":
                for item in elem.value:
                    pin(item)

    pin(seg)
    return seg


# --------------------------------------------------------------------------------------------------
# The cohort


_IN_PROGRESS = ".rgops-synth-in-progress"


def _prepare(folder: Path, marker: str, overwrite: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise CohortError(f"{str(folder)!r} exists and is not a folder; choose another output path")
    if folder.is_dir() and any(folder.iterdir()):
        if not overwrite:
            raise CohortError(f"output folder {str(folder)!r} is not empty; choose an empty or new folder, "
                              "or pass --force to replace a cohort written before")
        # A run that stopped half-way leaves the in-progress marker instead of the final one.
        if not (folder / marker).is_file() and not (folder / _IN_PROGRESS).is_file():
            raise CohortError(f"refusing to replace {str(folder)!r}: it is not empty and has no {marker}, so it "
                              "was not written by `rgops synth`; remove it yourself or choose another path")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)


def default_truth_dir(out: Path) -> Path:
    """``<out>-truth`` beside the cohort folder."""
    out = Path(out)
    return out.with_name(out.name + "-truth")


def generate_cohort(
    out: Path,
    config: SynthConfig,
    truth_out: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a synthetic cohort to ``out`` and its ground truth to ``truth_out``.

    Args:
        out: the cohort folder (created; must be empty or absent unless ``overwrite``).
        config: generator parameters.
        truth_out: where the ground truth goes; default ``<out>-truth`` beside ``out``.
        progress: called as ``progress(done, total)`` after each patient.
        overwrite: replace ``out``/``truth_out`` if they hold a cohort/truth written before.

    Returns:
        ``{"patients", "series", "instances", "genes", "seconds", "out", "truth_out"}``.

    Raises:
        CohortError: an output folder is not empty (and not a previous cohort with ``overwrite``).
    """
    t0 = time.perf_counter()
    out = Path(out)
    truth = Path(truth_out) if truth_out is not None else default_truth_dir(out)
    if truth.resolve() == out.resolve() or out.resolve() in truth.resolve().parents:
        raise CohortError(f"ground truth folder {str(truth)!r} must not be inside the cohort {str(out)!r}; "
                          "ingest must never see the truth")
    _prepare(out, "cohort.json", overwrite)
    _prepare(truth, "ground_truth.json", overwrite)
    for folder in (out, truth):
        (folder / _IN_PROGRESS).touch()

    patients = sample_patients(config)
    clinical = sample_clinical(config, patients)
    n = len(patients)
    instances = 0
    for i, p in enumerate(patients.itertuples(index=False)):
        instances += _write_patient(out, config, i, p, clinical.iloc[i])
        if progress is not None:
            progress(i + 1, n)
    series = n  # one CT series per patient
    _write_tables(out, truth, config, patients, clinical)
    for folder in (out, truth):
        (folder / _IN_PROGRESS).unlink()
    seconds = time.perf_counter() - t0
    log.info("synthetic cohort: %d patients, %d series, %d instances, %d genes in %.1f s -> %s (truth %s)",
             n, series, instances, config.n_genes, seconds, out, truth)
    return {"patients": n, "series": series, "instances": instances, "genes": config.n_genes,
            "seconds": round(seconds, 2), "out": str(out), "truth_out": str(truth)}


def _write_patient(out: Path, config: SynthConfig, i: int, p: Any, clinical_row: pd.Series) -> int:
    """Render patient ``i`` and write its CT series (and SEG); returns the number of instances written."""
    phi = _phi(config, i, p.patient_id, int(clinical_row["age"]), str(clinical_row["sex"]))
    geom = Geometry(config.image_size, int(p.n_slices), config.pixel_spacing_mm, float(p.slice_thickness_mm))
    tumour = Tumour(*(float(getattr(p, name)) for name in ("diameter_mm", "spiculation", "ggo_fraction",
                                                             "necrosis", "heterogeneity", "attenuation_hu")))
    hu, mask = render(geom, tumour, Scanner(float(p.blur_mm), float(p.noise_hu)),
                      np.random.default_rng([config.seed, _S_RENDER, i]))
    datasets = _ct_datasets(config, i, p, phi, hu)
    series_dir = out / "ct" / p.patient_id / datasets[0].SeriesInstanceUID
    series_dir.mkdir(parents=True)
    for ds in datasets:
        ds.save_as(series_dir / _file_name(ds.SOPInstanceUID), enforce_file_format=True)
    if config.write_seg and mask.any():
        seg = _seg_dataset(config, p, phi, datasets, mask)
        seg_dir = out / "ct" / p.patient_id / "seg"
        seg_dir.mkdir()
        seg.save_as(seg_dir / _file_name(seg.SOPInstanceUID), enforce_file_format=True)
        return len(datasets) + 1
    if config.write_seg:
        log.warning("patient %s: tumour fell outside the volume, no SEG written", p.patient_id)
    return len(datasets)


def _write_tables(out: Path, truth: Path, config: SynthConfig, patients: pd.DataFrame, clinical: pd.DataFrame
                  ) -> None:
    """genes.tsv, clinical.csv and cohort.json into the cohort; the ground truth into ``truth``."""
    z = patients[list(PROGRAMS)].to_numpy()
    genes = sample_expression(config, z, list(patients["patient_id"]))
    genes.to_csv(out / "genes.tsv", sep="\t", index=False, float_format="%.3f", na_rep="", lineterminator="\n")
    clinical.to_csv(out / "clinical.csv", index=False, lineterminator="\n")
    (out / "cohort.json").write_text(json.dumps({
        "format": COHORT_FORMAT, "generator": GENERATOR, "seed": config.seed, "n_patients": len(patients),
        "n_genes": config.n_genes, "config": to_dict(config),
    }, indent=2) + "\n")
    _, modules = gene_modules(config)
    (truth / "ground_truth.json").write_text(json.dumps({
        "format": "rgops-truth/1", "generator": GENERATOR, "seed": config.seed,
        "programs": list(PROGRAMS), "imaging_linked": list(IMAGING_LINKED), "decoys": list(DECOYS),
        "modules": modules, "phenotypes": dict(PHENOTYPE_DRIVER),
    }, indent=2) + "\n")
    cols = ["patient_id", *PROGRAMS, *PHENOTYPES, "site"]
    patients[cols].to_csv(truth / "patients.csv", index=False, float_format="%.6g", lineterminator="\n")


def synth_config(params: str | Path | None = None, **overrides: Any) -> SynthConfig:
    """The ``synth`` section of a params file, with overrides (``None`` values are ignored).

    Args:
        params: a params YAML; ``None`` reads ``./params.yaml`` if it exists, else uses defaults.
        overrides: field -> value, e.g. ``n_patients=8`` from the command line.

    Raises:
        ConfigError: the file or a value does not fit (unknown key, wrong type, out of range).
    """
    from rgops.config import DEFAULT_PARAMS, from_dict, load_params

    data: dict[str, Any] = {}
    if params is not None or DEFAULT_PARAMS.is_file():
        loaded = load_params(params if params is not None else DEFAULT_PARAMS)
        section = loaded.get("synth", {})
        if not isinstance(section, dict):
            raise ConfigError(f"params section 'synth' must be a mapping, got {type(section).__name__}")
        data.update(section)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(SynthConfig, data, "synth")


def check_params(params: dict[str, Any]) -> SynthConfig:
    """Read the ``synth`` section of a params mapping (unknown keys and wrong types refused)."""
    from rgops.config import from_dict

    data = params.get("synth") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"params section 'synth' must be a mapping, got {type(data).__name__}")
    return from_dict(SynthConfig, data, "synth")
