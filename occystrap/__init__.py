"""occystrap: fetch container images from registries without Docker or root."""

__version__ = "0.1.0"
