"""One training loop for every architecture."""
from animegen.train.config import TrainConfig
from animegen.train.log import TrainingDiverged
from animegen.train.loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "TrainingDiverged", "train"]
