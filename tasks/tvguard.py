"""Make ``import torchvision`` work next to a CPU-only torch whose torchvision wheel is a CUDA build.

PyPI's torchvision wheels are CUDA builds. Next to the CPU torch, torchvision's C++ extension (``_C.so``) cannot
load (its CUDA libraries are missing); torchvision swallows that, but ``torchvision/_meta_registrations.py`` then
calls ``torch.library.register_fake("torchvision::nms")`` unconditionally and the import dies with
``RuntimeError: operator torchvision::nms does not exist``. That also breaks torch-fidelity, transformers' CLIP
imports and diffusers' ``StableDiffusionPipeline``.

The fix is the narrowest one that works: *only when the extension fails to load*, define the schemas of the two
ops that torchvision registers unconditionally (``nms``, ``qnms``). Models, transforms v2 and datasets then work;
the C++ ops themselves (nms, roi_align, ``torchvision.io`` decoding) stay unavailable, as they were. On a normal
install (CUDA torch + CUDA torchvision, or CPU torch + CPU torchvision) the extension loads and nothing is defined.

It runs lazily: ``install()`` puts a meta-path finder in front of the import system that acts once, the first
time ``torchvision`` is imported, so importing ``tasks`` stays cheap and no torch import happens before it is
needed. ``tasks/__init__.py`` calls ``install()``, which covers every entry point (DVC stage commands, the Prefect
flow, the CLI, pytest) because each imports ``tasks`` first.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)

#: The ops torchvision registers fake kernels for without checking that its extension loaded.
STUB_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor",
}

# The torch.library.Library that owns the stub definitions must stay alive: when it is garbage collected torch
# removes the definitions again. One per process, hence module state.
_stub_library = None
_state: str | None = None  # None (not run yet) | "native" | "stubbed" | "absent"


def extension_path() -> Path | None:
    """Path of torchvision's compiled extension, found without importing torchvision."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        for candidate in sorted(Path(folder).glob("_C*.so")) + sorted(Path(folder).glob("_C*.pyd")):
            return candidate
    return None


def _extension_loads(path: Path) -> bool:
    import torch

    try:
        torch.ops.load_library(str(path))
    except (OSError, ImportError, RuntimeError) as err:
        log.debug("torchvision extension %s does not load: %s", path, err)
        return False
    return True


def _define_stubs() -> None:
    global _stub_library
    import torch

    lib = torch.library.Library("torchvision", "DEF")
    for schema in STUB_SCHEMAS.values():
        lib.define(schema)
    _stub_library = lib


def ensure_torchvision_ops(extension_loads=_extension_loads) -> str:
    """Prepare for ``import torchvision``; return what was found: "native", "stubbed" or "absent".

    Idempotent. ``extension_loads`` is injectable so tests can take both branches on any machine.
    """
    global _state
    if _state is not None:
        return _state
    path = extension_path()
    if path is None:
        _state = "absent"
    elif extension_loads(path):
        _state = "native"
    else:
        _define_stubs()
        _state = "stubbed"
        log.info("torchvision C++ extension unavailable (CUDA wheel next to CPU torch); defined op schemas %s",
                 sorted(STUB_SCHEMAS))
    return _state


class _TorchvisionGuard:
    """Meta-path finder that runs ``ensure_torchvision_ops`` right before torchvision is first imported."""

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path.remove(self)
            ensure_torchvision_ops()
        return None  # the normal finders do the import


def install() -> None:
    """Arm the guard (idempotent). Does nothing if torchvision is already imported."""
    if "torchvision" in sys.modules or any(isinstance(f, _TorchvisionGuard) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _TorchvisionGuard())
