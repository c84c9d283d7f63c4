"""What a `--model` check's live run and its replay share: settings, report, our forward pass,
and the errors of each output merged over batches into one row (`report.verdict`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from conformance import bert, biogpt
from conformance import golden as golden_file
from conformance.checkpoint import Checkpoint
from conformance.report import Errors, Row, verdict

DTYPES = ("float32", "bfloat16")
SIDES = ("right", "left")


@dataclasses.dataclass(frozen=True)
class Settings:
    """What a live check runs (a replay reads them from its golden)."""

    dtypes: tuple[str, ...] = DTYPES
    sides: tuple[str, ...] = SIDES
    batch_size: int = 8
    max_length: int = 128  # tokens per text (at most the model's positions)
    generation: bool = True  # causal LMs: greedy and beam-5 against transformers' generate
    prompt_length: int = 16  # generation prompts: each text's first tokens
    max_new_tokens: int = 20
    columns: int = 4  # recorded entries per row of each output (golden)
    policy: str = "fast"  # our numerics policy (biomed_jax.numerics)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtypes", tuple(dict.fromkeys(self.dtypes)))
        object.__setattr__(self, "sides", tuple(dict.fromkeys(self.sides)))
        for name, allowed in (("dtypes", DTYPES), ("sides", SIDES)):
            values = getattr(self, name)
            if not values or any(v not in allowed for v in values):
                raise ValueError(f"{name} must be a non-empty subset of {allowed}, got {values}")
        for name in ("batch_size", "max_length", "prompt_length", "max_new_tokens", "columns"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")


@dataclasses.dataclass(frozen=True)
class ModelReport:
    """The rows of one checkpoint, and what they were computed from."""

    rows: list[Row]
    checkpoint: dict[str, Any]
    settings: dict[str, Any]
    versions: dict[str, str]
    golden: dict[str, Any] | None = None  # replay: the golden's path, checkpoint and versions

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        del out["rows"]
        return out


def versions(with_reference: bool) -> dict[str, str]:
    """Python, platform, JAX backend and the versions of every package the check used."""
    import importlib.metadata
    import platform

    import jax

    names = ["biomed-jax", "jax", "jaxlib", "flax", "numpy", "safetensors"]
    names += ["torch", "transformers"] if with_reference else []
    out = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "jax_backend": jax.default_backend(),
    }
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def label(checkpoint: Checkpoint) -> str:
    """The checkpoint's short name in row suites (its last path or hub id component)."""
    return Path(checkpoint.model.rstrip("/")).name or checkpoint.model


def fallbacks(model_type: str, dtype: str) -> dict[str, float]:
    """Absolute bounds per output kind where transformers did not run in `dtype`."""
    if model_type == "bert":
        if dtype == "float32":
            return dict.fromkeys(("hidden", "attention", "logits", "pooler"), bert.FP32_TOL)
        return bert.BF16_TOL
    return biogpt.FP32_TOL if dtype == "float32" else biogpt.BF16_TOL


def our_forward(ours: Any, dtype: str) -> Callable[[dict[str, np.ndarray]], Any]:
    """Our model in compute `dtype` on a batch: every hidden state and attention map."""
    import jax
    import jax.numpy as jnp

    module = ours.module.clone(dtype=jnp.dtype(dtype))
    params = ours.params
    apply = jax.jit(
        lambda p, batch: module.apply(
            {"params": p}, **batch, output_hidden_states=True, output_attentions=True
        )
    )
    return lambda batch: apply(params, {k: jnp.asarray(v) for k, v in batch.items()})


def all_finite(output: Any) -> bool:
    import jax

    return all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(output))


PROJECTED = " (row projections)"  # the derived output: `golden.project` of each row


class Merged:
    """Errors per (output, dtype) merged over batches, then one row each, in first-seen order.
    A PROJECTED output's fallback is x sqrt(F): what the entries' fallback implies for it."""

    def __init__(self) -> None:
        self.errors: dict[tuple[str, str], Errors] = {}
        self.shapes: dict[tuple[str, str], tuple[int, ...]] = {}
        self.kinds: dict[str, str] = {}
        self.widths: dict[str, int] = {}
        self.notes: dict[tuple[str, str], str] = {}

    def add(
        self, name: str, dtype: str, kind: str, errors: Errors, rows: np.ndarray, width: int
    ) -> None:
        """`rows`: what was compared ([n, ...]: its shape is the row's, counts summed)."""
        key = (name, dtype)
        self.kinds[name], self.widths[name] = kind, width
        if key in self.errors:
            errors = self.errors[key].merge(errors)
            count = self.shapes[key][0] + rows.shape[0]
        else:
            count = rows.shape[0]
        self.errors[key] = errors
        self.shapes[key] = (count, *rows.shape[1:])

    def fail(self, name: str, dtype: str, kind: str, note: str) -> None:
        self.kinds[name] = kind
        self.errors[(name, dtype)] = Errors(math.inf, math.inf, None, False)
        self.shapes.setdefault((name, dtype), ())
        self.notes[(name, dtype)] = note

    def rows(
        self,
        suite: Callable[[str], str],
        fallback: Callable[[str, str], float],
        note: Callable[[str], str] = lambda name: "",
    ) -> list[Row]:
        """One row per (output, dtype); `fallback(dtype, output)`: the absolute bound where
        transformers did not run in the dtype; `note(output)`: the row's note."""
        out = []
        for (name, dtype), errors in self.errors.items():
            base = name.removesuffix(PROJECTED)
            scale = math.sqrt(self.widths.get(name, 1)) if name.endswith(PROJECTED) else 1.0
            out.append(
                verdict(
                    suite(dtype),
                    name,
                    dtype,
                    self.shapes[name, dtype],
                    errors,
                    fallback(dtype, base) * scale,
                    self.notes.get((name, dtype)) or note(name),
                )
            )
        return out


def finite_rows(suite: Callable[[str], str], finite: dict[str, bool]) -> list[Row]:
    return [
        Row(suite(dtype), "all outputs finite", (), 0.0 if ok else 1.0, 0.0, ok)
        for dtype, ok in finite.items()
    ]


def projection_note(name: str) -> str:
    if not name.endswith(PROJECTED):
        return ""
    return f"each row of F entries projected onto {golden_file.PROJECTIONS} fixed random directions"
