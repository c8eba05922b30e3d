import dataclasses
import math

import pytest
import torch

from rgops.config import load_params
from rgops.errors import ConfigError
from rgops.training import load_preset, model_config, train_cae, train_gan
from tests.conftest import make_training_datasets


class RecordingTracker:
    """A real implementation of the Tracker protocol that keeps everything in lists."""

    def __init__(self):
        self.params, self.metrics, self.images, self.figures, self.tags = {}, [], [], [], {}

    def log_params(self, params):
        self.params.update(params)

    def log_metrics(self, metrics, step):
        self.metrics.append((step, dict(metrics)))

    def log_image(self, image, artifact_file):
        self.images.append((artifact_file, image))

    def log_figure(self, figure, artifact_file):
        self.figures.append(artifact_file)

    def log_artifact(self, path, artifact_path=None):
        raise AssertionError("training does not log files")

    def set_tags(self, tags):
        self.tags.update(tags)


@pytest.fixture(scope="module")
def ds():
    return make_training_datasets(n=24)


def preset(kind, ds, **train_overrides):
    fields, train_cfg = load_preset(load_params("params.yaml"), kind, "tiny")
    return model_config(kind, ds, fields), dataclasses.replace(train_cfg, **train_overrides)


@pytest.mark.parametrize("kind", ["cae", "gan"])
def test_train_reports_every_epoch_and_learns(kind, ds):
    cfg, tcfg = preset(kind, ds)
    tracker = RecordingTracker()
    fn = train_cae if kind == "cae" else train_gan
    result = fn(ds, cfg, tcfg, tracker=tracker, device="cpu")
    assert [s for s, _ in tracker.metrics] == [1, 2]
    assert all(math.isfinite(v) for _, m in tracker.metrics for v in m.values())
    assert tracker.params["model.image_size"] == 64 and tracker.params["kind"] == kind
    assert tracker.params["n_train"] == 16 and tracker.tags["rgops.device"] == "cpu"
    folder = "reconstructions" if kind == "cae" else "samples"
    assert [f for f, _ in tracker.images] == [f"{folder}/epoch_001.png", f"{folder}/epoch_002.png"]
    assert tracker.images[0][1].dtype.name == "uint8"
    assert tracker.figures == ["plots/loss_curves.png"]
    assert result.steps == 2 * 2 and not result.module.training
    assert next(result.module.parameters()).device.type == "cpu"
    if kind == "cae":
        assert result.metrics["train_recon_mse"] < 2 and "val_recon_mse" in result.metrics
    else:
        assert result.discriminator is not None and "val_d_real" in result.metrics


class Crash(Exception):
    pass


@pytest.mark.parametrize("kind", ["cae", "gan"])
def test_in_process_resume_matches_uninterrupted_bit_for_bit(kind, ds, tmp_path):
    fn = train_cae if kind == "cae" else train_gan
    cfg, tcfg = preset(kind, ds, epochs=2, checkpoint_every=1)
    full = fn(ds, cfg, tcfg, device="cpu")

    def crash_at_4(done, total):
        if done == 4:
            raise Crash

    with pytest.raises(Crash):
        fn(ds, cfg, tcfg, device="cpu", checkpoint_dir=tmp_path, progress=crash_at_4)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert (state["step"], state["epoch"], state["batch"]) == (3, 1, 1)  # mid-epoch checkpoint
    resumed = fn(ds, cfg, tcfg, device="cpu", checkpoint_dir=tmp_path, resume=True)
    assert resumed.steps == full.steps == 4
    for (name, a), b in zip(full.module.state_dict().items(), resumed.module.state_dict().values()):
        assert torch.equal(a, b), name
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("epoch_seconds", "images_per_second")} for r in h]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)


def test_wrong_data_or_missing_checkpoint_dir(ds):
    cfg, tcfg = preset("cae", ds)
    with pytest.raises(ConfigError, match="13 genes"):
        train_cae(ds, dataclasses.replace(cfg, n_genes=13), tcfg, device="cpu")
    with pytest.raises(ConfigError, match="--checkpoint-dir"):
        train_cae(ds, cfg, tcfg, device="cpu", resume=True)
