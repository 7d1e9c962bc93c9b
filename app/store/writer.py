"""Write a model folder in the store layout: diffusers' own ``save_pretrained`` plus our card."""

from __future__ import annotations

import json
from pathlib import Path

from diffusers import DDPMPipeline

from app.store.card import CARD_FILE, WEIGHTS_FILE, ModelCard
from app.store.hashing import sha256_file


def save_model(folder: Path, *, unet, scheduler, card: ModelCard | None) -> Path:
    """Save ``unet`` and ``scheduler`` exactly as ``DDPMPipeline.save_pretrained`` does, then the card.

    The card's ``sha256`` is filled in here from the weights just written.
    """
    folder = Path(folder)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder, safe_serialization=True)
    for path in folder.rglob("*"):  # safetensors writes 0600; the store must be readable by the service user
        path.chmod(0o755 if path.is_dir() else 0o644)
    if card is not None:
        card = card.model_copy(update={"sha256": {WEIGHTS_FILE: sha256_file(folder / WEIGHTS_FILE)}})
        (folder / CARD_FILE).write_text(json.dumps(card.model_dump(mode="json"), indent=2) + "\n")
    return folder
