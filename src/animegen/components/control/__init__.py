"""The control component (component.py); see README.md."""
