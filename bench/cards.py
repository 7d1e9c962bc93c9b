"""Write a benchmark's figures into a model's card (``metrics.<key>``), beside the training record."""

from __future__ import annotations

import json
import os
from pathlib import Path

# the variables that change what a benchmark measures: oneDNN's and PyTorch's instruction sets, the service's settings
RUN_VARIABLES = ("ONEDNN_", "ATEN_", "DIFFUSION_")


def run_environment() -> dict[str, str]:
    """The environment variables a record names, so its command can be run again as it ran."""
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith(RUN_VARIABLES)}


def record_metrics(store: Path, model: str, key: str, record: dict) -> Path:
    path = Path(store) / model / "model_card.json"
    card = json.loads(path.read_text())
    card.setdefault("metrics", {})[key] = record
    path.write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote metrics.{key} into {path}")
    return path
