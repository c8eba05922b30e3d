"""The probe protocol: how much of each gene target a feature set predicts on held-out patients.

A linear probe (ridge regression) is fitted on the training split's patients and scored on patients
it never saw; nothing about the held-out rows (not even their feature means) reaches the fit.

1. **Features** (:func:`fit_probe`): non-finite values are imputed with the training rows' medians;
   columns that are constant (or all non-finite) on the training rows are dropped; the rest are
   standardised with the training rows' mean and standard deviation.
2. **Penalty**: chosen *per target* among ``alphas`` by inner K-fold CV on the training rows only
   (the penalty with the smallest pooled out-of-fold squared error; ties go to the larger penalty).
   Per target, because the programs differ in how much of them the features carry: one penalty for
   all would over-smooth the strong targets or over-fit the weak ones. Inner folds re-centre
   features and targets on their own training rows; the scaling is the outer training rows' (it can
   only move the choice of penalty, never the held-out score).
3. **Refit** on all training rows with each target's penalty; predict the held-out rows.
4. **Score** (:func:`r2_scores`): R^2 against the *held-out* mean, so a probe no better than a
   constant scores about 0 and a worse one (e.g. features memorised on the training rows) below 0.
5. **Intervals** (:func:`bootstrap`): percentile bootstrap over held-out patients, with the same
   resamples for every feature set, so the difference between two sets is paired.

The ridge objective is ``||y - X b||^2 + alpha ||b||^2`` on the standardised design, so a useful
``alpha`` grows with the number of training rows (about ``n_train`` means "shrink by half").
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import KFold

from rgops.errors import ConfigError, EvaluationError, ShapeError

log = logging.getLogger(__name__)

#: Fewest training patients a probe is fitted on (5 inner folds of 4 patients each).
MIN_TRAIN = 20
#: Fewest held-out patients a probe is scored on (fewer makes R^2 swing by far more than +-0.1).
MIN_HELD_OUT = 10
#: Default ridge penalties, 1e-2 .. 1e5 in half decades.
DEFAULT_ALPHAS: tuple[float, ...] = tuple(float(10.0 ** (k / 2)) for k in range(-4, 11))


@dataclass(frozen=True)
class ProbeFit:
    """A probe fitted on training rows and applied to held-out rows.

    Attributes:
        pred: ``(n_te, T)`` held-out predictions.
        alpha: ``(T,)`` penalty chosen for each target (``inf`` when no feature column was usable,
            in which case the prediction is the training mean).
        n_train: training rows the probe was fitted on.
        n_features: feature columns used after dropping constant or non-finite ones.
    """

    pred: np.ndarray
    alpha: np.ndarray
    n_train: int
    n_features: int = 0


def _as_2d(name: str, a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ShapeError(f"{name}: got an array of shape {a.shape}, expected 2-D (patients, columns); "
                         "reshape a single column with .reshape(-1, 1)")
    return a


def _check_counts(n_train: int, n_held_out: int, min_train: int = MIN_TRAIN, min_held_out: int = MIN_HELD_OUT) -> None:
    if n_train < min_train or n_held_out < min_held_out:
        raise EvaluationError(
            f"probe needs at least {min_train} training and {min_held_out} held-out patients, got "
            f"{n_train} training and {n_held_out} held-out; use a larger cohort (or larger split fractions)")


def _prepare_features(train_x: np.ndarray, test_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Impute with training medians, drop constant columns, standardise on training rows."""
    finite = np.isfinite(train_x)
    usable = np.flatnonzero(finite.any(axis=0))
    tr, te = train_x[:, usable], test_x[:, usable]
    fin = finite[:, usable]
    med = np.array([np.median(tr[fin[:, j], j]) for j in range(tr.shape[1])])
    tr = np.where(fin, tr, med)
    te = np.where(np.isfinite(te), te, med)
    mean, std = tr.mean(axis=0), tr.std(axis=0)
    keep = std > 1e-9 * np.maximum(np.abs(mean), 1.0)
    if not keep.all():
        log.info("probe: dropped %d of %d feature columns (constant or non-finite on training rows)",
                 train_x.shape[1] - int(keep.sum()), train_x.shape[1])
    return (tr[:, keep] - mean[keep]) / std[keep], (te[:, keep] - mean[keep]) / std[keep]


def _ridge_path(x_tr: np.ndarray, y_tr: np.ndarray, x_ev: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """Ridge predictions for every penalty: ``(n, F), (n, T), (m, F), (A,) -> (A, m, T)``."""
    xm, ym = x_tr.mean(axis=0), y_tr.mean(axis=0)
    u, s, vt = np.linalg.svd(x_tr - xm, full_matrices=False)
    uty = u.T @ (y_tr - ym)                    # (k, T)
    xv = (x_ev - xm) @ vt.T                    # (m, k)
    shrink = s / (s**2 + alphas[:, None])      # (A, k)
    return ym + (xv[None] * shrink[:, None, :]) @ uty


def _choose_alphas(x: np.ndarray, y: np.ndarray, alphas: np.ndarray, n_splits: int, seed: int) -> np.ndarray:
    """Index into ``alphas`` of the penalty with the least inner-CV squared error, per target: ``(T,)``."""
    sse = np.zeros((len(alphas), y.shape[1]))
    for tr, ev in KFold(n_splits=n_splits, shuffle=True, random_state=seed).split(x):
        sse += ((_ridge_path(x[tr], y[tr], x[ev], alphas) - y[ev][None]) ** 2).sum(axis=1)
    return np.argmin(sse, axis=0)


def fit_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    inner_splits: int = 5,
    seed: int = 0,
    min_train: int = MIN_TRAIN,
    min_held_out: int = MIN_HELD_OUT,
) -> ProbeFit:
    """Fit a ridge probe on training patients and predict held-out patients (see the module doc).

    Args:
        train_x: ``(n_tr, F)`` features, one row per training patient (non-finite values allowed).
        train_y: ``(n_tr, T)`` finite targets of the training patients.
        test_x: ``(n_te, F)`` features of the held-out patients.
        alphas: candidate ridge penalties (> 0), chosen per target by inner CV.
        inner_splits: inner K-fold splits of the training rows (>= 2).
        seed: shuffles the inner folds.
        min_train / min_held_out: fewest patients accepted (``evaluate.min_*_patients``; the
            module constants by default: lower them only for tests on tiny cohorts).

    Returns:
        :class:`ProbeFit` with ``pred`` ``(n_te, T)`` and ``alpha`` ``(T,)``.

    Raises:
        ShapeError: arrays not 2-D, rows or columns that do not match, non-finite targets.
        EvaluationError: fewer than :data:`MIN_TRAIN` training or :data:`MIN_HELD_OUT` held-out rows.
        ConfigError: no penalties, a penalty <= 0, or ``inner_splits`` outside ``[2, n_tr]``.
    """
    train_x, train_y, test_x = _as_2d("train_x", train_x), _as_2d("train_y", train_y), _as_2d("test_x", test_x)
    if len(train_x) != len(train_y) or train_x.shape[1] != test_x.shape[1]:
        raise ShapeError(f"probe inputs do not fit: train_x {train_x.shape}, train_y {train_y.shape}, test_x "
                         f"{test_x.shape}; expected (n_tr, F), (n_tr, T), (n_te, F)")
    if not np.isfinite(train_y).all():
        raise ShapeError(f"train_y holds {int((~np.isfinite(train_y)).sum())} non-finite values; targets must "
                         "be finite (drop those patients or impute their targets first)")
    _check_counts(len(train_x), len(test_x), min_train, min_held_out)
    grid = np.sort(np.asarray(alphas, dtype=np.float64))[::-1]  # descending: argmin ties -> larger penalty
    if grid.size == 0 or not (np.isfinite(grid) & (grid > 0)).all():
        raise ConfigError(f"probe alphas: got {list(alphas)}, expected one or more finite penalties > 0")
    if not 2 <= inner_splits <= len(train_x):
        raise ConfigError(f"probe inner_splits: got {inner_splits}, expected 2 .. {len(train_x)} (training rows)")
    x_tr, x_te = _prepare_features(train_x, test_x)
    n_tr, n_te, n_t = len(x_tr), len(x_te), train_y.shape[1]
    if x_tr.shape[1] == 0:
        log.warning("probe: no usable feature column (all constant or non-finite); predicting the training mean")
        return ProbeFit(np.broadcast_to(train_y.mean(axis=0), (n_te, n_t)).copy(), np.full(n_t, np.inf), n_tr, 0)
    best = _choose_alphas(x_tr, train_y, grid, inner_splits, seed)
    path = _ridge_path(x_tr, train_y, x_te, grid)          # (A, n_te, T)
    pred = path[best, :, np.arange(n_t)].T                 # (n_te, T)
    return ProbeFit(pred, grid[best], n_tr, int(x_tr.shape[1]))


def r2_scores(y_true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """R^2 of each target against the held-out mean: ``(n, T), (n, T) -> (T,)``.

    ``1 - SSE / SST`` with ``SST`` around the mean of ``y_true`` itself; negative when the
    prediction is worse than that constant; NaN for a target that is constant on these rows.
    """
    y, p = _as_2d("y_true", y_true), _as_2d("pred", pred)
    if y.shape != p.shape:
        raise ShapeError(f"y_true {y.shape} and pred {p.shape} differ; expected the same (n, T)")
    sse = ((y - p) ** 2).sum(axis=0)
    sst = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), np.nan)


def _boot_r2(y: np.ndarray, p: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """R^2 per resample and target: ``(n, T), (n, T), (B, n) -> (B, T)``."""
    yb, pb = y[idx], p[idx]                                  # (B, n, T)
    sse = ((yb - pb) ** 2).sum(axis=1)
    sst = ((yb - yb.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), np.nan)


@dataclass(frozen=True)
class Interval:
    """A point estimate (on all held-out rows) and its bootstrap percentile interval."""

    point: float
    lo: float
    hi: float


@dataclass(frozen=True)
class SetScores:
    """Probe scores of one feature set: R^2 per target and their mean over ``mean_over`` targets."""

    per_target: dict[str, Interval]
    mean: Interval


def _interval(point: float, samples: np.ndarray, level: float) -> Interval:
    s = samples[np.isfinite(samples)]
    if s.size == 0:
        return Interval(float(point), float("nan"), float("nan"))
    lo, hi = np.quantile(s, [(1 - level) / 2, 1 - (1 - level) / 2])
    return Interval(float(point), float(lo), float(hi))


@dataclass(frozen=True)
class BootstrapResult:
    """Held-out R^2 with bootstrap intervals for several feature sets and paired differences.

    Attributes:
        targets: target names, in column order.
        mean_over: the targets averaged into each set's ``mean``.
        level: interval coverage (e.g. 0.9).
        n_boot: bootstrap resamples.
        n_held_out: held-out patients resampled.
        sets: feature set name -> :class:`SetScores`.
        diffs: ``(a, b)`` -> mean R^2 of ``a`` minus that of ``b`` (paired).
    """

    targets: tuple[str, ...]
    mean_over: tuple[str, ...]
    level: float
    n_boot: int
    n_held_out: int
    sets: dict[str, SetScores]
    diffs: dict[tuple[str, str], Interval]

    def to_json(self, prefix: str = "probe") -> dict[str, float]:
        """Flat ``name -> float`` metrics, ready for ``mlflow.log_metrics``.

        Keys: ``<prefix>.<set>.<target>.r2``, ``<prefix>.<set>.<target>.lo``, ``.hi``;
        ``<prefix>.<set>.mean``, ``<prefix>.<set>.mean.lo``, ``.mean.hi``;
        ``<prefix>.diff.<a>-<b>``, ``<prefix>.diff.<a>-<b>.lo``, ``.hi``; ``<prefix>.n_held_out``.
        Values are plain floats (NaN only for a target constant on the held-out rows).
        """
        out: dict[str, float] = {f"{prefix}.n_held_out": float(self.n_held_out)}
        for name, scores in self.sets.items():
            for target, iv in scores.per_target.items():
                key = f"{prefix}.{name}.{target}"
                out.update({f"{key}.r2": iv.point, f"{key}.lo": iv.lo, f"{key}.hi": iv.hi})
            key = f"{prefix}.{name}.mean"
            out.update({key: scores.mean.point, f"{key}.lo": scores.mean.lo, f"{key}.hi": scores.mean.hi})
        for (a, b), iv in self.diffs.items():
            key = f"{prefix}.diff.{a}-{b}"
            out.update({key: iv.point, f"{key}.lo": iv.lo, f"{key}.hi": iv.hi})
        return out


def _check_bootstrap_args(y: np.ndarray, preds: Mapping[str, np.ndarray], pairs: Sequence[tuple[str, str]],
                          targets: Sequence[str], n_boot: int, level: float) -> None:
    if not preds:
        raise EvaluationError("bootstrap got no feature sets; pass preds={'name': (n, T) predictions, ...}")
    for name, p in preds.items():
        if np.shape(p) != y.shape:
            raise ShapeError(f"predictions of {name!r} have shape {np.shape(p)}, expected y_true's {y.shape}")
    unknown = sorted({n for pair in pairs for n in pair} - set(preds))
    if unknown:
        raise EvaluationError(f"pairs name feature sets {unknown} that are not in preds {sorted(preds)}")
    if len(targets) != y.shape[1] or len(set(targets)) != len(targets):
        raise ShapeError(f"targets: got {list(targets)}, expected {y.shape[1]} distinct names (one per column)")
    if n_boot < 1 or not 0.0 < level < 1.0:
        raise ConfigError(f"bootstrap: got n_boot={n_boot}, level={level}; expected n_boot >= 1, 0 < level < 1")


def bootstrap(
    y_true: np.ndarray,
    preds: Mapping[str, np.ndarray],
    n_boot: int = 1000,
    level: float = 0.9,
    seed: int = 0,
    pairs: Sequence[tuple[str, str]] = (),
    targets: Sequence[str] | None = None,
    mean_over: Sequence[str] | None = None,
    min_held_out: int = MIN_HELD_OUT,
) -> BootstrapResult:
    """Held-out R^2 of each feature set with percentile intervals, resampling held-out patients.

    Every feature set is scored on the *same* resamples, so the difference of two sets' mean R^2
    is paired (patients that are hard for one are hard for both) and its interval is narrower
    than the two intervals suggest.

    Args:
        y_true: ``(n, T)`` held-out targets.
        preds: feature set name -> ``(n, T)`` held-out predictions (e.g. :attr:`ProbeFit.pred`).
        n_boot: resamples of the ``n`` held-out patients (with replacement).
        level: coverage of each interval (0.9: the 5th to 95th percentile).
        seed: seeds the resamples.
        pairs: ``(a, b)`` feature-set pairs whose difference ``mean R^2(a) - mean R^2(b)`` is wanted.
        targets: names of the ``T`` columns (default ``t0``, ``t1``, ...).
        mean_over: targets averaged into each set's mean (default: all; e.g. the linked programs).

    Returns:
        :class:`BootstrapResult`; ``.to_json()`` gives flat float metrics.

    Raises:
        ShapeError: predictions not shaped like ``y_true``, or target names that do not fit.
        EvaluationError: no feature sets, pairs naming unknown sets, fewer than :data:`MIN_HELD_OUT` rows.
        ConfigError: ``n_boot < 1`` or ``level`` outside (0, 1).
    """
    y = _as_2d("y_true", y_true)
    names = tuple(targets) if targets is not None else tuple(f"t{j}" for j in range(y.shape[1]))
    _check_bootstrap_args(y, preds, pairs, names, n_boot, level)
    if len(y) < min_held_out:
        raise EvaluationError(f"bootstrap needs at least {min_held_out} held-out patients, got {len(y)}; "
                              "use a larger cohort (or larger held-out split fractions)")
    avg = tuple(mean_over) if mean_over is not None else names
    if not avg or set(avg) - set(names):
        raise ShapeError(f"mean_over: got {list(avg)}, expected a non-empty subset of {list(names)}")
    cols = [names.index(t) for t in avg]
    idx = np.random.default_rng(seed).integers(0, len(y), size=(n_boot, len(y)))
    sets, boot_means, point_means = {}, {}, {}
    for name, p in preds.items():
        p = np.asarray(p, dtype=np.float64)
        point, boot = r2_scores(y, p), _boot_r2(y, p, idx)   # (T,), (B, T)
        point_means[name], boot_means[name] = float(point[cols].mean()), boot[:, cols].mean(axis=1)
        per_target = {t: _interval(point[j], boot[:, j], level) for j, t in enumerate(names)}
        sets[name] = SetScores(per_target, _interval(point_means[name], boot_means[name], level))
    diffs = {(a, b): _interval(point_means[a] - point_means[b], boot_means[a] - boot_means[b], level)
             for a, b in pairs}
    return BootstrapResult(names, avg, float(level), int(n_boot), len(y), sets, diffs)
