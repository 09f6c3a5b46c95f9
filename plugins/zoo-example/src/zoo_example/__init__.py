"""zoo-example: a minimal zoo plugin (TinyNet backbones, the top-half policy)."""

__version__ = "0.1.0"
