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
