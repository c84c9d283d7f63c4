"""XLA compiler options of our jitted entry points, and `jit`, which applies them.

On CPU, XLA (jaxlib 0.10) hands every matmul to YNNPACK *and* fuses the LayerNorms, GELU and
residual adds around it into the same YNNPACK call. Those big fusions run BERT-base at 8x512
about 13 % slower than plain matmuls with XLA's own elementwise code around them; YNNPACK for the
matmuls alone ("individual dot") keeps its fast GEMMs without them (`benchmarks/bert_forward.py`,
README). The options are CPU debug options: other backends ignore them. A jaxlib that does not
know them gets no options (checked once, on first use), never a failed compile.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


@functools.cache
def compiler_options() -> dict[str, str]:
    """`jax.jit(..., compiler_options=compiler_options())` for your own jitted calls of our models."""
    try:
        probe = jax.jit(lambda x: x @ x, compiler_options=CPU_OPTIONS)
        probe.lower(jnp.ones((2, 2), jnp.float32)).compile()
    except Exception:  # a jaxlib without this option or enum value
        return {}
    return dict(CPU_OPTIONS)


def jit(fun: Callable | None = None, **jit_kwargs: Any) -> Any:
    """`jax.jit` with `compiler_options()`, decided at the first call (not at import, which must
    not start a backend before `jax.distributed.initialize`). Usable as `@jit` or `@jit(...)`."""
    if fun is None:
        return functools.partial(jit, **jit_kwargs)
    return _Jit(fun, jit_kwargs)


class _Jit:
    """A `jax.jit` of `fun` built on first use; calls and `.lower` go to it."""

    def __init__(self, fun: Callable, jit_kwargs: dict[str, Any]) -> None:
        functools.update_wrapper(self, fun)
        self._fun, self._jit_kwargs = fun, jit_kwargs

    @functools.cached_property
    def jitted(self) -> Any:
        return jax.jit(self._fun, compiler_options=compiler_options(), **self._jit_kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.jitted(*args, **kwargs)

    def lower(self, *args: Any, **kwargs: Any) -> Any:
        return self.jitted.lower(*args, **kwargs)
