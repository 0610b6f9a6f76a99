"""The transfer component (component.py); see README.md."""
