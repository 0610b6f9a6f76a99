"""The studio: an interactive page and HTTP API to generate faces from trained models (``animegen studio``)."""
