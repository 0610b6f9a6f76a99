"""Data sources and the packed Dataset artifact."""

from animegen.data.dataset import ImageSet, open_dataset, write_packed
from animegen.data.synthetic import generate as synthetic_faces

__all__ = ["ImageSet", "open_dataset", "synthetic_faces", "write_packed"]
