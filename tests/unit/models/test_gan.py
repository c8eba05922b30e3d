import pytest
import torch

from rgops.errors import ConfigError, ShapeError
from rgops.models.gan import Discriminator, GANConfig, Generator, sample


def cfg(size=64):
    return GANConfig(image_size=size, n_genes=5, z_dim=8, gene_embed_dim=8, gene_hidden=8, g_channels=8,
                     d_channels=8, max_channels=32)


@pytest.mark.parametrize("size", [64, 128])
def test_generator_and_discriminator_shapes(size):
    torch.manual_seed(0)
    c = cfg(size)
    gen, disc = Generator(c), Discriminator(c)
    img = gen(torch.randn(3, 8), torch.randn(3, 5))
    assert img.shape == (3, 1, size, size) and img.abs().max() <= 1
    assert disc(img, torch.randn(3, 5)).shape == (3,)
    assert c.generator_channels()[-1] == 8 and len(c.generator_channels()) == c.levels + 1


def test_condition_reaches_both_networks():
    torch.manual_seed(0)
    c = cfg()
    gen, disc = Generator(c), Discriminator(c)
    z = torch.randn(2, 8)
    assert not torch.allclose(gen(z, torch.randn(2, 5)), gen(z, torch.randn(2, 5)))
    x = torch.rand(2, 1, 64, 64)
    disc.eval()
    assert not torch.allclose(disc(x, torch.randn(2, 5)), disc(x, torch.randn(2, 5)))


def test_sample_is_seeded_and_broadcasts_one_profile():
    torch.manual_seed(0)
    gen = Generator(cfg()).train()
    g = torch.randn(5)
    a, b, c = sample(gen, g, n=4, seed=3), sample(gen, g, n=4, seed=3), sample(gen, g, n=4, seed=4)
    assert a.shape == (4, 1, 64, 64) and torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # different noise per draw
    assert gen.training  # left as found
    with pytest.raises(ShapeError, match=r"\(5,\), \(1, 5\) or \(4, 5\)"):
        sample(gen, torch.randn(3, 5), n=4)


def test_errors():
    gen = Generator(cfg())
    with pytest.raises(ShapeError, match=r"noise of shape \(B, 8\)"):
        gen(torch.randn(2, 7), torch.randn(2, 5))
    with pytest.raises(ConfigError, match="power of two"):
        GANConfig(image_size=48, n_genes=5)


def test_scale_head_and_auxiliary_gene_head():
    import dataclasses

    torch.manual_seed(0)
    c = dataclasses.replace(cfg(), scale_head=True, aux_pcs=3, upsample="bilinear")
    gen, disc = Generator(c), Discriminator(c)
    z, g = torch.randn(4, 8), torch.randn(4, 5)
    img = gen(z, g)  # the serving contract: images only
    assert img.shape == (4, 1, 64, 64)
    scale = gen.log_scale(g)
    assert scale.shape == (4,) and not any(p.requires_grad for p in gen.scale.parameters())  # fitted, frozen
    score, aux = disc(img, g, with_aux=True)
    assert score.shape == (4,) and aux.shape == (4, 3) and disc.predict_genes(img).shape == (4, 3)
    with pytest.raises(ShapeError, match=r"\(B, 5\)"):
        gen.log_scale(torch.randn(4, 6))
    plain_gen, plain_disc = Generator(cfg()), Discriminator(cfg())
    with pytest.raises(ConfigError, match="scale_head"):
        plain_gen.log_scale(g)
    with pytest.raises(ConfigError, match="aux_pcs"):
        plain_disc.predict_genes(img)
    assert plain_disc(img, g, with_aux=True)[1] is None
    with pytest.raises(ConfigError, match="upsample"):
        GANConfig(n_genes=5, upsample="cubic")


@pytest.mark.parametrize("shape", [(3, 5, 4, 4), (2, 3, 8, 8), (1, 1, 1, 1), (2, 4, 6, 6)])
def test_upsample2x_bilinear_is_interpolate(shape):
    from rgops.models.gan import upsample2x_bilinear

    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    ours = upsample2x_bilinear(x)
    ref = torch.nn.functional.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    # gradients flow like interpolate's: each input pixel's weights sum to 4 (2 x 2 outputs)
    x.requires_grad_(True)
    upsample2x_bilinear(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 4.0))
