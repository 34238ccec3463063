"""Stage ``pretrain``: the base generator that dreambooth fine-tunes.

``pretrain.base_model: tiny`` (the embedded default) builds the tiny Stable Diffusion pipeline from config
(``tasks/diffusion/tiny.py``) and pretrains it on the data set's own images — ingest's trainval split (train + val,
never test) plus an optional unlabeled folder (``pretrain.pool``; the phantom demo adds its unlabeled pool) — with
one caption (``pretrain.caption``, else the class prompt ``photo of a <caption.thing>``); its tokenizer keeps the
data set's own words whole (``prompt_words``: class names, ``caption.thing``, template text, user captions). This
stands in for SD's web-scale pretraining, because a model built from config knows nothing, and it is what makes the
generator learn *the user's* domain: DreamBooth then starts from a base that knows what the images look like.
Left/right mirrored copies are added only when the data set allows it (``baseline.augment.hflip``, the
classifier's own rule). Two phases:

1. the VAE is trained as a KL autoencoder on those images (a random VAE decodes noise), then its latent scale is
   set so latents have unit variance, as SD's ``scaling_factor`` does;
2. the UNet learns to denoise those latents (DDPM epsilon objective) conditioned on the frozen random-init text
   encoder; captions are dropped to "" at ``caption_dropout`` so classifier-free guidance has an unconditional.

Any other ``base_model`` (a hub id such as ``runwayml/stable-diffusion-v1-5`` or a local diffusers folder) is not
trained: ``base.json`` records the reference, variant and (for a folder) its hash, after checking that it loads.

The denoising loss (with min-SNR weighting and offset noise) and the image loader it shares with dreambooth live in
``tasks/diffusion/training.py``.
"""

from __future__ import annotations

import logging
import string
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tasks  # noqa: F401  (torchvision guard before diffusers)
from tasks.diffusion.colour import to_data_mode
from tasks.diffusion.prompts import class_prompt
from tasks.diffusion.training import check_finite, denoising_loss, load_images, make_accelerator
from tasks.io import atomic_write_json, clean_stale_temp, save_png_atomic
from tasks.params import Params
from tasks.tables import read_ingest_manifest
from tasks.sections_diffusion import Pretrain
from tasks.stage import StageError, cli_main

log = logging.getLogger(__name__)

#: Image files an unlabeled pool without metadata.csv contributes (decoded by PIL, resized to the data's size).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

#: Latents are sampled this many times for the scale estimate (``scaling_factor`` = 1 / std).
_SCALE_SAMPLES = 256


class PretrainError(StageError):
    """The pool or the base model cannot be used; the message says which file or reference and why."""


@dataclass(frozen=True)
class PretrainOutputs:
    out_dir: Path
    pipeline: Path | None  # tiny: the pretrained diffusers folder
    base_json: Path | None  # hub id / folder: the reference record
    metrics: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- data


def read_pool(pool: Path) -> list[str]:
    """File names of an unlabeled pool: ``metadata.csv``'s ``file_name`` column (in file order) when it has one,
    else its image files (``IMAGE_SUFFIXES``, hidden ones skipped), sorted."""
    import pandas as pd

    if not pool.is_dir():
        raise PretrainError(f"unlabeled pool {pool} (pretrain.pool, or the demo's paths.phantom/unlabeled) is not a "
                            f"folder; with dataset.source phantom run `dvc repro phantom`")
    meta = pool / "metadata.csv"
    if not meta.is_file():
        names = sorted(p.relative_to(pool).as_posix() for p in pool.rglob("*")
                       if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(pool).parts))
        if not names:
            raise PretrainError(f"unlabeled pool {pool} has no metadata.csv and no images ({' '.join(IMAGE_SUFFIXES)})")
        return names
    df = pd.read_csv(meta, dtype=str, keep_default_na=False)
    if "file_name" not in df.columns or df.empty:
        raise PretrainError(f"{meta} needs a non-empty file_name column, got columns {list(df.columns)}")
    return df["file_name"].tolist()


def pool_image_size(pool: Path, first: str) -> int:
    """Side of a folder's (square) images: the tiny model is built at the data's resolution."""
    from PIL import Image

    with Image.open(pool / first) as im:
        w, h = im.size
    if w != h or w % 8:
        raise PretrainError(f"pretraining images must be square with a side divisible by 8, got {w}x{h} "
                            f"({pool / first}; ingest.image_size sets it)")
    return w


def gather_images(params: Params, trainval: Path, pool: Path | None) -> tuple[Any, dict[str, float]]:
    """The pretraining images as one tensor (N, 3, size, size) in [-1, 1]: every trainval image (train and val;
    labels unused), then the pool's, at the trainval images' size; with their counts."""
    import torch

    names = read_ingest_manifest(trainval, params.classes)["file_name"].tolist()
    if not names:
        raise PretrainError(f"{trainval}/manifest.csv lists no images: nothing to pretrain the base on")
    size = pool_image_size(trainval, names[0])
    parts = [load_images(trainval, names, size)]
    pool_names = read_pool(pool) if pool is not None else []
    if pool_names:
        parts.append(load_images(pool, pool_names, size))
    return torch.cat(parts), {"trainval_images": float(len(names)), "pool_images": float(len(pool_names))}


def random_hflip(x: Any, gen: Any) -> Any:
    """Mirror each image of the batch left/right with probability 1/2 (only called when the data set allows it)."""
    import torch

    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


# --------------------------------------------------------------------------------------------- training


def _lr_schedule(optimizer: Any, warmup: int, total: int) -> Any:
    from diffusers.optimization import get_scheduler

    return get_scheduler("cosine", optimizer, num_warmup_steps=min(warmup, total), num_training_steps=max(total, 1))


def train_vae(vae: Any, images: Any, cfg: Pretrain, seed: int, hflip: bool = False) -> dict[str, float]:
    """Train the tiny VAE as a KL autoencoder on ``images`` (randomly mirrored with ``hflip``); return its final
    reconstruction MSE."""
    import torch
    from tasks.progress import progress

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_learning_rate, weight_decay=0.0, fused=True)
    sched = _lr_schedule(opt, cfg.warmup_steps, cfg.vae_steps)
    vae.train()
    recent: list[float] = []
    for step in progress(range(cfg.vae_steps), desc="pretrain vae", unit="step"):
        x = images[torch.randint(0, len(images), (cfg.vae_batch_size,), generator=gen)]
        if hflip:
            x = random_hflip(x, gen)
        x = x.contiguous(memory_format=torch.channels_last)  # the VAE's layout while it trains (pretrain_tiny)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        mse = torch.nn.functional.mse_loss(recon, x)
        loss = mse + cfg.vae_kl_weight * posterior.kl().mean()
        check_finite(loss, step, "pretrain vae")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        recent = (recent + [float(mse.detach())])[-20:]
    vae.eval().requires_grad_(False)
    return {"vae_recon_mse": sum(recent) / max(len(recent), 1)}


def encode_pool(vae: Any, images: Any, batch: int = 64, hflip: bool = False) -> tuple[Any, Any]:
    """Posterior mean and std of every image, and with ``hflip`` of its mirror image too (computed once: the VAE
    is frozen while the UNet trains). Batches of 64 encode ~1.5x faster than 256 on a 2-core CPU (cache-sized)."""
    import torch

    means, stds = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            chunk = images[i:i + batch]
            for x in ((chunk, chunk.flip(-1)) if hflip else (chunk,)):
                dist = vae.encode(x.contiguous(memory_format=torch.channels_last)).latent_dist
                means.append(dist.mean)
                stds.append(dist.std)
    return torch.cat(means).contiguous(), torch.cat(stds).contiguous()


def set_latent_scale(vae: Any, means: Any) -> float:
    """Set ``vae.config.scaling_factor`` to 1/std of the latents (SD's 0.18215 was chosen the same way)."""
    scale = float(1.0 / means[:_SCALE_SAMPLES].flatten().std().clamp_min(1e-6))
    vae.register_to_config(scaling_factor=scale)
    return scale


def pretrain_caption(params: Params) -> str:
    """The one caption of every pretraining image: ``pretrain.caption``, else the class prompt of the data set."""
    return params.pretrain.caption or class_prompt(params.caption.thing)


def _literal_text(template: str) -> str:
    """A format template without its ``{fields}`` (their values are per image: numbers, labels)."""
    try:
        return " ".join(literal for literal, *_ in string.Formatter().parse(template))
    except ValueError:  # an invalid template is caption's error to report, with its own message
        return template


def prompt_words(params: Params, captions: Iterable[Any] = ()) -> list[str]:
    """The data set's words for the tiny tokenizer, in order: those of every prompt the loop writes from params
    (class names, ``caption.thing``, the caption template's text, the pretrain caption, generate's prompt templates
    and negative prompt), then the user captions of the trainval images, most frequent first. Nothing here is
    specific to any data set: a user's images bring their own vocabulary."""
    from tasks.diffusion.tiny import words_of

    fixed = [*params.classes, params.caption.thing, _literal_text(params.caption.template), pretrain_caption(params),
             *map(_literal_text, params.generate.prompt_templates), params.generate.negative_prompt]
    user = [c for c in captions if isinstance(c, str) and c.strip()]
    return list(dict.fromkeys([*words_of(fixed), *words_of(user)]))


def train_unet(pipe: Any, means: Any, stds: Any, cfg: Pretrain, seed: int, caption: str) -> dict[str, float]:
    """Pretrain the UNet to denoise the images' latents under ``caption`` (with caption dropout)."""
    import torch
    from diffusers import DDPMScheduler
    from tasks.progress import progress

    from tasks.diffusion.prompts import encode_prompts

    accelerator = make_accelerator(cfg.precision)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    cond, uncond = encode_prompts(pipe, [caption, ""]).split(1)
    scale = pipe.vae.config.scaling_factor
    unet = pipe.unet.train()
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.learning_rate, weight_decay=1e-2, fused=True)  # as dreambooth
    sched = _lr_schedule(opt, cfg.warmup_steps, cfg.steps)
    unet, opt, sched = accelerator.prepare(unet, opt, sched)
    gen = torch.Generator().manual_seed(seed + 1)
    recent: list[float] = []
    start = time.perf_counter()
    for step in progress(range(cfg.steps), desc="pretrain unet", unit="step"):
        idx = torch.randint(0, len(means), (cfg.batch_size,), generator=gen)
        eps = torch.randn(means[idx].shape, generator=gen)
        latents = ((means[idx] + stds[idx] * eps) * scale).to(accelerator.device)
        drop = (torch.rand(cfg.batch_size, generator=gen) < cfg.caption_dropout)[:, None, None]
        embeds = torch.where(drop, uncond, cond).to(accelerator.device)
        with accelerator.autocast():
            loss = denoising_loss(unet, noise_scheduler, latents, embeds, gen)
        recent = (recent + [check_finite(loss, step, "pretrain unet")])[-50:]
        accelerator.backward(loss)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    pipe.unet = accelerator.unwrap_model(unet).eval()
    return {"unet_loss": sum(recent) / max(len(recent), 1),
            "unet_steps_per_s": cfg.steps / seconds if seconds > 0 else 0.0}


def sample_grid(pipe: Any, prompt: str, seed: int, n: int = 16, steps: int = 20) -> Any:
    """A fixed-seed grid of ``n`` samples for ``prompt`` (PIL, 4 columns when n allows), to eyeball the base."""
    import torch
    from diffusers.utils import make_image_grid

    gens = [torch.Generator().manual_seed(seed + i) for i in range(n)]
    images = pipe([prompt] * n, num_inference_steps=steps, guidance_scale=3.0, generator=gens).images
    cols = 4 if n % 4 == 0 else n  # make_image_grid needs a full rectangle
    return make_image_grid(images, rows=n // cols, cols=cols)


# --------------------------------------------------------------------------------------------- stage


def pretrain_tiny(params: Params, trainval: Path, pool: Path | None, out_dir: Path) -> PretrainOutputs:
    """Build, pretrain and save the tiny pipeline under ``out_dir/pipeline``."""
    import torch

    from tasks.diffusion.pipeline import model_hash, save_pipeline
    from tasks.diffusion.tiny import build_tiny_pipeline

    cfg = params.pretrain
    torch.manual_seed(params.seed)
    images, counts = gather_images(params, trainval, pool)
    size = int(images.shape[-1])
    hflip = params.baseline.augment.hflip
    log.info("pretraining the tiny base on %d trainval + %d pool images at %d² (mirrored copies: %s)",
             counts["trainval_images"], counts["pool_images"], size, hflip)
    manifest = read_ingest_manifest(trainval, params.classes)
    words = prompt_words(params, manifest["caption"] if "caption" in manifest else ())
    pipe = build_tiny_pipeline(size, params.seed, words)
    pipe.set_progress_bar_config(disable=True)
    start = time.perf_counter()
    # channels_last: the VAE's full-resolution convolutions train and encode ~1.5x faster on 2 CPU cores (measured;
    # the UNet's 16² latents gain nothing); back to the plain layout before anything else uses or saves it
    pipe.vae.to(memory_format=torch.channels_last)
    metrics = {**counts, "hflip": float(hflip), **train_vae(pipe.vae, images, cfg, params.seed, hflip)}
    metrics["vae_seconds"] = time.perf_counter() - start
    means, stds = encode_pool(pipe.vae, images, hflip=hflip)
    pipe.vae.to(memory_format=torch.contiguous_format)
    metrics["vae_scaling_factor"] = set_latent_scale(pipe.vae, means)
    metrics.update(train_unet(pipe, means, stds, cfg, params.seed, pretrain_caption(params)))
    folder = save_pipeline(pipe, out_dir / "pipeline")
    grid = sample_grid(pipe, pretrain_caption(params), params.seed, cfg.sample_images, cfg.sample_steps)
    save_png_atomic(to_data_mode(grid, params.ingest.channels), out_dir / "samples.png")
    (out_dir / "base.json").unlink(missing_ok=True)
    atomic_write_json(out_dir / "pipeline.json", {
        "base_model": "tiny", "hash": model_hash(folder), "trainval_images": int(counts["trainval_images"]),
        "pool_images": int(counts["pool_images"]), "hflip": hflip, "image_size": size,
        "tokenizer_vocab_size": len(pipe.tokenizer.get_vocab()), "data_set_words": len(words)})
    return PretrainOutputs(out_dir, folder, None, metrics)


def reference_base(cfg: Pretrain, out_dir: Path) -> PretrainOutputs:
    """Record a hub id / local folder as the base after checking that it loads (no training)."""
    import shutil

    from tasks.diffusion.pipeline import load_pipeline, model_hash

    pipe = load_pipeline(cfg.base_model, variant=cfg.variant or None)
    local = Path(cfg.base_model).expanduser()
    record = {"base_model": cfg.base_model, "variant": cfg.variant,
              "hash": model_hash(local) if (local / "model_index.json").is_file() else "",
              "unet_sample_size": int(pipe.unet.config.sample_size)}
    shutil.rmtree(out_dir / "pipeline", ignore_errors=True)
    atomic_write_json(out_dir / "base.json", record)
    return PretrainOutputs(out_dir, None, out_dir / "base.json", {})


def run(params: Params, *, trainval: Path, pool: Path | None = None, out_dir: Path) -> PretrainOutputs:
    """Pretrain the tiny base on the ``trainval`` images (+ the unlabeled ``pool``) into ``out_dir``, or reference
    an existing base (a hub id or diffusers folder: nothing is trained, the inputs are not read)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clean_stale_temp(out_dir)
    if params.pretrain.base_model != "tiny":
        return reference_base(params.pretrain, out_dir)
    return pretrain_tiny(params, Path(trainval), Path(pool) if pool is not None else None, out_dir)


if __name__ == "__main__":
    cli_main("pretrain")
