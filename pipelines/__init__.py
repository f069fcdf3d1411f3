"""Stages, the artifact store, model loaders and recipes of the multilingual text-to-image bias study."""

__version__ = "0.1.0"
