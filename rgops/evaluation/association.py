"""Radiogenomic association metrics, all measured on held-out patients.

Every function here is a pure function over numpy arrays with one row per *patient* (callers
average several patches of one patient first, or pass ``groups`` so folds never split a patient).
Nothing is scored in-sample: ridge and CCA are fitted on training folds and measured on the
held-out fold; the ridge penalty is chosen by an inner cross-validation on the training fold only.

Functions:

- :func:`ridge_cv_r2` -- cross-validated R^2 of each target column from image features.
- :func:`heldout_cca` -- first canonical correlation fitted on train folds, measured held-out.
- :func:`spearman_map` / :func:`bh_fdr` -- the radiogenomic map with Benjamini-Hochberg q-values.
- :func:`moderated_t` / :func:`module_enrichment` -- the gene-set view: split patients by an
  image feature, rank genes by an empirical-Bayes moderated t, test each module's shift allowing
  for the correlation of its genes (camera).
- :func:`program_recovery` -- recall and precision of imaging-linked vs decoy programs.
- :func:`module_scores` / :func:`gene_pcs` -- the gene-side targets.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from rgops.errors import ShapeError

log = logging.getLogger(__name__)

DEFAULT_ALPHAS: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)


def _as_2d(name: str, a: np.ndarray) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ShapeError(f"{name} has shape {arr.shape}, expected (n_patients, n_columns)")
    if not np.isfinite(arr).all():
        raise ShapeError(f"{name} holds {int((~np.isfinite(arr)).sum())} non-finite values; impute them first")
    return arr


def _check_rows(x: np.ndarray, y: np.ndarray, min_rows: int) -> None:
    if len(x) != len(y):
        raise ShapeError(f"features have {len(x)} rows but targets have {len(y)}; rows must be the same patients")
    if len(x) < min_rows:
        raise ShapeError(f"got {len(x)} patients, need at least {min_rows} for this cross-validation")


def _folds(n: int, n_splits: int, seed: int, groups: np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Patient-level K-fold: with ``groups`` all rows of one group land in the same fold."""
    rng = np.random.default_rng(seed)
    if groups is None:
        groups = np.arange(n)
    groups = np.asarray(groups)
    if len(groups) != n:
        raise ShapeError(f"groups has {len(groups)} entries for {n} rows")
    uniq = np.unique(groups)
    if len(uniq) < n_splits:
        raise ShapeError(f"{len(uniq)} patients cannot fill {n_splits} folds; lower n_splits")
    perm = rng.permutation(len(uniq))
    fold_of_group = np.empty(len(uniq), dtype=int)
    fold_of_group[perm] = np.arange(len(uniq)) % n_splits
    fold = fold_of_group[np.searchsorted(uniq, groups)]
    return [(np.flatnonzero(fold != k), np.flatnonzero(fold == k)) for k in range(n_splits)]


def _standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mu = train.mean(axis=0)
    sd = train.std(axis=0)
    sd = np.where(sd < 1e-12, 1.0, sd)
    return [(a - mu) / sd for a in (train, *others)]


def _ridge_fit(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge on centred data: returns (coef (p, q), intercept (q,))."""
    xm, ym = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - xm, y - ym
    p = x.shape[1]
    if p <= len(x):
        coef = np.linalg.solve(xc.T @ xc + alpha * np.eye(p), xc.T @ yc)
    else:  # dual form when features outnumber patients
        coef = xc.T @ np.linalg.solve(xc @ xc.T + alpha * np.eye(len(x)), yc)
    return coef, ym - xm @ coef


def _choose_alpha(x: np.ndarray, y: np.ndarray, alphas: Sequence[float], inner_splits: int, seed: int) -> np.ndarray:
    """Per-target penalty minimising inner-CV squared error on the training fold only."""
    sse = np.zeros((len(alphas), y.shape[1]))
    for tr, te in _folds(len(x), inner_splits, seed, None):
        xs_tr, xs_te = _standardise(x[tr], x[te])
        for i, a in enumerate(alphas):
            coef, b = _ridge_fit(xs_tr, y[tr], a)
            sse[i] += ((xs_te @ coef + b - y[te]) ** 2).sum(axis=0)
    return np.asarray(alphas)[sse.argmin(axis=0)]


@dataclass(frozen=True)
class RidgeFit:
    """Ridge models of every target on standardised features (per-target penalties)."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray  # (p, q) on standardised features
    intercept: np.ndarray  # (q,)
    alphas: np.ndarray  # (q,)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """``(n, p)`` raw features -> ``(n, q)`` predictions."""
        return ((np.asarray(x, dtype=np.float64) - self.mean) / self.scale) @ self.coef + self.intercept

    def raw_coefficients(self) -> tuple[np.ndarray, np.ndarray]:
        """``(coef (q, p), intercept (q,))`` acting on raw features: ``x @ coef.T + intercept``."""
        coef = self.coef / self.scale[:, None]
        return coef.T, self.intercept - (self.mean / self.scale) @ self.coef


def fit_ridge(
    x: np.ndarray,
    y: np.ndarray,
    *,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    inner_splits: int = 3,
    seed: int = 0,
) -> RidgeFit:
    """Ridge of each column of ``y`` on standardised ``x``, each penalty chosen by an
    ``inner_splits``-fold CV on these rows only (use it on training rows)."""
    x, y = _as_2d("image features", x), _as_2d("targets", y)
    _check_rows(x, y, 2 * inner_splits)
    chosen = _choose_alpha(x, y, alphas, inner_splits, seed)
    mu = x.mean(axis=0)
    sd = np.where(x.std(axis=0) < 1e-12, 1.0, x.std(axis=0))
    z = (x - mu) / sd
    coefs, icpts = [], []
    for j, a in enumerate(chosen):
        c, b = _ridge_fit(z, y[:, j : j + 1], float(a))
        coefs.append(c[:, 0])
        icpts.append(float(b[0]))
    return RidgeFit(mu, sd, np.stack(coefs, axis=1), np.asarray(icpts), np.asarray(chosen, dtype=np.float64))


def ridge_cv_predictions(
    x: np.ndarray,
    y: np.ndarray,
    *,
    n_splits: int = 5,
    inner_splits: int = 3,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """Out-of-fold ridge predictions of every column of ``y`` from ``x``.

    Features are standardised with training-fold statistics; each target's penalty is chosen
    from ``alphas`` by an ``inner_splits``-fold CV inside the training fold (nested CV).

    Returns:
        ``(n, q)`` predictions, each row predicted by a model that never saw that patient.
    """
    x, y = _as_2d("image features", x), _as_2d("targets", y)
    _check_rows(x, y, max(n_splits, inner_splits) * 2)
    pred = np.empty_like(y)
    for k, (tr, te) in enumerate(_folds(len(x), n_splits, seed, groups)):
        chosen = _choose_alpha(x[tr], y[tr], alphas, inner_splits, seed + 1 + k)
        xs_tr, xs_te = _standardise(x[tr], x[te])
        for j, a in enumerate(chosen):
            coef, b = _ridge_fit(xs_tr, y[tr, j : j + 1], float(a))
            pred[te, j] = (xs_te @ coef + b)[:, 0]
    return pred


def r2_score(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Coefficient of determination per column, ``1 - SSE / SST`` (can be negative)."""
    y, pred = _as_2d("targets", y), _as_2d("predictions", pred)
    sst = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    sse = ((y - pred) ** 2).sum(axis=0)
    return 1.0 - sse / np.where(sst < 1e-12, 1.0, sst)


def ridge_cv_r2(
    x: np.ndarray,
    y: np.ndarray,
    *,
    n_splits: int = 5,
    inner_splits: int = 3,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """Cross-validated R^2 of each column of ``y`` predicted from ``x`` by nested-CV ridge.

    R^2 is computed on the pooled out-of-fold predictions against the overall mean, so a
    predictor no better than the mean scores about 0 (slightly below, from fold noise).

    Args:
        x: ``(n, p)`` image features, one row per patient.
        y: ``(n, q)`` targets (gene-module scores or gene PCs).
        groups: optional patient id per row; rows of one patient never straddle folds.

    Returns:
        ``(q,)`` held-out R^2 per target.

    Raises:
        ShapeError: rows differ, values are not finite, or too few patients for the folds.
    """
    pred = ridge_cv_predictions(x, y, n_splits=n_splits, inner_splits=inner_splits, alphas=alphas,
                                seed=seed, groups=groups)
    return r2_score(y, pred)


@dataclass(frozen=True)
class CCAFit:
    """First canonical pair fitted on one training set (standardised inputs)."""

    x_mean: np.ndarray
    x_std: np.ndarray
    y_mean: np.ndarray
    y_std: np.ndarray
    a: np.ndarray
    b: np.ndarray
    train_corr: float

    def scores(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return ((x - self.x_mean) / self.x_std) @ self.a, ((y - self.y_mean) / self.y_std) @ self.b


def _inv_sqrt(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(c)
    return (v / np.sqrt(np.maximum(w, 1e-12))) @ v.T


def fit_cca(x: np.ndarray, y: np.ndarray, reg: float = 0.1) -> CCAFit:
    """Regularised CCA, first component.

    Each covariance is shrunk towards the identity, ``(1 - reg) C + reg I`` on standardised
    data, so the fit stays defined when features approach the number of patients.
    """
    x, y = _as_2d("image features", x), _as_2d("gene targets", y)
    _check_rows(x, y, 3)
    if not 0.0 <= reg < 1.0:
        raise ShapeError(f"CCA regularisation {reg} is outside [0, 1)")
    xm, ym = x.mean(axis=0), y.mean(axis=0)
    xs = np.where(x.std(axis=0) < 1e-12, 1.0, x.std(axis=0))
    ys = np.where(y.std(axis=0) < 1e-12, 1.0, y.std(axis=0))
    xz, yz = (x - xm) / xs, (y - ym) / ys
    n = len(x)
    cxx = (1 - reg) * (xz.T @ xz) / n + reg * np.eye(x.shape[1])
    cyy = (1 - reg) * (yz.T @ yz) / n + reg * np.eye(y.shape[1])
    cxy = (1 - reg) * (xz.T @ yz) / n
    wx, wy = _inv_sqrt(cxx), _inv_sqrt(cyy)
    u, s, vt = np.linalg.svd(wx @ cxy @ wy)
    return CCAFit(xm, xs, ym, ys, wx @ u[:, 0], wy @ vt[0], float(s[0]))


def heldout_cca(
    x: np.ndarray,
    y: np.ndarray,
    *,
    n_splits: int = 5,
    reg: float = 0.1,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> float:
    """First canonical correlation fitted on training folds and measured on held-out folds.

    For each fold the canonical weights are fitted on the other folds; the held-out canonical
    scores of all folds are pooled (each fold's sign aligned so its training correlation is
    positive, which it is by construction) and correlated once. An independent feature set gives
    about 0; in-sample CCA would give a large positive value even then.

    Returns:
        Pearson correlation of the pooled held-out canonical scores, in [-1, 1].
    """
    x, y = _as_2d("image features", x), _as_2d("gene targets", y)
    _check_rows(x, y, n_splits * 2)
    u = np.empty(len(x))
    v = np.empty(len(x))
    for tr, te in _folds(len(x), n_splits, seed, groups):
        fit = fit_cca(x[tr], y[tr], reg)
        su, sv = fit.scores(x[te], y[te])
        # Put every fold's scores on the training scale so pooling is meaningful.
        tu, tv = fit.scores(x[tr], y[tr])
        u[te] = (su - tu.mean()) / max(tu.std(), 1e-12)
        v[te] = (sv - tv.mean()) / max(tv.std(), 1e-12)
    if u.std() < 1e-12 or v.std() < 1e-12:
        return 0.0
    return float(np.corrcoef(u, v)[0, 1])


def _rank_columns(a: np.ndarray) -> np.ndarray:
    return np.apply_along_axis(stats.rankdata, 0, a)


def spearman_map(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spearman correlation of every feature (column of ``x``) with every target (column of ``y``).

    Returns:
        ``(rho, p)``, both ``(p_features, q_targets)``; p-values from the t distribution with
        ``n - 2`` degrees of freedom (as ``scipy.stats.spearmanr``). Constant columns get
        ``rho = 0, p = 1``.
    """
    x, y = _as_2d("image features", x), _as_2d("gene targets", y)
    _check_rows(x, y, 4)
    rx, ry = _rank_columns(x), _rank_columns(y)
    rx = rx - rx.mean(axis=0)
    ry = ry - ry.mean(axis=0)
    nx, ny = np.linalg.norm(rx, axis=0), np.linalg.norm(ry, axis=0)
    const = (nx[:, None] < 1e-12) | (ny[None, :] < 1e-12)
    rho = (rx.T @ ry) / np.where(const, 1.0, nx[:, None] * ny[None, :])
    rho = np.where(const, 0.0, np.clip(rho, -1.0, 1.0))
    dof = len(x) - 2
    with np.errstate(divide="ignore"):
        t = rho * np.sqrt(dof / np.maximum(1.0 - rho**2, 1e-300))
    p = 2.0 * stats.t.sf(np.abs(t), dof)
    return rho, np.where(const, 1.0, p)


def bh_fdr(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values over all entries of ``p`` (any shape), same shape back."""
    arr = np.asarray(p, dtype=np.float64)
    flat = arr.ravel()
    if flat.size == 0:
        return arr.copy()
    if np.isnan(flat).any() or (flat < 0).any() or (flat > 1).any():
        raise ShapeError("p-values must lie in [0, 1] without NaN for Benjamini-Hochberg")
    order = np.argsort(flat)
    m = flat.size
    q_sorted = flat[order] * m / np.arange(1, m + 1)
    q_sorted = np.minimum.accumulate(q_sorted[::-1])[::-1]
    q = np.empty(m)
    q[order] = np.minimum(q_sorted, 1.0)
    return q.reshape(arr.shape)


def _trigamma_inverse(y: np.ndarray | float) -> np.ndarray:
    """Solve ``trigamma(x) = y`` for x > 0 by Newton's method (Smyth 2004, limma)."""
    y = np.atleast_1d(np.asarray(y, dtype=np.float64))
    x = 0.5 + 1.0 / y
    for _ in range(50):
        tri = special.polygamma(1, x)
        dif = tri * (1.0 - tri / y) / special.polygamma(2, x)
        x = x + dif
        if np.all(-dif / x < 1e-8):
            break
    return x


def moderated_t(expr: np.ndarray, group: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Empirical-Bayes moderated two-group t statistic per gene (Smyth 2004, limma's eBayes).

    Each gene's pooled variance is shrunk towards a prior ``s0^2`` with ``d0`` prior degrees of
    freedom, both estimated from all genes by matching the moments of ``log s^2``.

    Args:
        expr: ``(n, G)`` expression, one row per patient.
        group: ``(n,)`` booleans, True for the "high" group.

    Returns:
        ``(t, p, d0)``: moderated t ``(G,)`` (high minus low), two-sided p ``(G,)``, prior dof.
    """
    expr = _as_2d("expression", expr)
    g = np.asarray(group, dtype=bool)
    if g.shape != (len(expr),):
        raise ShapeError(f"group has shape {g.shape}, expected ({len(expr)},)")
    n1, n0 = int(g.sum()), int((~g).sum())
    if n1 < 2 or n0 < 2:
        raise ShapeError(f"each group needs at least 2 patients, got {n1} high and {n0} low")
    a, b = expr[g], expr[~g]
    diff = a.mean(axis=0) - b.mean(axis=0)
    d = n1 + n0 - 2
    s2 = (((a - a.mean(axis=0)) ** 2).sum(axis=0) + ((b - b.mean(axis=0)) ** 2).sum(axis=0)) / d
    s2 = np.maximum(s2, 1e-12)
    z = np.log(s2)
    e = z - special.digamma(d / 2) + np.log(d / 2)
    emean = e.mean()
    evar = e.var(ddof=1) - special.polygamma(1, d / 2) if len(e) > 1 else 0.0
    if evar > 0:
        d0 = float(2.0 * _trigamma_inverse(evar)[0])
        s02 = float(np.exp(emean + special.digamma(d0 / 2) - np.log(d0 / 2)))
        post = (d0 * s02 + d * s2) / (d0 + d)
        dof = d0 + d
    else:  # variances no more spread than sampling noise: full shrinkage to the common value
        d0 = float("inf")
        post = np.full_like(s2, np.exp(emean))
        dof = 1e6
    t = diff / np.sqrt(post * (1.0 / n1 + 1.0 / n0))
    p = 2.0 * stats.t.sf(np.abs(t), dof)
    return t, p, d0


def module_enrichment(
    t: np.ndarray,
    genes: Sequence[str],
    modules: Mapping[str, Sequence[str]],
    residuals: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """Does each module's genes shift in the ranking? A competitive test per module that allows for
    correlation between the module's genes (limma's ``camera``, Wu and Smyth 2012).

    Genes of one module co-vary, so their t statistics move together by chance; a test that treats
    them as independent (a plain rank-sum) calls modules "enriched" far too often. The variance of a
    module's mean t is inflated by ``VIF = 1 + (m - 1) * mean inter-gene correlation``, the correlation
    estimated from the residuals of the two-group fit. Two-sided: a module moving up *or* down
    counts. q-values are Benjamini-Hochberg across modules.

    Args:
        t: ``(G,)`` gene statistics (e.g. :func:`moderated_t`).
        residuals: ``(n, G)`` expression minus its group means; None assumes independent genes.

    Returns:
        ``{module: {"n_genes", "mean_t", "vif", "p", "q"}}``; modules with no gene in ``genes`` (or
        all of them) are left out and logged.
    """
    t = np.asarray(t, dtype=np.float64)
    index = {g: i for i, g in enumerate(genes)}
    if len(index) != len(t):
        raise ShapeError(f"{len(t)} gene statistics for {len(index)} gene names")
    if residuals is not None:
        residuals = _as_2d("residuals", residuals)
        if residuals.shape[1] != len(t):
            raise ShapeError(f"residuals have {residuals.shape[1]} genes, statistics {len(t)}")
        sd = residuals.std(axis=0)
        std_res = residuals / np.where(sd < 1e-12, 1.0, sd)
    n_all = len(t)
    out: dict[str, dict[str, float]] = {}
    for name, members in modules.items():
        idx = np.array([index[g] for g in members if g in index], dtype=int)
        m = len(idx)
        if m == 0 or m >= n_all - 1:
            log.warning("module %s has %d of its %d genes in the panel; not tested", name, m, len(members))
            continue
        inside = np.zeros(n_all, dtype=bool)
        inside[idx] = True
        vif = 1.0
        if residuals is not None and m > 1:
            # var(sum of m unit-variance genes) = m * (1 + (m - 1) * mean correlation)
            vif = max(float(std_res[:, idx].sum(axis=1).var() / m), 1e-6)
        diff = t[inside].mean() - t[~inside].mean()
        pooled = (((t[inside] - t[inside].mean()) ** 2).sum() + ((t[~inside] - t[~inside].mean()) ** 2).sum()) / (
            n_all - 2)
        se = np.sqrt(max(pooled, 1e-12) * (vif / m + 1.0 / (n_all - m)))
        p = float(2.0 * stats.t.sf(abs(diff / se), n_all - 2))
        out[name] = {"n_genes": float(m), "mean_t": float(t[inside].mean()), "vif": vif, "p": p}
    if out:
        qs = bh_fdr(np.array([v["p"] for v in out.values()]))
        for v, q in zip(out.values(), qs):
            v["q"] = float(q)
    return out


def feature_split_enrichment(
    feature: np.ndarray,
    expr: np.ndarray,
    genes: Sequence[str],
    modules: Mapping[str, Sequence[str]],
) -> dict[str, dict[str, float]]:
    """The gene-set view for one image feature: split patients at its median, rank genes by
    moderated t (high vs low), and test each module with inter-gene correlation allowed for
    (:func:`module_enrichment`). A feature that splits off fewer than 2 patients gives ``{}``."""
    f = np.asarray(feature, dtype=np.float64).ravel()
    high = f > np.median(f)
    if min(high.sum(), (~high).sum()) < 2:
        return {}  # a feature (nearly) constant over these patients splits nobody: nothing to test
    expr = _as_2d("expression", expr)
    t, _, _ = moderated_t(expr, high)
    resid = expr.copy()
    resid[high] -= expr[high].mean(axis=0)
    resid[~high] -= expr[~high].mean(axis=0)
    return module_enrichment(t, genes, modules, resid)


def module_scores(expr: np.ndarray, genes: Sequence[str], modules: Mapping[str, Sequence[str]]) -> np.ndarray:
    """Score of each module per patient: the mean z-scored expression of its genes in the panel.

    Returns:
        ``(n, K)`` in the order of ``modules``.

    Raises:
        ShapeError: a module has no gene in ``genes`` (the panel does not cover it).
    """
    expr = _as_2d("expression", expr)
    if expr.shape[1] != len(genes):
        raise ShapeError(f"expression has {expr.shape[1]} columns for {len(genes)} gene names")
    index = {g: i for i, g in enumerate(genes)}
    cols = []
    for name, members in modules.items():
        idx = [index[g] for g in members if g in index]
        if not idx:
            raise ShapeError(
                f"module {name!r} has none of its {len(members)} genes (e.g. {list(members)[:3]}) in the "
                "gene panel; evaluate against the cohort the datasets were ingested from"
            )
        cols.append(expr[:, idx].mean(axis=1))
    return np.stack(cols, axis=1)


def gene_pcs(expr: np.ndarray, k: int) -> np.ndarray:
    """Top ``k`` principal-component scores of the expression matrix (genes centred).

    Unsupervised on the gene side only, so fitting them on every patient leaks nothing about the
    image-to-gene mapping that the cross-validation measures.
    """
    expr = _as_2d("expression", expr)
    k = min(k, min(expr.shape))
    centred = expr - expr.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    return u[:, :k] * s[:k]


def pca_reduce(train: np.ndarray, k: int, *apply_to: np.ndarray) -> list[np.ndarray]:
    """Project onto the top ``k`` PCs of standardised ``train``; returns ``train`` and each of
    ``apply_to`` projected. Used to compare feature sets at equal dimensionality."""
    train = _as_2d("features", train)
    if train.shape[1] <= k:
        return [train, *(np.asarray(a, dtype=np.float64) for a in apply_to)]
    z = _standardise(train, *(np.asarray(a, dtype=np.float64) for a in apply_to))
    _, _, vt = np.linalg.svd(z[0], full_matrices=False)
    return [a @ vt[:k].T for a in z]


@dataclass(frozen=True)
class ProgramRecovery:
    """Which programs the radiogenomic map links to some image feature at ``q < alpha``."""

    recall: float
    precision: float
    found: tuple[str, ...]
    false_links: tuple[str, ...]
    missed: tuple[str, ...]


def program_recovery(
    q: np.ndarray,
    programs: Sequence[str],
    imaging_linked: Sequence[str],
    decoys: Sequence[str],
    alpha: float = 0.05,
) -> ProgramRecovery:
    """Recall and precision of the imaging-linked programs from a feature x program q-value map.

    A program counts as linked when at least one image feature reaches ``q < alpha`` with it.
    Recall = linked-and-found / imaging-linked; precision = linked-and-found / all found
    (imaging-linked plus decoys). With nothing found, precision is defined as 0.

    Args:
        q: ``(p_features, K)`` q-values, columns in the order of ``programs``.
    """
    q = np.asarray(q, dtype=np.float64)
    if q.ndim != 2 or q.shape[1] != len(programs):
        raise ShapeError(f"q-value map has shape {q.shape}, expected (n_features, {len(programs)})")
    unknown = sorted((set(imaging_linked) | set(decoys)) - set(programs))
    if unknown:
        raise ShapeError(f"programs {unknown} are not columns of the map {list(programs)}")
    hit = {p: bool((q[:, j] < alpha).any()) for j, p in enumerate(programs)}
    found = tuple(p for p in imaging_linked if hit[p])
    false = tuple(p for p in decoys if hit[p])
    missed = tuple(p for p in imaging_linked if not hit[p])
    recall = len(found) / len(imaging_linked) if imaging_linked else 0.0
    n_found = len(found) + len(false)
    precision = len(found) / n_found if n_found else 0.0
    return ProgramRecovery(recall, precision, found, false, missed)
