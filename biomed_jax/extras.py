"""Optional dependencies: imported where they are used, with an error naming the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

# module -> (extra that installs it, what needs it)
EXTRAS = {
    "sacremoses": ("biogpt", "the BioGPT tokenizer (its Moses step)"),
    "optax": ("train", "biomed_jax.train"),
    "matplotlib": ("plot", "drawing attention maps"),
    "qwix": (
        "qwix",
        "LoRA and int8 weight-only inference (biomed_jax.lora, biomed_jax.quantization)",
    ),
}


def require(module: str) -> ModuleType:
    """Import optional `module`, or raise ModuleNotFoundError saying which extra installs it."""
    extra, user = EXTRAS[module]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:  # a broken install of it: report that error as is
            raise
        raise ModuleNotFoundError(
            f"{user} needs {module}: pip install 'biomed-jax[{extra}]'", name=module
        ) from e
