"""Turn a validated request into a fully resolved job spec: pick the model, fill every default from its
card, check the request against what the model can do. Errors name the field at fault."""

from __future__ import annotations

import secrets

from app.api.errors import ApiError
from app.api.schemas import SEED_MAX, GenerateRequest
from app.jobs import GenerateSpec
from app.settings import Settings
from app.store.catalog import ModelEntry


def pick_model(models: dict[str, ModelEntry], name: str | None, *, task: str | None, settings: Settings) -> ModelEntry:
    """The named model, or the default for ``task`` (a setting, else the first ready model serving it)."""
    if name is None:
        name = {"generate": settings.default_generator, "denoise": settings.default_denoiser}.get(task)
    if name is None:
        candidates = [e for e in models.values() if e.status == "ready" and (task is None or task in e.card.tasks)]
        if not candidates:
            raise ApiError(404, ["body", "model"], f"no model in the store serves {task or 'requests'}", type="not_found")
        return candidates[0]
    entry = models.get(name)
    if entry is None:
        raise ApiError(404, ["body", "model"], f"unknown model {name!r}; GET /v1/models lists them", type="not_found")
    if entry.status != "ready":
        raise ApiError(503, ["body", "model"], f"model {name!r} is not served: {entry.error}", type="model_unavailable")
    if task is not None and task not in entry.card.tasks:
        raise ApiError(422, ["body", "model"], f"model {name!r} does not serve {task}", type="wrong_task")
    return entry


def random_seed() -> int:
    return secrets.randbits(63)


def seeds_for(seed: int | None, count: int) -> list[int]:
    """Image i gets ``seed + i`` (wrapping at 2**63), or a fresh random seed each."""
    if seed is None:
        return [random_seed() for _ in range(count)]
    return [(seed + i) % (SEED_MAX + 1) for i in range(count)]


def _class_index(entry: ModelEntry, label: int | str | None) -> int | None:
    named = entry.card.class_names
    count = len(named) if named else entry.num_classes - (1 if entry.card.null_class is not None else 0)
    if label is None:
        if entry.num_classes and entry.card.null_class is None:
            raise ApiError(422, ["body", "class_label"], f"model {entry.name!r} is class-conditional: class_label is required", type="missing")
        return None
    if not entry.num_classes:
        raise ApiError(422, ["body", "class_label"], f"model {entry.name!r} is unconditional: it takes no class_label", type="unsupported")
    if isinstance(label, str):
        if named and label in named:
            return named.index(label)
        if label.isdigit():
            label = int(label)
        else:
            valid = ", ".join(named) if named else f"0..{count - 1}"
            raise ApiError(422, ["body", "class_label"], f"unknown class {label!r}; valid: {valid}", type="unknown_class")
    if not 0 <= label < count:
        raise ApiError(422, ["body", "class_label"], f"class_label must be between 0 and {count - 1}", type="out_of_range")
    return label


def check_steps(entry: ModelEntry, steps: int, loc: list) -> int:
    if steps > entry.train_timesteps:
        raise ApiError(422, loc, f"steps must be at most {entry.train_timesteps} for model {entry.name!r}", type="out_of_range")
    return steps


def generate_spec(req: GenerateRequest, entry: ModelEntry, output_format: str) -> GenerateSpec:
    defaults = entry.card.defaults
    label = _class_index(entry, req.class_label)
    guidance = req.guidance_scale if req.guidance_scale is not None else (defaults.guidance_scale if label is not None else 0.0)
    if guidance > 0 and entry.card.null_class is None:
        raise ApiError(422, ["body", "guidance_scale"], f"model {entry.name!r} has no null class: guidance is not available", type="unsupported")
    if guidance > 0 and label is None:
        raise ApiError(422, ["body", "guidance_scale"], "guidance needs a class_label to guide towards", type="unsupported")
    return GenerateSpec(
        model=entry.name,
        steps=check_steps(entry, req.steps or defaults.steps, ["body", "steps"]),
        sampler=req.sampler or defaults.sampler,
        eta=req.eta if req.eta is not None else defaults.eta,
        seeds=seeds_for(req.seed, req.num_images),
        class_label=label,
        guidance_scale=guidance,
        output_format=output_format,
    )
