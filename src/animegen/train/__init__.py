"""One training loop for every architecture: run_train (from scratch) and run_transfer (from another Model)."""
from animegen.train.config import TrainConfig
from animegen.train.log import TrainingDiverged
from animegen.train.loop import TrainResult, run_train, run_transfer

__all__ = ["TrainConfig", "TrainResult", "TrainingDiverged", "run_train", "run_transfer"]
