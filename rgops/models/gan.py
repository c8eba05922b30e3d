"""Conditional GAN: a gene profile and noise -> a tumour patch.

In the spirit of Xu et al., "Correlation via synthesis" (MIDL 2020). Read bottom-up:

* :class:`GeneEmbedding` ``(B, G) -> (B, gene_embed_dim)``: an MLP over the normalised gene vector.
* :class:`Generator` ``z (B, z_dim), g (B, G) -> (B, 1, S, S)`` in [-1, 1]: a linear layer to a
  4 x 4 map, then ``log2(S / 4)`` upsampling blocks; each block normalises its features and lets
  the condition ``w = MLP([z, embed(g)])`` set their scale and shift (FiLM / AdaIN), so the genes
  act at every scale.
  With ``scale_head`` the generator also says at which physical scale its patch is drawn:
  :meth:`Generator.log_scale` ``g (B, G) -> (B,)`` predicts ``log2(mm_per_px)`` from the genes
  with a linear map that training fits by ridge regression and freezes (a regression on about a
  hundred training patients, not an adversarial output).
  Patch contract v2 crops 2 x the tumour's bounding box, so every tumour fills about the same
  share of its patch and absolute size lives only in the scale: without it a generated image cannot
  show size (tumour area in mm^2 = pixels x mm_per_px^2).
* :class:`Discriminator` ``x (B, 1, S, S), g (B, G) -> (B,)`` scores: spectrally normalised strided
  convolutions to a feature vector ``h``, then ``linear(h) + <embed(g), h>`` (projection
  discriminator), so it judges whether the image fits the profile, not only whether it is real.
  With ``aux_pcs > 0`` it also predicts the profile's top gene principal components from ``h``
  (:meth:`Discriminator.predict_genes`, AC-GAN style): trained on real images, it gives the
  generator a direct gradient towards images whose appearance carries the requested genes.

Training (rgops/training/gan.py) uses the hinge loss, feeds mismatched (real image, other
patient's genes) pairs as extra negatives and keeps an EMA copy of the generator for sampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from rgops.errors import ConfigError, ShapeError


@dataclass(frozen=True)
class GANConfig:
    """Shape and size of a :class:`Generator` / :class:`Discriminator` pair.

    Attributes:
        image_size: patch side S (64 or 128; any power of two >= 8).
        n_genes: length G of the gene vector.
        z_dim: noise size.
        gene_embed_dim: size of the gene embedding (both networks have their own).
        gene_hidden: hidden width of the gene MLPs.
        g_channels: generator channels at full resolution; doubled per level towards 4 x 4,
            capped at ``max_channels``.
        d_channels: discriminator channels after the first layer; doubled per level likewise.
        max_channels: channel cap of both networks.
        groups: GroupNorm groups in the generator.
        scale_head: the generator also predicts ``log2(mm_per_px)`` of its patch from the genes
            (:meth:`Generator.log_scale`); off only for models trained before patch contract v2.
        aux_pcs: the discriminator predicts this many top gene PCs of the training split from the
            image (AC-GAN auxiliary head); 0 = no head.
        upsample: ``nearest`` or ``bilinear`` upsampling in the generator blocks (bilinear gives
            fewer grid artefacts).
    """

    image_size: int = 64
    n_genes: int = 0
    z_dim: int = 64
    gene_embed_dim: int = 64
    gene_hidden: int = 128
    g_channels: int = 32
    d_channels: int = 32
    max_channels: int = 256
    groups: int = 8
    scale_head: bool = False
    aux_pcs: int = 0
    upsample: Literal["nearest", "bilinear"] = "nearest"

    def __post_init__(self) -> None:
        s = self.image_size
        if s < 8 or s & (s - 1):
            raise ConfigError(f"GAN image_size {s} is not a power of two >= 8; use 64 or 128")
        if self.n_genes < 1:
            raise ConfigError(f"GAN n_genes is {self.n_genes}; set it to the gene panel length (>= 1)")
        for name in ("z_dim", "gene_embed_dim", "gene_hidden", "g_channels", "d_channels", "max_channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"GAN {name} must be >= 1, got {getattr(self, name)}")
        if self.aux_pcs < 0:
            raise ConfigError(f"GAN aux_pcs must be >= 0 (0 = no auxiliary head), got {self.aux_pcs}")
        if self.upsample not in ("nearest", "bilinear"):
            raise ConfigError(f"GAN upsample is {self.upsample!r}; use 'nearest' or 'bilinear'")
        bad = [c for c in self.generator_channels() if c % self.groups]
        if bad:
            raise ConfigError(f"GAN generator channels {bad} are not divisible by groups={self.groups}")

    @property
    def levels(self) -> int:
        """Number of 2x resolution steps between 4 x 4 and S x S."""
        return int(math.log2(self.image_size // 4))

    def generator_channels(self) -> list[int]:
        """Channels at 4 x 4, 8 x 8, ..., S x S (``levels + 1`` entries)."""
        return [min(self.g_channels * 2 ** (self.levels - i), self.max_channels) for i in range(self.levels + 1)]

    def discriminator_channels(self) -> list[int]:
        """Channels at S/2, S/4, ..., 4 (``levels`` entries)."""
        return [min(self.d_channels * 2**i, self.max_channels) for i in range(self.levels)]


class GeneEmbedding(nn.Module):
    """``(B, G) -> (B, embed_dim)``."""

    def __init__(self, n_genes: int, hidden: int, embed_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_genes, hidden), nn.SiLU(), nn.Linear(hidden, embed_dim))

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        return self.net(g)


def upsample2x_bilinear(h: torch.Tensor) -> torch.Tensor:
    """``(B, C, s, s) -> (B, C, 2s, 2s)``: bilinear 2x upsampling with ``align_corners=False``, the same
    numbers as ``F.interpolate(h, scale_factor=2, mode="bilinear")``, from elementwise ops.

    Output pixel ``2i`` is ``0.75 h[i] + 0.25 h[i-1]`` and ``2i+1`` is ``0.75 h[i] + 0.25 h[i+1]``, the
    border repeated. On CUDA, PyTorch's NCHW bilinear kernel parallelises over output pixels only and
    loops over batch x channels inside each thread: at 4x4 -> 8x8 with batch 512 it took 82% of a GAN
    training step on an H200 (bench/train_profile.py).
    """
    def along(x: torch.Tensor, dim: int) -> torch.Tensor:
        n = x.shape[dim]
        prev = torch.cat([x.narrow(dim, 0, 1), x.narrow(dim, 0, n - 1)], dim)
        nxt = torch.cat([x.narrow(dim, 1, n - 1), x.narrow(dim, n - 1, 1)], dim)
        even, odd = 0.75 * x + 0.25 * prev, 0.75 * x + 0.25 * nxt
        return torch.stack([even, odd], dim + 1).flatten(dim, dim + 1)

    return along(along(h, 2), 3)


class FiLMBlock(nn.Module):
    """``(B, cin, s, s), w (B, W) -> (B, cout, 2s, 2s)``: upsample, conv, normalise, condition."""

    def __init__(self, cin: int, cout: int, w_dim: int, groups: int, upsample: str = "nearest") -> None:
        super().__init__()
        self.upsample = upsample
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm1 = nn.GroupNorm(groups, cout, affine=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, cout, affine=False)
        self.film = nn.Linear(w_dim, 4 * cout)  # scale and shift for both convolutions
        self.act = nn.SiLU()

    def forward(self, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        s1, b1, s2, b2 = self.film(w)[:, :, None, None].chunk(4, dim=1)
        if self.upsample == "bilinear":
            h = upsample2x_bilinear(h)
        else:
            h = nn.functional.interpolate(h, scale_factor=2.0, mode="nearest")
        h = self.act(self.norm1(self.conv1(h)) * (1 + s1) + b1)
        return self.act(self.norm2(self.conv2(h)) * (1 + s2) + b2)


class Generator(nn.Module):
    """``z (B, z_dim), g (B, G) -> (B, 1, S, S)`` in [-1, 1]."""

    def __init__(self, config: GANConfig) -> None:
        super().__init__()
        self.config = c = config
        ch = c.generator_channels()
        w_dim = c.z_dim + c.gene_embed_dim
        self.embed = GeneEmbedding(c.n_genes, c.gene_hidden, c.gene_embed_dim)
        self.mapping = nn.Sequential(nn.Linear(w_dim, w_dim), nn.SiLU(), nn.Linear(w_dim, w_dim))
        self.to_map = nn.Linear(w_dim, ch[0] * 16)  # -> (B, ch[0], 4, 4)
        self.blocks = nn.ModuleList(FiLMBlock(a, b, w_dim, c.groups, c.upsample) for a, b in zip(ch[:-1], ch[1:]))
        self.to_image = nn.Conv2d(ch[-1], 1, 3, padding=1)
        # A frozen linear map genes -> log2 mm/px, fitted by ridge before training (rgops.training.gan).
        self.scale = nn.Linear(c.n_genes, 1).requires_grad_(False) if c.scale_head else None

    def log_scale(self, g: torch.Tensor) -> torch.Tensor:
        """``g (B, G) -> (B,)``: predicted ``log2(mm_per_px)`` of the patches drawn for these profiles.

        Raises:
            ConfigError: the model was built without ``scale_head``.
            ShapeError: ``g`` is not ``(B, G)``.
        """
        if self.scale is None:
            raise ConfigError("this generator has no scale head (GANConfig.scale_head=False); retrain with "
                              "scale_head: true to get the physical scale of its patches")
        if g.ndim != 2 or g.shape[1] != self.config.n_genes:
            raise ShapeError(f"log_scale expects genes of shape (B, {self.config.n_genes}), got {tuple(g.shape)}")
        return self.scale(g).squeeze(1)

    def forward(self, z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """``z (B, z_dim), g (B, G) -> (B, 1, S, S)`` in [-1, 1] (the scale is :meth:`log_scale`)."""
        c = self.config
        if z.ndim != 2 or z.shape[1] != c.z_dim:
            raise ShapeError(f"generator expects noise of shape (B, {c.z_dim}), got {tuple(z.shape)}")
        if g.ndim != 2 or g.shape[1] != c.n_genes or g.shape[0] != z.shape[0]:
            raise ShapeError(
                f"generator expects genes of shape ({z.shape[0]}, {c.n_genes}) to match the noise, got {tuple(g.shape)}"
            )
        w = self.mapping(torch.cat([z, self.embed(g)], dim=1))  # (B, W)
        h = self.to_map(w).view(z.shape[0], -1, 4, 4)  # (B, ch0, 4, 4)
        for block in self.blocks:  # 4 -> 8 -> ... -> S
            h = block(h, w)
        return torch.tanh(self.to_image(h))  # (B, 1, S, S)


class Discriminator(nn.Module):
    """``x (B, 1, S, S), g (B, G) -> (B,)`` realness scores of (image, profile) pairs."""

    def __init__(self, config: GANConfig) -> None:
        super().__init__()
        self.config = c = config
        ch = c.discriminator_channels()
        layers: list[nn.Module] = []
        for cin, cout in zip([1] + ch[:-1], ch):  # S -> S/2 -> ... -> 4
            layers += [spectral_norm(nn.Conv2d(cin, cout, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers)
        feat = ch[-1] * 16
        self.out = spectral_norm(nn.Linear(feat, 1))
        self.embed = nn.Sequential(
            spectral_norm(nn.Linear(c.n_genes, c.gene_hidden)), nn.SiLU(), spectral_norm(nn.Linear(c.gene_hidden, feat))
        )
        self.aux = nn.Linear(feat, c.aux_pcs) if c.aux_pcs else None

    def _check(self, x: torch.Tensor) -> None:
        c = self.config
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, c.image_size, c.image_size):
            raise ShapeError(f"discriminator expects (B, 1, {c.image_size}, {c.image_size}), got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor, g: torch.Tensor, with_aux: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """``x (B, 1, S, S), g (B, G) -> (B,)`` scores; with ``with_aux`` also the ``(B, aux_pcs)``
        gene-PC predictions of the auxiliary head (None without one)."""
        c = self.config
        self._check(x)
        if g.ndim != 2 or g.shape != (x.shape[0], c.n_genes):
            raise ShapeError(f"discriminator expects genes of shape ({x.shape[0]}, {c.n_genes}), got {tuple(g.shape)}")
        h = self.features(x).flatten(1)  # (B, ch[-1] * 16)
        score = self.out(h).squeeze(1) + (self.embed(g) * h).sum(dim=1)  # projection term
        if not with_aux:
            return score
        return score, (self.aux(h) if self.aux is not None else None)

    def predict_genes(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, 1, S, S) -> (B, aux_pcs)``: the auxiliary head's gene-PC prediction from the image alone.

        Raises:
            ConfigError: the model was built with ``aux_pcs=0``.
        """
        if self.aux is None:
            raise ConfigError("this discriminator has no auxiliary gene head (GANConfig.aux_pcs=0)")
        self._check(x)
        return self.aux(self.features(x).flatten(1))


@torch.no_grad()
def sample(generator: Generator, genes: torch.Tensor, n: int = 1, seed: int = 0) -> torch.Tensor:
    """Draw ``n`` patches ``(n, 1, S, S)`` for one profile, or one per row of a batch of profiles.

    Args:
        generator: a trained (usually the EMA) generator; it is run in eval mode and left as found.
        genes: ``(G,)`` or ``(1, G)`` for ``n`` draws of one profile, or ``(n, G)``.
        n: number of samples.
        seed: seeds the noise, so the same call gives the same images.
    """
    c = generator.config
    g = genes.reshape(1, -1) if genes.ndim == 1 else genes
    if g.ndim != 2 or g.shape[1] != c.n_genes or g.shape[0] not in (1, n):
        raise ShapeError(f"sample expects genes of shape ({c.n_genes},), (1, {c.n_genes}) or ({n}, {c.n_genes}), "
                         f"got {tuple(genes.shape)}")
    if n < 1:
        raise ShapeError(f"sample needs n >= 1, got {n}")
    device = next(generator.parameters()).device
    rng = torch.Generator(device="cpu").manual_seed(seed)
    z = torch.randn(n, c.z_dim, generator=rng).to(device)
    g = g.to(device=device, dtype=torch.float32).expand(n, -1)
    was_training = generator.training
    generator.eval()
    try:
        return generator(z, g)
    finally:
        generator.train(was_training)
