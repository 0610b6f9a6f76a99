"""Data sources and the packed Dataset artifact."""

from animegen.data.dataset import ImageSet, PackedDataset, open_dataset, read_packed, write_packed
from animegen.data.synthetic import generate as synthetic_faces

__all__ = ["ImageSet", "PackedDataset", "open_dataset", "read_packed", "synthetic_faces", "write_packed"]
