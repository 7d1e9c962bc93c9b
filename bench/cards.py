"""Write a benchmark's figures into a model's card (``metrics.<key>``), beside the training record."""

from __future__ import annotations

import json
from pathlib import Path


def record_metrics(store: Path, model: str, key: str, record: dict) -> Path:
    path = Path(store) / model / "model_card.json"
    card = json.loads(path.read_text())
    card.setdefault("metrics", {})[key] = record
    path.write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote metrics.{key} into {path}")
    return path
