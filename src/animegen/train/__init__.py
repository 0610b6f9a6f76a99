"""One training loop for every architecture."""
from .config import TrainConfig
from .loop import TrainingDiverged, TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "TrainingDiverged", "train"]
