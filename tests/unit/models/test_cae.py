import pytest
import torch

from rgops.errors import ConfigError, ShapeError
from rgops.models.cae import CAEConfig, ConditionalAE


def small(conditioning="decoder", aux=False, size=64, aux_pcs=0, scale_input=False):
    return ConditionalAE(CAEConfig(image_size=size, n_genes=5, latent_dim=6, gene_embed_dim=4, gene_hidden=8,
                                   conditioning=conditioning, aux_gene_head=aux, widths=(8, 16), aux_pcs=aux_pcs,
                                   scale_input=scale_input))


@pytest.mark.parametrize("size", [64, 128])
@pytest.mark.parametrize("conditioning", ["decoder", "encoder", "none"])
def test_shapes(conditioning, size):
    torch.manual_seed(0)
    m = small(conditioning, aux=True, size=size)
    x, g = torch.rand(3, 1, size, size) * 2 - 1, torch.randn(3, 5)
    recon, z, gp = m(x, g, return_latent=True)
    assert recon.shape == (3, 1, size, size) and z.shape == (3, 6) and gp.shape == (3, 5)
    assert recon.abs().max() <= 1
    assert torch.equal(m.encode(x, g), z)


@pytest.mark.parametrize("conditioning", ["decoder", "none"])
def test_biomarker_never_sees_genes_unless_encoder_conditioned(conditioning):
    torch.manual_seed(0)
    m = small(conditioning)
    x = torch.rand(2, 1, 64, 64)
    assert torch.equal(m.encode(x, torch.randn(2, 5)), m.encode(x, torch.randn(2, 5)))
    assert torch.equal(m.encode(x, None), m.encode(x, torch.randn(2, 5)))


def test_encoder_conditioning_uses_genes_and_decoder_conditioning_changes_reconstruction():
    torch.manual_seed(0)
    enc, dec = small("encoder"), small("decoder")
    x = torch.rand(2, 1, 64, 64)
    assert not torch.equal(enc.encode(x, torch.randn(2, 5)), enc.encode(x, torch.randn(2, 5)))
    z = dec.encode(x)
    assert not torch.equal(dec.decode(z, torch.randn(2, 5)), dec.decode(z, torch.randn(2, 5)))


def test_unconditional_baseline_has_no_gene_path():
    m = small("none", aux=False)
    assert m.gene_encoder is None and m.aux_head is None
    with pytest.raises(ConfigError, match="no auxiliary gene head"):
        m.predict_genes(torch.zeros(1, 6))


def test_shape_errors_name_the_shapes():
    m = small("decoder")
    with pytest.raises(ShapeError, match=r"\(B, 1, 64, 64\), got \(2, 1, 32, 32\)"):
        m(torch.zeros(2, 1, 32, 32), torch.zeros(2, 5))
    with pytest.raises(ShapeError, match=r"\(B, 5\), got \(2, 4\)"):
        m(torch.zeros(2, 1, 64, 64), torch.zeros(2, 4))
    with pytest.raises(ShapeError, match="needs a gene tensor"):
        m(torch.zeros(2, 1, 64, 64), None)


@pytest.mark.parametrize("kwargs,match", [
    ({"image_size": 60}, "power of two"),
    ({"image_size": 4}, "too small"),
    ({"n_genes": 0}, "n_genes"),
    ({"widths": (12, 16)}, "divisible"),
])
def test_config_errors(kwargs, match):
    base = {"image_size": 64, "n_genes": 5, "widths": (8, 16)}
    with pytest.raises(ConfigError, match=match):
        CAEConfig(**{**base, **kwargs})


def test_gene_pc_head_and_scale_input():
    torch.manual_seed(0)
    m = small("none", aux=True, aux_pcs=3, scale_input=True)
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    recon, z, gp = m(x, None, torch.tensor([-1.0, 0.5]), return_latent=True)
    assert gp.shape == (2, 3) and z.shape == (2, 6)
    # the biomarker carries the physical scale: same image, another mm per pixel, another latent
    assert not torch.equal(m.encode(x, None, torch.zeros(2)), m.encode(x, None, torch.ones(2)))
    with pytest.raises(ShapeError, match="scale"):
        m.encode(x)
