"""fairseq BioGPT checkpoints: read safely, mapped by the name table, equal to transformers.

Checkpoints are written with `torch.save` the way fairseq writes them (tests/_fairseq_models.py)
from seeded transformers models; the reference is transformers' BioGPT loaded from the same file
through the mapping of transformers' own conversion script.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from _fairseq_models import (
    WORDS,
    fairseq_state,
    hf_reference,
    model_args,
    seeded_hf_model,
    task_args,
    write_checkpoint,
    write_vocab_files,
)

from biomed_jax import (
    BioGptConfig,
    CheckpointError,
    ConfigError,
    UnsafeCheckpointError,
    convert,
    from_pretrained,
    generate,
)
from biomed_jax.fairseq import biogpt_config
from conformance.biogpt import mask_positions

LEARNED = 9
VOCAB = 4 + len(WORDS) + LEARNED  # 81: odd, with the prompt rows after dict.txt's
# (width, layers, heads, ffn, positions): BioGPT's structure (heads of 64 -> 8 here) and
# BioGPT-Large's (25 heads, FFN 4x width, 2048 positions) at small width.
SHAPES = {"base": (32, 2, 4, 128, 64), "large": (100, 2, 25, 400, 2048)}
TOL = 1e-5  # float32 logits (the conformance rule)


def _fairseq_dir(
    tmp_path, shape="base", style="cfg", seed=0, learned=LEARNED, half=False, **overrides
):
    width, layers, heads, ffn, positions = SHAPES[shape]
    vocab = 4 + len(WORDS) + (learned or 0)
    hf = seeded_hf_model(width, layers, heads, ffn, positions, vocab, seed=seed)
    directory = tmp_path / f"{shape}-{style}"
    write_vocab_files(directory)
    margs = model_args(width, layers, heads, ffn, positions, **overrides)
    state = fairseq_state(hf.half() if half else hf)  # --fp16 training saves float16 tensors
    write_checkpoint(
        directory / "checkpoint.pt", state, margs, task_args(positions, learned), style
    )
    return directory


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return _fairseq_dir(tmp_path_factory.mktemp("fairseq"))


def _inputs(tok, prompt=True):
    texts = ["the thing in the ring.", "a, b, c. the end"]
    rows = [tok(t)["input_ids"] + (list(tok.prompt_ids) if prompt else []) for t in texts]
    width = max(map(len, rows))
    ids = np.array([[1] * (width - len(r)) + r for r in rows])  # left-padded with <pad>
    return ids, (ids != 1).astype(np.int64)


def _assert_logits_match(ours, reference):
    ids, mask = _inputs(ours.tokenizer)
    got = np.asarray(ours(ids, attention_mask=mask).logits)
    with torch.no_grad():
        want = reference(
            torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(mask_positions(mask)),  # v5 ignores the mask otherwise
        ).logits.numpy()
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=TOL, rtol=TOL)


@pytest.mark.parametrize("shape", ["base", "large"])
def test_logits_equal_transformers_through_the_conversion_mapping(tmp_path, shape):
    directory = _fairseq_dir(tmp_path, shape)
    ours = from_pretrained(directory)
    assert ours.config.vocab_size == VOCAB
    assert ours.config.num_attention_heads == SHAPES[shape][2]
    assert ours.config.head_dim == 4 * (1 + (shape == "base"))
    _assert_logits_match(ours, hf_reference(directory / "checkpoint.pt", VOCAB))


def test_float16_checkpoint_loads_as_float32(tmp_path):
    directory = _fairseq_dir(tmp_path, half=True)
    ours = from_pretrained(directory)
    stored = torch.load(directory / "checkpoint.pt", weights_only=False)["model"]
    fc1 = stored["decoder.layers.1.fc1.weight"]
    assert fc1.dtype == torch.float16
    kernel = np.asarray(ours.params["biogpt"]["layers"]["layer_1"]["mlp"]["fc_in"]["kernel"])
    assert kernel.dtype == np.float32
    np.testing.assert_array_equal(kernel, fc1.float().numpy().T)
    _assert_logits_match(ours, hf_reference(directory / "checkpoint.pt", VOCAB))


@pytest.mark.parametrize("style", ["dictconfig", "namespace", "args"])
def test_every_stored_argument_style_reads_the_same(tmp_path, base_dir, style):
    if style == "dictconfig":
        pytest.importorskip("omegaconf", reason="writes the cfg as omegaconf's DictConfig")
    directory = _fairseq_dir(tmp_path, style=style)
    reference = from_pretrained(base_dir)
    ours = from_pretrained(directory / "checkpoint.pt")  # a file works as well as its directory
    assert ours.config == reference.config
    for a, b in zip(jax_leaves(ours.params), jax_leaves(reference.params), strict=True):
        np.testing.assert_array_equal(a, b)


def jax_leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


@pytest.mark.slow  # ~40-55 s each on the loaded 2-core machine (compiling greedy and beam)
@pytest.mark.parametrize("shape", ["base", "large"])
def test_greedy_and_beam_generation_match_transformers(tmp_path, shape):
    directory = _fairseq_dir(tmp_path, shape, seed=1)
    ours = from_pretrained(directory)
    reference = hf_reference(directory / "checkpoint.pt", VOCAB)
    ids, mask = _inputs(ours.tokenizer)
    for kwargs in ({"num_beams": 1}, {"num_beams": 3, "length_penalty": 1.0}):
        got = np.asarray(
            generate(ours.module, ours.params, ids, attention_mask=mask, max_new_tokens=8, **kwargs)
        )
        with torch.no_grad():
            want = reference.generate(
                torch.tensor(ids),
                attention_mask=torch.tensor(mask),
                max_new_tokens=8,
                do_sample=False,
                pad_token_id=1,
                **kwargs,
            ).numpy()
        np.testing.assert_array_equal(got, want, err_msg=str(kwargs))


class _Payload:
    """Unpickling this runs os.mkdir(target): the classic `__reduce__` attack."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_a_planted_reduce_payload_is_refused_and_never_runs(tmp_path):
    directory = tmp_path / "evil"
    write_vocab_files(directory)
    state = fairseq_state(seeded_hf_model(*SHAPES["base"], VOCAB))
    target = tmp_path / "pwned"
    payload = _Payload(target)
    torch.save({"args": None, "cfg": {"model": {}}, "model": state, "extra_state": payload},
               directory / "checkpoint.pt")  # fmt: skip
    with pytest.raises(UnsafeCheckpointError, match=r"refusing to load (posix|os)\.mkdir"):
        from_pretrained(directory)
    assert not target.exists()
    pickle.loads(pickle.dumps(payload))  # the payload is live: plain unpickling runs it
    assert target.is_dir()


class _ObjectScalar:
    """Pickles as numpy's scalar() of an object dtype: the allowed global with refused input."""

    def __reduce__(self):
        return (np._core.multiarray.scalar, (np.dtype(object), b"\0" * 8))


def test_an_allowed_global_with_non_numeric_input_is_refused(tmp_path):
    directory = tmp_path / "objdtype"
    write_vocab_files(directory)
    state = fairseq_state(seeded_hf_model(*SHAPES["base"], VOCAB))
    torch.save({"cfg": {"model": {}}, "model": state, "extra_state": {"best": _ObjectScalar()}},
               directory / "checkpoint.pt")  # fmt: skip
    with pytest.raises(UnsafeCheckpointError, match="numpy dtype"):
        from_pretrained(directory)


def test_vocabulary_rows_must_match_dict_and_prompt(tmp_path):
    directory = _fairseq_dir(tmp_path)
    lines = (directory / "dict.txt").read_text().splitlines()
    (directory / "dict.txt").write_text("\n".join(lines[:-2]) + "\n")
    with pytest.raises(CheckpointError, match=r"81 embedding rows.*make 79"):
        from_pretrained(directory)


def test_missing_files_are_named(tmp_path, base_dir):
    with pytest.raises(FileNotFoundError, match="no fairseq checkpoint"):
        from_pretrained(tmp_path / "missing.pt")
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(base_dir / "checkpoint.pt", lonely / "checkpoint_avg.pt")
    with pytest.raises(FileNotFoundError, match=r"has no dict\.txt"):
        from_pretrained(lonely)
    shutil.copy(base_dir / "checkpoint.pt", lonely / "checkpoint_last.pt")
    with pytest.raises(CheckpointError, match="several fairseq checkpoints"):
        from_pretrained(lonely)


def test_leftover_keys_are_listed(tmp_path):
    directory = _fairseq_dir(tmp_path)
    ckpt = torch.load(directory / "checkpoint.pt", weights_only=False)
    ckpt["model"]["decoder.layers.0.self_attn.bias_k"] = torch.zeros(1, 1, 32)
    ckpt["model"]["decoder.embed_positions._float_tensor"] = torch.zeros(1)
    torch.save(ckpt, directory / "checkpoint.pt")
    with pytest.raises(CheckpointError) as err:
        from_pretrained(directory)
    assert "decoder.layers.0.self_attn.bias_k" in str(err.value)
    assert "decoder.embed_positions._float_tensor" in str(err.value)


def test_untied_output_projection_is_refused(tmp_path):
    directory = _fairseq_dir(tmp_path)
    ckpt = torch.load(directory / "checkpoint.pt", weights_only=False)
    ckpt["model"]["decoder.output_projection.weight"] = torch.randn(VOCAB, 32)
    torch.save(ckpt, directory / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"output_projection\.weight differs"):
        from_pretrained(directory)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"decoder_learned_pos": False}, "decoder_learned_pos=False"),
        ({"share_decoder_input_output_embed": False}, "share_decoder_input_output_embed"),
        ({"layernorm_embedding": True}, "layernorm_embedding=True"),
        ({"decoder_output_dim": 16}, "decoder_output_dim=16"),
        ({"activation_fn": "linear"}, "activation_fn='linear'"),
    ],
)
def test_architectures_we_do_not_implement_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        biogpt_config(model_args(32, 2, 4, 128, 64, **override), VOCAB)


def test_width_disagreeing_with_tensors_is_reported(tmp_path):
    directory = _fairseq_dir(tmp_path, decoder_ffn_embed_dim=64)  # tensors have FFN 128
    with pytest.raises(CheckpointError, match="shape mismatch for biogpt/layers/layer/mlp/fc_in"):
        from_pretrained(directory)


def test_biogpt_large_config_from_either_format():
    # microsoft/BioGPT-Large's config.json, and fairseq's transformer_lm_gpt2_big arguments
    hf = {
        "activation_dropout": 0.0, "architectures": ["BioGptForCausalLM"],
        "attention_probs_dropout_prob": 0.1, "bos_token_id": 0, "eos_token_id": 2,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 1600,
        "initializer_range": 0.02, "intermediate_size": 6400, "layer_norm_eps": 1e-12,
        "layerdrop": 0.0, "max_position_embeddings": 2048, "model_type": "biogpt",
        "num_attention_heads": 25, "num_hidden_layers": 48, "pad_token_id": 1,
        "scale_embedding": True, "torch_dtype": "float32", "use_cache": True,
        "vocab_size": 57717,
    }  # fmt: skip
    from_hf = BioGptConfig.from_dict(hf)
    from_fairseq = biogpt_config(model_args(1600, 48, 25, 6400, 2048), 57713 + 4)
    assert from_fairseq == from_hf.replace(architectures=("BioGptForCausalLM",))
    assert (from_hf.head_dim, from_hf.vocab_size % 2) == (64, 1)
    import jax

    from biomed_jax.loading import param_template
    from biomed_jax.models.biogpt import BioGptForCausalLM

    template = param_template(BioGptForCausalLM(from_hf))  # shapes only, nothing allocated
    count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(template))
    # embeddings 57717*1600 + positions 2050*1600 + 48 layers * (4*1600^2 + 2*1600*6400 + biases, LNs)
    per_layer = 4 * 1600 * 1600 + 4 * 1600 + 2 * 1600 * 6400 + 6400 + 1600 + 4 * 1600
    assert count == 57717 * 1600 + 2050 * 1600 + 48 * per_layer + 2 * 1600
    assert 1.56e9 < count < 1.58e9


def test_convert_to_ours_and_to_transformers(tmp_path, base_dir):
    ours_dir = convert(base_dir, tmp_path / "ours")
    hf_dir = convert(base_dir / "checkpoint.pt", tmp_path / "hf", to="hf")
    original = from_pretrained(base_dir)
    again = from_pretrained(ours_dir)
    assert again.config.to_dict() == original.config.to_dict()
    assert again.tokenizer.prompt_ids == original.tokenizer.prompt_ids
    for a, b in zip(jax_leaves(again.params), jax_leaves(original.params), strict=True):
        np.testing.assert_array_equal(a, b)

    from transformers import BioGptForCausalLM, BioGptTokenizer

    hf = BioGptForCausalLM.from_pretrained(hf_dir).eval()
    _assert_logits_match(original, hf)
    hf_tok = BioGptTokenizer.from_pretrained(hf_dir)
    ids, _ = _inputs(original.tokenizer, prompt=True)
    row = ids[0][ids[0] != 1].tolist()
    assert hf_tok("the thing in the ring.")["input_ids"] == row[:-LEARNED]
    assert hf_tok.decode(row, skip_special_tokens=True) == original.tokenizer.decode(
        row, skip_special_tokens=True
    )
    config = json.loads((hf_dir / "tokenizer_config.json").read_text())
    assert config["prompt_tokens"] == [f"learned{i}</w>" for i in range(1, 10)]


def test_cli_convert_to_hf(tmp_path, base_dir):
    from _tiny_models import run_cli

    out = run_cli("convert", str(base_dir), str(tmp_path / "hf"), "--to", "hf")
    assert out.returncode == 0, out.stderr
    from transformers import BioGptForCausalLM

    hf = BioGptForCausalLM.from_pretrained(tmp_path / "hf").eval()
    _assert_logits_match(from_pretrained(base_dir), hf)


@pytest.mark.parametrize("module, name", [("typing", "Any"), ("collections", "defaultdict")])
def test_an_allowed_global_cannot_be_modified_by_build(module, name):
    """GLOBAL, {"name": "x"}, BUILD: how a pickle would change a stand-in for later loads."""
    import io

    from biomed_jax.weights.fairseq import EXTRA_GLOBALS

    before = repr(EXTRA_GLOBALS[(module, name)])
    evil = f"\x80\x02c{module}\n{name}\n}}X\x04\x00\x00\x00nameX\x01\x00\x00\x00xsb."

    class AllowListed(pickle.Unpickler):
        def find_class(self, m, n):
            return EXTRA_GLOBALS[(m, n)]

    unpickler = AllowListed(io.BytesIO(evil.encode("latin1")))
    with pytest.raises(UnsafeCheckpointError, match="tries to modify"):
        unpickler.load()
    assert repr(EXTRA_GLOBALS[(module, name)]) == before
