"""The ingest component (component.py); see README.md."""
