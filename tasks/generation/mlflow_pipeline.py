"""The fine-tuned DreamBooth pipeline as an MLflow model: a pyfunc that generates images for a class.

Input: a DataFrame with ``label`` (a class: its instance prompt and class negatives from caption's prompts.json)
or ``prompt`` (any text; ``negative_prompt`` optional), and ``seed``. Output: ``image`` (PNG bytes in the data
set's colour mode), ``prompt``, ``seed``. Sampling is generate's own (``render_batch``: same seed → same noise
→ the same image as the generate stage with the same recipe). Per-call params (``num_inference_steps``,
``guidance_scale``) default to the ``generate`` section the model was logged with.

The pipeline folder and prompts.json are the artifacts and the ``tasks`` package is the code, so
``mlflow.pyfunc.load_model("models:/synthloop-dreambooth@dreambooth")`` needs only this project's environment.
For Stable Diffusion 1.5 the folder is ~4 GB: ``dreambooth.log_model: false`` skips logging it.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import mlflow.pyfunc

REGISTERED_PIPELINE = "synthloop-dreambooth"
_TASKS_DIR = Path(__file__).resolve().parent.parent


def _png(array: Any, channels: int) -> bytes:
    import numpy as np
    from PIL import Image

    pixels = (np.nan_to_num(array, nan=0.0).clip(0, 1) * 255).round().astype("uint8")
    image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode="L" if channels == 1 else "RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class PipelinePyfunc(mlflow.pyfunc.PythonModel):
    """Loads the pipeline once (CPU fp32, or CUDA when available); ``predict`` renders one image per row."""

    def load_context(self, context):
        from tasks.generation.sampling import prepare_pipeline

        self.config = json.loads(Path(context.artifacts["config"]).read_text(encoding="utf-8"))
        self.prompts = json.loads(Path(context.artifacts["prompts"]).read_text(encoding="utf-8"))
        self.pipe = prepare_pipeline(context.artifacts["pipeline"], self.config["scheduler"], "fp32")

    def _row(self, row: dict[str, Any], i: int) -> dict[str, Any]:
        label = row.get("label")
        if isinstance(label, str) and label:
            if label not in self.prompts["instance_prompts"]:
                raise ValueError(f"row {i}: unknown label {label!r}; classes: {sorted(self.prompts['instance_prompts'])}")
            prompt = self.prompts["instance_prompts"][label]
            negative = (self.prompts.get("negative_prompts") or {}).get(label, "")
        elif isinstance(row.get("prompt"), str) and row["prompt"]:
            prompt, negative = row["prompt"], row.get("negative_prompt") or ""
        else:
            raise ValueError(f"row {i}: give a 'label' (one of the classes) or a 'prompt'")
        return {"prompt": prompt, "negative_prompt": negative if isinstance(negative, str) else "",
                "seed": int(row.get("seed") or 0)}

    # No type hints: MLflow would try (and fail) to derive a schema from them; the signature is explicit.
    def predict(self, context, model_input, params=None):
        import pandas as pd

        from tasks.generation.sampling import render_batch

        cfg = {**self.config, **{k: v for k, v in (params or {}).items() if v is not None}}
        recipe = {"steps": int(cfg["num_inference_steps"]), "guidance": float(cfg["guidance_scale"]),
                  "height": cfg["size"], "width": cfg["size"], "channels": cfg["channels"]}
        rows = [{**self._row(r, i), **recipe} for i, r in enumerate(model_input.to_dict("records"))]
        images = [render_batch(self.pipe, [r])[0] for r in rows]  # one at a time: bits never depend on batching
        return pd.DataFrame({"image": [_png(im, cfg["channels"]) for im in images],
                             "prompt": [r["prompt"] for r in rows], "seed": [r["seed"] for r in rows]})


def signature(config: dict[str, Any]):
    """``label``/``prompt``/``negative_prompt`` (string), ``seed`` (long) in; ``image`` (binary) out; params."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec("string", "label", required=False), ColSpec("string", "prompt", required=False),
                     ColSpec("string", "negative_prompt", required=False), ColSpec("long", "seed", required=False)])
    outputs = Schema([ColSpec("binary", "image"), ColSpec("string", "prompt"), ColSpec("long", "seed")])
    params = ParamSchema([ParamSpec("num_inference_steps", "long", int(config["num_inference_steps"])),
                          ParamSpec("guidance_scale", "double", float(config["guidance_scale"]))])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def pipeline_config(params: Any, model_dir: Path) -> dict[str, Any]:
    """The recipe stored with the model: generate's sampler, steps, guidance, size and the data's colour mode."""
    unet = json.loads((Path(model_dir) / "unet" / "config.json").read_text(encoding="utf-8"))
    vae = json.loads((Path(model_dir) / "vae" / "config.json").read_text(encoding="utf-8"))
    native = int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    g = params.generate
    return {"scheduler": g.scheduler, "num_inference_steps": g.num_inference_steps,
            "guidance_scale": g.guidance_scale, "size": g.image_size or native, "channels": params.ingest.channels}


def log_pipeline(model_dir: Path, prompts: Path, params: Any, *, registered_name: str | None = REGISTERED_PIPELINE,
                 alias: str = "dreambooth"):
    """Log ``model_dir`` as a pyfunc of the active run, register it and point ``alias`` at the new version."""
    import tempfile

    config = pipeline_config(params, model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        config_file = Path(tmp) / "generation.json"
        config_file.write_text(json.dumps(config), encoding="utf-8")
        info = mlflow.pyfunc.log_model(
            name="pipeline", python_model=PipelinePyfunc(), code_paths=[str(_TASKS_DIR)],
            artifacts={"pipeline": str(model_dir), "prompts": str(prompts), "config": str(config_file)},
            signature=signature(config), pip_requirements=_requirements(), registered_model_name=registered_name)
    if registered_name:
        mlflow.MlflowClient().set_registered_model_alias(registered_name, alias, info.registered_model_version)
    return info


def _requirements() -> list[str]:
    # Given explicitly: inference would import the pipeline in a subprocess (minutes for SD1.5).
    from importlib.metadata import version

    return [f"{n}=={version(n)}" for n in ("mlflow", "torch", "diffusers", "transformers", "safetensors", "pillow",
                                            "numpy", "pandas", "pydantic", "pyyaml")]
