"""A loaded model in a researcher's JAX code: params on the device, a compiled `Pretrained.__call__`
that checks its arguments like the uncompiled module, remat through `from_pretrained`, and the
NNX bridge."""

from __future__ import annotations

import contextlib
import io

import jax
import jax.ad_checkpoint
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax.nnx import bridge

import biomed_jax
from biomed_jax import sharding as shd
from biomed_jax.loading import _compiled_apply


@pytest.fixture(scope="module")
def hf_biogpt(tmp_path_factory):
    from conformance import tiny

    return tiny.save_biogpt(tmp_path_factory.mktemp("biogpt"))


def batch(vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.random.RandomState(0).randint(5, vocab_size, (2, 7)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 4:] = 0
    return ids, mask


def close(a, b) -> None:
    """Equal up to float32 round-off (the same math, compiled or fused differently)."""
    b = np.asarray(b)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())


def test_params_are_jax_arrays_on_the_default_device(hf_bert):
    pre = biomed_jax.from_pretrained(hf_bert, architecture="BertForSequenceClassification")
    device = jax.devices()[0]
    for leaf in jax.tree.leaves(pre.params):  # read from the file, and the fresh head
        assert isinstance(leaf, jax.Array)
        assert leaf.devices() == {device}
    mesh = shd.make_mesh()
    sharded = biomed_jax.from_pretrained(hf_bert, mesh=mesh, rules="fsdp")
    kernel = sharded.params["bert"]["encoder"]["layer_0"]["mlp"]["fc_in"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("data", None)


def test_call_is_compiled_once_per_set_of_keyword_values(hf_bert):
    pre = biomed_jax.from_pretrained(hf_bert)
    ids, mask = batch(pre.config.vocab_size)
    _compiled_apply.cache_clear()
    first = pre(ids, mask)
    again = pre(jnp.asarray(ids), attention_mask=jnp.asarray(mask))
    np.testing.assert_array_equal(first.logits, again.logits)
    compiled = _compiled_apply(pre.module, ())
    assert compiled._cache_size() == 2  # positional and keyword mask: two signatures, no more
    pre(ids + 1, mask)
    assert compiled._cache_size() == 2  # new values, same shapes: no new trace
    eager = pre.module.apply({"params": pre.params}, ids, mask)
    close(first.logits, eager.logits)  # compiled and op by op: float32 round-off apart

    hidden = pre(ids, mask, output_hidden_states=True)  # a static keyword: its own function
    assert len(hidden.hidden_states) == pre.config.num_hidden_layers + 1
    assert _compiled_apply.cache_info().misses == 2
    dropped = pre(ids, mask, deterministic=False, rngs={"dropout": jax.random.key(0)})
    assert not np.allclose(dropped.logits, first.logits)  # the key (an array) is traced
    _, state = pre(ids, mask, capture_intermediates=True, mutable=["intermediates"])
    assert "intermediates" in state  # an unhashable option runs uncompiled, as before


def test_compiled_call_checks_arguments_on_the_host(hf_bert, hf_biogpt):
    pre = biomed_jax.from_pretrained(hf_bert)
    ids, mask = batch(pre.config.vocab_size)
    with pytest.raises(ValueError, match="input_ids"):
        pre(ids + pre.config.vocab_size, mask)
    with pytest.raises(ValueError, match="attention_mask"):
        pre(ids, mask * 2)
    with pytest.raises(ValueError, match="token_type_ids"):
        pre(ids, mask, np.full_like(ids, 7))

    lm = biomed_jax.from_pretrained(hf_biogpt)
    ids, _ = batch(lm.config.vocab_size)
    cache = lm.config.init_cache(2, 10)
    out = lm(ids, cache=cache)  # the cache is an array pytree: traced, not static
    assert int(out.cache.index) == 7
    with pytest.raises(ValueError, match="cache is full"):
        lm(ids, cache=out.cache)


def _residuals(pre, ids) -> int:
    """How many arrays the backward pass keeps (jax.ad_checkpoint.print_saved_residuals)."""
    loss = lambda params: pre.module.apply({"params": params}, ids).logits.sum()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        jax.ad_checkpoint.print_saved_residuals(loss, pre.params)
    return len(out.getvalue().splitlines())


def test_gradient_checkpointing_and_remat_policy_through_from_pretrained(hf_bert):
    ids = jnp.asarray(batch(100)[0])
    plain = biomed_jax.from_pretrained(hf_bert)
    kept = {
        policy: _residuals(
            biomed_jax.from_pretrained(
                hf_bert, gradient_checkpointing=True, remat_policy=policy, scan_layers=False
            ),
            ids,
        )
        for policy in ("nothing_saveable", "dots_saveable", "everything_saveable")
    }
    assert kept["nothing_saveable"] < kept["dots_saveable"] < kept["everything_saveable"]
    assert kept["nothing_saveable"] < _residuals(plain, ids)

    remat = biomed_jax.from_pretrained(
        hf_bert, gradient_checkpointing=True, remat_policy="dots_saveable", scan_layers=True
    )
    assert remat.module.gradient_checkpointing and remat.module.remat_policy == "dots_saveable"
    grad = lambda pre: jax.grad(lambda p: pre.module.apply({"params": p}, ids).logits.sum())(
        pre.params
    )
    same = biomed_jax.models.common.to_layout(grad(remat), False)
    reference = jax.tree.leaves(grad(plain))
    scale = max(float(np.abs(g).max()) for g in reference)  # the key bias's exact gradient is 0
    for a, b in zip(jax.tree.leaves(same), reference, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * scale)

    with pytest.raises(ValueError, match="take arguments"):
        biomed_jax.from_pretrained(
            hf_bert, gradient_checkpointing=True, remat_policy="save_only_these_names"
        )
    with pytest.raises(ValueError, match="gradient_checkpointing=True"):
        biomed_jax.from_pretrained(hf_bert, remat_policy="dots_saveable")
    names = jax.checkpoint_policies.save_only_these_names("nothing_named")  # a built policy
    built = biomed_jax.from_pretrained(hf_bert, gradient_checkpointing=True, remat_policy=names)
    assert _residuals(built, ids) == kept["nothing_saveable"]


def test_nnx_bridge_recipe(hf_bert):
    """docs/fine-tuning.md: the NNX view of a loaded model computes what it computes."""
    pre = biomed_jax.from_pretrained(hf_bert, architecture="BertForTokenClassification")
    ids, mask = batch(pre.config.vocab_size)
    with pytest.raises(ValueError, match="mesh"):  # why the recipe turns eager sharding off
        bridge.lazy_init(bridge.ToNNX(pre.module, rngs=nnx.Rngs(0)), ids)

    with nnx.use_eager_sharding(False):
        model = bridge.lazy_init(bridge.ToNNX(pre.module, rngs=nnx.Rngs(0)), ids)
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, pre.params)
    nnx.update(model, state)

    expected = pre(ids, mask).logits
    close(model(ids, mask).logits, expected)
    forward = nnx.jit(lambda model, ids, mask: model(ids, mask).logits)
    close(forward(model, ids, mask), expected)
    grads = nnx.grad(lambda model: model(ids, mask).logits.sum())(model)
    flat = nnx.to_pure_dict(grads)
    assert np.abs(flat["classifier"]["kernel"]).sum() > 0
