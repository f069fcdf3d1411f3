"""Stages, the artifact store, model loaders and recipes of the multilingual text-to-image bias study."""

from pathlib import Path

__version__ = "0.1.0"
# The checkout's top level, where the card templates (hub_cards/) and the evaluate modules (spaces/) live.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
