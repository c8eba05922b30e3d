"""A chest CT phantom with a lung tumour whose appearance follows phenotype parameters.

Everything is vectorised numpy on the ``(n_slices, rows, cols)`` grid, so a 256 x 256 x 30 volume
renders in a fraction of a second. Coordinates are millimetres from the volume centre: ``x``
along columns (patient left is +x), ``y`` along rows (posterior is +y), ``z`` along slices.

Anatomy: air outside, a body ellipse of soft tissue (~40 HU) under a fat rim (~-100 HU), a spine,
two lungs (~-850 HU) that narrow towards the apex and base, pulmonary vessels (tubes along z), and
one tumour in a lung. The tumour is a star-shaped 3D blob: its radius in each direction is the base
radius, a low-order lobulation and, for spiculated margins, narrow spikes. Inside, a solid part at
``attenuation_hu`` with smooth texture (``heterogeneity``), a low-HU necrotic core (``necrosis``)
and a ground-glass halo (``ggo_fraction``). The scanner applies a blur (kernel) and correlated
noise (site), which are not biology.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from rgops.errors import ConfigError

AIR_HU = -1000.0
FAT_HU = -100.0
SOFT_HU = 40.0
LUNG_HU = -850.0
BONE_HU = 600.0
MARROW_HU = 250.0
NECROSIS_HU = 12.0
GGO_INNER_HU = -400.0
GGO_OUTER_HU = -700.0
HU_MIN, HU_MAX = -1024, 3071


@dataclass(frozen=True)
class Tumour:
    """Phenotype parameters of one tumour (what the imaging-linked programs drive).

    Attributes:
        diameter_mm: base diameter of the blob (spikes extend beyond it).
        spiculation: 0 (smooth margin) .. 1 (long, many spikes).
        ggo_fraction: 0 .. 1, the outer fraction of the radius that is ground glass.
        necrosis: 0 .. 1, relative size of the low-HU core.
        heterogeneity: 0 .. 1, amplitude of the internal texture (x 60 HU).
        attenuation_hu: mean HU of the solid part.
    """

    diameter_mm: float
    spiculation: float
    ggo_fraction: float
    necrosis: float
    heterogeneity: float
    attenuation_hu: float


@dataclass(frozen=True)
class Scanner:
    """What the site (scanner and reconstruction kernel) does to the image: not biology."""

    blur_mm: float
    noise_hu: float


@dataclass(frozen=True)
class Geometry:
    """Voxel grid of one series."""

    rows: int
    n_slices: int
    pixel_spacing_mm: float
    slice_thickness_mm: float

    def __post_init__(self) -> None:
        if self.rows < 16 or self.n_slices < 1 or self.pixel_spacing_mm <= 0 or self.slice_thickness_mm <= 0:
            raise ConfigError(f"CT geometry {self} is not usable: need rows >= 16, n_slices >= 1 and "
                              "positive spacings")


def _axes(geom: Geometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    c = (np.arange(geom.rows, dtype=np.float32) - (geom.rows - 1) / 2) * geom.pixel_spacing_mm
    z = (np.arange(geom.n_slices, dtype=np.float32) - (geom.n_slices - 1) / 2) * geom.slice_thickness_mm
    return z, c, c


def _gaussian_noise_gain(sigma: float, truncate: float = 3.0) -> float:
    """Factor by which a 1D Gaussian filter (as scipy.ndimage applies it) scales white-noise std."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k /= k.sum()
    return float(np.sqrt((k**2).sum()))


def _unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def render(geom: Geometry, tumour: Tumour, scanner: Scanner, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Render one chest CT volume with its tumour.

    Args:
        geom: the voxel grid.
        tumour: phenotype parameters.
        scanner: blur and noise of the site.
        rng: the patient's random stream (anatomy, tumour shape, noise).

    Returns:
        ``(hu, mask)``: int16 HU ``(n_slices, rows, rows)`` clipped to [-1024, 3071], and the bool
        tumour mask of the same shape (before blur, i.e. the ground-truth extent).
    """
    z, y, x = _axes(geom)
    vol, ax_body, ay_body = _chest(geom, y[:, None], x[None, :], rng)
    # Lungs: ellipses either side of the mediastinum, smaller towards apex/base.
    lung = (0.45 * ax_body, -0.06 * ay_body, 0.34 * ax_body, 0.72 * ay_body)  # lx, ly, lax, lay
    lungs = _lungs(vol.shape, z, y[:, None], x[None, :], lung)
    vol[lungs] = LUNG_HU
    vol[_vessels(vol.shape, geom, z, lung, rng) & lungs] = SOFT_HU
    mask = np.zeros(vol.shape, dtype=bool)
    _draw_tumour(vol, mask, tumour, geom, (z, y, x), lung, rng)
    return _scan(vol, geom, scanner, rng), mask


def _chest(geom: Geometry, Y: np.ndarray, X: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float, float]:
    """Body, fat rim and spine (2D, the same on every slice) as a float32 HU volume, and the body's
    half axes. An adult chest is ~300 x 220 mm; a small field of view cuts it, as a targeted
    reconstruction would."""
    half_fov = geom.rows * geom.pixel_spacing_mm / 2
    ax_body = min(rng.uniform(135.0, 160.0), 0.95 * half_fov)
    ay_body = ax_body * rng.uniform(0.66, 0.76)
    fat = rng.uniform(6.0, 22.0)
    body = (X / ax_body) ** 2 + (Y / ay_body) ** 2 <= 1.0
    inner = (X / (ax_body - fat)) ** 2 + (Y / (ay_body - fat)) ** 2 <= 1.0
    vol2d = np.where(body, np.where(inner, SOFT_HU, FAT_HU), AIR_HU).astype(np.float32)
    spine_r = 0.11 * ax_body
    spine_y = 0.62 * ay_body
    d_spine = np.sqrt(X**2 + (Y - spine_y) ** 2)
    vol2d = np.where(d_spine <= spine_r, np.where(d_spine <= 0.75 * spine_r, MARROW_HU, BONE_HU), vol2d)
    return np.broadcast_to(vol2d, (geom.n_slices, geom.rows, geom.rows)).copy(), ax_body, ay_body


def _lungs(shape: tuple[int, ...], z: np.ndarray, Y: np.ndarray, X: np.ndarray,
           lung: tuple[float, float, float, float]) -> np.ndarray:
    """Both lungs' mask; the chest narrows a little with |z|."""
    lx, ly, lax, lay = lung
    z_ext = max(float(np.abs(z).max()), 1.0)
    taper = (1.0 - 0.25 * (z / z_ext) ** 2).astype(np.float32)[:, None, None]
    lungs = np.zeros(shape, dtype=bool)
    for side in (-1.0, 1.0):
        lungs |= ((X - side * lx) / (lax * taper)) ** 2 + ((Y - ly) / (lay * taper)) ** 2 <= 1.0
    return lungs


def _vessels(shape: tuple[int, ...], geom: Geometry, z: np.ndarray, lung: tuple[float, float, float, float],
             rng: np.random.Generator, n_vessels: int = 14) -> np.ndarray:
    """Vessels: tubes drifting slowly with z, stamped as discs (the scanner blur smooths their edges)."""
    lx, ly, lax, lay = lung
    vessels = np.zeros(shape, dtype=bool)
    ks = np.arange(geom.n_slices)
    centre_px = (geom.rows - 1) / 2
    for side in (-1.0, 1.0):
        r = np.sqrt(rng.uniform(0, 0.8, n_vessels))
        th = rng.uniform(0, 2 * np.pi, n_vessels)
        cx = side * lx + r * np.cos(th) * lax
        cy = ly + r * np.sin(th) * lay
        slope = rng.normal(0, 0.25, size=(n_vessels, 2))
        radius_mm = rng.uniform(1.0, 3.0, n_vessels)
        for v in range(n_vessels):
            rad = max(radius_mm[v] / geom.pixel_spacing_mm, 0.5)
            span = np.arange(-int(np.ceil(rad)), int(np.ceil(rad)) + 1)
            dr, dc = np.meshgrid(span, span, indexing="ij")
            disc = dr**2 + dc**2 <= rad**2
            dr, dc = dr[disc], dc[disc]
            rows = np.rint((cy[v] + slope[v, 1] * z) / geom.pixel_spacing_mm + centre_px).astype(int)
            cols = np.rint((cx[v] + slope[v, 0] * z) / geom.pixel_spacing_mm + centre_px).astype(int)
            rr = (rows[:, None] + dr[None, :]).ravel()
            cc = (cols[:, None] + dc[None, :]).ravel()
            kk = np.repeat(ks, dr.size)
            ok = (rr >= 0) & (rr < geom.rows) & (cc >= 0) & (cc < geom.rows)
            vessels[kk[ok], rr[ok], cc[ok]] = True
    return vessels


def _scan(vol: np.ndarray, geom: Geometry, scanner: Scanner, rng: np.random.Generator) -> np.ndarray:
    """Scanner: white noise, then the kernel blur over image and noise together (one filter), so the
    noise texture follows the kernel as in real CT; the noise is pre-scaled so that its standard
    deviation after the blur is ``scanner.noise_hu``. Returns int16 HU clipped to [HU_MIN, HU_MAX]."""
    sigma_px = max(scanner.blur_mm / geom.pixel_spacing_mm, 0.6)
    gain = _gaussian_noise_gain(sigma_px) ** 2  # two in-plane dimensions
    vol += rng.standard_normal(vol.shape, dtype=np.float32) * np.float32(scanner.noise_hu / gain)
    vol = ndimage.gaussian_filter(vol, sigma=(0, sigma_px, sigma_px), truncate=3.0)
    return np.clip(np.rint(vol), HU_MIN, HU_MAX).astype(np.int16)


def _draw_tumour(vol: np.ndarray, mask: np.ndarray, t: Tumour, geom: Geometry,
                 axes: tuple[np.ndarray, np.ndarray, np.ndarray], lung: tuple[float, float, float, float],
                 rng: np.random.Generator) -> None:
    z, y, x = axes
    lx, ly, lax, lay = lung
    side = rng.choice([-1.0, 1.0])
    radius = t.diameter_mm / 2
    # Centre inside the lung, away from its edge where possible; z near the middle of the volume.
    room_x = max(lax - radius * 1.1, 0.0)
    room_y = max(lay - radius * 1.1, 0.0)
    ang = rng.uniform(0, 2 * np.pi)
    rr = np.sqrt(rng.uniform(0, 0.5))
    c = np.array([
        rng.uniform(-0.15, 0.15) * geom.n_slices * geom.slice_thickness_mm / 2,
        ly + rr * np.sin(ang) * room_y,
        side * lx + rr * np.cos(ang) * room_x,
    ], dtype=np.float32)
    reach = radius * (1.0 + 1.3 * t.spiculation + 0.3) + 2 * geom.pixel_spacing_mm

    def window(axis: np.ndarray, centre: float) -> slice:
        idx = np.flatnonzero(np.abs(axis - centre) <= reach)
        return slice(int(idx[0]), int(idx[-1]) + 1) if idx.size else slice(0, 0)

    sz, sy, sx = window(z, c[0]), window(y, c[1]), window(x, c[2])
    dz = (z[sz] - c[0])[:, None, None]
    dy = (y[sy] - c[1])[None, :, None]
    dx = (x[sx] - c[2])[None, None, :]
    if min(dz.size, dy.size, dx.size) == 0:
        return
    dist = np.sqrt(dz**2 + dy**2 + dx**2) + 1e-6
    u = np.stack(np.broadcast_arrays(dz / dist, dy / dist, dx / dist), axis=-1)  # (bz, by, bx, 3)

    lobe_dirs = _unit_vectors(rng, 3)
    lobe_amp = rng.normal(0, 0.07, 3).astype(np.float32)
    shape = 1.0 + (u @ lobe_dirs.T) @ lobe_amp
    n_spikes = int(rng.integers(6, 12) + 14 * t.spiculation)
    spike_dirs = _unit_vectors(rng, n_spikes)
    spike_len = rng.uniform(0.6, 1.4, n_spikes).astype(np.float32) * 1.3 * t.spiculation
    cosang = np.clip(u @ spike_dirs.T, 0.0, 1.0)
    shape = shape + (cosang**60 @ spike_len)
    tnorm = dist / (radius * shape)
    inside = tnorm <= 1.0

    solid_edge = 1.0 - t.ggo_fraction
    texture = ndimage.gaussian_filter(rng.standard_normal(dist.shape).astype(np.float32),
                                      sigma=max(1.5 / geom.pixel_spacing_mm, 0.6))
    texture /= max(float(texture.std()), 1e-6)
    solid_hu = t.attenuation_hu + 60.0 * t.heterogeneity * texture
    hu = np.where(tnorm < 0.75 * t.necrosis * solid_edge, NECROSIS_HU + 5.0 * texture, solid_hu)
    ramp = np.clip((1.0 - tnorm) / max(t.ggo_fraction, 1e-3), 0.0, 1.0)
    hu = np.where(tnorm < solid_edge, hu, GGO_OUTER_HU + (GGO_INNER_HU - GGO_OUTER_HU) * ramp)

    block = vol[sz, sy, sx]
    vol[sz, sy, sx] = np.where(inside, hu, block)
    mask[sz, sy, sx] = inside
