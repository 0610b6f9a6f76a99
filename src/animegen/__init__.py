"""animegen: train, fine-tune and evaluate anime-face GANs."""

__version__ = "0.1.0"
