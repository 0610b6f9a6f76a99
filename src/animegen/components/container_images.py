"""Container images of the pipeline's stages: one source of truth for components, containers/ and manifests/.

Both images install this package at exactly this version (containers/Dockerfile.cpu, containers/Dockerfile.gpu).
"""
from animegen import __version__

IMAGE_REPOSITORY = "ghcr.io/animegen"
CPU_IMAGE = f"{IMAGE_REPOSITORY}/animegen-cpu:{__version__}"  # ingest, label, tagger, evaluate, report
GPU_IMAGE = f"{IMAGE_REPOSITORY}/animegen-gpu:{__version__}"  # train, transfer (CUDA runtime)
