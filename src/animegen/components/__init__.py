"""KFP v2 components: one folder per stage (component.py + README.md), each a thin wrapper over run_<stage>."""
