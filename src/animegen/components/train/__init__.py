"""The train component (component.py); see README.md."""
