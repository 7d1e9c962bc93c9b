"""Pieces shared by test modules (test modules never import from each other)."""

from __future__ import annotations

from pathlib import Path

from app.settings import Settings


def make_settings(store: Path, **overrides) -> Settings:
    values = dict(model_store=store, device="cpu", max_batch=64, denoise_tile=64, denoise_overlap=8)
    values.update(overrides)
    return Settings(**values)
