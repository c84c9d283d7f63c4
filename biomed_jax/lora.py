"""LoRA adapters on our Linen modules through Google's qwix (extra `qwix`), and merging them back.

qwix intercepts the `jax.lax.dot_general` of every `Dense` whose module path matches a
`qwix.LoraRule` and adds `x @ A @ B * alpha / rank` to it, with the adapters as new params beside
the kernel: `kernel_lora_a` [in, r] and `kernel_lora_b` [r, out] (stacked [L, ...] under
`scan_layers`). What qwix does not have, and this module adds: the adapters created on top of
loaded params (`init_lora`), the split into trained adapters and frozen base weights for a
training loop (`split_lora` / `combine`), and the merge of the adapters into the base kernels
(`merge_lora`), after which the params are plain params of the plain module, ready for
`save_pretrained`.

    rule = qwix.LoraRule(module_path=lora.TARGETS, rank=8, alpha=16.0)
    lora_module = lora.apply_lora(model.module, rule)
    params = lora.init_lora(lora_module, model.params, seed=0)
    adapters, frozen = lora.split_lora(params)  # train `adapters` only
    merged = lora.merge_lora(lora.combine(frozen, adapters), rule)  # plain params
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp

from biomed_jax.extras import require
from biomed_jax.numerics import resolve
from biomed_jax.trees import flatten, unflatten

# Every Dense of attention (query, key, value, out) and MLP (fc_in, fc_out) in both models.
TARGETS = r".*/(query|key|value|out|fc_in|fc_out)"
_A, _B = "_lora_a", "_lora_b"


class LoraRuleLike(Protocol):
    """What merging reads of a `qwix.LoraRule`."""

    module_path: str
    op_names: Collection[str]
    rank: int
    alpha: float


def _rules(rules: LoraRuleLike | Sequence[LoraRuleLike]) -> list[LoraRuleLike]:
    return list(rules) if isinstance(rules, Sequence) else [rules]


def check_policy(module: nn.Module, what: str) -> None:
    """qwix rewrites the plain weight matmul; the "exact" policy's float64 sums are another
    function (`nn.layers.dense_float64_sum`) that it would not see correctly: refused."""
    policy = resolve(module.policy, module.precision)
    if policy.float64_sums:
        raise ValueError(
            f"{what} works on the weight matmuls of policy 'fast' (or a Policy without "
            f"float64_sums), not {policy.name!r}: module.clone(policy='fast')"
        )


def apply_lora(module: nn.Module, rules: LoraRuleLike | Sequence[LoraRuleLike]) -> nn.Module:
    """`module` with LoRA adapters on the Dense layers `rules` (`qwix.LoraRule`) match."""
    qwix = require("qwix")
    check_policy(module, "LoRA")
    return qwix.apply_lora_to_model(module, qwix.LoraProvider(_rules(rules)))


def init_lora(lora_module: nn.Module, params: Mapping[str, Any], seed: int = 0) -> dict:
    """`params` (of the plain module) with fresh adapters added: A from the rule's initializer
    (He uniform), B zeros, so the model starts as the base model. Runs one forward pass on one
    token (adapters are created where qwix meets their matmul)."""
    ids = jnp.zeros((1, 1), jnp.int32)
    _, variables = jax.jit(
        lambda p: lora_module.apply(
            {"params": p}, ids, mutable=["params"], rngs={"params": jax.random.key(seed)}
        )
    )(params)
    added = {k: v for k, v in flatten(nn.unbox(variables["params"])).items() if is_lora_path(k)}
    if not added:
        raise ValueError("no Dense layer matched the LoRA rules: no adapter was created")
    return unflatten({**flatten(params), **added})


def is_lora_path(path: str) -> bool:
    """A '/'-path of a LoRA adapter (`..._lora_a` or `..._lora_b`)?"""
    return path.endswith((_A, _B))


def has_lora(params: Mapping[str, Any]) -> bool:
    return any(is_lora_path(p) for p in flatten(params))


def split_lora(params: Mapping[str, Any]) -> tuple[dict, dict]:
    """(adapters, frozen base params): two trees to train the first and keep the second."""
    flat = flatten(params)
    adapters = {k: v for k, v in flat.items() if is_lora_path(k)}
    return unflatten(adapters), unflatten({k: v for k, v in flat.items() if k not in adapters})


def combine(*trees: Mapping[str, Any]) -> dict:
    """One param tree from disjoint parts (`split_lora`'s, in any order)."""
    flat: dict[str, Any] = {}
    for tree in trees:
        part = flatten(tree)
        both = flat.keys() & part.keys()
        if both:
            raise ValueError(f"combine: parameters in more than one tree: {sorted(both)[:5]}")
        flat.update(part)
    return unflatten(flat)


def merge_lora(
    params: Mapping[str, Any], rules: LoraRuleLike | Sequence[LoraRuleLike]
) -> dict[str, Any]:
    """Params with every adapter pair merged into its kernel and removed:
    kernel + A @ B * alpha / rank, with alpha and rank of the first of `rules` matching the
    module's path (qwix's choice); stacked layers merge layer by layer.

    Only Dense kernels ([in, out]: the adapters' product has their shape) merge; an adapter on
    another parameter (the tied embedding table, which the lookup shares) is refused.
    """
    rules = _rules(rules)
    flat = dict(flatten(params))
    problems = []
    for path in [p for p in flat if p.endswith(_A)]:
        base = path[: -len(_A)]
        module_path, name = base.rsplit("/", 1)
        if base + _B not in flat or base not in flat:
            problems.append(f"{path}: no {name}{_B} or no {name} beside it")
            continue
        if name != "kernel":
            problems.append(f"{path}: only Dense kernels merge, not {name!r}")
            continue
        rule = next(
            (
                r
                for r in rules
                if re.fullmatch(r.module_path, module_path)
                and (not r.op_names or "dot_general" in r.op_names)
            ),
            None,
        )
        if rule is None:
            problems.append(f"{path}: no rule's module_path matches {module_path!r}")
            continue
        a, b, kernel = flat.pop(path), flat.pop(base + _B), flat[base]
        f32 = jnp.float32
        delta = jnp.einsum(
            "...ir,...ro->...io", a.astype(f32), b.astype(f32), precision="highest"
        )  # [..., in, out]
        if delta.shape != kernel.shape:
            problems.append(f"{path}: A @ B is {delta.shape}, {base} is {kernel.shape}")
            continue
        flat[base] = (kernel.astype(f32) + delta * (rule.alpha / rule.rank)).astype(kernel.dtype)
    problems += [f"{p}: no {_A} beside it" for p in flat if p.endswith(_B)]
    if problems:
        raise ValueError("cannot merge the LoRA adapters:\n  " + "\n  ".join(problems))
    return unflatten(flat)
