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
from rgops.evaluation.radiomics import RadiomicsConfig, extract_radiomics

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
RADIOMICS = "radiomics"


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


def _by_patient(ids: np.ndarray, values: np.ndarray, order: Sequence[str]) -> np.ndarray:
    """Average rows of one patient (several patches) in the order of ``order``."""
    frame = pd.DataFrame(values)
    frame["_pid"] = ids
    return frame.groupby("_pid", sort=False).mean().loc[list(order)].to_numpy(dtype=np.float64)


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
    """A linear map raw latent -> program scores for serving (``rgops.serving.ProgramHead`` JSON).

    Ridge with the penalty chosen by inner CV, fitted on standardised latents of *training*
    patients and folded back to raw-latent coefficients: ``scores = latent @ coef.T + intercept``.
    """
    fit = A.fit_ridge(latent, targets, alphas=cfg.alphas, inner_splits=cfg.inner_splits, seed=cfg.seed)
    coef, intercept = fit.raw_coefficients()
    return {"names": list(names), "coef": coef.tolist(), "intercept": intercept.tolist()}


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


def gan_metrics(
    generator: Any,
    ds: Datasets,
    featurise: Callable[[np.ndarray], np.ndarray],
    train_rows: np.ndarray,
    eval_rows: np.ndarray,
    target_rows: Callable[[np.ndarray], np.ndarray],
    directions: Mapping[str, np.ndarray],
    cfg: EvaluateConfig,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Frechet distance with its real-vs-real reference, conditional consistency, diversity and
    traversal strips of a :class:`~rgops.models.gan.Generator`.

    Features are standardised with the real patches' mean and standard deviation before the
    Frechet distance, so ``gan.frechet`` is in units of real-feature variance, whatever the space.

    Args:
        featurise: patches ``(n, 1, S, S)`` -> frozen features ``(n, d)``.
        train_rows / eval_rows: patch rows of training patients (the consistency regressor and the
            Frechet sets) and of held-out patients (conditioning profiles for consistency).
        target_rows: patch rows -> gene targets ``(n, K)`` (module scores or gene PCs).
        directions: program name -> gene-space direction for its traversal strip.

    Returns:
        ``(metrics, strips)``: ``gan.*`` metrics and one ``(m, 1, S, S)`` strip per program.
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
class EvaluationResult:
    """What :func:`evaluate` returns: flat metrics plus what the report draws."""

    metrics: dict[str, float]
    info: dict[str, Any]
    details: dict[str, dict[str, Any]]
    target_names: list[str]
    targets: np.ndarray
    strips: dict[str, np.ndarray]
    feature_labels: dict[str, list[str]]
    program_heads: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The ``evaluation.json`` document the promotion gates read (``metrics`` is flat)."""
        sets: dict[str, Any] = {}
        for name, d in self.details.items():
            entry: dict[str, Any] = {"cv_r2": dict(zip(self.target_names, map(float, d["r2"])))}
            if "recovery" in d:
                entry["recovery"] = d["recovery"]
            sets[name] = entry
        return {"format": "rgops-evaluation/1", "metrics": self.metrics, "info": self.info, "feature_sets": sets,
                "program_heads": self.program_heads}


def evaluate(
    ds: Datasets,
    encoders: Mapping[str, Any] | None = None,
    gan: Any | None = None,
    truth: GroundTruth | None = None,
    cfg: EvaluateConfig | None = None,
    progress: Progress | None = None,
) -> EvaluationResult:
    """Evaluate image encoders (and a GAN) against the radiomics baseline on held-out patients.

    Args:
        ds: the ingested datasets.
        encoders: name -> :class:`~rgops.models.cae.ConditionalAE` (e.g. ``{"cae": ..., "ae": ...}``);
            the name prefixes each metric. ``radiomics`` is always added.
        gan: a :class:`~rgops.models.gan.Generator`, or None to skip the ``gan.*`` metrics.
        truth: the synthetic cohort's ground truth; targets are then the module scores of its programs
            and program recall/precision and oracle R^2 are reported. Without it, targets are the top
            gene PCs.
        progress: called as ``progress(stage, done, total)``.

    Returns:
        An :class:`EvaluationResult`; ``result.metrics`` has stable flat names.

    Raises:
        ShapeError: too few held-out patients for the folds, or the truth matches none of them.
        ConfigError: an encoder is named ``radiomics`` or ``gan``.
    """
    cfg = cfg or EvaluateConfig()
    encoders = dict(encoders or {})
    clash = sorted(set(encoders) & {RADIOMICS, "gan", "oracle"})
    if clash:
        raise ConfigError(f"encoder names {clash} are reserved; name them e.g. 'cae' and 'ae'")
    report = progress or (lambda stage, done, total: None)
    pid = ds.manifest["pseudo_id"].to_numpy()
    split = ds.manifest["split"].to_numpy()
    eval_rows = np.flatnonzero(np.isin(split, cfg.splits))
    train_rows = np.flatnonzero(~np.isin(split, cfg.splits))
    patients = list(dict.fromkeys(pid[eval_rows]))
    if len(patients) < 2 * cfg.n_splits:
        raise ShapeError(
            f"only {len(patients)} patients in splits {list(cfg.splits)}; cross-validation with "
            f"{cfg.n_splits} folds needs at least {2 * cfg.n_splits}: lower evaluate.n_splits or use a larger cohort"
        )
    genes = list(ds.panel.genes)
    expr_all = ds.genes.astype(np.float64)
    expr = _by_patient(pid[eval_rows], expr_all[eval_rows], patients)

    # Gene-side targets for every patch row (so the GAN regressor can use training rows too).
    pca_mean = expr_all.mean(axis=0)
    _, _, vt = np.linalg.svd(expr_all - pca_mean, full_matrices=False)
    k_pcs = min(cfg.n_gene_pcs, vt.shape[0])
    pcs_all = (expr_all - pca_mean) @ vt[:k_pcs].T
    info: dict[str, Any] = {"n_patients": len(patients), "splits": list(cfg.splits), "n_genes": len(genes),
                            "data_digest": ds.digest()}
    if truth is not None:
        target_names = list(truth.programs)
        targets_all = A.module_scores(expr_all, genes, {p: truth.modules[p] for p in truth.programs})
        info["targets"] = "module_scores"
        missing = [p for p in patients if p not in truth.table.index]
        if len(missing) == len(patients):
            raise ShapeError(
                "no held-out patient of the datasets is in the ground truth: the cohort was ingested with "
                "another pseudonymisation key or is another cohort (check RGOPS_PSEUDONYM_KEY and --cohort)"
            )
        if missing:
            log.warning("%d of %d patients have no ground-truth row; oracle R^2 uses the others",
                        len(missing), len(patients))
    else:
        target_names = [f"pc{i + 1}" for i in range(k_pcs)]
        targets_all = pcs_all
        info["targets"] = "gene_pcs"
    targets = _by_patient(pid[eval_rows], targets_all[eval_rows], patients)
    gene_pcs = _by_patient(pid[eval_rows], pcs_all[eval_rows], patients)

    # Image features of every patch, per set.
    sets_all: dict[str, np.ndarray] = {}
    for i, (name, model) in enumerate(encoders.items()):
        report(f"encode {name}", i, len(encoders))
        sets_all[name] = encode(model, ds.patches, cfg.batch_size, ds.mm_per_px)
    report("radiomics", 0, len(ds))
    rad = extract_radiomics(ds.patches, ds.masks, _spacing(ds), cfg.radiomics,
                            progress=lambda d, t: report("radiomics", d, t))
    info["radiomics_features"] = len(rad.names)
    info["radiomics_skipped"] = len(rad.skipped)
    sets_all[RADIOMICS] = rad.imputed()
    heads: dict[str, dict[str, Any]] = {}
    train_patients = list(dict.fromkeys(pid[train_rows]))
    if len(train_patients) >= 2 * cfg.inner_splits:
        for name in encoders:
            heads[name] = fit_program_head(_by_patient(pid[train_rows], sets_all[name][train_rows], train_patients),
                                           _by_patient(pid[train_rows], targets_all[train_rows], train_patients),
                                           target_names, cfg)
    elif encoders:
        log.warning("only %d training patients: no program head fitted for serving", len(train_patients))
    dims = [x.shape[1] for name, x in sets_all.items() if name != RADIOMICS]
    k = cfg.equal_dim or (min(dims) if dims else min(32, sets_all[RADIOMICS].shape[1]))
    info["equal_dim"] = k
    per_patient = {name: _by_patient(pid[eval_rows], x[eval_rows], patients) for name, x in sets_all.items()}
    reduced = _equal_dim(per_patient, k)

    metrics: dict[str, float] = {}
    details: dict[str, dict[str, Any]] = {}
    labels: dict[str, list[str]] = {}
    for i, (name, x) in enumerate(reduced.items()):
        report("associate", i, len(reduced))
        m, d = associate(x, targets, target_names, expr, genes, cfg, gene_pcs, truth)
        metrics.update({f"{name}.{key}": v for key, v in m.items()})
        details[name] = d
        native = per_patient[name].shape[1] <= k
        labels[name] = [f"z{j + 1}" if native else f"PC{j + 1}" for j in range(x.shape[1])]
        if name == RADIOMICS and native:
            labels[name] = [n.replace("original_", "") for n in rad.names]
    if truth is not None:
        known = [j for j, p in enumerate(patients) if p in truth.table.index]
        pheno = truth.table.loc[[patients[j] for j in known], list(truth.phenotypes)].to_numpy(float)
        r2 = A.ridge_cv_r2(pheno, targets[known], n_splits=cfg.n_splits, inner_splits=cfg.inner_splits,
                           alphas=cfg.alphas, seed=cfg.seed)
        for name, v in zip(target_names, r2):
            metrics[f"oracle.cv_r2.{name}"] = float(v)
        linked = [j for j, n in enumerate(target_names) if n in truth.imaging_linked]
        metrics["oracle.cv_r2.mean"] = float(np.mean(r2))
        metrics["oracle.cv_r2.linked_mean"] = float(np.mean(r2[linked])) if linked else 0.0
        for name in reduced:
            metrics[f"{name}.cv_r2.linked_vs_oracle"] = (
                metrics[f"{name}.cv_r2.linked_mean"] / max(metrics["oracle.cv_r2.linked_mean"], 1e-12))
        details["oracle"] = {"r2": r2}

    strips: dict[str, np.ndarray] = {}
    if gan is not None:
        report("gan", 0, 1)
        if cfg.gan_feature_space == "encoder" and encoders:
            enc_name, enc = next(iter(encoders.items()))
            featurise = lambda p: encode(enc, p, cfg.batch_size, np.ones(len(p), np.float32))  # noqa: E731
            info["gan_feature_space"] = f"encoder:{enc_name}"
        else:
            whole = RadiomicsConfig(bin_width=cfg.radiomics.bin_width,
                                    feature_classes=("firstorder", "glcm", "glrlm", "ngtdm"))

            def featurise(p: np.ndarray) -> np.ndarray:
                return extract_radiomics(p, np.ones_like(p, dtype=np.uint8), None, whole).imputed()

            info["gan_feature_space"] = "radiomics:whole_patch"
        if truth is not None:
            index = {g: i for i, g in enumerate(genes)}
            directions = {}
            for p in truth.programs:
                d = np.zeros(len(genes))
                d[[index[g] for g in truth.modules[p] if g in index]] = 1.0
                directions[p] = d
        else:
            # A unit loading vector scaled by the PC's standard deviation: values are in SD units.
            directions = {f"pc{i + 1}": vt[i] * pcs_all[:, i].std() for i in range(min(3, k_pcs))}
        gm, strips = gan_metrics(gan, ds, featurise, train_rows, eval_rows, lambda r: targets_all[r],
                                 directions, cfg)
        metrics.update(gm)
        report("gan", 1, 1)
    return EvaluationResult(metrics, info, details, target_names, targets, strips, labels, heads)


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
    from rgops.errors import GeneMismatchError

    cfg = EvaluateConfig.from_params(params or {})
    ds = Datasets.load(datasets)
    loaded: dict[str, Any] = {}
    for name, uri in [*encoder_uris.items(), *([("gan", gan_uri)] if gan_uri else [])]:
        lm = tracking.load_logged_model(uri)
        want = "gan" if name == "gan" else "cae"
        if lm.kind != want:
            raise ConfigError(f"model {uri!r} given as {name!r} is a {lm.kind} model; expected a {want} model")
        if tuple(lm.panel.genes) != tuple(ds.panel.genes):
            missing = sorted(set(lm.panel.genes) ^ set(ds.panel.genes))[:10]
            raise GeneMismatchError(
                f"model {uri!r} was trained on a gene panel of {len(lm.panel.genes)} genes, the datasets have "
                f"{len(ds.panel.genes)} (differing: {missing or 'order only'}); evaluate on the datasets it was trained on"
            )
        loaded[name] = lm
    truth = None
    if cohort is not None:
        tdir = truth_dir_for(cohort)
        if tdir.is_dir():
            truth = GroundTruth.load(tdir, load_key(create=False))
        else:
            log.info("no ground truth beside %s (looked for %s): real-data metrics only", cohort, tdir)
    encoders = {n: lm.module for n, lm in loaded.items() if n != "gan"}
    result = evaluate(ds, encoders, gan=loaded["gan"].module if "gan" in loaded else None, truth=truth, cfg=cfg,
                      progress=progress)
    result.info["models"] = {n: {"uri": encoder_uris.get(n, gan_uri), "run_id": lm.run_id,
                                 "weights_sha256": lm.weights_sha256} for n, lm in loaded.items()}
    files = write_outputs(result, out_json, report_dir, cfg)
    if log_to_mlflow:
        heads_file = Path(report_dir) / "program_heads.json"
        heads_file.write_text(json.dumps(result.program_heads))
        files["program_heads"] = heads_file
        for run_id in dict.fromkeys(lm.run_id for lm in loaded.values()):
            tracking.log_evaluation(run_id, result.metrics, files, Path(report_dir))
        if "cae" in loaded and "cae" in result.program_heads:
            tracking.log_program_head(loaded["cae"].run_id, result.program_heads["cae"])
    return result
