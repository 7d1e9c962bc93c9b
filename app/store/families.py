"""The model families the store serves, as diffusers lays them out on disk (no torch here).

Each family names the pipeline classes whose ``model_index.json`` it recognises, the folder of its denoising
network and the classes accepted there, the other components it needs, how it is conditioned, the tasks it
serves, and the module that loads and runs it (``app.families.<name>``, imported by the engine only). Adding a
family is one entry here, one runtime module, and its tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Conditioning = Literal["none", "class", "text"]


@dataclass(frozen=True)
class FamilySpec:
    name: str
    pipelines: tuple[str, ...]  # model_index.json "_class_name" values
    denoiser: str  # the folder of the denoising network
    denoiser_classes: tuple[str, ...]
    components: tuple[str, ...]  # other folders the family loads (each with its config)
    tasks: tuple[str, ...]
    runtime: str  # the module that loads and runs it
    text: bool = False  # conditioned on a prompt (CLIP text encoder + tokenizer)
    latent: bool = False  # the network works on a VAE's latents
    scales_initial_noise: bool = False  # the diffusers pipeline multiplies its first noise by init_noise_sigma
    # What the pipeline sets on its scheduler whatever the folder's config says (Stable Diffusion's turns
    # clip_sample off and sets steps_offset 1, calling another "outdated"): the catalog reads the config so
    scheduler_overrides: dict[str, Any] = field(default_factory=dict)
    # Class labels: the denoiser config's key for the label embeddings, and whether that count leaves out a
    # null class of its own at its end (DiT: num_embeds_ada_norm classes, the null label is that number).
    classes_key: str | None = "num_class_embeds"
    null_after_classes: bool = False
    # That key's value where a denoiser class's config may leave it out (the class's own default)
    classes_default: dict[str, int] = field(default_factory=dict)
    patch_key: str | None = None  # a transformer's patch size: its downsampling factor (else the UNet's levels)
    sizes: bool = False  # generates at any width and height (multiples of the factors), not only natively
    # The network takes latents of any size (UNet2DConditionModel upsamples to its skips' sizes), so images
    # need only be multiples of the VAE's factor, as its pipeline checks; else also of the network's own
    any_latent_size: bool = False


FAMILIES: dict[str, FamilySpec] = {
    f.name: f
    for f in (
        # DDPMPipeline / DDIMPipeline: a pixel-space UNet2DModel, optionally class-conditional
        FamilySpec(
            "pixel",
            ("DDPMPipeline", "DDIMPipeline"),
            "unet",
            ("UNet2DModel",),
            (),
            ("generate", "denoise"),
            "app.families.pixel",
        ),
        # Stable Diffusion 1.x / 2.x (epsilon or v_prediction): text-conditioned latent UNet, VAE, CLIP
        FamilySpec(
            "stable-diffusion",
            ("StableDiffusionPipeline", "StableDiffusionInpaintPipeline"),
            "unet",
            ("UNet2DConditionModel",),
            ("vae", "text_encoder", "tokenizer"),
            ("generate",),
            "app.families.stable_diffusion",
            text=True,
            latent=True,
            scales_initial_noise=True,
            scheduler_overrides={"clip_sample": False, "steps_offset": 1},
            any_latent_size=True,
            classes_key=None,
            sizes=True,
        ),
        # DiT: a class-conditional latent transformer (ImageNet labels, null class 1000) and a VAE
        FamilySpec(
            "dit",
            ("DiTPipeline",),
            "transformer",
            ("DiTTransformer2DModel", "Transformer2DModel"),
            ("vae",),
            ("generate",),
            "app.families.dit",
            latent=True,
            classes_key="num_embeds_ada_norm",
            null_after_classes=True,
            classes_default={"DiTTransformer2DModel": 1000},
            patch_key="patch_size",
        ),
    )
}
PIPELINE_FAMILY = {pipeline: spec for spec in FAMILIES.values() for pipeline in spec.pipelines}

# The sampler a folder's own scheduler stands for, so a model without a card samples as its pipeline would.
SCHEDULER_SAMPLERS = {
    "DDPMScheduler": "ddpm",
    "DDIMScheduler": "ddim",
    "EulerDiscreteScheduler": "euler",
    "EulerAncestralDiscreteScheduler": "euler_a",
    "DPMSolverMultistepScheduler": "dpmpp_2m",
}


# Options of a folder's own scheduler class that change the steps it takes, with the value the service's
# sampler for that class implements (diffusers' default). A folder without a card whose scheduler sets
# another value is refused: its default sampler would give another image than its pipeline, silently.
SCHEDULER_OPTIONS = {
    "DPMSolverMultistepScheduler": {
        "algorithm_type": "dpmsolver++",
        "solver_order": 2,
        "solver_type": "midpoint",
        "lower_order_final": True,
        "euler_at_final": False,
        "use_lu_lambdas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "use_flow_sigmas": False,
        "final_sigmas_type": "zero",
        "lambda_min_clipped": float("-inf"),  # (JSON's -Infinity, as save_pretrained writes it)
    },
    "EulerDiscreteScheduler": {
        "interpolation_type": "linear",
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "timestep_type": "discrete",
        "final_sigmas_type": "zero",
        "sigma_min": None,
        "sigma_max": None,
    },
}


def unsupported_scheduler_option(config: dict) -> str | None:
    """Why a folder's scheduler config cannot be followed (None: it can): an option of its class, set to a
    value no sampler here implements."""
    kind = config.get("_class_name", "")
    for key, implemented in SCHEDULER_OPTIONS.get(kind, {}).items():
        if key in config and config[key] != implemented:
            return (
                f"scheduler {kind} sets {key} {config[key]!r}, which the service's "
                f"{SCHEDULER_SAMPLERS[kind]} does not implement ({implemented!r}): edit scheduler/scheduler_config.json"
            )
    return None


def sampler_for_scheduler(config: dict) -> str | None:
    name = SCHEDULER_SAMPLERS.get(config.get("_class_name", ""))
    if name == "dpmpp_2m" and config.get("use_karras_sigmas"):
        return "dpmpp_2m_karras"
    return name
