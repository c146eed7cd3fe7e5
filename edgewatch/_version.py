"""The package version, read by pyproject.toml and sent in every job-start record."""

__version__ = "0.1.0"
