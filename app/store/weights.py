"""Which safetensors files of a component are loaded, as diffusers and transformers name them (no torch here).

A component folder holds its weights in one of the layouts ``save_pretrained`` writes:

- one file: ``diffusion_pytorch_model.safetensors`` (diffusers) or ``model.safetensors`` (transformers);
- sharded: ``diffusion_pytorch_model.safetensors.index.json`` naming ``diffusion_pytorch_model-00001-of-00002
  .safetensors`` ... in its ``weight_map`` (``max_shard_size``);
- a variant (``variant="fp16"``): ``diffusion_pytorch_model.fp16.safetensors``, or sharded,
  ``diffusion_pytorch_model.safetensors.index.fp16.json`` naming ``diffusion_pytorch_model.fp16-00001-of-...``.

The plain files are loaded where they exist, else a variant (fp32, fp16, bf16, then others by name): a
Hugging Face snapshot downloaded with ``variant="fp16"`` has only those. The weights are held in float32
whatever the file's precision (the runner computes in bf16 or float16 by autocast where that pays), so
their memory is counted from the tensors' shapes in the files' headers (read by safetensors), not from the
files' sizes.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

STEMS = ("diffusion_pytorch_model", "model")  # diffusers' name first, then transformers'
PREFERRED_VARIANTS = ("fp32", "fp16", "bf16")
_VARIANT = r"[A-Za-z0-9_]+"
_SINGLE = re.compile(rf"^(?P<stem>{'|'.join(STEMS)})\.(?P<variant>{_VARIANT})\.safetensors$")
_INDEX = re.compile(rf"^(?P<stem>{'|'.join(STEMS)})\.safetensors\.index\.(?P<variant>{_VARIANT})\.json$")
_ITEM_BYTES = {"I64": 8, "U64": 8, "I32": 4, "U32": 4, "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1}


class WeightsRefused(ValueError):
    """A component whose weights cannot be loaded as they are, with the reason."""


@dataclass(frozen=True)
class Weights:
    """The weights of one component that are loaded."""

    name: str  # the file named: the weights file, or a sharded one's index
    variant: str | None  # diffusers' and transformers' ``variant`` ("fp16"), None for the plain files
    files: tuple[str, ...]  # the safetensors files read, in the component's folder
    float32_bytes: int  # the memory the tensors take once loaded (floating ones as float32)

    def describe(self) -> str:
        shards = f", {len(self.files)} shards" if len(self.files) > 1 else ""
        return f"{self.name}{shards}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "variant": self.variant, "files": list(self.files), "bytes": self.float32_bytes}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Weights":
        return cls(data["name"], data.get("variant"), tuple(data.get("files", ())), int(data.get("bytes", 0)))


def _name(stem: str, variant: str | None, *, index: bool) -> str:
    if index:
        return f"{stem}.safetensors.index.json" if variant is None else f"{stem}.safetensors.index.{variant}.json"
    return f"{stem}.safetensors" if variant is None else f"{stem}.{variant}.safetensors"


def _variants(names: set[str]) -> list[str]:
    found = {m["variant"] for n in names if (m := _SINGLE.match(n) or _INDEX.match(n))}
    preferred = [v for v in PREFERRED_VARIANTS if v in found]
    return preferred + sorted(found - set(preferred))


def find_weights(folder: Path, component: str, stems: tuple[str, ...]) -> Weights:
    """The weights of ``folder/component`` that are loaded; refused, with what is there, if none can be.
    ``stems``: the file names its library loads (diffusers' ``diffusion_pytorch_model``, transformers'
    ``model``), the first found first."""
    where = folder / component
    names = {p.name for p in where.iterdir() if p.is_file()} if where.is_dir() else set()
    for variant in [None, *_variants(names)]:
        for stem in stems:
            single, index = _name(stem, variant, index=False), _name(stem, variant, index=True)
            if single in names and index in names:
                raise WeightsRefused(
                    f"{component}/ holds both {single} and the sharded {index}: keep one, so that every "
                    "loader reads the same weights"
                )
            if single in names:
                return Weights(single, variant, (single,), float32_bytes(where / single))
            if index in names:
                files = _shards(where, index, names)
                return Weights(index, variant, files, sum(float32_bytes(where / f) for f in files))
    present = sorted(n for n in names if ".safetensors" in n)
    found = f": found {', '.join(present[:3])}" if present else ""
    wanted = " or ".join(_name(stem, None, index=False) for stem in stems)
    raise WeightsRefused(f"missing {component}/ safetensors weights ({wanted}, sharded or a variant){found}")


def _shards(where: Path, index: str, names: set[str]) -> tuple[str, ...]:
    """The files a sharded index's ``weight_map`` names: plain names of files in the same folder."""
    rel = f"{where.name}/{index}"
    try:
        data = json.loads((where / index).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:  # (nesting too deep to parse)
        raise WeightsRefused(f"unreadable {rel}: {type(exc).__name__}: {exc}") from exc
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise WeightsRefused(f"{rel} has no weight_map of tensor names to files")
    files = sorted({f for f in weight_map.values() if isinstance(f, str)})
    if len(files) != len(set(map(str, weight_map.values()))):
        raise WeightsRefused(f"{rel}: every weight_map value must be a file name")
    for file in files:
        if "/" in file or "\\" in file or file in (".", "..") or not file.endswith(".safetensors"):
            raise WeightsRefused(f"{rel} names {file!r}: shards must be .safetensors files beside the index")
        if file not in names:
            raise WeightsRefused(f"{rel} names {file}, which is missing")
    return tuple(files)


def float32_bytes(path: Path) -> int:
    """The memory a safetensors file's tensors take once loaded, floating ones as float32: read from its
    header by safetensors itself (each tensor's dtype and shape), not from the data. safetensors checks the
    header against the file as it does when the model loads, so a file cut short is refused here, at scan."""
    rel = f"{path.parent.name}/{path.name}"
    try:
        with safe_open(path, framework="numpy") as handle:  # maps the file; reads only its header
            total = 0
            for key in handle.keys():
                tensor = handle.get_slice(key)
                dtype = tensor.get_dtype()
                count = math.prod(tensor.get_shape())
                total += count * (4 if dtype.startswith(("F", "BF")) else _ITEM_BYTES.get(dtype, 4))
    except (SafetensorError, OSError) as exc:
        raise WeightsRefused(f"{rel} cannot be loaded by safetensors: {exc}") from exc
    return total
