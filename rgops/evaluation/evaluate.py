"""``rgops evaluate``: radiogenomic and image metrics of trained models against baselines.

One call, :func:`evaluate`, takes an ingested datasets folder, the image encoders to compare
(trained CAEs, the unconditional AE, and always the pyradiomics baseline), optionally the GAN and
the synthetic cohort's ground truth, and returns a flat mapping of metrics with stable names
(``<set>.cv_r2.mean``, ``<set>.cca1``, ``<set>.sig_pairs``, ``<set>.program_recall``, ``gan.frechet``,
...) plus the tables and images the report draws. :func:`write_outputs` writes ``evaluation.json``,
the report and the figures.

Honesty rules it keeps:

- association is measured only on patients the models did not train on (``cfg.splits``, by default
  val + test), one row per patient, and only out of fold (nested CV for ridge, CCA fitted on train
  folds);
- every feature set is compared at equal dimensionality (radiomics is reduced by PCA, fitted on the
  image side only);
- an encoder conditioned on genes at its input (``conditioning="encoder"``) is given the training-mean
  profile (zeros), not the patient's own: otherwise the "image" biomarker would carry the very genes it
  is scored on;
- the ground-truth file is read only here, never by ingest or training.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from rgops.config import from_dict, section
from rgops.data.datasets import Datasets
from rgops.errors import CohortError, ConfigError, ShapeError
from rgops.evaluation import association as A
from rgops.evaluation import image_metrics as M
from rgops.evaluation import probe as P
from rgops.evaluation.handcrafted import handcrafted_features
from rgops.evaluation.protocol import PatientSplit, ProbeConfig, check_cohort, per_patient, probe_metrics
from rgops.evaluation.radiomics import RadiomicsConfig, extract_radiomics
from rgops.evaluation.result import EvaluationResult

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
RADIOMICS = "radiomics"
HANDCRAFTED = "handcrafted"
ORACLE = "oracle"


@dataclass(frozen=True)
class EvaluateConfig:
    """params.yaml ``evaluate``.

    Attributes:
        splits: patient splits the association metrics are measured on (patients unseen in training).
        n_splits: outer folds of the patient-level cross-validation.
        inner_splits: inner folds choosing the ridge penalty on each training fold.
        alphas: ridge penalties to choose from.
        cca_reg: shrinkage of the CCA covariances towards the identity.
        fdr_q: Benjamini-Hochberg level for significant pairs and program recovery.
        n_gene_pcs: gene principal components used as targets (always for CCA; for R^2 and the map
            when there is no ground truth).
        equal_dim: dimensionality every feature set is reduced to (PCA); 0 = the smallest encoder's.
        seed: folds, splits and sampling.
        batch_size: encoder / generator batch.
        gan_feature_space: frozen features for the Frechet distance and consistency regressor:
            ``encoder`` (the first CAE given) or ``radiomics`` (whole-patch first-order + texture).
        diversity_profiles: profiles for the pairwise MS-SSIM diversity check.
        samples_per_profile: generated samples per profile for diversity.
        traversal_values: program levels (in gene z-score units) of the traversal strips.
        radiomics: pyradiomics settings.
        min_train_patients / min_held_out_patients: the smallest cohort the probe protocol accepts;
            checked before any training (:func:`rgops.evaluation.protocol.check_cohort`).
        probe_alphas / probe_inner_splits: the probe's ridge penalties and inner CV folds.
        n_boot / level: bootstrap resamples of held-out patients and interval coverage.
    """

    splits: tuple[str, ...] = ("val", "test")
    n_splits: int = 5
    inner_splits: int = 3
    alphas: tuple[float, ...] = A.DEFAULT_ALPHAS
    cca_reg: float = 0.1
    fdr_q: float = 0.05
    n_gene_pcs: int = 5
    equal_dim: int = 0
    seed: int = 0
    batch_size: int = 64
    gan_feature_space: Literal["encoder", "radiomics"] = "encoder"
    diversity_profiles: int = 4
    samples_per_profile: int = 8
    traversal_values: tuple[float, ...] = (-2.0, -1.0, 0.0, 1.0, 2.0)
    radiomics: RadiomicsConfig = field(default_factory=RadiomicsConfig)
    min_train_patients: int = P.MIN_TRAIN
    min_held_out_patients: int = P.MIN_HELD_OUT
    probe_alphas: tuple[float, ...] = P.DEFAULT_ALPHAS
    probe_inner_splits: int = 5
    n_boot: int = 1000
    level: float = 0.9

    def probe(self) -> ProbeConfig:
        """The probe protocol's settings."""
        return ProbeConfig(self.probe_alphas, self.probe_inner_splits, self.n_boot, self.level, self.seed,
                           self.min_train_patients, self.min_held_out_patients)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "EvaluateConfig":
        """Read the ``evaluate`` section of a loaded params.yaml (absent section -> defaults)."""
        data = section(dict(params), "evaluate") if "evaluate" in params else {}
        return from_dict(cls, data, "evaluate")


@dataclass(frozen=True)
class GroundTruth:
    """The synthetic generator's truth, rows keyed by pseudonymous id (see docs/architecture.md)."""

    programs: tuple[str, ...]
    imaging_linked: tuple[str, ...]
    decoys: tuple[str, ...]
    modules: dict[str, tuple[str, ...]]
    phenotypes: dict[str, str]
    table: pd.DataFrame  # index pseudo_id; one column per program and per phenotype parameter

    @classmethod
    def load(cls, truth_dir: str | Path, key: bytes) -> "GroundTruth":
        """Read ``ground_truth.json`` and ``patients.csv``, pseudonymising ``patient_id`` with ``key``.

        Raises:
            CohortError: a file is missing or lacks a documented key/column.
        """
        from rgops.data.pseudonym import pseudonymize

        root = Path(truth_dir)
        gt_path, pt_path = root / "ground_truth.json", root / "patients.csv"
        for p in (gt_path, pt_path):
            if not p.is_file():
                raise CohortError(f"ground truth file {str(p)!r} not found; `rgops synth` writes it to COHORT-truth/")
        gt = json.loads(gt_path.read_text())
        missing = [k for k in ("programs", "imaging_linked", "decoys", "modules", "phenotypes") if k not in gt]
        if missing:
            raise CohortError(f"{gt_path} lacks the keys {missing}; regenerate the cohort with `rgops synth`")
        table = pd.read_csv(pt_path)
        need = ["patient_id", *gt["programs"], *gt["phenotypes"]]
        absent = [c for c in need if c not in table.columns]
        if absent:
            raise CohortError(f"{pt_path} lacks the columns {absent}; regenerate the cohort with `rgops synth`")
        table.index = [pseudonymize(str(pid), key) for pid in table["patient_id"]]
        table.index.name = "pseudo_id"
        table = table.drop(columns=["patient_id"])
        return cls(tuple(gt["programs"]), tuple(gt["imaging_linked"]), tuple(gt["decoys"]),
                   {k: tuple(v) for k, v in gt["modules"].items()}, dict(gt["phenotypes"]), table)


def truth_dir_for(cohort: str | Path) -> Path:
    """``COHORT-truth`` beside ``COHORT``, where ``rgops synth`` writes the ground truth."""
    p = Path(cohort).resolve()
    return p.parent / f"{p.name}-truth"


# --- image features ------------------------------------------------------------------------------


def encode(model: Any, patches: np.ndarray, batch_size: int = 64, mm_per_px: np.ndarray | None = None) -> np.ndarray:
    """Latent vectors ``(N, latent_dim)`` of a :class:`~rgops.models.cae.ConditionalAE`.

    With ``conditioning="encoder"`` the encoder is given the training-mean profile (zeros after
    z-scoring) rather than the patient's genes, so the biomarker is a function of the image alone.
    A CAE that reads the patch scale gets ``log2(mm_per_px)`` of each patch (required then).
    """
    import torch

    from rgops.data.patch import log_scale

    device = next(model.parameters()).device
    needs_genes = getattr(model.config, "conditioning", "none") == "encoder"
    reads_scale = bool(getattr(model.config, "scale_input", False))
    if reads_scale and mm_per_px is None:
        raise ShapeError("this CAE reads each patch's scale; pass mm_per_px (the datasets' manifest has it)")
    scale = log_scale(mm_per_px) if reads_scale else None
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for i in range(0, len(patches), batch_size):
                x = torch.as_tensor(np.asarray(patches[i : i + batch_size]), dtype=torch.float32, device=device)
                g = torch.zeros(len(x), model.config.n_genes, device=device) if needs_genes else None
                sc = torch.as_tensor(scale[i : i + batch_size], device=device) if scale is not None else None
                out.append(model.encode(x, g, sc).float().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out).astype(np.float64)


def _spacing(ds: Datasets) -> np.ndarray:
    m = ds.manifest
    if {"pixel_spacing_mm", "crop_side_px"} <= set(m.columns):
        return m["pixel_spacing_mm"].to_numpy(float) * m["crop_side_px"].to_numpy(float) / ds.size
    log.info("manifest has no pixel spacing/crop side: radiomics shape features are in pixels")
    return np.ones(len(ds))


# --- association ---------------------------------------------------------------------------------


def associate(
    features: np.ndarray,
    targets: np.ndarray,
    target_names: Sequence[str],
    expr: np.ndarray,
    genes: Sequence[str],
    cfg: EvaluateConfig,
    gene_pcs: np.ndarray,
    truth: GroundTruth | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """All association metrics of one feature set (one row per held-out patient).

    Returns:
        ``(metrics, detail)``: metrics named without the feature-set prefix (``cv_r2.mean``,
        ``cca1``, ``sig_pairs``, ...); detail holds the rho/q maps, out-of-fold predictions and
        enrichment table for the report.
    """
    m: dict[str, float] = {}
    pred = A.ridge_cv_predictions(features, targets, n_splits=cfg.n_splits, inner_splits=cfg.inner_splits,
                                  alphas=cfg.alphas, seed=cfg.seed)
    r2 = A.r2_score(targets, pred)
    for name, v in zip(target_names, r2):
        m[f"cv_r2.{name}"] = float(v)
    m["cv_r2.mean"] = float(np.mean(r2))
    m["cca1"] = A.heldout_cca(features, gene_pcs, n_splits=cfg.n_splits, reg=cfg.cca_reg, seed=cfg.seed)
    rho, p = A.spearman_map(features, targets)
    q = A.bh_fdr(p)
    m["sig_pairs"] = float((q < cfg.fdr_q).sum())
    detail: dict[str, Any] = {"rho": rho, "q": q, "pred": pred, "r2": r2}
    if truth is not None:
        rec = A.program_recovery(q, target_names, truth.imaging_linked, truth.decoys, cfg.fdr_q)
        m["program_recall"] = rec.recall
        m["program_precision"] = rec.precision
        linked = [j for j, n in enumerate(target_names) if n in truth.imaging_linked]
        m["cv_r2.linked_mean"] = float(np.mean(r2[linked])) if linked else 0.0
        detail["recovery"] = {"found": list(rec.found), "false_links": list(rec.false_links),
                              "missed": list(rec.missed)}
        # Gene-set view: split patients by each image feature, moderated t over genes, module test.
        rows, pvals = [], []
        for f in range(features.shape[1]):
            res = A.feature_split_enrichment(features[:, f], expr, genes, truth.modules)
            for mod, r in res.items():
                rows.append({"feature": f, "module": mod, "mean_t": r["mean_t"], "p": r["p"]})
                pvals.append(r["p"])
        if rows:
            qs = A.bh_fdr(np.array(pvals))  # across all feature x module tests of this set
            for r, qv in zip(rows, qs):
                r["q"] = float(qv)
            enr = pd.DataFrame(rows)
            m["enriched_pairs"] = float((enr["q"] < cfg.fdr_q).sum())
            hit = set(enr.loc[enr["q"] < cfg.fdr_q, "module"])
            m["enrichment_recall"] = len(hit & set(truth.imaging_linked)) / max(len(truth.imaging_linked), 1)
            m["enrichment_false_links"] = float(len(hit & set(truth.decoys)))
            detail["enrichment"] = enr.sort_values("p").head(20)
    return m, detail


def _equal_dim(sets: dict[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
    return {name: A.pca_reduce(x, k)[0] for name, x in sets.items()}


def fit_program_head(latent: np.ndarray, targets: np.ndarray, names: Sequence[str],
                     cfg: EvaluateConfig) -> dict[str, Any]:
    """A linear map raw latent -> program scores for serving (:class:`rgops.models.program_head.ProgramHead`
    JSON, checked by building the head).

    Ridge with the penalty chosen by inner CV, fitted on standardised latents of *training*
    patients and folded back to raw-latent coefficients: ``scores = latent @ coef.T + intercept``.
    """
    fit = A.fit_ridge(latent, targets, alphas=cfg.alphas, inner_splits=cfg.inner_splits, seed=cfg.seed)
    from rgops.models.program_head import ProgramHead

    coef, intercept = fit.raw_coefficients()
    return ProgramHead(tuple(names), np.asarray(coef, dtype=np.float64),
                       np.asarray(intercept, dtype=np.float64)).to_json()


# --- GAN -----------------------------------------------------------------------------------------


def _generate(generator: Any, genes: np.ndarray, z: Any, batch_size: int) -> np.ndarray:
    import torch

    device = next(generator.parameters()).device
    was_training = generator.training
    generator.eval()
    out = []
    try:
        with torch.no_grad():
            for i in range(0, len(genes), batch_size):
                g = torch.as_tensor(genes[i : i + batch_size], dtype=torch.float32, device=device)
                out.append(generator(z[i : i + batch_size].to(device), g).float().cpu().numpy())
    finally:
        generator.train(was_training)
    return np.concatenate(out)


def _noise(n: int, z_dim: int, seed: int):  # noqa: ANN202 - torch tensor
    import torch

    return torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed))


def _scales(generator: Any, genes: np.ndarray, fallback: float) -> np.ndarray:
    """mm per pixel of the patches generated for ``genes`` ``(n, G)``: the generator's scale head,
    else ``fallback`` for every patch (a generator without one cannot show absolute size)."""
    import torch

    if not getattr(generator.config, "scale_head", False):
        return np.full(len(genes), fallback)
    device = next(generator.parameters()).device
    with torch.no_grad():
        g = torch.as_tensor(np.asarray(genes), dtype=torch.float32, device=device)
        return np.exp2(generator.log_scale(g).float().cpu().numpy().astype(np.float64))


@dataclass(frozen=True)
class Programs:
    """The programs behind the targets' columns: ``names`` (one per column), which of them drive an
    imaging phenotype (``linked``), which are ``decoys``, and the measure each linked one moves
    (``links``: program -> (measure, sign), :func:`rgops.evaluation.phenotype.program_links`)."""

    names: tuple[str, ...]
    linked: tuple[str, ...]
    decoys: tuple[str, ...]
    links: Mapping[str, tuple[str, float]]


def phenotype_metrics(
    generator: Any,
    ds: Datasets,
    eval_rows: np.ndarray,
    train_rows: np.ndarray,
    target_rows: Callable[[np.ndarray], np.ndarray],
    programs: Programs,
    directions: Mapping[str, np.ndarray],
    cfg: EvaluateConfig,
) -> dict[str, float]:
    """Phenotypes measured on generated images against the programs that were asked for.

    For each held-out patient's profile, ``cfg.samples_per_profile`` images are generated, measured
    (:mod:`rgops.evaluation.phenotype`, at the generator's predicted mm/px) and averaged; the
    Spearman of each measure with its driving program across patients is ``gan.phenotype_rho.*``.
    The patients' own real patches, measured the same way (mean over their slices), give the
    reference ``real.phenotype_rho.*``. Along each program's traversal (gene z-score levels
    ``cfg.traversal_values``, 4 noise draws per level, averaged) the Spearman of the measure with the
    level is ``gan.strip_rho.*``.
    """
    from rgops.evaluation import phenotype as PH
    from rgops.evaluation.protocol import per_patient

    z_dim, k = generator.config.z_dim, max(1, cfg.samples_per_profile)
    pid = ds.patient_ids
    patients = list(dict.fromkeys(pid[eval_rows]))
    first = np.array([eval_rows[np.flatnonzero(pid[eval_rows] == p)[0]] for p in patients])
    fallback = float(np.median(ds.mm_per_px[train_rows])) if len(train_rows) else float(np.median(ds.mm_per_px))
    m: dict[str, float] = {}
    want = target_rows(first)  # (P, K) the requested programs of each held-out profile
    genes = np.repeat(ds.genes[first], k, axis=0)  # (P * k, G), k draws of each profile
    imgs = _generate(generator, genes, _noise(len(genes), z_dim, cfg.seed + 2), cfg.batch_size)
    meas = PH.measure_batch(ds.spec.to_hu(imgs), _scales(generator, genes, fallback))
    gen_meas = meas.reshape(len(first), k, -1).mean(axis=1)
    m.update(PH.phenotype_rho(gen_meas, want, programs.names, programs.linked, programs.decoys, "gan.phenotype_rho",
                              programs.links))
    real = PH.measure_batch(ds.spec.to_hu(ds.patches[eval_rows]), ds.mm_per_px[eval_rows])
    real_pp = per_patient(pid[eval_rows], real, patients)
    have = per_patient(pid[eval_rows], target_rows(eval_rows), patients)
    m.update(PH.phenotype_rho(real_pp, have, programs.names, programs.linked, programs.decoys, "real.phenotype_rho",
                              programs.links))
    draws, levels = 4, np.asarray(cfg.traversal_values, dtype=np.float64)
    base = np.zeros(ds.genes.shape[1], dtype=np.float32)
    z = _noise(draws, z_dim, cfg.seed + 98).repeat_interleave(len(levels), dim=0)  # same draws at every level
    by_program = {}
    for name, d in directions.items():
        g = np.tile(M.traversal_profiles(base, d, levels), (draws, 1))  # (draws * L, G)
        strip_imgs = _generate(generator, g, z, cfg.batch_size)
        strip = PH.measure_batch(ds.spec.to_hu(strip_imgs), _scales(generator, g, fallback))
        by_program[name] = strip.reshape(draws, len(levels), -1).mean(axis=0)
    m.update(PH.strip_rho(by_program, levels, "gan.strip_rho", programs.links))
    return m


def gan_metrics(
    generator: Any,
    ds: Datasets,
    featurise: Callable[[np.ndarray], np.ndarray],
    train_rows: np.ndarray,
    eval_rows: np.ndarray,
    target_rows: Callable[[np.ndarray], np.ndarray],
    directions: Mapping[str, np.ndarray],
    cfg: EvaluateConfig,
    programs: Programs | None = None,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Frechet distance with its real-vs-real reference, conditional consistency, diversity,
    phenotype consistency and traversal strips of a :class:`~rgops.models.gan.Generator`.

    Features are standardised with the real patches' mean and standard deviation before the
    Frechet distance, so ``gan.frechet`` is in units of real-feature variance, whatever the space.

    Args:
        featurise: patches ``(n, 1, S, S)`` -> frozen features ``(n, d)``.
        train_rows / eval_rows: patch rows of training patients (the consistency regressor and the
            Frechet sets) and of held-out patients (conditioning profiles for consistency).
        target_rows: patch rows -> gene targets ``(n, K)`` (module scores or gene PCs).
        directions: program name -> gene-space direction for its traversal strip.
        programs: the programs behind ``target_rows``' columns (ground truth); with them the
            phenotype metrics of :func:`phenotype_metrics` are added (``gan.phenotype_rho.*``,
            ``gan.strip_rho.*``, ``real.phenotype_rho.*``).

    Returns:
        ``(metrics, strips)``: ``gan.*`` metrics and one ``(m, 1, S, S)`` strip per program.
        ``gan.diversity_ratio`` is ``(1 - gan.ms_ssim) / (1 - gan.ms_ssim_real)``: diversity among
        samples of one profile over diversity among real patches of different patients (>= 0.6 wanted).
    """
    z_dim = generator.config.z_dim
    m: dict[str, float] = {}
    real_rows = np.concatenate([train_rows, eval_rows])
    raw_featurise = featurise
    raw_real = raw_featurise(ds.patches[real_rows])
    # Standardise every feature with the real images' statistics: radiomics features span ten orders
    # of magnitude (energy vs. ratios), and a fixed linear map applied to both sides keeps the
    # distance a distance while making it scale-free and comparable across feature spaces.
    mu = raw_real.mean(axis=0)
    sd = np.where(raw_real.std(axis=0) < 1e-12, 1.0, raw_real.std(axis=0))

    def featurise(p: np.ndarray) -> np.ndarray:
        return (raw_featurise(p) - mu) / sd

    real_feats = (raw_real - mu) / sd
    a, b = M.split_reference(real_feats, seed=cfg.seed)
    # Generated for the profiles of half B, compared with half A: same n as the reference.
    fake = _generate(generator, ds.genes[real_rows[b]], _noise(len(b), z_dim, cfg.seed), cfg.batch_size)
    fake_feats = featurise(fake)
    m["gan.frechet"] = M.frechet_distance(real_feats[a], fake_feats)
    m["gan.frechet_ref"] = M.frechet_distance(real_feats[a], real_feats[b])
    m["gan.frechet_ratio"] = m["gan.frechet"] / max(m["gan.frechet_ref"], 1e-12)

    # Conditional consistency: regressor on real training images, applied to images generated from
    # held-out profiles, correlated with those profiles' programs.
    tr_x = real_feats[: len(train_rows)]
    regressor = A.fit_ridge(tr_x, target_rows(train_rows), alphas=cfg.alphas, inner_splits=cfg.inner_splits,
                            seed=cfg.seed)
    gen_eval = _generate(generator, ds.genes[eval_rows], _noise(len(eval_rows), z_dim, cfg.seed + 1), cfg.batch_size)
    cons = M.conditional_consistency(regressor.predict(featurise(gen_eval)), target_rows(eval_rows))
    m["gan.cond_consistency"] = float(np.mean(cons))
    # The same regressor on the real held-out images: the ceiling consistency can reach.
    pred_real = regressor.predict(featurise(ds.patches[eval_rows]))
    m["gan.cond_consistency_real"] = float(np.mean(M.conditional_consistency(pred_real, target_rows(eval_rows))))

    # Diversity: samples of one profile, pairwise MS-SSIM; the real patches of different patients
    # give the reference level.
    rng = np.random.default_rng(cfg.seed)
    profiles = rng.choice(eval_rows, size=min(cfg.diversity_profiles, len(eval_rows)), replace=False)
    scores = []
    for k, row in enumerate(profiles):
        g = np.repeat(ds.genes[row : row + 1], cfg.samples_per_profile, axis=0)
        imgs = _generate(generator, g, _noise(len(g), z_dim, cfg.seed + 10 + k), cfg.batch_size)
        scores.append(M.mean_pairwise_ms_ssim(imgs))
    m["gan.ms_ssim"] = float(np.mean(scores))
    m["gan.ms_ssim_real"] = M.mean_pairwise_ms_ssim(ds.patches[real_rows], seed=cfg.seed)
    m["gan.diversity_ratio"] = (1.0 - m["gan.ms_ssim"]) / max(1.0 - m["gan.ms_ssim_real"], 1e-12)
    if programs is not None:
        m.update(phenotype_metrics(generator, ds, eval_rows, train_rows, target_rows, programs, directions, cfg))

    # Traversal strips: one noise vector for the whole strip, only the program moves.
    z_fixed = _noise(1, z_dim, cfg.seed + 99).expand(len(cfg.traversal_values), -1)
    base = np.zeros(ds.genes.shape[1], dtype=np.float32)  # the training-mean profile
    strips = {
        name: M.traversal_strip(lambda g: _generate(generator, g, z_fixed, cfg.batch_size), base, d,
                                cfg.traversal_values)
        for name, d in directions.items()
    }
    return m, strips


# --- the whole evaluation ------------------------------------------------------------------------


@dataclass
class _Targets:
    """Gene-side targets of every patch row and which of them the primary number averages."""

    names: list[str]
    rows: np.ndarray                # (N, T) for every patch row
    primary: list[str]
    pcs_rows: np.ndarray            # (N, k) gene PCs (CCA targets)
    pc_basis: np.ndarray            # (k, G)


def _targets(ds: Datasets, truth: GroundTruth | None, cfg: EvaluateConfig, info: dict[str, Any]) -> _Targets:
    """Module scores of the truth's programs (primary: the imaging-linked ones), or the top gene PCs."""
    expr_all = ds.genes.astype(np.float64)
    _, _, vt = np.linalg.svd(expr_all - expr_all.mean(axis=0), full_matrices=False)
    k = min(cfg.n_gene_pcs, vt.shape[0])
    pcs = (expr_all - expr_all.mean(axis=0)) @ vt[:k].T
    if truth is None:
        info["targets"] = "gene_pcs"
        names = [f"pc{i + 1}" for i in range(k)]
        return _Targets(names, pcs, names, pcs, vt[:k])
    info["targets"] = "module_scores"
    rows = A.module_scores(expr_all, list(ds.panel.genes), {p: truth.modules[p] for p in truth.programs})
    return _Targets(list(truth.programs), rows, list(truth.imaging_linked), pcs, vt[:k])


def _feature_sets(ds: Datasets, encoders: Mapping[str, Any], cfg: EvaluateConfig, report: Progress,
                  info: dict[str, Any]) -> dict[str, np.ndarray]:
    """Per-patch-row features of every set: the encoders, radiomics and the handcrafted baseline."""
    sets: dict[str, np.ndarray] = {}
    for i, (name, model) in enumerate(encoders.items()):
        report(f"encode {name}", i, len(encoders))
        sets[name] = encode(model, ds.patches, cfg.batch_size, ds.mm_per_px)
    report("radiomics", 0, len(ds))
    rad = extract_radiomics(ds.patches, ds.masks, _spacing(ds), cfg.radiomics,
                            progress=lambda d, t: report("radiomics", d, t), spec=ds.spec)
    info["radiomics_features"], info["radiomics_skipped"] = len(rad.names), len(rad.skipped)
    sets[RADIOMICS] = rad.imputed()
    report("handcrafted", 0, 1)
    hand, names = handcrafted_features(ds.spec.to_hu(ds.patches[:, 0]), ds.masks[:, 0] > 0, _spacing(ds))
    info["handcrafted_features"] = len(names)
    sets[HANDCRAFTED] = hand
    return sets


def _probe(sets: Mapping[str, np.ndarray], targets: _Targets, pid: np.ndarray, split: PatientSplit,
           encoders: Mapping[str, Any], truth: GroundTruth | None, cfg: EvaluateConfig
           ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """The primary protocol: probes fitted on training patients, scored on held-out patients."""
    tr = {n: per_patient(pid, x, split.train) for n, x in sets.items()}
    ho = {n: per_patient(pid, x, split.held_out) for n, x in sets.items()}
    if truth is not None:
        known = [p for p in split.train + split.held_out if p in truth.table.index]
        if set(split.train) <= set(known) and set(split.held_out) <= set(known):
            cols = list(truth.phenotypes)
            tr[ORACLE] = truth.table.loc[split.train, cols].to_numpy(float)
            ho[ORACLE] = truth.table.loc[split.held_out, cols].to_numpy(float)
        else:
            log.warning("%d patients have no ground-truth row: no oracle probe", len(split.train + split.held_out) - len(known))
    pairs = [(e, b) for e in encoders for b in (RADIOMICS, HANDCRAFTED)]
    pairs += [(e, o) for e in encoders for o in encoders if e != o]
    y_tr, y_ho = per_patient(pid, targets.rows, split.train), per_patient(pid, targets.rows, split.held_out)
    return probe_metrics(tr, ho, y_tr, y_ho, targets.names, targets.primary, pairs, cfg.probe())


def _secondary(sets: Mapping[str, np.ndarray], targets: _Targets, ds: Datasets, pid: np.ndarray,
               split: PatientSplit, truth: GroundTruth | None, cfg: EvaluateConfig, report: Progress
               ) -> tuple[dict[str, float], dict[str, dict[str, Any]], dict[str, list[str]], int]:
    """Secondary numbers on held-out patients only (within-held-out CV after an equal-dimension PCA,
    CCA, the Spearman map, program recovery, enrichment): names ``<set>.cv_r2.*``, ``<set>.cca1``, ..."""
    held = split.held_out
    y = per_patient(pid, targets.rows, held)
    expr = per_patient(pid, ds.genes, held)
    pcs = per_patient(pid, targets.pcs_rows, held)
    dims = [x.shape[1] for name, x in sets.items() if name not in (RADIOMICS, HANDCRAFTED)]
    k = cfg.equal_dim or (min(dims) if dims else min(32, sets[RADIOMICS].shape[1]))
    metrics: dict[str, float] = {}
    details: dict[str, dict[str, Any]] = {}
    labels: dict[str, list[str]] = {}
    for i, (name, x) in enumerate(sets.items()):
        report("associate", i, len(sets))
        native = per_patient(pid, x, held)
        reduced = A.pca_reduce(native, k)[0]
        m, d = associate(reduced, y, targets.names, expr, list(ds.panel.genes), cfg, pcs, truth)
        metrics.update({f"{name}.{key}": v for key, v in m.items()})
        details[name] = d
        labels[name] = [f"z{j + 1}" if native.shape[1] <= k else f"PC{j + 1}" for j in range(reduced.shape[1])]
    return metrics, details, labels, k


def _program_heads(sets: Mapping[str, np.ndarray], encoders: Mapping[str, Any], targets: _Targets, pid: np.ndarray,
                   split: PatientSplit, cfg: EvaluateConfig) -> dict[str, dict[str, Any]]:
    """The latent -> program map served with each encoder, fitted on training patients only."""
    if len(split.train) < 2 * cfg.inner_splits:
        if encoders:
            log.warning("only %d training patients: no program head fitted for serving", len(split.train))
        return {}
    y = per_patient(pid, targets.rows, split.train)
    return {name: fit_program_head(per_patient(pid, sets[name], split.train), y, targets.names, cfg)
            for name in encoders}


def evaluate(
    ds: Datasets,
    encoders: Mapping[str, Any] | None = None,
    gan: Any | None = None,
    truth: GroundTruth | None = None,
    cfg: EvaluateConfig | None = None,
    progress: Progress | None = None,
) -> EvaluationResult:
    """Evaluate image encoders (and a GAN) against radiomics, handcrafted features and the oracle.

    The primary numbers follow the probe protocol (:mod:`rgops.evaluation.protocol`): probes fitted
    on training patients, scored on held-out patients, with bootstrap intervals (``<set>.probe_r2.*``,
    ``<a>.probe_diff.<b>.*``). Within-held-out CV, CCA, the Spearman map and program recovery are
    secondary numbers (``<set>.cv_r2.*`` ...).

    Args:
        ds: the ingested datasets (several slices per patient: features are averaged per patient).
        encoders: name -> :class:`~rgops.models.cae.ConditionalAE` (e.g. ``{"cae": ..., "ae": ...}``);
            the name prefixes each metric. ``radiomics`` and ``handcrafted`` are always added.
        gan: a :class:`~rgops.models.gan.Generator`, or None to skip the ``gan.*`` metrics.
        truth: the synthetic cohort's ground truth; targets are then the module scores of its
            programs (primary: the imaging-linked ones) and the oracle is probed. Without it, targets
            are the top gene PCs.
        progress: called as ``progress(stage, done, total)``.

    Raises:
        EvaluationError: too few training or held-out patients for the protocol.
        ShapeError: the truth matches none of the held-out patients.
        ConfigError: an encoder is named like a baseline.
    """
    cfg = cfg or EvaluateConfig()
    encoders = dict(encoders or {})
    clash = sorted(set(encoders) & {RADIOMICS, HANDCRAFTED, "gan", ORACLE})
    if clash:
        raise ConfigError(f"encoder names {clash} are reserved; name them e.g. 'cae' and 'ae'")
    report = progress or (lambda stage, done, total: None)
    split = check_cohort(ds.manifest, cfg.splits, cfg.min_train_patients, cfg.min_held_out_patients)
    pid = ds.patient_ids
    info: dict[str, Any] = {"n_patients": len(split.held_out), "n_train_patients": len(split.train),
                            "n_patches": len(ds), "splits": list(cfg.splits), "n_genes": len(ds.panel),
                            "data_digest": ds.digest(), "patch_spec": ds.spec.to_json()}
    if truth is not None and not any(p in truth.table.index for p in split.held_out):
        raise ShapeError(
            "no held-out patient of the datasets is in the ground truth: the cohort was ingested with "
            "another pseudonymisation key or is another cohort (check RGOPS_PSEUDONYM_KEY and --cohort)")
    targets = _targets(ds, truth, cfg, info)
    sets = _feature_sets(ds, encoders, cfg, report, info)
    report("probe", 0, 1)
    metrics, _ = _probe(sets, targets, pid, split, encoders, truth, cfg)
    secondary, details, labels, info["equal_dim"] = _secondary(sets, targets, ds, pid, split, truth, cfg, report)
    metrics.update(secondary)
    heads = _program_heads(sets, encoders, targets, pid, split, cfg)
    strips: dict[str, np.ndarray] = {}
    if gan is not None:
        report("gan", 0, 1)
        gm, strips = _gan_step(gan, ds, encoders, targets, truth, cfg, info)
        metrics.update(gm)
        report("gan", 1, 1)
    held_targets = per_patient(pid, targets.rows, split.held_out)
    return EvaluationResult(metrics, info, details, targets.names, held_targets, strips, labels, heads)


def _gan_step(gan: Any, ds: Datasets, encoders: Mapping[str, Any], targets: _Targets, truth: GroundTruth | None,
              cfg: EvaluateConfig, info: dict[str, Any]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """``gan.*`` metrics in the configured feature space, with traversal directions per program."""
    split = ds.manifest["split"].to_numpy()
    eval_rows = np.flatnonzero(np.isin(split, cfg.splits))
    train_rows = np.flatnonzero(~np.isin(split, cfg.splits))
    if cfg.gan_feature_space == "encoder" and encoders:
        enc_name, enc = next(iter(encoders.items()))
        featurise = lambda p: encode(enc, p, cfg.batch_size, np.ones(len(p), np.float32))  # noqa: E731
        info["gan_feature_space"] = f"encoder:{enc_name}"
    else:
        whole = RadiomicsConfig(bin_width=cfg.radiomics.bin_width, feature_classes=("firstorder", "glcm", "glrlm", "ngtdm"))

        def featurise(p: np.ndarray) -> np.ndarray:
            return extract_radiomics(p, np.ones_like(p, dtype=np.uint8), None, whole, spec=ds.spec).imputed()

        info["gan_feature_space"] = "radiomics:whole_patch"
    genes = list(ds.panel.genes)
    if truth is not None:
        index = {g: i for i, g in enumerate(genes)}
        directions = {}
        for p in truth.programs:
            d = np.zeros(len(genes))
            d[[index[g] for g in truth.modules[p] if g in index]] = 1.0
            directions[p] = d
    else:  # a unit loading vector scaled by the PC's standard deviation: values are in SD units
        directions = {f"pc{i + 1}": targets.pc_basis[i] * targets.pcs_rows[:, i].std()
                      for i in range(min(3, len(targets.pc_basis)))}
    programs = None
    if truth is not None:
        from rgops.evaluation.phenotype import program_links

        programs = Programs(tuple(targets.names), tuple(truth.imaging_linked), tuple(truth.decoys),
                            program_links(truth.phenotypes))
    metrics, strips = gan_metrics(gan, ds, featurise, train_rows, eval_rows, lambda r: targets.rows[r], directions,
                                  cfg, programs)
    # Phenotype consistency needs a cohort's ground truth (which measure follows which program); the
    # gates read this flag to tell "not measurable on this cohort" from "missing" (rgops.promotion).
    metrics["gan.ground_truth"] = float(truth is not None)
    return metrics, strips


def write_outputs(result: EvaluationResult, out_json: str | Path, report_dir: str | Path,
                  cfg: EvaluateConfig | None = None) -> dict[str, Path]:
    """Write ``evaluation.json``, the markdown/HTML report and its figures.

    Returns:
        name -> path of every file written (``evaluation_json``, ``report_md``, ``report_html`` and
        each figure), for logging as artifacts.
    """
    from rgops.evaluation.report import write_report

    out_json = Path(out_json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result.to_json(), indent=2, sort_keys=True))
    files = {"evaluation_json": out_json}
    cfg = cfg or EvaluateConfig()
    files.update(write_report(result, report_dir, cfg.fdr_q, list(cfg.traversal_values)))
    return files


def run_evaluation(
    datasets: str | Path,
    encoder_uris: Mapping[str, str],
    gan_uri: str | None = None,
    cohort: str | Path | None = None,
    params: Mapping[str, Any] | None = None,
    out_json: str | Path = "evaluation.json",
    report_dir: str | Path = "reports/evaluation",
    log_to_mlflow: bool = True,
    progress: Progress | None = None,
) -> EvaluationResult:
    """What ``rgops evaluate`` does: load the datasets and logged models, evaluate, write the JSON
    and report, and log metrics and files to the MLflow run of every evaluated model. The ``cae``
    encoder's program head is also logged to its run (:func:`rgops.tracking.log_program_head`): a
    version registered from that run afterwards serves program scores.

    Args:
        encoder_uris: name -> model URI of a CAE-kind model (``models:/rgops-cae@challenger``,
            ``runs:/<id>/model``, ...); the name prefixes its metrics (``cae``, ``ae``, ...).
        gan_uri: model URI of the GAN, or None.
        cohort: the synthetic cohort folder; its ``COHORT-truth/`` supplies the ground truth.
        params: the loaded params.yaml (its ``evaluate`` section), or None for defaults.

    Raises:
        GeneMismatchError: a model's gene panel differs from the datasets'.
        ConfigError: a URI names a model of the wrong kind.
    """
    from rgops import tracking
    from rgops.data.pseudonym import load_key

    cfg = EvaluateConfig.from_params(params or {})
    ds = Datasets.load(datasets)
    loaded: dict[str, Any] = {}
    for name, uri in [*encoder_uris.items(), *([("gan", gan_uri)] if gan_uri else [])]:
        loaded[name] = tracking.load_logged_model(uri)
    truth = None
    if cohort is not None:
        tdir = truth_dir_for(cohort)
        if tdir.is_dir():
            truth = GroundTruth.load(tdir, load_key(create=False))
        else:
            log.info("no ground truth beside %s (looked for %s): real-data metrics only", cohort, tdir)
    uris = {**encoder_uris, **({"gan": gan_uri} if gan_uri else {})}
    return evaluate_and_log(ds, loaded, truth, cfg, out_json, report_dir, uris=uris,
                            log_to_mlflow=log_to_mlflow, progress=progress)


def check_models(ds: Datasets, models: Mapping[str, Any], uris: Mapping[str, str]) -> None:
    """Every model is of the kind its name says and was trained on the datasets' gene panel.

    Raises:
        ConfigError: a model given as ``gan`` is a CAE, or the other way round.
        GeneMismatchError: a model's gene panel differs from the datasets'.
    """
    from rgops.errors import GeneMismatchError

    for name, lm in models.items():
        uri = uris.get(name, name)
        want = "gan" if name == "gan" else "cae"
        if lm.kind != want:
            raise ConfigError(f"model {uri!r} given as {name!r} is a {lm.kind} model; expected a {want} model")
        if tuple(lm.panel.genes) != tuple(ds.panel.genes):
            missing = sorted(set(lm.panel.genes) ^ set(ds.panel.genes))[:10]
            raise GeneMismatchError(
                f"model {uri!r} was trained on a gene panel of {len(lm.panel.genes)} genes, the datasets have "
                f"{len(ds.panel.genes)} (differing: {missing or 'order only'}); evaluate on the datasets it was trained on")


def evaluate_and_log(
    ds: Datasets,
    models: Mapping[str, Any],
    truth: GroundTruth | None,
    cfg: EvaluateConfig,
    out_json: str | Path,
    report_dir: str | Path,
    uris: Mapping[str, str] | None = None,
    log_to_mlflow: bool = True,
    progress: Progress | None = None,
) -> EvaluationResult:
    """The one evaluate-and-log step (``rgops evaluate``, the DVC stage and the retrain flow).

    Evaluates the loaded models (name -> :class:`rgops.tracking.LoadedModel`; ``gan`` is the
    generator, every other name an encoder), writes ``evaluation.json`` and the report, logs every
    metric and file to the MLflow run of each evaluated model, and logs the ``cae`` encoder's
    program head to its run (a version registered from that run afterwards serves program scores).
    """
    from rgops import tracking

    check_models(ds, models, uris or {})
    encoders = {n: lm.module for n, lm in models.items() if n != "gan"}
    result = evaluate(ds, encoders, gan=models["gan"].module if "gan" in models else None, truth=truth, cfg=cfg,
                      progress=progress)
    result.info["models"] = {n: {"uri": (uris or {}).get(n), "run_id": lm.run_id, "weights_sha256": lm.weights_sha256}
                             for n, lm in models.items()}
    files = write_outputs(result, out_json, report_dir, cfg)
    if log_to_mlflow:
        heads_file = Path(report_dir) / "program_heads.json"
        heads_file.write_text(json.dumps(result.program_heads))
        files["program_heads"] = heads_file
        for run_id in dict.fromkeys(lm.run_id for lm in models.values()):
            tracking.log_evaluation(run_id, result.metrics, files, Path(report_dir))
        if "cae" in models and "cae" in result.program_heads:
            tracking.log_program_head(models["cae"].run_id, result.program_heads["cae"])
    return result
