"""The tagger component (component.py); see README.md."""
