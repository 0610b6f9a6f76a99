"""The report component (component.py); see README.md."""
