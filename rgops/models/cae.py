"""Conditional autoencoder (CAE): a tumour patch and a gene profile -> an imaging biomarker.

After Sui et al. (IEEE Access 2021). Read bottom-up: :class:`ConditionalAE` joins

* an image encoder ``(B, 1, S, S) -> (B, latent_dim)``: strided convolutions, then a linear layer;
  its output is the imaging biomarker;
* a gene encoder ``(B, G) -> (B, gene_embed_dim)``: a small MLP;
* a decoder ``(B, latent_dim [+ gene_embed_dim]) -> (B, 1, S, S)``: a linear layer, then
  transposed convolutions, ending in ``tanh`` because patches live in [-1, 1].

Where the genes enter is a config choice, because "conditioned on genes" can make the latent *less*
gene-informative (a decoder that receives the genes does not need the latent to carry them):

* ``"decoder"``: the decoder sees the gene embedding; the encoder (the biomarker) never sees genes.
* ``"encoder"``: the encoder sees the gene embedding beside the image features (the biomarker then
  depends on the profile given with the image).
* ``"none"``: no gene path in the autoencoder at all; with ``aux_gene_head=False`` this is the plain
  unconditional AE baseline.

``aux_gene_head`` adds a head trained to predict gene targets from the latent, which pushes gene
information *into* the latent (the gene-aligned objective; it needs no ground truth). With
``aux_pcs = k > 0`` the targets are the top ``k`` principal components of the training split's gene
matrix (standardised), with ``aux_pcs = 0`` the whole normalised gene vector. It predicts gene
targets rather than the gene embedding: an embedding trained jointly can shrink towards zero and
make that target trivial.

``scale_input`` makes the patch's physical scale (``log2(mm_per_px)``, patch contract v2, see
:mod:`rgops.data.patch`) the last coordinate of the latent, so the biomarker keeps the tumour's
absolute size that the bounding-box crop throws away, and the decoder and the gene head see it.
(Fed into the latent layer beside 4,096 image features instead, it was drowned out: held-out
proliferation R^2 -0.06 on the demo cohort.)

``views`` re-windows the patch inside the network: besides the stored window (lung, -1000 .. 500
HU), each ``(low, high)`` HU range of ``views`` becomes one more input channel, and training's
reconstruction loss is taken on every view. The patches are float32, so this loses nothing; it
only stops a 12 HU necrotic core (0.016 of the stored range) from vanishing in a loss dominated
by lung against tissue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from rgops.errors import ConfigError, ShapeError

Conditioning = Literal["decoder", "encoder", "none"]


@dataclass(frozen=True)
class CAEConfig:
    """Shape and size of a :class:`ConditionalAE`.

    Attributes:
        image_size: patch side S (a power of two, 2**len(widths) * 4 or more).
        n_genes: length G of the gene vector (the gene panel).
        latent_dim: size of the imaging biomarker.
        gene_embed_dim: size of the gene embedding (ignored with ``conditioning="none"``).
        gene_hidden: hidden width of the gene MLP.
        conditioning: where the gene embedding enters (``decoder``, ``encoder`` or ``none``).
        aux_gene_head: add a head that predicts gene targets from the latent (gene-aligned objective).
        aux_pcs: the head's targets: the top ``aux_pcs`` gene principal components of the training
            split (0: the whole normalised gene vector).
        scale_input: the patch scale ``log2(mm_per_px)`` ``(B,)`` is the latent's last coordinate.
        views: extra HU windows ``(low, high)`` the encoder sees as channels and the loss weighs.
        hu_window: the patch contract's HU window (how patch values map back to HU).
        widths: channels of the encoder stages; each halves the spatial size.
        groups: GroupNorm groups (per-sample normalisation: a biomarker must not depend on the batch).
    """

    image_size: int = 64
    n_genes: int = 0
    latent_dim: int = 32
    gene_embed_dim: int = 32
    gene_hidden: int = 128
    conditioning: Conditioning = "decoder"
    aux_gene_head: bool = False
    aux_pcs: int = 16
    scale_input: bool = False
    views: tuple[tuple[float, float], ...] = ()
    hu_window: tuple[float, float] = (-1000.0, 500.0)
    widths: tuple[int, ...] = (32, 64, 128, 256)
    groups: int = 8

    def __post_init__(self) -> None:
        s = self.image_size
        if s <= 0 or s & (s - 1):
            raise ConfigError(f"CAE image_size {s} is not a power of two; use 64 or 128")
        if s >> len(self.widths) < 2:
            raise ConfigError(
                f"CAE image_size {s} is too small for {len(self.widths)} encoder stages "
                f"(widths={list(self.widths)}); use fewer widths or a larger patch"
            )
        if self.n_genes < 1:
            raise ConfigError(f"CAE n_genes is {self.n_genes}; set it to the gene panel length (>= 1)")
        if self.latent_dim < 1 + int(self.scale_input) or self.gene_embed_dim < 1 or self.gene_hidden < 1:
            raise ConfigError("CAE latent_dim (>= 2 with scale_input), gene_embed_dim and gene_hidden must be >= 1")
        bad = [w for w in self.widths if w % self.groups]
        if bad:
            raise ConfigError(f"CAE widths {bad} are not divisible by groups={self.groups}")
        if self.aux_pcs < 0:
            raise ConfigError(f"CAE aux_pcs is {self.aux_pcs}; expected >= 0 (0: predict every gene)")
        if self.conditioning not in ("decoder", "encoder", "none"):
            raise ConfigError(f"CAE conditioning {self.conditioning!r}; expected decoder, encoder or none")

    @property
    def bottom(self) -> int:
        """Spatial side of the deepest feature map, ``S / 2**len(widths)``."""
        return self.image_size >> len(self.widths)

    @property
    def aux_dim(self) -> int:
        """Output size of the auxiliary head: ``aux_pcs`` gene PCs, or every gene when 0."""
        return self.aux_pcs or self.n_genes


def _down(cin: int, cout: int, groups: int) -> nn.Sequential:
    # (B, cin, s, s) -> (B, cout, s/2, s/2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, 4, stride=2, padding=1, bias=False),
        nn.GroupNorm(groups, cout),
        nn.SiLU(),
    )


def _up(cin: int, cout: int, groups: int) -> nn.Sequential:
    # (B, cin, s, s) -> (B, cout, 2s, 2s)
    return nn.Sequential(
        nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=False),
        nn.GroupNorm(groups, cout),
        nn.SiLU(),
    )


class GeneEncoder(nn.Module):
    """``(B, G) -> (B, embed_dim)``: a two-layer MLP over the normalised gene vector."""

    def __init__(self, n_genes: int, hidden: int, embed_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_genes, hidden), nn.SiLU(), nn.Linear(hidden, embed_dim))

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        return self.net(g)


class ConditionalAE(nn.Module):
    """The conditional autoencoder; see the module docstring for the three conditioning modes."""

    def __init__(self, config: CAEConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        w = list(c.widths)
        flat = w[-1] * c.bottom * c.bottom
        uses_genes = c.conditioning != "none"
        self.gene_encoder = GeneEncoder(c.n_genes, c.gene_hidden, c.gene_embed_dim) if uses_genes else None
        # Image encoder: (B, 1, S, S) -> (B, w[-1], S/2^k, S/2^k) -> (B, latent_dim)
        self.stem = nn.Sequential(*[_down(cin, cout, c.groups) for cin, cout in zip([1 + len(c.views)] + w[:-1], w)])
        enc_in = flat + (c.gene_embed_dim if c.conditioning == "encoder" else 0)
        self.to_latent = nn.Linear(enc_in, c.latent_dim - (1 if c.scale_input else 0))
        # Decoder: (B, latent_dim [+ gene_embed_dim]) -> (B, w[-1], b, b) -> (B, 1, S, S)
        dec_in = c.latent_dim + (c.gene_embed_dim if c.conditioning == "decoder" else 0)
        self.from_latent = nn.Sequential(nn.Linear(dec_in, flat), nn.SiLU())
        rev = w[::-1]
        self.up = nn.Sequential(*[_up(cin, cout, c.groups) for cin, cout in zip(rev[:-1], rev[1:])])
        self.head = nn.ConvTranspose2d(rev[-1], 1, 4, stride=2, padding=1)
        self.aux_head = (
            nn.Sequential(nn.Linear(c.latent_dim, c.gene_hidden), nn.SiLU(), nn.Linear(c.gene_hidden, c.aux_dim))
            if c.aux_gene_head else None
        )

    def _check(self, x: torch.Tensor | None, g: torch.Tensor | None, need_genes: bool) -> None:
        c = self.config
        if x is not None and (x.ndim != 4 or tuple(x.shape[1:]) != (1, c.image_size, c.image_size)):
            raise ShapeError(
                f"CAE expects patches of shape (B, 1, {c.image_size}, {c.image_size}), got {tuple(x.shape)}"
            )
        if need_genes:
            if g is None:
                raise ShapeError(f"CAE with conditioning={c.conditioning!r} needs a gene tensor (B, {c.n_genes})")
            if g.ndim != 2 or g.shape[1] != c.n_genes:
                raise ShapeError(f"CAE expects genes of shape (B, {c.n_genes}), got {tuple(g.shape)}")
            if x is not None and g.shape[0] != x.shape[0]:
                raise ShapeError(f"CAE got {x.shape[0]} patches but {g.shape[0]} gene profiles")

    def window_views(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, S, S)`` -> ``(B, 1 + V, S, S)``: the patch and its re-windowed views, each in [-1, 1]."""
        if not self.config.views:
            return x
        lo0, hi0 = self.config.hu_window
        hu = (x + 1.0) * 0.5 * (hi0 - lo0) + lo0
        extra = [((hu - lo) / (hi - lo) * 2.0 - 1.0).clamp(-1.0, 1.0) for lo, hi in self.config.views]
        return torch.cat([x, *extra], dim=1)

    def encode(self, x: torch.Tensor, g: torch.Tensor | None = None,
               scale: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, 1, S, S)``, genes ``(B, G)`` or None, scale ``(B,)`` -> the biomarker ``(B, latent_dim)``.

        The genes are read only with ``conditioning="encoder"``; otherwise they are ignored and may
        be None, so the biomarker of a patch never depends on its profile. ``scale`` is
        ``log2(mm_per_px)`` of each patch, required with ``scale_input``.
        """
        need = self.config.conditioning == "encoder"
        self._check(x, g, need)
        h = self.stem(self.window_views(x)).flatten(1)  # (B, 1 + V, S, S) -> (B, w[-1] * b * b)
        if need:
            h = torch.cat([h, self.gene_encoder(g)], dim=1)
        if self.config.scale_input:
            if scale is None or scale.shape != (x.shape[0],):
                got = None if scale is None else tuple(scale.shape)
                raise ShapeError(f"this CAE reads the patch scale: expected a scale tensor of shape ({x.shape[0]},) "
                                 f"(log2 mm per pixel, patch contract v2), got {got}")
            return torch.cat([self.to_latent(h), scale.to(h.dtype)[:, None]], dim=1)
        return self.to_latent(h)

    def decode(self, z: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        """Latent ``(B, latent_dim)`` (+ genes ``(B, G)`` with decoder conditioning) -> ``(B, 1, S, S)``."""
        c = self.config
        if z.ndim != 2 or z.shape[1] != c.latent_dim:
            raise ShapeError(f"CAE decode expects a latent of shape (B, {c.latent_dim}), got {tuple(z.shape)}")
        if c.conditioning == "decoder":
            self._check(None, g, True)
            z = torch.cat([z, self.gene_encoder(g)], dim=1)
        h = self.from_latent(z).view(z.shape[0], c.widths[-1], c.bottom, c.bottom)
        return torch.tanh(self.head(self.up(h)))

    def predict_genes(self, z: torch.Tensor) -> torch.Tensor:
        """Latent ``(B, latent_dim)`` -> predicted gene targets ``(B, aux_dim)`` (aux head)."""
        if self.aux_head is None:
            raise ConfigError("this CAE has no auxiliary gene head (aux_gene_head=false)")
        return self.aux_head(z)

    def forward(self, x: torch.Tensor, g: torch.Tensor | None = None, scale: torch.Tensor | None = None,
                return_latent: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Reconstruct ``(B, 1, S, S)`` from a patch, its genes and its scale.

        With ``return_latent`` returns ``(reconstruction, latent, predicted gene targets or None)``,
        which training uses so that one call runs through DistributedDataParallel.
        """
        z = self.encode(x, g, scale)
        recon = self.decode(z, g)
        if not return_latent:
            return recon
        return recon, z, (self.aux_head(z) if self.aux_head is not None else None)
