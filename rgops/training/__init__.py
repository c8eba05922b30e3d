"""Training loops for the CAE and the conditional GAN (device-agnostic; CPU, CUDA, DDP).

Importing this package imports torch but neither mlflow nor matplotlib: a tracker is passed in.
"""

from rgops.training.cae import train_cae
from rgops.training.common import AugmentConfig, CAETrainConfig, GANTrainConfig, Tracker, TrainResult
from rgops.training.gan import train_gan
from rgops.training.presets import load_preset, model_config

__all__ = ["AugmentConfig", "CAETrainConfig", "GANTrainConfig", "Tracker", "TrainResult", "load_preset",
           "model_config", "train_cae", "train_gan"]
