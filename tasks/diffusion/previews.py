"""DreamBooth validation previews: fixed-seed grids (a row per class, then where the classes differ) whose
black/constant/NaN images are flagged, with the prompts and negatives generate will use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.diffusion.colour import to_data_channels, to_data_mode
from tasks.diffusion.dreambooth_data import read_caption
from tasks.sections_diffusion import Dreambooth


def image_flags(images: Any) -> list[str]:
    """Per image (N, H, W, C floats in [0, 1]): 'nan', 'black', 'constant' or 'ok'."""
    import numpy as np

    flags = []
    for img in images:
        if not np.isfinite(img).all():
            flags.append("nan")
        elif img.max() < 0.02:
            flags.append("black")
        elif img.std() < 1e-3:
            flags.append("constant")
        else:
            flags.append("ok")
    return flags


def validation_grid(pipe: Any, prompts: list[tuple[str, str]], n: int, seed: int,
                    cfg: Dreambooth, channels: int = 3) -> tuple[Any, dict]:
    """One row per (prompt, negative prompt), the same ``n`` seeds in every row; the grid and flag/difference metrics.
    The grid is in the data set's colour mode (``channels``, ingest.channels), as generate's images are.

    Negative prompts follow prompts.json as generation does (``class_negatives``), so the grid previews what the
    generate stage will make of each class.
    """
    import numpy as np
    import torch
    from diffusers.utils import make_image_grid
    from PIL import Image

    from tasks.diffusion.prompts import prompt_embedding

    rows = []
    for prompt, negative in prompts:
        gens = [torch.Generator().manual_seed(seed + i) for i in range(n)]
        pos, neg = (prompt_embedding(pipe, text).expand(n, -1, -1) for text in (prompt, negative))
        out = pipe(prompt_embeds=pos, negative_prompt_embeds=neg, num_inference_steps=cfg.inference_steps,
                   guidance_scale=cfg.guidance_scale, generator=gens, output_type="np").images
        rows.append(to_data_channels(np.asarray(out, dtype=np.float32), channels))
    flags = [f for row in rows for f in image_flags(row)]
    diffs = [float(np.abs(rows[a] - rows[b]).mean()) for a in range(len(rows)) for b in range(a + 1, len(rows))]
    metrics = {"validation_flagged": float(sum(f != "ok" for f in flags)),
               "validation_class_difference": float(np.mean(diffs)) if diffs else 0.0}
    if len(rows) > 1:
        rows.append(class_spread(rows))
    pil = [Image.fromarray(_to_u8(img)) for r in rows for img in r]
    return to_data_mode(make_image_grid(pil, rows=len(rows), cols=n), channels), metrics


def _to_u8(image: Any) -> Any:
    """A float image (H, W, C) in [0, 1] as uint8 for PIL; one channel becomes (H, W), i.e. mode L."""
    import numpy as np

    u8 = (np.nan_to_num(image) * 255).round().clip(0, 255).astype("uint8")
    return u8[:, :, 0] if u8.shape[-1] == 1 else u8


def class_spread(rows: list[Any]) -> Any:
    """The grid's last row: where the class rows differ, per seed (pixel std across classes, max = white).

    Same seed, different class prompt: whatever lights up is what the model changes for the class; a black row
    means the classes are not told apart. Scaled by the largest spread in the row so faint effects stay visible.
    """
    import numpy as np

    stack = np.nan_to_num(np.stack(rows))  # (classes, n, H, W, C)
    spread = stack.std(axis=0).mean(axis=-1, keepdims=True)
    spread = spread / max(float(spread.max()), 1e-8)
    return np.repeat(spread, stack.shape[-1], axis=-1)


def validation_prompts(caption: Path, cfg: Dreambooth) -> list[tuple[str, str]]:
    """Per class, the (prompt, negative prompt) validation uses, as generate will: the instance prompt and the
    class's negative from prompts.json; or (per_image) the class's first caption and the other classes' first
    captions. The negative is "" when class negatives are off."""
    from tasks.diffusion.prompts import PROMPT_SEPARATOR

    _names, labels, texts, prompts = read_caption(caption, cfg.caption_mode)
    negatives = prompts.get("negative_prompts") or {}
    if cfg.caption_mode == "class":
        return [(prompts["instance_prompts"][c], negatives.get(c, "")) for c in prompts["classes"]]
    first = dict(reversed(list(zip(labels, texts))))
    shown = [c for c in prompts["classes"] if c in first]
    return [(first[c], PROMPT_SEPARATOR.join(first[o] for o in shown if o != c) if negatives else "")
            for c in shown]
