"""Optional dependencies: imported where they are used, with an error naming what to install.

biomed-jax is not on PyPI, so the error names the package itself (`pip install sacremoses`) and
the extra of a checkout that brings it (`pip install '.[biogpt]'`).
"""

from __future__ import annotations

import importlib
from types import ModuleType

# module -> (extra that installs it, what needs it)
EXTRAS = {
    "sacremoses": ("biogpt", "the BioGPT tokenizer (its Moses step)"),
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
            f"{user} needs {module}: pip install {module} (in a checkout of biomed_jax: "
            f"pip install '.[{extra}]')",
            name=module,
        ) from e
