import pytest
import torch

from rgops.config import load_params
from rgops.errors import ConfigError, TrainingError
from rgops.training.common import (AugmentConfig, augment, epoch_batches, image_grid, load_checkpoint,
                                   save_checkpoint, step_generator)
from rgops.training.presets import load_preset, model_config
from tests.conftest import make_training_datasets


def test_augment_is_seeded_in_window_and_pads_with_air():
    x = torch.full((4, 1, 16, 16), 1.0)
    gen = lambda: step_generator(0, 0, 7, torch.device("cpu"))  # noqa: E731
    cfg = AugmentConfig(flip=True, max_rotation_deg=30.0, intensity_scale=0.0, intensity_shift=0.0)
    a, b = augment(x, cfg, gen()), augment(x, cfg, gen())
    assert torch.equal(a, b) and a.shape == x.shape
    assert a.min() >= -1 and a.max() <= 1
    assert torch.isclose(a.min(), torch.tensor(-1.0))  # rotated-in corners are air (-1), not zeros
    jit = augment(torch.zeros(64, 1, 4, 4), AugmentConfig(flip=False, max_rotation_deg=0.0), gen())
    per_sample = jit[:, 0, 0, 0]
    assert per_sample.abs().max() <= 0.04 + 1e-6 and per_sample.std() > 0


def test_augment_is_per_sample():
    x = torch.rand(6, 1, 8, 8) * 2 - 1
    cfg = AugmentConfig()
    full = augment(x, cfg, step_generator(1, 0, 0, torch.device("cpu")))
    poisoned = x.clone()
    poisoned[1:] = 5.0  # other patients' values must not leak into sample 0
    assert torch.equal(augment(poisoned, cfg, step_generator(1, 0, 0, torch.device("cpu")))[0], full[0])


def test_epoch_batches_shard_evenly_and_depend_on_epoch():
    one = torch.cat(epoch_batches(10, 4, 0, 0))
    assert sorted(one.tolist()) == list(range(10))
    assert not torch.equal(one, torch.cat(epoch_batches(10, 4, 1, 0)))
    r0, r1 = torch.cat(epoch_batches(11, 4, 0, 0, 0, 2)), torch.cat(epoch_batches(11, 4, 0, 0, 1, 2))
    assert len(r0) == len(r1) == 5 and not set(r0.tolist()) & set(r1.tolist())
    assert all(len(b) <= 2 for b in epoch_batches(11, 4, 0, 0, 0, 2))


def test_checkpoint_round_trip_and_refusals(tmp_path):
    state = {"kind": "cae", "model_config": {"a": 1}, "train_config": {"lr": 0.1}, "dataset_digest": "d" * 64,
             "model": {"w": torch.ones(2)}}
    save_checkpoint(tmp_path, state)
    back = load_checkpoint(tmp_path, "cae", {"a": 1}, {"lr": 0.1}, "d" * 64)
    assert torch.equal(back["model"]["w"], torch.ones(2))
    with pytest.raises(TrainingError, match=r"train_config \(differs in \['lr'\]\)"):
        load_checkpoint(tmp_path, "cae", {"a": 1}, {"lr": 0.2}, "d" * 64)
    with pytest.raises(TrainingError, match="expected 'rgops-checkpoint/1'/'gan'"):
        load_checkpoint(tmp_path, "gan", {"a": 1}, {"lr": 0.1}, "d" * 64)
    with pytest.raises(TrainingError, match="trained on dataset dddd"):
        load_checkpoint(tmp_path, "cae", {"a": 1}, {"lr": 0.1}, "e" * 64)
    with pytest.raises(TrainingError, match="does not exist"):
        load_checkpoint(tmp_path / "none", "cae", {}, {}, "")
    (tmp_path / "last.pt").write_bytes(b"garbage")
    with pytest.raises(TrainingError, match="cannot be read"):
        load_checkpoint(tmp_path, "cae", {"a": 1}, {"lr": 0.1}, "d" * 64)


def test_image_grid():
    grid = image_grid(torch.stack([torch.full((1, 4, 4), -1.0), torch.full((1, 4, 4), 1.0)]), nrow=2, pad=1)
    assert grid.shape == (6, 11) and grid[1, 1] == 0 and grid[1, 6] == 255


def test_presets_from_params_yaml():
    params = load_params("params.yaml")
    ds = make_training_datasets(n=6, size=64, n_genes=3)
    for kind in ("cae", "gan"):
        for preset in ("tiny", "demo", "full"):
            fields, train_cfg = load_preset(params, kind, preset)
            cfg = model_config(kind, ds, fields)
            assert cfg.image_size == 64 and cfg.n_genes == 3 and train_cfg.epochs >= 1


@pytest.mark.parametrize("mutate,match", [
    (lambda p: p["train"]["cae"]["presets"]["tiny"].update(epochz=1), r"unknown key\(s\) \['epochz'\]"),
    (lambda p: p["train"]["cae"]["model"].update(image_size=64), "come from the datasets"),
    (lambda p: p["train"]["cae"]["model"].update(conditioning="both"), "expected one of"),
    (lambda p: p["train"]["cae"]["presets"]["tiny"].update(lr=0), "lr must be > 0"),
])
def test_preset_errors(mutate, match):
    params = load_params("params.yaml")
    mutate(params)
    with pytest.raises(ConfigError, match=match):
        load_preset(params, "cae", "tiny")
    with pytest.raises(ConfigError, match="available"):
        load_preset(load_params("params.yaml"), "gan", "huge")
