"""Train the photo denoiser (an RGB diffusion model on photo crops) into the model store.

    python scripts/train_denoiser.py                      # from scratch: the shipped network, the release's schedule
    python scripts/train_denoiser.py --iters 100 --decay-iters 80 --upload-from 80 --out /tmp/photos-smoke

Recipe: a fully convolutional diffusers ``UNet2DModel`` (no attention anywhere, so any image size
works), epsilon prediction, the standard linear DDPM schedule (1,000 steps), trained on random crops
of the training photos (``scripts/fetch_photos.py``) with the 8 flips/rotations as augmentation.

Timesteps are drawn where denoising uses them, while every timestep keeps some weight (so ``sample``
mode's reverse chain and the model stay a valid diffusion model):
- 40%: sigma (0-255 scale) log-uniform in [1, 100]; 40%: uniform in [5, 100] (``--uniform-sigma``);
  the timestep is the schedule's real-valued t for that sigma (the same ``sigma_to_t`` the service uses);
- 20%: t uniform over all 1,000 steps.
Loss: the epsilon MSE times sigma^2 / (sigma^2 + c^2), c = 5 on the 0-255 scale, i.e. the x_0 error
relative to the noise level, with the very lowest levels (where the noise cannot be told from grain)
weighted down. Grey photos are replicated to three channels with the same noise in each, which is
what the service does with a grey upload. EMA weights, AdamW with warm-up and cosine decay over
``--decay-iters``, a checkpoint every ``--ckpt-every`` iterations (resumed automatically), bf16
autocast on CUDA and on a CPU with native bf16 (``--precision``).

Upload phase (iterations ``--upload-from`` to ``--iters``, the learning rate at its floor): half of the
denoising-range draws see the noisy photo as an upload carries it, rounded and clipped to uint8, with
the noise it really carries as the target (``as_upload``). Clipping removes noise in dark and bright
areas and biases their noisy mean; a model trained only on Gaussian noise lost 3.2 dB to it at sigma 50.

``--init-from`` continues a released model; with a larger ``--layers-per-block`` than the released one's,
the network is first grown so that it computes exactly what the released one did (``deepen``), and the
run trains the added resnets from there (how the shipped model went from one resnet per block to two).

``--act-fn relu`` trains a network with ReLU in its ResNets instead of SiLU (cheaper in float32 on the CPU);
with ``--init-from`` a SiLU model, it starts from that model's weights, and ``--distill-from`` the same model
teaches it the function it had (docs/denoising.md, "A ReLU network").

``--space-to-depth 2`` trains a network that sees each 2x2 block of pixels as 12 channels (the card says so,
and the service folds around it), so that nothing runs at full resolution: cheaper in float32 (docs/
denoising.md, "Which one"). With ``--init-from`` a full-resolution model, it starts as that model's levels
from the second on (``fold_from``). ``--distill-from`` a model makes that model's prediction the target
(knowledge distillation), so such a network learns the released one's function without the variance of
the drawn noise; with ``--distill-views K`` the target is that model's prediction averaged over K
flips/rotations (the service's ``ensemble``), a better target than its single pass (distilled into the
shipped weights themselves, it did not help them: docs/denoising.md, continuation 11).

``--add-levels 1`` gives the network one more level below its deepest, as wide (s2d 32/64/128/128 from the
shipped model folded: the candidate for a GPU, docs/denoising.md, "Capacity where it costs little"); with
``--init-from``, the released levels are carried over (``carry_levels``). ``--stop-after SECONDS`` ends a run
on a machine whose speed is not known beforehand (a lent GPU) at that wall time, with the learning rate's
decay following the clock so that it ends at its floor (``scripts/device_train.sh``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from app.diffusion.schedule import NoiseSchedule  # noqa: E402
from app.engine.device import pick_device  # noqa: E402
from app.families.pixel import run_folded  # noqa: E402
from app.diffusion.layout import ENSEMBLE_ORDER  # noqa: E402
from app.diffusion.pixels import (  # noqa: E402
    apply_transform,
    from_uint8,
    invert_transform,
    quantize,
    sigma_255_to_unit,
)
from app.store.catalog import scan_folder  # noqa: E402
from app.store.loader import load_model  # noqa: E402
from app.store.card import CARD_FILE, ModelCard, SamplingDefaults  # noqa: E402
from app.store.writer import save_model  # noqa: E402
from fetch_photos import load as load_photos  # noqa: E402
from trainkit import TrainLoop, add_training_args  # noqa: E402

LOSS_FLOOR_255 = 5.0


def build_unet(
    channels: tuple[int, ...],
    layers_per_block: int,
    in_channels: int = 3,
    time_embedding_dim: int | None = None,
    act_fn: str = "silu",
) -> UNet2DModel:
    """The photo denoiser's network; ``in_channels`` 12 is the space-to-depth form (RGB folded 2x2 into
    channels, ``--space-to-depth``); ``act_fn`` one of diffusers' activations (``--act-fn``)."""
    return UNet2DModel(
        sample_size=64,
        in_channels=in_channels,
        out_channels=in_channels,
        time_embedding_dim=time_embedding_dim,
        block_out_channels=channels,
        layers_per_block=layers_per_block,
        down_block_types=("DownBlock2D",) * len(channels),
        up_block_types=("UpBlock2D",) * len(channels),
        add_attention=False,
        norm_num_groups=8,
        act_fn=act_fn,
    )


def deepen(released: UNet2DModel, unet: UNet2DModel) -> None:
    """Load ``released`` into ``unet``, which has as many levels and channels and as many or more resnets per
    block, so that ``unet`` computes exactly what ``released`` did (function-preserving growth, as Net2Net's
    deeper networks): each added resnet starts as the identity (its last convolution zero; an up block's
    added resnet passes the hidden state through its 1x1 shortcut and ignores its skip), and the released
    resnets sit where they read the same skip tensors as before. Training then grows the added ones."""
    m, n = released.config.layers_per_block, unet.config.layers_per_block
    if n < m or tuple(released.config.block_out_channels) != tuple(unet.config.block_out_channels):
        raise ValueError(
            f"cannot grow {m} resnets per block into {n} (--layers-per-block), or across different channels"
        )
    state = unet.state_dict()
    old = released.state_dict()
    # An up block's resnet j reads the output of down resnet n-1-j (j < n), then the level's entry skip.
    # The added down resnets m..n-1 repeat down resnet m-1's output, so released up resnet 0 keeps slot 0,
    # released up resnet i >= 1 moves to slot i + n - m, and slots 1..n-m are the added identities.
    up_slot = {0: 0, **{i: i + n - m for i in range(1, m + 1)}}
    for key, value in old.items():
        parts = key.split(".")
        if parts[0] == "up_blocks" and parts[2] == "resnets":
            parts[3] = str(up_slot[int(parts[3])])
        state[".".join(parts)] = value
    for name, added in (("down_blocks", range(m, n)), ("up_blocks", range(1, n - m + 1))):
        for k, block in enumerate(getattr(unet, name)):
            for j in added:
                _start_as_identity(state, f"{name}.{k}.resnets.{j}.", block.resnets[j])
    unet.load_state_dict(state)


def fold_from(released: UNet2DModel, unet: UNet2DModel) -> list[str]:
    """Start a space-to-depth network from a released full-resolution one whose levels below the first it
    has: the fold does what the released first level's downsampler did (halve the resolution), so the
    released levels 1..L-1 and the middle block become ``unet``'s levels 0..L-2 (same channels, same
    resolutions, same skips), and the time embedding is carried over exactly (the wider sinusoids hold
    the narrower ones' frequencies at even indices; ``unet`` keeps the released embedding width). What has
    no counterpart starts as initialised: the input and output convolutions, the first resnet's input side
    (it read the full-resolution level's channels) and the last up resnet's (its skip was that level's);
    levels ``unet`` has below the released ones too (``carry_levels``). Returns those entries' names."""
    have, config = tuple(released.config.block_out_channels), released.config
    widths = (released.time_embedding.linear_1.out_features, unet.time_embedding.linear_1.out_features)
    if have[1] != 2 * have[0] or config.freq_shift != 0 or unet.config.freq_shift != 0 or widths[0] != widths[1]:
        raise ValueError(
            "the time embedding carries over when the second level is twice as wide, freq_shift is 0 and the "
            "embedding width is the released one"
        )
    return carry_levels(released, unet, drop=1)


def carry_levels(released: UNet2DModel, unet: UNet2DModel, drop: int = 0) -> list[str]:
    """Load the released network's levels from ``drop`` on into ``unet``'s first levels, which have their
    channels and resnets: the released levels ``drop``.. become ``unet``'s levels 0.., each down and up block
    reading the same skips as before, and the middle block is carried over. ``unet`` may have more levels
    below them (``--add-levels``): those blocks, the downsampler the released deepest level lacked, and the
    middle block where its width differs start as initialised, so the network no longer computes exactly
    what the released one did (a deeper level changes what the middle block sees) and training adapts it.
    With ``drop`` 1 (``fold_from``) the input and output layers and the first level's entries that read the
    dropped level are not carried, and the time embedding is widened. Returns the names not carried."""
    have, want = list(released.config.block_out_channels), list(unet.config.block_out_channels)
    kept = have[drop:]
    added = len(want) - len(kept)
    if added < 0 or want[: len(kept)] != kept or unet.config.layers_per_block != released.config.layers_per_block:
        raise ValueError(
            f"carrying {have} into {want} needs channels {kept} (then any deeper levels) and the same layers per block"
        )
    state, copied = unet.state_dict(), set()
    for key, value in released.state_dict().items():
        parts = key.split(".")
        if parts[0] == "down_blocks":
            if int(parts[1]) < drop:
                continue
            parts[1] = str(int(parts[1]) - drop)
        elif parts[0] == "up_blocks":  # numbered from the deepest level: added levels come first
            parts[1] = str(int(parts[1]) + added)
        elif drop and key == "time_embedding.linear_1.weight":  # [emb, half cos | half sin] -> the even columns
            half, wide = value.shape[1] // 2, state[key].clone().zero_()
            wide[:, 0 : 2 * half : 2], wide[:, 2 * half :: 2] = value[:, :half], value[:, half:]
            value = wide
        elif drop and parts[0] in ("conv_in", "conv_out", "conv_norm_out"):
            continue
        name = ".".join(parts)
        if name in state and state[name].shape == value.shape:
            state[name] = value
            copied.add(name)
    unet.load_state_dict(state)
    return [k for k in state if k not in copied]


def _start_as_identity(state: dict[str, torch.Tensor], prefix: str, resnet: torch.nn.Module) -> None:
    """A resnet's entries in ``state`` such that it returns its input (an up block's: the hidden half)."""
    state[prefix + "conv2.weight"] = torch.zeros_like(resnet.conv2.weight)
    state[prefix + "conv2.bias"] = torch.zeros_like(resnet.conv2.bias)
    if resnet.conv_shortcut is not None:  # [hidden | skip] -> hidden
        out = resnet.conv_shortcut.out_channels
        shortcut = torch.zeros_like(resnet.conv_shortcut.weight)
        shortcut[:, :out, 0, 0] = torch.eye(out)
        state[prefix + "conv_shortcut.weight"] = shortcut
        state[prefix + "conv_shortcut.bias"] = torch.zeros_like(resnet.conv_shortcut.bias)


def build_scheduler() -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        prediction_type="epsilon",
        clip_sample=True,
        timestep_spacing="trailing",
    )


class CropSampler:
    """Random crops of the training photos, uniform over pixels, with a random flip/rotation."""

    def __init__(self, photos: dict[str, np.ndarray], crop: int, rng: np.random.Generator) -> None:
        self.photos = [
            torch.from_numpy(p if p.ndim == 3 else p[:, :, None]).permute(2, 0, 1).contiguous() for p in photos.values()
        ]
        self.photos = [p for p in self.photos if min(p.shape[1:]) >= crop]
        areas = np.array([p.shape[1] * p.shape[2] for p in self.photos], dtype=np.float64)
        self.weights = areas / areas.sum()
        self.crop, self.rng = crop, rng

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x_0 in [-1, 1], [B, 3, crop, crop], and a [B] bool mask of the grey crops."""
        crops, grey = [], []
        for index in self.rng.choice(len(self.photos), size=size, p=self.weights):
            photo = self.photos[index]
            top = self.rng.integers(0, photo.shape[1] - self.crop + 1)
            left = self.rng.integers(0, photo.shape[2] - self.crop + 1)
            crop = photo[:, top : top + self.crop, left : left + self.crop]
            turns = int(self.rng.integers(4))
            crop = apply_transform(crop, (turns, bool(self.rng.random() < 0.5)))
            grey.append(crop.shape[0] == 1)
            crops.append(crop.expand(3, -1, -1))
        x0 = from_uint8(torch.stack(crops))
        return x0, torch.tensor(grey)


def draw_timesteps(
    schedule: NoiseSchedule,
    size: int,
    rng: np.random.Generator,
    uniform_sigma: tuple[float, float] = (5.0, 100.0),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Real-valued timesteps [B], their alpha_bar [B], and a [B] bool mask of the draws made by sigma (the
    denoising range), weighted toward sigma <= 100 (see the module doc); ``uniform_sigma`` is the range of
    the uniform share."""
    ts, by_sigma = [], []
    for u in rng.random(size):
        by_sigma.append(bool(u < 0.8))
        if u < 0.4:
            sigma_255 = float(np.exp(rng.uniform(np.log(1.0), np.log(100.0))))
        elif u < 0.8:
            sigma_255 = float(rng.uniform(*uniform_sigma))
        else:
            ts.append(float(rng.integers(0, schedule.num_train_timesteps)))
            continue
        ts.append(schedule.sigma_to_t(sigma_255_to_unit(sigma_255)))
    ab = torch.tensor([schedule.alpha_bar(t) for t in ts], dtype=torch.float32)
    return torch.tensor(ts, dtype=torch.float32), ab, torch.tensor(by_sigma)


def as_upload(x0: torch.Tensor, noise: torch.Tensor, ab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t and its epsilon target when the noisy photo y = x_0 + s * noise arrives as an upload does: rounded
    and clipped to uint8. x_t = sqrt(ab) * y as the service forms it; the target is the noise the upload
    really carries, (y - x_0) / s, so Tweedie's formula gives the posterior mean under clipping."""
    abc = ab.view(-1, 1, 1, 1)
    s = ((1 - abc) / abc).sqrt()
    y = quantize(x0 + s * noise)
    return abc.sqrt() * y, (y - x0) / s


def loss_weights(ab: torch.Tensor) -> torch.Tensor:
    """sigma^2 / (sigma^2 + c^2) with sigma^2 = (1 - ab) / ab: the eps MSE -> relative x_0 error, floor c."""
    sigma2 = (1 - ab) / ab
    c = sigma_255_to_unit(LOSS_FLOOR_255)
    return sigma2 / (sigma2 + c**2)


def start_network(args: argparse.Namespace) -> tuple[UNet2DModel, dict | None]:
    """The network a run starts from, and the released model's training record when it continues one.

    With ``--init-from``, the released model's channels are kept (``--channels`` is ignored): a plain copy,
    a deepened copy (a larger ``--layers-per-block``), or with ``--space-to-depth 2`` from a full-resolution
    model, its levels from the second on (``fold_from``); with ``--add-levels``, the released (or folded) levels
    and their resnets per block over new deeper ones (``carry_levels``). ``--act-fn`` (default: the released model's, or
    SiLU) may differ from the released model's: its weights then start a network with that activation, which
    computes another function until trained (how a ReLU network, cheaper in float32, starts from the SiLU one)."""
    fold = args.space_to_depth
    if not args.init_from:
        args.act_fn = args.act_fn or "silu"
        args.channels = list(args.channels) + [args.channels[-1]] * args.add_levels
        return build_unet(tuple(args.channels), args.layers_per_block, 3 * fold * fold, act_fn=args.act_fn), None
    released = UNet2DModel.from_pretrained(Path(args.init_from) / "unet")
    args.act_fn = args.act_fn or released.config.act_fn
    card = json.loads((Path(args.init_from) / CARD_FILE).read_text())
    released_fold = ModelCard.model_validate(card).space_to_depth
    have, width = list(released.config.block_out_channels), released.config.time_embedding_dim
    deeper = [have[-1]] * args.add_levels  # --add-levels: more levels below, as wide as the deepest
    if fold == released_fold and not deeper:
        args.channels = have
        unet = build_unet(tuple(have), args.layers_per_block, 3 * fold * fold, width, args.act_fn)
        deepen(released, unet)  # a plain copy when --layers-per-block is the released model's
    elif fold == released_fold:
        args.channels, args.layers_per_block = have + deeper, released.config.layers_per_block
        unet = build_unet(tuple(args.channels), args.layers_per_block, 3 * fold * fold, width, args.act_fn)
        print(f"deepened {args.init_from}; newly initialised: {', '.join(carry_levels(released, unet))}")
    elif (released_fold, fold) == (1, 2):
        args.channels, args.layers_per_block = have[1:] + deeper, released.config.layers_per_block
        unet = build_unet(tuple(args.channels), args.layers_per_block, 12, width or 4 * have[0], args.act_fn)
        print(f"folded {args.init_from}; newly initialised: {', '.join(fold_from(released, unet))}")
    else:
        raise SystemExit(f"--space-to-depth {fold} cannot start from a model folded {released_fold}x{released_fold}")
    return unet, card.get("training")


def load_teacher(folder: str, device: torch.device):
    """A model folder loaded as the service loads it (``--distill-from``): its ``predict`` is the target."""
    if not Path(folder).is_dir():
        raise SystemExit(f"--distill-from {folder}: no model folder there")
    entry = scan_folder(Path(folder))  # this folder only: its neighbours' weights are not read
    if entry.status != "ready":
        raise SystemExit(f"--distill-from {folder}: {entry.error}")
    return load_model(entry, device)


def taught(teacher, x_t: torch.Tensor, t: torch.Tensor, views: int) -> torch.Tensor:
    """The teacher's prediction for ``x_t`` averaged over its first ``views`` flips/rotations (the service's
    ``ensemble``, ``ENSEMBLE_ORDER``), each undone, in one batch: with ``views`` > 1 a better posterior mean
    than the teacher's single pass (geometric self-ensemble), which a student may learn to go past the teacher.
    Square crops only (a quarter turn keeps the shape)."""
    transforms = ENSEMBLE_ORDER[:views]
    batch = torch.cat([apply_transform(x_t, transform) for transform in transforms])
    pred = teacher.predict(batch, t.repeat(len(transforms)), [None] * len(batch)).float()
    undone = [invert_transform(p, transform) for p, transform in zip(pred.chunk(len(transforms)), transforms)]
    return torch.stack(undone).mean(dim=0)


def train(args: argparse.Namespace) -> Path:
    torch.manual_seed(args.seed)
    device = pick_device("auto")
    fold = args.space_to_depth
    unet, before = start_network(args)
    unet = unet.to(device)
    schedule = NoiseSchedule.from_config(dict(build_scheduler().config))
    teacher = load_teacher(args.distill_from, device) if args.distill_from else None
    loop = TrainLoop(unet, args, device)
    sampler = CropSampler(load_photos("train"), args.crop, loop.rng)
    for step in loop.steps("train denoiser"):
        x0, grey = sampler.batch(args.batch)
        t, ab, by_sigma = draw_timesteps(schedule, args.batch, loop.rng, tuple(args.uniform_sigma))
        # the noise is drawn where the network runs (on a GPU, the host would be the bottleneck otherwise)
        x0, grey, t, ab, by_sigma = (v.to(device) for v in (x0, grey, t, ab, by_sigma))
        noise = torch.randn_like(x0)
        noise[grey] = noise[grey][:, :1].expand(-1, 3, -1, -1)  # a grey upload's noise is the same in each channel
        abc = ab.view(-1, 1, 1, 1)
        x_t = abc.sqrt() * x0 + (1 - abc).sqrt() * noise
        if step >= args.upload_from:
            upload = by_sigma & torch.from_numpy(loop.rng.random(args.batch) < args.upload_frac).to(device)
            x_t[upload], noise[upload] = as_upload(x0[upload], noise[upload], ab[upload])
        weights = loss_weights(ab)
        if teacher is not None:  # its prediction for the same x_t: the posterior mean, without the draw's noise
            with torch.no_grad(), loop.autocast():
                target = taught(teacher, x_t, t, args.distill_views)
            noise = args.distill_weight * target + (1 - args.distill_weight) * noise
        with loop.autocast():
            pred = run_folded(unet, x_t, t, fold)
        per_sample = (pred.float() - noise).pow(2).mean(dim=(1, 2, 3))
        loop.update(step, (per_sample * weights).mean())

    unet = loop.finish()
    distilled = {}
    if teacher is not None:  # the teacher's record, or "init_from" where the run distils the model it started from
        taught_by = teacher.entry.card.training
        distilled = {
            "distill_from": "init_from" if taught_by == before else taught_by,
            "distill_weight": args.distill_weight,
            "distill_views": args.distill_views,
        }
    card = ModelCard(
        description="Photo denoiser (RGB; grey photos replicated), trained by scripts/train_denoiser.py",
        tasks=["denoise"],
        channels=3,
        space_to_depth=fold,
        defaults=SamplingDefaults(sampler=args.default_sampler, steps=args.default_steps),
        training=loop.record(
            script="scripts/train_denoiser.py",
            data="photos from scikit-image, scikit-learn and the Debian packages mate-backgrounds, "
            "lomiri-wallpapers-16.04 and -20.04 and opencv-doc (scripts/fetch_photos.py), held-out photos excluded",
            photos=len(sampler.photos),
            init_from=before,
            crop=args.crop,
            upload_from=args.upload_from,
            upload_frac=args.upload_frac,
            uniform_sigma=list(args.uniform_sigma),
            space_to_depth=fold,
            add_levels=args.add_levels,
            act_fn=args.act_fn,
            **distilled,
        ),
    )
    out = save_model(Path(args.out), unet=unet, scheduler=build_scheduler(), card=card)
    print(json.dumps(card.training, indent=2))
    print(f"wrote {out}")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_training_args(
        parser,
        name="photos",
        iters=28000,
        decay_iters=24000,
        batch=12,
        lr=2e-3,
        channels=[16, 32, 64, 128],
        layers_per_block=2,  # the shipped network's (grown from 1 in continuation 3)
        precision="bf16",
    )
    parser.add_argument("--crop", type=int, default=96)
    parser.add_argument("--upload-from", type=int, default=24000, help="iteration from which the upload phase runs")
    parser.add_argument(
        "--upload-frac",
        type=float,
        default=0.5,
        help="in the upload phase, the share of the denoising-range draws whose noisy photo is rounded and "
        "clipped to uint8",
    )
    parser.add_argument(
        "--uniform-sigma",
        type=float,
        nargs=2,
        default=[5.0, 100.0],
        metavar=("LO", "HI"),
        help="the sigma range (0-255 scale) of the 40%% of draws made uniform in sigma; a narrower one puts "
        "more of the training where the model is weakest",
    )
    parser.add_argument(
        "--init-from",
        default=None,
        help="a model folder whose weights the run starts from (e.g. model_store/photos: training continued "
        "across sessions); its card's training record is kept in the new card",
    )
    parser.add_argument(
        "--space-to-depth",
        type=int,
        choices=(1, 2, 4),
        default=1,
        metavar="K",
        help="fold each K x K block of pixels into channels before the network (2: nothing runs at full "
        "resolution, the float32 cost of FFDNet's design); with --init-from a full-resolution model, the "
        "network is that model's levels from the second on (fold_from)",
    )
    parser.add_argument(
        "--add-levels",
        type=int,
        default=0,
        metavar="N",
        help="N more levels below the deepest, each as wide as it (one more halving of the resolution each: a "
        "larger receptive field for little compute); with --init-from, the released levels are carried over "
        "(carry_levels) and the new ones start as initialised",
    )
    parser.add_argument(
        "--act-fn",
        choices=("silu", "relu"),
        default=None,
        help="the network's activation (default: the --init-from model's, or silu): relu costs less than "
        'silu\'s exponential in float32 on the CPU (docs/denoising.md, "A ReLU network")',
    )
    parser.add_argument(
        "--distill-from",
        default=None,
        metavar="FOLDER",
        help="a model folder (e.g. model_store/photos) whose prediction for each x_t is the target (knowledge "
        "distillation: the posterior mean it learnt, without the noise of the drawn epsilon, so a new "
        "network, such as a --space-to-depth one, learns the same function in fewer iterations)",
    )
    parser.add_argument(
        "--distill-weight",
        type=float,
        default=1.0,
        help="with --distill-from, the target is this share of the teacher's prediction plus the rest of "
        "the drawn epsilon (the same as weighting the two losses)",
    )
    parser.add_argument(
        "--distill-views",
        type=int,
        choices=range(1, len(ENSEMBLE_ORDER) + 1),
        default=1,
        metavar="K",
        help="with --distill-from, the teacher's prediction averaged over its first K flips/rotations (the "
        "service's ensemble: K = 8 was 0.13 dB better than one pass at sigma 15 and 25 on set 1), a better "
        "posterior mean than the teacher's own (distilled into the shipped weights themselves for 4,200 "
        "iterations it cost them 0.02 dB: docs/denoising.md, continuation 11)",
    )
    parser.add_argument("--default-sampler", default="ddpm", help="sample mode's default sampler (the card's)")
    parser.add_argument("--default-steps", type=int, default=10, help="sample mode's default steps (the card's)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    train(parse_args())
