"""Find the models in the store and check them before any weight is loaded (no torch here).

Each sub-folder is a candidate (a link to a folder elsewhere too): its name must match ``NAME_PATTERN``;
it must hold its family's configs, a scheduler config, safetensors weights for each component in a layout
``save_pretrained`` writes (``app/store/weights.py``) and no pickle files; the card's sha256 must match. A
folder that fails is kept with its reason, so ``GET /v1/models/{name}`` can say why it is not served.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import ValidationError

from app.diffusion.schedule_config import schedule_problem
from app.store.card import CARD_FILE, ModelCard, SamplingDefaults
from app.store.families import (
    FAMILIES,
    PIPELINE_FAMILY,
    Conditioning,
    FamilySpec,
    sampler_for_scheduler,
    unsupported_scheduler_option,
)
from app.store.hashing import file_signature, sha256_unless_unchanged
from app.store.weights import Weights, WeightsRefused, find_weights

log = logging.getLogger(__name__)
# The block types diffusers' UNet classes take where a config leaves them out (their __init__ defaults)
_DEFAULT_BLOCKS = {
    "UNet2DModel": (
        ("DownBlock2D",) + ("AttnDownBlock2D",) * 3,
        ("AttnUpBlock2D",) * 3 + ("UpBlock2D",),
    ),
    "UNet2DConditionModel": (
        ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    ),
}

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)
# What a config value of an unexpected shape raises where it is read: a string for a list (TypeError), 1e999
# for an int (OverflowError), a nesting too deep to parse (RecursionError) ...
MALFORMED = (TypeError, ValueError, KeyError, AttributeError, IndexError, RecursionError, ArithmeticError)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
Status = Literal["ready", "error"]


class ModelRefused(ValueError):
    """A model folder that must not be served, with the reason."""


@dataclass
class ModelEntry:
    name: str
    path: Path
    status: Status = "ready"
    error: str | None = None
    card: ModelCard = field(default_factory=ModelCard)
    has_card: bool = False
    denoiser_config: dict[str, Any] = field(default_factory=dict)  # unet/ or transformer/ config.json
    family: str = "pixel"
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # the other components' configs
    weights: dict[str, Weights] = field(default_factory=dict)  # each component's weights that are loaded
    weights_bytes: int = 0  # the memory the weights take once loaded (in float32, whatever the files hold)
    loaded: bool = False  # in an engine's memory now (set by the engine)
    files: tuple = ()  # each file of the folder with its signature at scan: a rescan tells a changed folder
    workers: int | None = None  # Redis mode: the workers serving it now (set by an API node's merge)
    scheduler_config: dict[str, Any] = field(default_factory=dict)

    def fail(self, reason: str) -> None:
        self.status, self.error = "error", reason
        log.error("model %r is not served: %s", self.name, reason)

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    # -- what the model can do: the API checks every request against this before it becomes a job ------
    @property
    def spec(self) -> FamilySpec:
        return FAMILIES[self.family]

    @property
    def conditioning(self) -> Conditioning:
        if self.spec.text:
            return "text"
        return "class" if self.num_classes else "none"

    @property
    def null_class(self) -> int | None:
        """The label that means "no class" (for guidance and unconditional sampling), if the model has one."""
        if self.card.null_class is not None:
            return self.card.null_class
        if self.spec.null_after_classes and self.num_classes:
            return self.num_classes - 1  # DiTPipeline's class_null: 1000
        return None

    @property
    def latent_factor(self) -> int:
        """Image pixels per latent pixel, per side (1 for pixel-space models)."""
        if not self.spec.latent:
            return 1
        return 2 ** max(0, len(self.configs.get("vae", {}).get("block_out_channels", [0])) - 1)

    @property
    def fold(self) -> int:
        """Image pixels per network pixel, per side, of a space-to-depth pixel model (the card's), else 1."""
        return 1 if self.spec.latent else self.card.space_to_depth

    @property
    def latent_channels(self) -> int:
        if self.spec.latent:
            return int(self.configs.get("vae", {}).get("latent_channels", 4))
        return self.channels

    @property
    def extra_channels(self) -> int:
        """Input channels beyond the latents: 5 for an inpainting UNet (the mask and the masked image)."""
        if not self.spec.latent:
            return 0
        return max(0, int(self.denoiser_config.get("in_channels", self.latent_channels)) - self.latent_channels)

    @property
    def size_multiple(self) -> int:
        """Generated width and height must be multiples of this: the VAE's factor, times the network's own
        unless it takes latents of any size."""
        return self.latent_factor * (1 if self.spec.any_latent_size else self.downsample_factor)

    @property
    def attention_stride(self) -> tuple[int, str] | None:
        """(image pixels per position along each side, where) of this model's attention layer at the finest
        resolution, whose cost grows with the square of its positions (a convolution's with their number);
        None where the model attends nowhere. From the configs as diffusers reads them: a UNet's blocks
        named ``*Attn*`` (level i works at 1/2^i), its middle block (at the coarsest level: UNet2DModel's
        unless ``add_attention`` is off, UNet2DConditionModel's cross-attention one), a transformer's patches
        (every block attends over all of them), and a VAE's middle block (at the latents' resolution)."""
        config, base = self.denoiser_config, self.latent_factor * self.fold
        found: list[tuple[int, str]] = []
        if self.spec.patch_key is not None:
            found.append((base * self.downsample_factor, "its transformer's blocks"))
        else:
            default_down, default_up = _DEFAULT_BLOCKS.get(self.denoiser_class, ((), ()))
            down = list(config.get("down_block_types") or default_down)
            up = list(config.get("up_block_types") or default_up)
            levels = [(i, f"down block {i}") for i, kind in enumerate(down) if "Attn" in str(kind)]
            levels += [(len(up) - 1 - j, f"up block {j}") for j, kind in enumerate(up) if "Attn" in str(kind)]
            conditional = self.denoiser_class == "UNet2DConditionModel"
            mid = config.get("mid_block_type", "UNetMidBlock2DCrossAttn" if conditional else "UNetMidBlock2D")
            if (
                down
                and mid is not None
                and ("Attn" in str(mid) or (not conditional and config.get("add_attention", True)))
            ):
                levels.append((len(down) - 1, "its middle block"))
            found += [(base * 2**level, where) for level, where in levels]
        vae = self.configs.get("vae")
        if self.spec.latent and vae is not None:
            if vae.get("mid_block_add_attention", True):
                found.append((self.latent_factor, "its VAE's middle block"))
            for i, kind in enumerate(vae.get("down_block_types") or []):  # AttnDownEncoderBlock2D: at 1/2^i
                if "Attn" in str(kind):
                    found.append((2**i, f"its VAE's encoder block {i}"))
            ups = list(vae.get("up_block_types") or [])
            for j, kind in enumerate(ups):  # the decoder's block j works at the latents' size x 2^j
                if "Attn" in str(kind):
                    found.append((max(1, self.latent_factor >> j), f"its VAE's decoder block {j}"))
        return min(found, key=lambda f: f[0]) if found else None

    @property
    def defaults(self) -> SamplingDefaults:
        """The card's defaults; without a card, a latent model samples as its pipeline does: its scheduler's
        sampler, 50 steps, and diffusers' default guidance (7.5 for Stable Diffusion, 4 for DiT; ours is
        that minus 1, see the README)."""
        if self.has_card or not self.spec.latent:
            defaults = self.card.defaults
        else:
            guidance = 6.5 if self.spec.text else 3.0
            defaults = SamplingDefaults(
                sampler=sampler_for_scheduler(self.scheduler_config) or "euler", steps=50, guidance_scale=guidance
            )
        if defaults.steps > self.train_timesteps:  # a default nobody wrote (a card's own is refused at scan)
            defaults = defaults.model_copy(update={"steps": self.train_timesteps})
        return defaults

    @property
    def parameters(self) -> list[str]:
        """The generate fields this model takes; any other is a 422 naming it."""
        fields = [
            "model",
            "num_images",
            "steps",
            "sampler",
            "eta",
            "seed",
            "output_format",
            "priority",
            "preview_every",
        ]
        if self.conditioning == "text":
            fields += ["prompt", "negative_prompt", "guidance_scale"]
        elif self.conditioning == "class":
            fields += ["class_label"] + (["guidance_scale"] if self.null_class is not None else [])
        if self.spec.sizes:
            fields += ["width", "height"]
        return fields

    def refusal(self, task: str) -> str | None:
        """Why this model cannot serve ``task`` (None: it can)."""
        if task not in self.spec.tasks:
            return f"{self.family} models serve {' and '.join(self.spec.tasks)} only"
        if task not in self.card.tasks:
            return f"its model card does not list {task}"
        if self.channels not in (1, 2, 3, 4):
            return f"it has {self.channels} image channels: images have 1 (grey), 2 (grey, alpha), 3 (RGB) or 4"
        if task == "denoise":
            if self.channels not in (1, 3):
                return f"it has {self.channels} channels: denoising needs a grey or RGB model"
            if self.num_classes and self.null_class is None:
                # A class-conditional network needs a label at every step; denoising has none to give it
                # unless the model was trained with a null (unconditional) class.
                return "it is class-conditional without a null class, so it has no label for an unknown image"
        return None

    @property
    def tasks(self) -> list[str]:
        """The tasks this model really serves: the card's, less those it cannot do."""
        return [task for task in self.card.tasks if self.refusal(task) is None]

    # What the API needs to validate requests, inferred from the configs where the card is silent.
    @property
    def channels(self) -> int:
        """Image channels (a latent model's images are its VAE's)."""
        if self.card.channels:
            return self.card.channels
        if self.spec.latent:
            return int(self.configs.get("vae", {}).get("out_channels", 3))
        return int(self.denoiser_config.get("in_channels", 3)) // self.fold**2

    @property
    def image_size(self) -> tuple[int, int]:
        """The native (height, width) in image pixels."""
        if self.card.image_size:
            return tuple(self.card.image_size)
        # checked at scan (_check_sizes); a refused folder's card may still be shown: 0x0 there
        h, w = sides(self.denoiser_config.get("sample_size", 32)) or (0, 0)
        return h * self.latent_factor * self.fold, w * self.latent_factor * self.fold

    @property
    def num_classes(self) -> int:
        """Label embeddings the network has (the null class included), 0 when unconditional."""
        key = self.spec.classes_key
        if key is None:
            return 0
        count = int(self.denoiser_config.get(key, self.spec.classes_default.get(self.denoiser_class)) or 0)
        return count + 1 if count and self.spec.null_after_classes else count

    @property
    def class_count(self) -> int:
        """The classes a request may name (the null class not among them), 0 when unconditional."""
        named = self.card.class_names
        return len(named) if named else max(0, self.num_classes - (1 if self.null_class is not None else 0))

    def label_refusal(self, label: int | None) -> tuple[str, str] | None:
        """Why this model cannot condition on class index ``label`` (None: unconditional), as (error type,
        message), or None. The API checks a request by it, and the engine checks a job again against the
        model it runs on, which may have changed in the store since the job was accepted."""
        if label is None:
            if self.num_classes and self.null_class is None:
                why = f"model {self.name!r} is class-conditional without a null class: class_label is required"
                return "missing", why
            return None
        if not self.num_classes:
            return "unsupported", f"model {self.name!r} is unconditional: it takes no class_label"
        if not 0 <= label < self.class_count:
            return "out_of_range", f"class_label must be between 0 and {self.class_count - 1}"
        return None

    @property
    def class_lookup(self) -> dict[str, int]:
        """Class names to indices: each comma-separated synonym, as DiTPipeline reads ImageNet's ("tench,
        Tinca tinca": "tench" and "Tinca tinca"; a synonym two classes share is the later class's, as there),
        and each whole name."""
        names = self.card.class_names or []
        synonyms = {part.strip(): i for i, name in enumerate(names) for part in name.split(",") if part.strip()}
        return {**{name: i for i, name in enumerate(names)}, **synonyms}

    @property
    def denoiser_class(self) -> str:
        return self.denoiser_config.get("_class_name", self.spec.denoiser_classes[0])

    @property
    def train_timesteps(self) -> int:
        return int(self.scheduler_config.get("num_train_timesteps", 1000))

    @property
    def square_only(self) -> bool:
        """A transformer (DiT) works on square images only: diffusers' DiT puts its patches back together as a
        square (side = the square root of their count), and any other shape fails inside it."""
        return self.spec.patch_key is not None

    @property
    def downsample_factor(self) -> int:
        """How much the denoising network downsamples (a transformer works on patches: its patch size; a
        space-to-depth UNet's fold counts)."""
        if self.spec.patch_key:
            return int(self.denoiser_config.get(self.spec.patch_key, 2))
        return self.fold * 2 ** max(0, len(self.denoiser_config.get("block_out_channels", [0])) - 1)

    def to_dict(self) -> dict[str, Any]:
        """Everything an API node needs to validate requests, as published by workers through Redis."""
        return {
            "name": self.name,
            "status": self.status,
            "error": self.error,
            "has_card": self.has_card,
            "card": self.card.model_dump(mode="json"),
            "denoiser_config": self.denoiser_config,
            "scheduler_config": self.scheduler_config,
            "family": self.family,
            "configs": self.configs,
            "weights": {component: w.to_dict() for component, w in self.weights.items()},
            "weights_bytes": self.weights_bytes,
            "loaded": self.loaded,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelEntry":
        return cls(
            name=data["name"],
            path=Path(data["name"]),
            status=data["status"],
            error=data.get("error"),
            card=ModelCard.model_validate(data["card"]),
            has_card=data.get("has_card", False),
            denoiser_config=data.get("denoiser_config", {}),
            scheduler_config=data.get("scheduler_config", {}),
            family=data.get("family", "pixel"),
            configs=data.get("configs", {}),
            weights={c: Weights.from_dict(w) for c, w in data.get("weights", {}).items()},
            weights_bytes=data.get("weights_bytes", 0),
            loaded=data.get("loaded", False),
        )

    def public(self) -> dict[str, Any]:
        """The JSON shown by ``GET /v1/models``."""
        body: dict[str, Any] = {
            "name": self.name,
            "status": self.status,
            "loaded": self.loaded,
            "weights_gb": round(self.weights_bytes / 1024**3, 3),
            "weights": {component: w.describe() for component, w in self.weights.items()},
        }
        if self.error:
            body["error"] = self.error
        if self.workers is not None:
            body["workers"] = self.workers
        if self.ready or self.has_card:
            try:
                body["card"] = self._card()
            except MALFORMED as exc:  # a folder refused for a config value of the wrong shape: its card as written
                if self.ready:
                    raise
                log.debug("model %r: card shown as written (%s: %s)", self.name, type(exc).__name__, exc)
                body["card"] = self.card.model_dump(mode="json")
        return body

    def _card(self) -> dict[str, Any]:
        """The card as listed: as written, with what the configs say (family, sizes, defaults, tasks ...)."""
        card = self.card.model_dump(mode="json")
        card.update(
            family=self.family,
            conditioning=self.conditioning,
            image_size=list(self.image_size),
            channels=self.channels,
            prediction_type=self.scheduler_config.get("prediction_type", "epsilon"),
            train_timesteps=self.train_timesteps,
            guidance=self.spec.text or self.null_class is not None,
            defaults=self.defaults.model_dump(mode="json"),
            parameters=self.parameters,
            size_multiple=self.size_multiple,  # img2img takes any size of these multiples, on every model
            # an inpainting network reads a mask and a masked image: it serves img2img with a mask, nothing else
            inpainting=self.extra_channels > 0,
        )
        if self.num_classes:  # the labels a request may give (0 .. class_count - 1), named or not, and the null
            card.update(class_count=self.class_count, null_class=self.null_class)
        card["tasks"] = self.tasks
        unavailable = {t: self.refusal(t) for t in self.card.tasks if self.refusal(t)}
        if unavailable:
            card["tasks_unavailable"] = unavailable
        return card


def safe_model_path(store: Path, name: str) -> Path:
    """The folder of model ``name``, refusing names that are not one plain path segment. The folder may be
    a link to a folder elsewhere (a Hugging Face cache snapshot, say): the operator put it there."""
    if not _NAME.fullmatch(name):
        raise ModelRefused(f"invalid model name {name!r}: must match {NAME_PATTERN}")
    return store / name


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModelRefused(f"missing {path.parent.name}/{path.name}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:  # (nested past parsing)
        raise ModelRefused(f"unreadable {path.parent.name}/{path.name}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelRefused(f"{path.parent.name}/{path.name} is not a JSON object")
    return data


def _check(entry: ModelEntry) -> None:
    folder = entry.path
    pickles = [rel for rel, _ in entry.files if PurePosixPath(rel).suffix.lower() in PICKLE_SUFFIXES]  # one walk
    if pickles:
        raise ModelRefused(f"pickle weights are refused ({', '.join(pickles)}): save with safetensors")
    spec, index = _family(folder)
    entry.family = spec.name
    entry.denoiser_config = _read_json(folder / spec.denoiser / "config.json")
    kind = entry.denoiser_class
    if kind not in spec.denoiser_classes:
        raise ModelRefused(
            f"{spec.denoiser} is a {kind}: a {spec.name} model needs {' or '.join(spec.denoiser_classes)}"
        )
    entry.weights[spec.denoiser] = _weights(folder, spec.denoiser, index)
    for component in spec.components:
        entry.configs[component] = _component_config(folder, component)
        if component != "tokenizer":
            entry.weights[component] = _weights(folder, component, index)
    for ignored in ("safety_checker", "feature_extractor"):
        named = index.get(ignored)
        if (folder / ignored).exists() or (isinstance(named, list) and named and named[0] is not None):
            log.info("model %r: %s is ignored (the service does not run it)", entry.name, ignored)
    entry.scheduler_config = _read_json(folder / "scheduler" / "scheduler_config.json")
    for key, value in spec.scheduler_overrides.items():  # as its pipeline sets them on its scheduler
        if entry.scheduler_config.get(key) != value:
            said = entry.scheduler_config.get(key, "unset")
            log.info("model %r: scheduler %s %s taken as %s, as its pipeline sets it", entry.name, key, said, value)
            entry.scheduler_config = {**entry.scheduler_config, key: value}
    if (problem := schedule_problem(entry.scheduler_config)) is not None:
        raise ModelRefused(f"scheduler config: {problem}")
    # the files that are loaded: not the variants beside them, single-file checkpoints or a safety checker
    entry.weights_bytes = sum(w.float32_bytes for w in entry.weights.values())
    if (folder / CARD_FILE).exists():
        try:
            entry.card = ModelCard.model_validate(_read_json(folder / CARD_FILE))
        except ValidationError as exc:
            raise ModelRefused(f"invalid {CARD_FILE}: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from exc
        entry.has_card = True
    else:
        labels = index.get("id2label") or {}  # DiT folders may carry ImageNet's class names
        try:
            names = [str(labels[k]) for k in sorted(labels, key=int)] if labels else None
        except (TypeError, ValueError, AttributeError) as exc:
            raise ModelRefused(f"id2label in model_index.json must map class indices to names: {exc}") from exc
        entry.card = ModelCard(null_class=None, class_names=names, tasks=list(spec.tasks))
    if not entry.has_card and spec.latent and (why := unsupported_scheduler_option(entry.scheduler_config)):
        # its default sampler comes from this scheduler, which no sampler here follows (a card names one); a
        # pixel model's comes from the card's defaults whatever its scheduler
        raise ModelRefused(f"{why}, or give the model a card that names its default sampler")
    if spec.latent:
        _check_fit(entry)
    _check_sizes(entry)
    if entry.card.space_to_depth > 1 and spec.latent:
        raise ModelRefused("space_to_depth is for pixel models: a latent model's network sees its VAE's latents")
    if not spec.latent:  # the network sees the image's channels, each fold x fold block of pixels as channels
        wanted = entry.channels * entry.fold**2
        for key in ("in_channels", "out_channels"):
            if int(entry.denoiser_config.get(key, wanted)) != wanted:
                fold = f" folded {entry.fold}x{entry.fold} (space_to_depth)" if entry.fold > 1 else ""
                raise ModelRefused(
                    f"the unet's {key} is {entry.denoiser_config.get(key)}, but {entry.channels}-channel images"
                    f"{fold} need {wanted}"
                )
        embed = entry.denoiser_config.get("class_embed_type")
        if embed is not None:  # UNet2DModel embeds float labels with it, which no request gives: every job failed
            raise ModelRefused(
                f"unet has class_embed_type {embed!r}: the service conditions a pixel model on num_class_embeds "
                "class labels only"
            )
    if entry.card.null_class is not None and entry.card.null_class >= entry.num_classes:
        raise ModelRefused(f"null_class {entry.card.null_class} is not below num_class_embeds {entry.num_classes}")
    named = len(entry.card.class_names or [])
    if named and named + (entry.card.null_class is not None) > entry.num_classes:
        raise ModelRefused(f"the card names {named} classes but the network has {entry.num_classes} class embeddings")
    check_hashes(entry)


def check_hashes(entry: ModelEntry) -> None:
    """The files the card lists have the sha256 it gives: at scan, and again before each load (a model unloaded
    to make room loads again later, and its files may have been changed on disk meanwhile)."""
    for rel, expected in entry.card.sha256.items():
        target = safe_relative(entry.path, rel)
        if not target.is_file():
            raise ModelRefused(f"card lists {rel} which does not exist")
        if sha256_unless_unchanged(target) != expected.lower():
            why = "changed on disk? mend the file or the card, then send SIGHUP"
            raise ModelRefused(f"sha256 of {rel} does not match the card ({why})")


def sides(size: Any) -> tuple[int, int] | None:
    """(height, width) from a size as configs give it, one whole number or two; None if it is not one."""
    pair = (size, size) if type(size) is int else tuple(size) if isinstance(size, (list, tuple)) else ()
    return pair if len(pair) == 2 and all(type(v) is int and v > 0 for v in pair) else None  # type: ignore[return-value]


def _check_sizes(entry: ModelEntry) -> None:
    """The native size (the card's, else the network's ``sample_size``) is whole multiples of what the model
    takes, and a card's channels are the images' (a latent model's: its VAE's)."""
    size = entry.card.image_size or entry.denoiser_config.get("sample_size", 32)
    if sides(size) is None:
        origin = "the card's image_size" if entry.card.image_size else f"{entry.spec.denoiser}'s sample_size"
        raise ModelRefused(f"{origin} is {size!r}: it must be a positive whole number or [height, width]")
    height, width = entry.image_size
    if height % entry.size_multiple or width % entry.size_multiple:
        raise ModelRefused(
            f"the native size {width}x{height} is not in multiples of {entry.size_multiple}, which the model needs"
        )
    if entry.square_only and height != width:  # every job runs at the native size: each would fail inside it
        raise ModelRefused(f"a {entry.spec.denoiser} takes square images only, but the native size is {width}x{height}")
    steps = entry.card.defaults.steps
    if entry.has_card and "steps" in entry.card.defaults.model_fields_set and steps > entry.train_timesteps:
        raise ModelRefused(
            f"the card's default steps are {steps}, more than the schedule's {entry.train_timesteps} timesteps: "
            "every request that leaves steps out would be refused"
        )
    if entry.spec.latent and entry.card.channels:
        vae = int(entry.configs.get("vae", {}).get("out_channels", 3))
        if entry.card.channels != vae:
            raise ModelRefused(f"the card says {entry.card.channels} channels, but the vae makes {vae}-channel images")


def _check_fit(entry: ModelEntry) -> None:
    """A latent model's components must fit together, or every request would fail inside its network: the
    denoiser reads and writes the VAE's latents (an inpainting UNet also the mask and the masked image; a
    DiT may predict its variance too), attends to the text encoder's width, gets no conditioning the
    service does not give, and the tokenizer's longest prompt fits the text encoder's positions."""
    config, spec, latent = entry.denoiser_config, entry.spec, entry.latent_channels
    inputs = int(config.get("in_channels") or latent)
    outputs = int(config.get("out_channels") or inputs)
    fits_in = (latent, latent + 5) if spec.text else (latent,)
    fits_out = (latent, 2 * latent) if spec.name == "dit" else (latent,)
    for key, value, fits in (("in_channels", inputs, fits_in), ("out_channels", outputs, fits_out)):
        if value not in fits:
            raise ModelRefused(
                f"{spec.denoiser}'s {key} is {value}, but the vae's {latent} latent channels need "
                f"{' or '.join(map(str, fits))}"
            )
    if not spec.text:
        return
    for key in ("class_embed_type", "addition_embed_type", "num_class_embeds"):
        if config.get(key) is not None:
            raise ModelRefused(f"unet has {key} {config[key]!r}: the service conditions it on the prompt only")
    width = config.get("cross_attention_dim", 1280)  # UNet2DConditionModel's own default
    hidden = entry.configs["text_encoder"].get("hidden_size")
    if hidden is not None and any(int(w) != int(hidden) for w in (width if isinstance(width, list) else [width])):
        raise ModelRefused(f"unet's cross_attention_dim is {width}, but the text encoder's hidden_size is {hidden}")
    positions = entry.configs["text_encoder"].get("max_position_embeddings")
    longest = entry.configs["tokenizer"].get("model_max_length")
    if positions is not None and (longest is None or float(longest) > int(positions)):
        raise ModelRefused(
            f"the tokenizer's model_max_length is {longest}, but the text encoder has {positions} positions"
        )


def _family(folder: Path) -> tuple[FamilySpec, dict[str, Any]]:
    """The family a folder's model_index.json names (a folder without one is a pixel UNet2DModel)."""
    if not (folder / "model_index.json").exists():
        return FAMILIES["pixel"], {}
    index = _read_json(folder / "model_index.json")
    pipeline = index.get("_class_name")
    spec = PIPELINE_FAMILY.get(pipeline)
    if spec is None:
        served = ", ".join(sorted(PIPELINE_FAMILY))
        raise ModelRefused(f"{pipeline} folders are not served; served pipelines: {served}")
    return spec, index


def _component_config(folder: Path, component: str) -> dict[str, Any]:
    """A component's config (its weights are checked by the caller: the tokenizer has files, not weights)."""
    if component == "tokenizer":
        config = _read_json(folder / component / "tokenizer_config.json")
        has = {name: (folder / component / name).is_file() for name in ("tokenizer.json", "vocab.json", "merges.txt")}
        if not has["tokenizer.json"] and not (has["vocab.json"] and has["merges.txt"]):
            raise ModelRefused("missing tokenizer/tokenizer.json, or tokenizer/vocab.json with merges.txt beside it")
        return config
    return _read_json(folder / component / "config.json")


def _weights(folder: Path, component: str, index: dict[str, Any]) -> Weights:
    """The weights of ``component`` that are loaded (app/store/weights.py), a refusal naming what is wrong:
    under the file name of the library that loads it, as diffusers' pipelines read them (transformers'
    ``model`` for a text encoder, or what model_index.json says is a transformers class; diffusers'
    ``diffusion_pytorch_model`` for the rest). A file under the other library's name fails to load."""
    named = index.get(component)
    library = named[0] if isinstance(named, list) and named else None
    transformers = library == "transformers" or (library is None and component == "text_encoder")
    try:
        return find_weights(folder, component, ("model",) if transformers else ("diffusion_pytorch_model",))
    except WeightsRefused as exc:
        raise ModelRefused(str(exc)) from exc


def safe_relative(folder: Path, rel: str) -> Path:
    """A path the card names inside the model folder: relative, without "..". Its files may be links (a
    Hugging Face cache links each file to its blob)."""
    path = PurePosixPath(rel)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ModelRefused(f"card path {rel!r} leaves the model folder")
    return folder / path


def scan_folder(folder: Path) -> ModelEntry:
    """One model folder, checked (ready, or failed with the reason); its name is the folder's (a name that
    is not UTF-8 is shown with its odd bytes escaped, and refused)."""
    shown = folder.name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    entry = ModelEntry(name=shown, path=folder)
    try:
        entry.path = safe_model_path(folder.parent, folder.name)
        entry.files = _signatures(entry.path)
        _check(entry)
    except ModelRefused as exc:
        entry.fail(str(exc))
    except MALFORMED as exc:  # a config value of an unexpected shape (a string for a list, 1e999 for an int ...)
        entry.fail(f"malformed model folder: {type(exc).__name__}: {exc}")
    except OSError as exc:  # a file the service may not read: this folder is refused, the others served
        entry.fail(f"unreadable model folder: {type(exc).__name__}: {exc}")
    return entry


def _signatures(folder: Path) -> tuple:
    """(path, modification time, size, inode) of every file in the folder, through links to files and to
    folders (a Hugging Face snapshot's files link to its blobs; a component folder may be a link): what a
    later scan compares to tell whether the model changed. A folder linked twice is walked once."""
    found, seen = [], set()
    for where, folders, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(where)
        if real in seen:
            folders[:] = []  # a loop of links, or a folder reached twice
            continue
        seen.add(real)
        rel = Path(where).relative_to(folder)
        found += [((rel / name).as_posix(), file_signature(Path(where) / name)) for name in files]
    return tuple(sorted(found))


def scan_store(store: Path) -> dict[str, ModelEntry]:
    """Every model folder in ``store``, checked; sorted by name."""
    if not store.is_dir():
        return {}
    children = [c for c in sorted(store.iterdir()) if c.is_dir() and not c.name.startswith(".")]
    entries = (scan_folder(child) for child in children)
    return {entry.name: entry for entry in entries}
