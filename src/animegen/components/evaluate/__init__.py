"""The evaluate component (component.py); see README.md."""
