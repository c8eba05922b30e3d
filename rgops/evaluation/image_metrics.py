"""Image metrics of the conditional GAN: Frechet distance, MS-SSIM diversity, conditional
consistency and gene-traversal strips.

- :func:`frechet_distance` between two feature sets (the feature space is the caller's choice: the
  frozen encoder of the trained CAE, or radiomics features, a "Frechet radiomic distance"), with
  :func:`split_reference` giving the real-vs-real distance at the same sample size as the yardstick
  (the Frechet distance is biased upwards at small n, so only same-size comparisons mean anything).
- :func:`ms_ssim` in torch. 64 x 64 patches cannot hold the standard 5 scales with an 11-pixel window
  (that needs 176 pixels); we use a 7-pixel Gaussian window and as many scales as keep the coarsest
  image at least one window wide (4 scales at 64, 3 at 32), with the standard weights renormalised.
- :func:`mean_pairwise_ms_ssim` among samples for one profile: near 1 means mode collapse.
- :func:`conditional_consistency`: programs predicted from generated images vs the conditioning ones.
- :func:`traversal_profiles` / :func:`render_strip`: vary one program from low to high, noise fixed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from rgops.errors import ShapeError

log = logging.getLogger(__name__)

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003


def _features(name: str, a: np.ndarray) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim != 2 or len(arr) < 2:
        raise ShapeError(f"{name} has shape {arr.shape}, expected (n >= 2, d) feature rows")
    if not np.isfinite(arr).all():
        raise ShapeError(f"{name} holds non-finite values")
    return arr


def _sqrt_psd(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((c + c.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets ``a`` and ``b`` (rows = samples).

    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)``, computed through symmetric
    eigen-decompositions so it stays real and non-negative for rank-deficient covariances.
    """
    a, b = _features("features a", a), _features("features b", b)
    if a.shape[1] != b.shape[1]:
        raise ShapeError(f"feature sets have {a.shape[1]} and {b.shape[1]} dimensions; use one feature space")
    mu = a.mean(axis=0) - b.mean(axis=0)
    sa = np.atleast_2d(np.cov(a, rowvar=False))
    sb = np.atleast_2d(np.cov(b, rowvar=False))
    ra = _sqrt_psd(sa)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(ra @ sb @ ra), 0.0, None)).sum()
    return float(max(mu @ mu + np.trace(sa) + np.trace(sb) - 2.0 * cross, 0.0))


def split_reference(real: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Index halves ``(A, B)`` of a random split of ``real`` rows: the real-vs-real reference is
    ``frechet_distance(real[A], real[B])`` and a fair generated score is
    ``frechet_distance(real[A], generated_for(real[B]))``, at the same sample size."""
    n = len(real)
    if n < 4:
        raise ShapeError(f"need at least 4 real samples to split for a reference distance, got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2 : 2 * (n // 2)])


def _gaussian_window(size: int, sigma: float):  # noqa: ANN202 - torch tensor, lazy import
    import torch

    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ms_ssim_scales(size: int, win_size: int = 7) -> int:
    """Number of MS-SSIM scales for a ``size`` x ``size`` image: the coarsest stays >= one window."""
    scales = 1
    while scales < len(MS_SSIM_WEIGHTS) and size // (2**scales) >= win_size:
        scales += 1
    return scales


def ms_ssim(
    x: np.ndarray,
    y: np.ndarray,
    data_range: float = 2.0,
    win_size: int = 7,
    sigma: float = 1.5,
    scales: int | None = None,
) -> np.ndarray:
    """Multi-scale SSIM of each pair ``(x[i], y[i])``.

    Args:
        x, y: ``(B, 1, S, S)`` images; patches in [-1, 1] have ``data_range=2``.
        scales: number of scales; default :func:`ms_ssim_scales` (reduced for small patches).

    Returns:
        ``(B,)`` values in about [0, 1]; 1 for identical images.
    """
    import torch
    import torch.nn.functional as F

    xt = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    yt = torch.as_tensor(np.asarray(y), dtype=torch.float64)
    if xt.ndim != 4 or xt.shape[1] != 1 or xt.shape != yt.shape:
        raise ShapeError(f"ms_ssim expects two (B, 1, S, S) arrays of equal shape, got {tuple(xt.shape)} and {tuple(yt.shape)}")
    size = min(xt.shape[-2:])
    n_scales = ms_ssim_scales(size, win_size) if scales is None else scales
    if n_scales < 1 or size // (2 ** (n_scales - 1)) < win_size:
        raise ShapeError(f"{n_scales} MS-SSIM scales do not fit a {size}-pixel image with a {win_size}-pixel window")
    weights = torch.tensor(MS_SSIM_WEIGHTS[:n_scales], dtype=torch.float64)
    weights = weights / weights.sum()
    g = _gaussian_window(win_size, sigma)
    kx, ky = g.view(1, 1, 1, -1), g.view(1, 1, -1, 1)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(t):  # noqa: ANN001, ANN202
        return F.conv2d(F.conv2d(t, kx), ky)

    values = []
    for s in range(n_scales):
        mx, my = blur(xt), blur(yt)
        vx = blur(xt * xt) - mx**2
        vy = blur(yt * yt) - my**2
        cov = blur(xt * yt) - mx * my
        cs = ((2 * cov + c2) / (vx + vy + c2)).flatten(1).mean(1)
        if s == n_scales - 1:
            lum = ((2 * mx * my + c1) / (mx**2 + my**2 + c1)).flatten(1).mean(1)
            values.append(torch.relu(lum * cs))
        else:
            values.append(torch.relu(cs))  # negative contrast-structure would make the power undefined
            xt, yt = F.avg_pool2d(xt, 2), F.avg_pool2d(yt, 2)
    stacked = torch.stack(values, dim=1)  # (B, scales)
    return torch.prod(stacked ** weights.view(1, -1), dim=1).numpy()


def mean_pairwise_ms_ssim(samples: np.ndarray, max_pairs: int = 200, seed: int = 0, **kwargs: float) -> float:
    """Mean MS-SSIM over distinct pairs of ``samples`` ``(n, 1, S, S)`` (a random subset of at most
    ``max_pairs`` pairs). Low = diverse; near 1 = the generator ignores its noise (mode collapse)."""
    samples = np.asarray(samples)
    n = len(samples)
    if n < 2:
        raise ShapeError(f"pairwise MS-SSIM needs at least 2 samples, got {n}")
    i, j = np.triu_indices(n, k=1)
    if len(i) > max_pairs:
        pick = np.random.default_rng(seed).choice(len(i), max_pairs, replace=False)
        i, j = i[pick], j[pick]
    return float(ms_ssim(samples[i], samples[j], **kwargs).mean())


def conditional_consistency(predicted: np.ndarray, conditioning: np.ndarray) -> np.ndarray:
    """Pearson correlation, per program, of programs predicted from generated images (by a
    regressor trained on real images) with the programs the images were conditioned on.

    Returns:
        ``(K,)`` correlations; 0 for a program that is constant on either side.
    """
    p, c = np.asarray(predicted, dtype=np.float64), np.asarray(conditioning, dtype=np.float64)
    p = p[:, None] if p.ndim == 1 else p
    c = c[:, None] if c.ndim == 1 else c
    if p.shape != c.shape or p.ndim != 2 or len(p) < 3:
        raise ShapeError(f"predicted {p.shape} and conditioning {c.shape} must be equal (n >= 3, K)")
    pc, cc = p - p.mean(axis=0), c - c.mean(axis=0)
    den = np.linalg.norm(pc, axis=0) * np.linalg.norm(cc, axis=0)
    return np.where(den < 1e-12, 0.0, (pc * cc).sum(axis=0) / np.where(den < 1e-12, 1.0, den))


def traversal_profiles(base: np.ndarray, direction: np.ndarray, values: Sequence[float]) -> np.ndarray:
    """Gene profiles along one program: ``base + v * direction`` for each ``v`` in ``values``.

    ``direction`` is, with ground truth, the indicator of the program's module genes (each module
    gene moves by ``v`` standard deviations); without it, a gene principal axis.

    Returns:
        ``(len(values), G)`` float32.
    """
    b = np.asarray(base, dtype=np.float64).ravel()
    d = np.asarray(direction, dtype=np.float64).ravel()
    if b.shape != d.shape:
        raise ShapeError(f"base profile has {b.size} genes but direction has {d.size}")
    return (b[None, :] + np.asarray(values, dtype=np.float64)[:, None] * d[None, :]).astype(np.float32)


def traversal_strip(
    generate: Callable[[np.ndarray], np.ndarray],
    base: np.ndarray,
    direction: np.ndarray,
    values: Sequence[float],
) -> np.ndarray:
    """Images along one program with the noise fixed: ``generate`` maps ``(m, G)`` profiles to
    ``(m, 1, S, S)`` images and must reuse one noise vector for every row (so only the program
    changes). Returns the ``(m, 1, S, S)`` images."""
    images = np.asarray(generate(traversal_profiles(base, direction, values)))
    if images.ndim != 4 or len(images) != len(values):
        raise ShapeError(f"generate returned {images.shape}, expected ({len(values)}, 1, S, S)")
    return images


def tile(images: np.ndarray, rows: int = 1) -> np.ndarray:
    """Lay ``(n, 1, S, S)`` images out as one ``(rows*S, cols*S)`` array (row-major) for a PNG."""
    imgs = np.asarray(images)[:, 0]
    n, s = len(imgs), imgs.shape[-1]
    cols = -(-n // rows)
    canvas = np.full((rows * s, cols * s), float(imgs.min()) if n else 0.0)
    for k, im in enumerate(imgs):
        r, c = divmod(k, cols)
        canvas[r * s : (r + 1) * s, c * s : (c + 1) * s] = im
    return canvas
