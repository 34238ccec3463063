"""The classifier as an MLflow model: a pyfunc that MLflow can load, compare by signature and serve.

Input: a DataFrame with one column ``image`` of encoded image bytes (PNG, JPEG, ...; over REST the bytes are
base64 in ``dataframe_split``, as MLflow does for ``binary`` columns). Output: one ``p_<class>`` column per class
and ``pred_label``. The model folder (``model.safetensors`` + ``model.json``) is the pyfunc's only artifact and the
``tasks`` package travels as its code, so ``mlflow.pyfunc.load_model("models:/synthloop-classifier@retrained")``
and ``mlflow models serve --env-manager local`` need nothing but this project's environment.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import mlflow.pyfunc

from tasks.classify.models import META_FILE

#: The one input column.
IMAGE_COLUMN = "image"
_TASKS_DIR = Path(__file__).resolve().parent.parent


def decode_images(values: Any, channels: int, size: int):
    """Encoded images (bytes, or base64 text) → uint8 tensor N×C×size×size, as the stages load them."""
    import base64

    import torch
    from PIL import Image

    from tasks.classify.data import image_tensor

    mode = "L" if channels == 1 else "RGB"
    out = torch.empty((len(values), channels, size, size), dtype=torch.uint8)
    for i, value in enumerate(values):
        raw = base64.b64decode(value) if isinstance(value, str) else bytes(value)
        try:
            with Image.open(io.BytesIO(raw)) as im:
                out[i] = image_tensor(im, mode, size, channels)
        except (OSError, ValueError) as err:
            raise ValueError(f"row {i} of column {IMAGE_COLUMN!r} is not a readable image: {err}") from err
    return out


class ClassifierPyfunc(mlflow.pyfunc.PythonModel):
    """Loads the saved classifier folder once; ``predict`` maps encoded images to class probabilities."""

    def load_context(self, context):
        from tasks.classify.models import load_model

        self.model, self.meta = load_model(Path(context.artifacts["model"]))

    # No type hints: MLflow would try (and fail) to derive a schema from them; the signature is explicit.
    def predict(self, context, model_input, params=None):
        import pandas as pd

        from tasks.classify.train import predict_proba

        if IMAGE_COLUMN not in model_input:
            raise ValueError(f"input needs a column {IMAGE_COLUMN!r} of encoded images; got {list(model_input)}")
        images = decode_images(list(model_input[IMAGE_COLUMN]), int(self.meta["channels"]),
                               int(self.meta["image_size"]))
        proba = predict_proba(self.model, images)
        classes = list(self.meta["classes"])
        out = pd.DataFrame(proba, columns=[f"p_{c}" for c in classes])
        out["pred_label"] = [classes[i] for i in proba.argmax(axis=1)] if len(out) else []
        return out


def signature(classes: list[str]):
    """``image`` (binary) in; ``p_<class>`` (double) and ``pred_label`` (string) out."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    outputs = [ColSpec("double", f"p_{c}") for c in classes] + [ColSpec("string", "pred_label")]
    return ModelSignature(inputs=Schema([ColSpec("binary", IMAGE_COLUMN)]), outputs=Schema(outputs))


def _requirements() -> list[str]:
    # Pinned to this environment and given explicitly: MLflow's requirement inference would start a subprocess
    # that imports the model (seconds per model, on every baseline/retrain).
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("mlflow", "torch", "torchvision", "safetensors", "pillow",
                                                     "numpy", "pandas", "pydantic", "pyyaml")]


def log_classifier(folder: Path, example_image: bytes | None = None, name: str = "model",
                   registered_name: str | None = None):
    """Log ``folder`` (a saved classifier) as a pyfunc model of the active run; register it when named.

    ``example_image``: encoded bytes of one real image for the input example (MLflow stores it with the model).
    Returns MLflow's ModelInfo (``registered_model_version`` set when registered).
    """
    import pandas as pd

    classes = json.loads((Path(folder) / META_FILE).read_text(encoding="utf-8"))["classes"]
    example = pd.DataFrame({IMAGE_COLUMN: [example_image]}) if example_image is not None else None
    return mlflow.pyfunc.log_model(
        name=name, python_model=ClassifierPyfunc(), artifacts={"model": str(folder)},
        code_paths=[str(_TASKS_DIR)], signature=signature(classes), input_example=example,
        pip_requirements=_requirements(), registered_model_name=registered_name)
