"""Sharded models over the 8 forced host CPU devices (conftest sets XLA_FLAGS).

BERT here has the BERT-base widths (D=768, N=12 heads, F=3072, V=30522, 512 positions) with 2
layers instead of 12: every sharded dimension divides the meshes exactly as at base; its layers are
scanned (stacked [L, ...] params, sharded along their other axes), except where a test says unrolled. Reference: the same jitted computation on one device.
float32 tolerances: outputs 1e-5 absolute + 1e-5 relative (BioGPT's logits reach 13, where one
float32 ulp is 1e-6 and a sharded matmul sums in another order), losses 1e-5 relative, updated
params 1e-6 absolute (SGD + momentum, lr 0.1); generated tokens identical.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from biomed_jax import (
    BertConfig,
    BertForMaskedLM,
    BertForTokenClassification,
    BioGptConfig,
    BioGptForCausalLM,
)
from biomed_jax import sharding as shd
from biomed_jax.generation import generate
from biomed_jax.models.common import init_params, unstack_layers
from biomed_jax.numerics import PLAIN
from biomed_jax.train import (
    IGNORE_INDEX,
    create_train_state,
    decay_mask,
    train_step,
)
from biomed_jax.trees import flatten, unflatten

BERT = BertConfig(
    vocab_size=30522,
    hidden_size=768,
    num_hidden_layers=2,
    num_attention_heads=12,
    intermediate_size=3072,
    max_position_embeddings=512,
)
MESHES = [((8, 1), "fsdp"), ((4, 2), "fsdp_tp"), ((2, 4), "tp"), ((1, 8), "fsdp_tp")]
# The fast default runs the (4, 2) mesh, both axes in use; the other layouts are `slow` (CI).
FAST_MESH = (4, 2)


def _layout(shape, *rest):
    return pytest.param(shape, *rest, marks=() if shape == FAST_MESH else pytest.mark.slow)


IDS = pytest.mark.parametrize(
    "shape,rules", [_layout(*m) for m in MESHES], ids=[f"{d}x{m}-{r}" for (d, m), r in MESHES]
)
ATOL = 1e-5
# Sharded and single-device runs use the same numerics: the default ("fast") policy.


def _inputs(config, batch=8, length=16, seed=0):
    rng = np.random.RandomState(seed)
    ids = rng.randint(0, config.vocab_size, (batch, length)).astype(np.int32)
    mask = np.ones((batch, length), np.int32)
    mask[1, 9:] = 0
    mask[5, 3:] = 0
    return ids, mask


def random_params(abstract, seed=0):
    """Host (numpy) params for the boxed `abstract` tree: N(0, 0.02), LayerNorm scales around 1."""
    rng = np.random.default_rng(seed)
    flat = flatten(nn.unbox(abstract))
    return unflatten(
        {
            path: rng.normal(1.0 if path.endswith("scale") else 0.0, 0.02, x.shape).astype(x.dtype)
            for path, x in flat.items()
        }
    )


@pytest.fixture(scope="module")
def bert():
    module = BertForMaskedLM(BERT, scan_layers=True)
    abstract = shd.abstract_params(module)
    return module, abstract, random_params(abstract)


@pytest.fixture(scope="module")
def bert_reference(bert):
    module, _, params = bert
    ids, mask = _inputs(BERT)
    forward = jax.jit(lambda p, i, m: module.apply({"params": p}, i, m).logits)
    return np.asarray(forward(params, ids, mask))


# -- placement: each parameter is split exactly as the rule table says -------------------------

V, D, F, L = 30522, 768, 3072, 2
# (path, shape, expected spec per rule set on a mesh (data, model)); vocab 30522 divides 2 only.
PLACEMENT = {
    "bert/embeddings/word_embeddings/embedding": {
        "dp": lambda d, m: P(None, None),
        "fsdp": lambda d, m: P(None, "data"),
        # vocab over "model" where it divides, else the model dim
        "tp": lambda d, m: P("model", None) if V % m == 0 else P(None, "model"),
        "fsdp_tp": lambda d, m: P("model" if V % m == 0 else None, "data"),
    },
    "bert/encoder/layer/attention/query/kernel": {
        "dp": lambda d, m: P(None, None, None),
        "fsdp": lambda d, m: P(None, "data", None),
        "tp": lambda d, m: P(None, None, "model"),
        "fsdp_tp": lambda d, m: P(None, "data", "model"),
    },
    "bert/encoder/layer/attention/out/kernel": {
        "dp": lambda d, m: P(None, None, None),
        "fsdp": lambda d, m: P(None, None, "data"),  # heads x embed: the embed rule comes first
        "tp": lambda d, m: P(None, "model", None),
        "fsdp_tp": lambda d, m: P(None, "model", "data"),
    },
    "bert/encoder/layer/mlp/fc_in/bias": {
        "dp": lambda d, m: P(None, None),
        "fsdp": lambda d, m: P(None, "data"),
        "tp": lambda d, m: P(None, "model"),
        "fsdp_tp": lambda d, m: P(None, "model"),
    },
    "bert/encoder/layer/mlp/fc_out/bias": {
        "dp": lambda d, m: P(None, None),
        "fsdp": lambda d, m: P(None, "data"),
        "tp": lambda d, m: P(None, "model"),
        "fsdp_tp": lambda d, m: P(None, "data"),
    },
    "bert/encoder/layer/output_norm/scale": {
        "dp": lambda d, m: P(None, None),
        "fsdp": lambda d, m: P(None, "data"),
        "tp": lambda d, m: P(None, None),
        "fsdp_tp": lambda d, m: P(None, "data"),
    },
    "decoder_bias": {
        "dp": lambda d, m: P(None),
        "fsdp": lambda d, m: P("data" if V % d == 0 else None),
        "tp": lambda d, m: P("model" if V % m == 0 else None),
        "fsdp_tp": lambda d, m: P("model" if V % m == 0 else "data" if V % d == 0 else None),
    },
}
SHAPES = {
    "bert/embeddings/word_embeddings/embedding": (V, D),
    "bert/encoder/layer/attention/query/kernel": (L, D, D),
    "bert/encoder/layer/attention/out/kernel": (L, D, D),
    "bert/encoder/layer/mlp/fc_in/bias": (L, F),
    "bert/encoder/layer/mlp/fc_out/bias": (L, D),
    "bert/encoder/layer/output_norm/scale": (L, D),
    "decoder_bias": (V,),
}


def _spec(spec: P, ndim: int) -> tuple:
    return tuple(spec) + (None,) * (ndim - len(spec))


@pytest.mark.parametrize(
    "shape", [_layout(shape) for shape, _ in MESHES], ids=lambda s: f"{s[0]}x{s[1]}"
)
def test_each_parameter_is_placed_as_the_rules_say(bert, shape):
    module, abstract, params = bert
    mesh = shd.make_mesh(*shape)
    for rules in ("dp", "fsdp", "tp", "fsdp_tp"):
        placed = flatten(shd.shard_params(params, mesh, rules, module=module))
        for path, expected in PLACEMENT.items():
            x, want = placed[path], expected[rules](*shape)
            assert x.shape == SHAPES[path]
            assert _spec(x.sharding.spec, x.ndim) == _spec(want, x.ndim), (path, rules, shape)
            block = tuple(
                n // (mesh.shape[a] if a else 1) for n, a in zip(x.shape, _spec(want, x.ndim))
            )
            assert len(x.addressable_shards) == 8
            assert {s.data.shape for s in x.addressable_shards} == {block}, (path, rules)
        # every parameter: its spec follows from its logical names, shards tile the array
        names = flatten(jax.tree.map(lambda b: b.names, abstract, is_leaf=_is_boxed))
        for path, x in placed.items():
            assert x.sharding.spec == shd.mesh_spec(names[path], x.shape, mesh, rules)
            assert x.sharding.mesh.shape == mesh.shape
        # values survive the placement exactly
        ref = flatten(params)
        for path in PLACEMENT:
            np.testing.assert_array_equal(np.asarray(placed[path]), np.asarray(ref[path]))
        # unrolled layers: each layer's tensor is split as the stack is, less the layer axis
        unrolled = module.clone(scan_layers=False)
        per_layer = flatten(shd.shard_params(unstack_layers(params), mesh, rules, module=unrolled))
        for path in (p for p in PLACEMENT if "/layer/" in p):
            for i in range(L):
                x = per_layer[path.replace("/layer/", f"/layer_{i}/")]
                assert x.shape == SHAPES[path][1:]
                assert x.sharding.spec == P(*placed[path].sharding.spec[1:]), (path, rules)


def _is_boxed(x):
    return isinstance(x, nn.Partitioned)


def test_fsdp_over_8_devices_holds_an_eighth_of_the_parameters_per_device(bert):
    module, _, params = bert
    mesh = shd.make_mesh(8, 1)
    total = sum(x.nbytes for x in jax.tree.leaves(params))
    per_device = shd.bytes_per_device(shd.shard_params(params, mesh, "fsdp", module=module))
    assert len(per_device) == 8
    assert sum(per_device.values()) < total * 1.01  # almost nothing replicated
    for nbytes in per_device.values():
        assert total / 8 <= nbytes < total / 8 * 1.01
    replicated = shd.bytes_per_device(shd.shard_params(params, mesh, "dp", module=module))
    assert set(replicated.values()) == {total}


# -- numerics: sharded == single device ---------------------------------------------------------


@IDS
def test_bert_forward_matches_single_device(bert, bert_reference, shape, rules):
    module, _, params = bert
    mesh = shd.make_mesh(*shape)
    ids, mask = _inputs(BERT)
    forward = shd.jit_forward(module, mesh, rules)
    out = forward(
        shd.shard_params(params, mesh, rules, module=module),
        shd.shard_batch(ids, mesh, rules),
        shd.shard_batch(mask, mesh, rules),
    ).logits
    assert out.sharding.spec == P("data")
    np.testing.assert_allclose(np.asarray(out), bert_reference, atol=ATOL, rtol=ATOL)


# SGD with momentum and decoupled weight decay (HF's decay mask): its update is linear in the
# gradient, so float noise stays noise. (Adam's first step divides each gradient by its own size:
# entries whose true gradient is zero, like the attention key bias under softmax's shift
# invariance, turn rounding noise into +-lr, and no tolerance below lr can compare them.)
OPTIMIZER = optax.chain(
    optax.add_decayed_weights(0.01, mask=decay_mask), optax.sgd(0.1, momentum=0.9)
)
DROPOUT = jax.random.key(7)


@pytest.fixture(scope="module")
def train_reference():
    """Token classification (NER-style fine-tuning, 9 BIO labels), BERT-base widths with a
    4096-row vocabulary: the embedding's update is memory traffic the forward tests cover."""
    config = BERT.replace(num_labels=9, vocab_size=4096)
    module = BertForTokenClassification(config)
    params = random_params(shd.abstract_params(module), seed=2)
    ids, mask = _inputs(config)
    labels = np.where(mask == 1, ids % 9, IGNORE_INDEX)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    new_state, metrics = train_step(create_train_state(module, params, OPTIMIZER), batch, DROPOUT)
    return module, params, batch, jax.device_get(new_state.params), float(metrics["loss"])


@IDS
def test_bert_train_step_matches_single_device(train_reference, shape, rules):
    """biomed_jax.train's step (dropout on), its state placed by `state_shardings`."""
    module, params, batch, want_params, want_loss = train_reference
    mesh = shd.make_mesh(*shape)
    state = create_train_state(module, params, OPTIMIZER)
    shardings = shd.state_shardings(state, module, mesh, rules)
    step = shd.jit_train_step(train_step, mesh, shardings, rules)
    new_state, metrics = step(
        jax.device_put(state, shardings), shd.shard_batch(batch, mesh, rules), DROPOUT
    )

    assert abs(float(metrics["loss"]) - want_loss) <= ATOL * abs(want_loss)
    got, want = flatten(new_state.params), flatten(want_params)
    placement = flatten(shd.param_shardings(module, mesh, rules))
    momentum = flatten(new_state.opt_state[1][0].trace)
    for path, x in got.items():
        assert x.sharding == placement[path], path
        assert momentum[path].sharding == placement[path], path
        np.testing.assert_allclose(np.asarray(x), want[path], atol=1e-6, rtol=0, err_msg=path)
    assert new_state.step.sharding.is_fully_replicated


# -- BioGPT: forward and greedy generation ------------------------------------------------------

# BioGPT's 347M widths (D=1024, N=16, F=4096, V=42384, 1024 positions) with 2 of its 24 layers.
BIOGPT = BioGptConfig(num_hidden_layers=2)


@pytest.fixture(scope="module")
def biogpt():
    module = BioGptForCausalLM(BIOGPT)
    params = random_params(shd.abstract_params(module), seed=1)
    ids, mask = _inputs(BIOGPT, length=12, seed=1)
    mask = mask[:, ::-1].copy()  # left padding, as generation wants
    forward = jax.jit(lambda p, i, m: module.apply({"params": p}, i, m).logits)
    logits = np.asarray(forward(params, ids, mask))
    tokens = np.asarray(generate(module, params, ids, mask, max_new_tokens=GENERATED))
    return module, params, (ids, mask), logits, tokens


GENERATED = 6


@IDS
def test_biogpt_forward_and_greedy_generation_match_single_device(biogpt, shape, rules):
    module, params, (ids, mask), want_logits, want_tokens = biogpt
    mesh = shd.make_mesh(*shape)
    placed = shd.shard_params(params, mesh, rules, module=module)
    logits = shd.jit_forward(module, mesh, rules)(
        placed, shd.shard_batch(ids, mesh, rules), shd.shard_batch(mask, mesh, rules)
    ).logits
    np.testing.assert_allclose(np.asarray(logits), want_logits, atol=ATOL, rtol=ATOL)
    with shd.use(mesh, rules):
        tokens = generate(module, placed, ids, mask, max_new_tokens=GENERATED)
    assert tokens.shape == (8, ids.shape[1] + GENERATED)
    np.testing.assert_array_equal(np.asarray(tokens), want_tokens)


def _constraints(fn, *args) -> dict[tuple[int, ...], set[str]]:
    """Shape -> the PartitionSpecs of every sharding constraint traced in `fn(*args)`."""
    from jax.extend.core import jaxprs_in_params

    found: dict[tuple[int, ...], set[str]] = {}

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "sharding_constraint":
                shape = tuple(eqn.invars[0].aval.shape)
                found.setdefault(shape, set()).add(str(eqn.params["sharding"].spec))
            for sub in jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


SMALL_LM = BioGptConfig(
    vocab_size=64,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=64,
)


@pytest.mark.parametrize(
    ("rules", "heads", "mlp"),
    [("fsdp_tp", "'model'", "'model'"), ("tp", "'model'", "'model'"), ("fsdp", "None", "None")],
)
def test_kv_cache_and_activations_are_constrained_by_the_rules(rules, heads, mlp):
    """A cached decoding step under (4, 2): the KV cache (L x [B, N, S, H]), q / k / v and attention
    outputs [B, T, N, H], the MLP hidden [B, T, F] and the residual [B, T, D] each carry the
    constraint the rules give their logical names; the step's cache comes out placed so."""
    module = BioGptForCausalLM(SMALL_LM)
    params = init_params(module)
    ids = np.ones((8, 5), np.int32)
    mask = np.ones((8, 16), np.int32)
    cache = SMALL_LM.init_cache(8, 16)
    mesh = shd.make_mesh(4, 2)
    with shd.use(mesh, rules):
        found = _constraints(
            lambda p, i, m, c: module.apply({"params": p}, i, m, cache=c), params, ids, mask, cache
        )
    assert found == {
        (8, 4, 16, 8): {f"P('data', {heads}, None, None)"},  # each layer's KV cache
        (8, 5, 4, 8): {f"P('data', None, {heads}, None)"},  # q, k, v, attention outputs
        (8, 5, 48): {f"P('data', None, {mlp})"},  # the MLP hidden
        (8, 5, 32): {"P('data', None, None)"},  # the residual stream
    }
    assert "sharding_constraint" not in str(
        jax.make_jaxpr(lambda p: module.apply({"params": p}, ids, mask, cache=cache))(params)
    )  # no rules in force: no constraint
    with shd.use(mesh, rules):
        step = jax.jit(lambda p, i, m, c: module.apply({"params": p}, i, m, cache=c))
        out = step(params, shd.shard_batch(ids, mesh), mask, cache)
    for array in out.cache.key + out.cache.value:
        spec = tuple(array.sharding.spec) + (None,) * 4
        assert spec[:4] == ("data", None if heads == "None" else "model", None, None)


@pytest.mark.parametrize(
    ("shape", "rules", "cudnn", "splash"),
    [((8, 1), "fsdp", True, False), ((4, 2), "fsdp_tp", False, False), ((8, 1), "tp", True, False)],
)
def test_fused_attention_only_where_the_mesh_allows(monkeypatch, shape, rules, cudnn, splash):
    """cuDNN's partitioning takes a batch split but no head or length split; splash has none:
    under such a mesh the XLA reference runs (GSPMD partitions it)."""
    from biomed_jax.nn import attention, kernels

    monkeypatch.setitem(kernels.JAX_NN_IMPLEMENTATION, "cudnn", "xla")
    calls = []
    for name in ("cudnn_attention", "splash_attention"):
        monkeypatch.setattr(attention, name, lambda *a, name=name: calls.append(name))
    q = jax.numpy.zeros((8, 4, 128, 8), jax.numpy.bfloat16)
    mask = jax.numpy.ones((8, 1, 1, 128), bool)
    segments = kernels.segment_mask(jax.numpy.ones((8, 128), np.int32))
    with shd.use(shd.make_mesh(*shape), rules):
        for kind in ("cudnn", "splash"):
            policy = PLAIN.replace(attention=kind)
            attention.heads_major_attention(
                q, q, q, mask, policy=policy, segments=segments, need_probs=False
            )
    assert calls == ["cudnn_attention"] * cudnn + ["splash_attention"] * splash
    assert not kernels.mesh_splits(("act_heads",))  # outside the mesh: nothing is split


# -- input checks ---------------------------------------------------------------------------


def test_mesh_and_batch_errors():
    assert dict(shd.make_mesh(model=2).shape) == {"data": 4, "model": 2}
    with pytest.raises(ValueError, match="needs 6 devices"):
        shd.make_mesh(3, 2)
    with pytest.raises(ValueError, match="divide"):
        shd.make_mesh(model=3)
    mesh = shd.make_mesh(4, 2)
    with pytest.raises(ValueError, match="multiple of 4"):
        shd.shard_batch({"ids": np.zeros((6, 3))}, mesh)
    with pytest.raises(ValueError, match="unknown rule set"):
        shd.shard_batch(np.zeros((8, 3)), mesh, "zero3")
    with pytest.raises(TypeError, match="module="):
        shd.shard_params({"w": np.zeros((8, 8))}, mesh)
    # boxed params straight from init carry their names: no module= needed
    small = BertForMaskedLM(
        BERT.replace(vocab_size=64, hidden_size=64, num_attention_heads=8, intermediate_size=128)
    )
    boxed = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shd.abstract_params(small))
    by_box, by_module = (
        flatten(shd.shard_params(p, mesh, "fsdp_tp", module=m))
        for p, m in ((boxed, None), (nn.unbox(boxed), small))
    )
    for path, x in by_box.items():
        assert x.sharding == by_module[path].sharding, path
    assert by_box["decoder_bias"].sharding.spec == P("model")
    split = shd.shard_batch({"ids": np.arange(24).reshape(8, 3)}, mesh)["ids"]
    assert {s.data.shape for s in split.addressable_shards} == {(2, 3)}
    assert shd.shard_batch(np.zeros((8, 3)), mesh, "dp").sharding.spec == P("data")
    np.testing.assert_array_equal(shd.local_rows(split), np.arange(24).reshape(8, 3))


# -- sharded loading: each device reads only its own blocks of the safetensors -------------------


def _save_hf(path, kind, safe=True):
    """A tiny seeded HF checkpoint whose widths divide the 8 devices (D=64, N=8, F=128)."""
    import torch
    import transformers

    torch.manual_seed(0)
    dims = {"hidden_size": 64, "num_attention_heads": 8, "intermediate_size": 128}
    if kind == "bert":
        config = transformers.BertConfig(
            vocab_size=120, num_hidden_layers=2, max_position_embeddings=32, **dims
        )
        model = transformers.BertForMaskedLM(config)
    else:
        config = transformers.BioGptConfig(
            vocab_size=104, num_hidden_layers=2, max_position_embeddings=30, **dims
        )
        model = transformers.BioGptForCausalLM(config)
    model.eval().save_pretrained(path, safe_serialization=safe)
    return path


class _ReadLog:
    """Wraps safetensors.safe_open: records (key, elements read) for every get_slice read."""

    def __init__(self, monkeypatch):
        import safetensors

        self.reads: list[tuple[str, int]] = []
        real = safetensors.safe_open
        log = self.reads

        class Slice:
            def __init__(self, inner, key):
                self.inner, self.key = inner, key

            def get_shape(self):
                return self.inner.get_shape()

            def get_dtype(self):
                return self.inner.get_dtype()

            def __getitem__(self, index):
                block = self.inner[index]
                log.append((self.key, block.size))
                return block

        class Handle:
            def __init__(self, *args, **kwargs):
                self.inner = real(*args, **kwargs)

            def __enter__(self):
                self.inner.__enter__()
                return self

            def __exit__(self, *exc):
                return self.inner.__exit__(*exc)

            def keys(self):
                return self.inner.keys()

            def metadata(self):
                return self.inner.metadata()

            def get_slice(self, key):
                return Slice(self.inner.get_slice(key), key)

            def get_tensor(self, key):
                raise AssertionError(f"whole tensor {key} read")

        monkeypatch.setattr(safetensors, "safe_open", Handle)


@pytest.mark.parametrize("kind", ["bert", "biogpt"])
def test_from_pretrained_on_a_mesh_reads_each_shard_onto_its_device(tmp_path, monkeypatch, kind):
    from biomed_jax import from_pretrained

    directory = _save_hf(tmp_path / kind, kind)
    whole = from_pretrained(directory)
    mesh = shd.make_mesh(2, 4)
    log = _ReadLog(monkeypatch)
    created = []  # shapes of the device arrays the loader builds
    make_array = jax.make_array_from_callback

    def recording(shape, *args, **kwargs):
        created.append(tuple(shape))
        return make_array(shape, *args, **kwargs)

    monkeypatch.setattr(jax, "make_array_from_callback", recording)
    loaded = from_pretrained(directory, mesh=mesh, rules="fsdp_tp")
    monkeypatch.undo()

    want, got = flatten(whole.params), flatten(loaded.params)
    assert set(got) == set(want)
    assert any("layer_1/" in path for path in got)  # unrolled layers,
    # each read straight onto its shards: no stacked [L, ...] copy is built and split on the devices
    assert sorted(created) == sorted(tuple(x.shape) for x in got.values())
    shardings = flatten(shd.param_shardings(loaded.module, mesh, "fsdp_tp"))
    sharded = 0
    for path, x in got.items():
        assert x.sharding == shardings[path], path
        np.testing.assert_array_equal(np.asarray(x), np.asarray(want[path]), err_msg=path)
        if len({repr(s.index) for s in x.addressable_shards}) > 1:
            sharded += 1
            assert max(s.data.size for s in x.addressable_shards) < x.size
    assert sharded >= 10
    # Reads are device blocks (one layer at a time for the stacked params): together at least
    # every distinct block once, at most every device's block once; never a sharded tensor whole.
    per_key: dict[str, list[int]] = {}
    for key, size in log.reads:
        per_key.setdefault(key, []).append(size)
    total = sum(sum(v) for v in per_key.values())
    blocks = [{repr(s.index): s.data.size for s in x.addressable_shards} for x in got.values()]
    assert sum(sum(b.values()) for b in blocks) <= total
    assert total <= sum(s.data.size for x in got.values() for s in x.addressable_shards)
    query = (
        "bert.encoder.layer.0.attention.self.query.weight"
        if kind == "bert"
        else ("biogpt.layers.0.self_attn.q_proj.weight")
    )
    assert per_key[query] == [64 * 64 // 8] * 8  # [D, N*H] split 2 x 4
    ids = np.arange(16, dtype=np.int32).reshape(8, 2) % 100
    np.testing.assert_allclose(
        np.asarray(loaded(shd.shard_batch(ids, mesh)).logits),
        np.asarray(whole(ids).logits),
        atol=ATOL,
        rtol=ATOL,
    )


def test_sharded_loading_of_converted_and_torch_files_fresh_heads_and_errors(tmp_path):
    from biomed_jax import CheckpointError, convert, from_pretrained

    hf = _save_hf(tmp_path / "hf", "bert")
    mesh = shd.make_mesh(4, 2)
    want = flatten(from_pretrained(hf).params)
    ours = convert(hf, tmp_path / "ours")
    torch_bin = _save_hf(tmp_path / "bin", "bert", safe=False)
    for directory in (ours, torch_bin):
        loaded = from_pretrained(directory, mesh=mesh, rules="fsdp")
        shardings = flatten(shd.param_shardings(loaded.module, mesh, "fsdp"))
        for path, x in flatten(loaded.params).items():
            assert x.sharding == shardings[path], path
            np.testing.assert_array_equal(np.asarray(x), np.asarray(want[path]), err_msg=path)

    # a task head the checkpoint lacks is initialized directly on its shards, as without a mesh
    kwargs = {"architecture": "BertForTokenClassification", "num_labels": 4}
    fresh = flatten(from_pretrained(hf, mesh=mesh, rules="tp", **kwargs).params)
    plain = flatten(from_pretrained(hf, **kwargs).params)
    assert fresh["classifier/kernel"].sharding.spec == P("model", None)
    assert fresh["bert/encoder/layer_1/mlp/fc_in/kernel"].sharding.spec == P(None, "model")
    for path, x in fresh.items():
        np.testing.assert_allclose(np.asarray(x), np.asarray(plain[path]), atol=1e-7, err_msg=path)

    with pytest.raises(CheckpointError, match=r"layers \[0, 1\] present, expected 0..2"):
        from_pretrained(hf, mesh=mesh, num_hidden_layers=3)
    with pytest.raises(CheckpointError, match="shape mismatch for bert/embeddings/position"):
        from_pretrained(ours, mesh=mesh, max_position_embeddings=64)
