"""The label component (component.py); see README.md."""
