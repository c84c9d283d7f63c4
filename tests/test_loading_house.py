"""The loading house: one pipeline, an acyclic import graph, unambiguous checkpoints, safe convert.

Each hostile checkpoint is crafted here from a tiny seeded HF model: the load must end in a
CheckpointError / ConfigError that names the problem, and a good checkpoint loads after it. A
killed `convert` runs in a subprocess (SIGKILL while writing the weights).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

import biomed_jax
from biomed_jax import CheckpointError, ConfigError, convert, from_pretrained, load_params
from biomed_jax import sharding as shd
from biomed_jax.files import atomic_write_text, umask
from biomed_jax.trees import flatten

BERT = dict(
    vocab_size=40,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=24,
    max_position_embeddings=32,
)
BIOGPT = dict(BERT, vocab_size=50)
VOCAB = "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]) + "\n"


@pytest.fixture(scope="module")
def hf_bert(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("bert")
    transformers.BertForMaskedLM(transformers.BertConfig(**BERT)).eval().save_pretrained(path)
    (path / "vocab.txt").write_text(VOCAB)
    return path


@pytest.fixture(scope="module")
def hf_biogpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("biogpt")
    model = transformers.BioGptForCausalLM(transformers.BioGptConfig(**BIOGPT)).eval()
    model.save_pretrained(path)
    tokens = ["<s>", "<pad>", "</s>", "<unk>", "a</w>", "b</w>"]
    (path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (path / "merges.txt").write_text("#version: 0.2\n")
    return path


@pytest.fixture(scope="module")
def reference(hf_bert):
    return flatten(from_pretrained(hf_bert).params)


def _copy(src: Path, dst: Path, state: dict | None = None) -> Path:
    """`src`'s config and tokenizer files in `dst`, with `state` as its model.safetensors."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "vocab.txt"):
        shutil.copyfile(src / name, dst / name)
    if state is not None:
        save_file(state, str(dst / "model.safetensors"))
    return dst


def _refused(directory: Path, error: type[Exception], *fragments: str) -> None:
    with pytest.raises(error) as info:
        from_pretrained(directory)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


def _still_loads(hf_bert, reference) -> None:
    """A good checkpoint loads, identical to before (no state left behind by a refused load)."""
    got = flatten(from_pretrained(hf_bert).params)
    assert got.keys() == reference.keys()
    for key, value in reference.items():
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(value), err_msg=key)


# ---------------------------------------------------------------------------------------------
# The house: import graph


def _import_graph() -> dict[str, set[str]]:
    """Module -> the biomed_jax modules it imports (top-level and inside functions)."""
    root = Path(biomed_jax.__file__).parent
    files = {}
    for file in root.rglob("*.py"):
        parts = file.relative_to(root.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    graph: dict[str, set[str]] = {}
    for name, file in files.items():
        package = name if file.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                for alias in node.names:
                    deps.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base)
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def _closure(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in graph[todo.pop()] - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


def test_import_graph_has_no_cycle_and_nothing_below_loading_imports_it():
    graph = _import_graph()
    assert "biomed_jax.loading" in graph and "biomed_jax.weights.plan" in graph
    cycles = sorted(m for m in graph if m in _closure(graph, m))
    assert cycles == [], f"modules on an import cycle: {cycles}"
    below = _closure(graph, "biomed_jax.loading")
    assert {"biomed_jax.weights.reader", "biomed_jax.hub", "biomed_jax.files"} <= below
    assert [m for m in below if "biomed_jax.loading" in graph[m]] == []
    # weights is a leaf of the loading house; the bottom imports nothing of ours
    upper = {"biomed_jax.loading", "biomed_jax.hub", "biomed_jax.sharding", "biomed_jax.cli"}
    for module in (m for m in graph if m.startswith("biomed_jax.weights")):
        assert not graph[module] & upper, (module, graph[module] & upper)
    for bottom in ("biomed_jax.errors", "biomed_jax.trees", "biomed_jax.hub"):
        assert graph[bottom] == set(), (bottom, graph[bottom])
    assert graph["biomed_jax.files"] == {"biomed_jax.errors"}  # its OutputError, OutputBusyError


def test_import_graph_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    """The checker itself: a cycle hidden in a function-level import is found."""
    fake = tmp_path / "biomed_jax"
    shutil.copytree(Path(biomed_jax.__file__).parent, fake)
    with open(fake / "errors.py", "a", encoding="utf-8") as f:
        f.write("\n\ndef late():\n    from . import loading\n")
    monkeypatch.setattr(biomed_jax, "__file__", str(fake / "__init__.py"))
    graph = _import_graph()
    assert "biomed_jax.loading" in graph["biomed_jax.errors"]
    assert "biomed_jax.errors" in _closure(graph, "biomed_jax.errors")


# ---------------------------------------------------------------------------------------------
# Unambiguous checkpoints


def test_unprefixed_duplicate_of_a_prefixed_key_is_refused(hf_bert, reference, tmp_path):
    state = load_file(str(hf_bert / "model.safetensors"))
    state["embeddings.word_embeddings.weight"] = np.zeros_like(
        state["bert.embeddings.word_embeddings.weight"]
    )
    _refused(
        _copy(hf_bert, tmp_path / "dup", state),
        CheckpointError,
        "bert.embeddings.word_embeddings.weight and embeddings.word_embeddings.weight",
        "bert/embeddings/word_embeddings/embedding",
    )
    _still_loads(hf_bert, reference)


def test_legacy_gamma_beside_weight_is_refused(hf_bert, tmp_path):
    state = load_file(str(hf_bert / "model.safetensors"))
    state["bert.embeddings.LayerNorm.gamma"] = state["bert.embeddings.LayerNorm.weight"] + 1
    _refused(_copy(hf_bert, tmp_path / "g", state), CheckpointError, "LayerNorm.gamma and")


@pytest.mark.parametrize("index", ["00", "01", "+1"])
def test_non_canonical_layer_index_is_refused(hf_bert, reference, tmp_path, index):
    state = load_file(str(hf_bert / "model.safetensors"))
    key = "bert.encoder.layer.0.attention.self.query.weight"
    state[key.replace("layer.0.", f"layer.{index}.")] = np.zeros_like(state[key])
    if index == "+1":  # not a layer index at all: an unmapped key
        _refused(_copy(hf_bert, tmp_path / index, state), CheckpointError, "unexpected")
    else:
        _refused(
            _copy(hf_bert, tmp_path / index, state),
            CheckpointError,
            f"layer.{index}.attention.self.query.weight: layer index '{index}' is not written",
        )
    _still_loads(hf_bert, reference)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_, np.uint8])
def test_integer_and_bool_tensors_are_refused_not_cast(hf_bert, tmp_path, dtype):
    state = load_file(str(hf_bert / "model.safetensors"))
    key = "bert.encoder.layer.1.output.dense.bias"
    state[key] = np.ones(state[key].shape, dtype)
    directory = _copy(hf_bert, tmp_path / "int", state)
    _refused(directory, CheckpointError, f"{key}: dtype {np.dtype(dtype)} cannot hold a float")


def test_float16_checkpoint_is_cast_to_the_param_dtype(hf_bert, reference, tmp_path):
    state = load_file(str(hf_bert / "model.safetensors"))
    half = {k: v.astype(np.float16) for k, v in state.items()}
    got = flatten(from_pretrained(_copy(hf_bert, tmp_path / "f16", half)).params)
    for key, value in reference.items():
        assert got[key].dtype == np.float32
        np.testing.assert_array_equal(got[key], value.astype(np.float16), err_msg=key)


def test_non_float_tensors_of_our_own_format_are_refused(hf_bert, tmp_path):
    out = convert(hf_bert, tmp_path / "out")
    state = load_file(str(out / "model.safetensors"))
    key = sorted(state)[0]
    state[key] = state[key].astype(np.int32)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "biomed_jax"})
    for load in (load_params, from_pretrained):
        with pytest.raises(CheckpointError, match=f"{key}: dtype int32 cannot hold a float"):
            load(out)


def _shard(hf_bert: Path, directory: Path) -> tuple[Path, dict]:
    """`hf_bert` split into two shards with an index, as HF saves large models."""
    state = load_file(str(hf_bert / "model.safetensors"))
    _copy(hf_bert, directory)
    keys = sorted(state)
    halves = {
        "model-00001-of-00002.safetensors": keys[::2],
        "model-00002-of-00002.safetensors": keys[1::2],
    }
    weight_map = {}
    for name, part in halves.items():
        save_file({k: state[k] for k in part}, str(directory / name))
        weight_map.update(dict.fromkeys(part, name))
    index = {"metadata": {}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return directory, index


def test_sharded_checkpoint_with_its_index_loads(hf_bert, reference, tmp_path):
    directory, _ = _shard(hf_bert, tmp_path / "sharded")
    got = flatten(from_pretrained(directory).params)
    for key, value in reference.items():
        np.testing.assert_array_equal(np.asarray(got[key]), value, err_msg=key)


def test_stale_shards_beside_a_single_file_are_refused_not_merged(hf_bert, reference, tmp_path):
    directory, _ = _shard(hf_bert, tmp_path / "stale")
    shutil.copyfile(hf_bert / "model.safetensors", directory / "model.safetensors")
    _refused(directory, CheckpointError, "model-00001-of-00002.safetensors", "ambiguous")
    (directory / "model.safetensors.index.json").unlink()
    _refused(directory, CheckpointError, "model-00002-of-00002.safetensors", "ambiguous")
    _still_loads(hf_bert, reference)


def test_shards_the_index_does_not_list_are_refused(hf_bert, tmp_path):
    directory, _ = _shard(hf_bert, tmp_path / "unlisted")
    shutil.copyfile(
        directory / "model-00002-of-00002.safetensors",
        directory / "model-00003-of-00003.safetensors",
    )
    _refused(directory, CheckpointError, "not listed", "model-00003-of-00003.safetensors")
    (directory / "model-00003-of-00003.safetensors").unlink()
    (directory / "model-00002-of-00002.safetensors").unlink()
    _refused(directory, CheckpointError, "listed but missing: model-00002-of-00002.safetensors")


def test_index_that_misplaces_keys_or_escapes_the_directory_is_refused(hf_bert, tmp_path):
    directory, index = _shard(hf_bert, tmp_path / "wrong")
    key = next(iter(index["weight_map"]))
    other = {"model-00001-of-00002.safetensors": "model-00002-of-00002.safetensors"}
    index["weight_map"][key] = other.get(
        index["weight_map"][key], "model-00001-of-00002.safetensors"
    )
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    _refused(directory, CheckpointError, "disagrees with its shards", key)
    index["weight_map"][key] = "../../etc/passwd"
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    _refused(directory, CheckpointError, "shard file names", "../../etc/passwd")
    (directory / "model.safetensors.index.json").write_text("{not json")
    _refused(directory, CheckpointError, "model.safetensors.index.json", "not a shard index")


def test_same_key_in_two_shards_is_refused(hf_bert, tmp_path):
    directory, _ = _shard(hf_bert, tmp_path / "twice")
    first = load_file(str(directory / "model-00001-of-00002.safetensors"))
    second = load_file(str(directory / "model-00002-of-00002.safetensors"))
    key = next(iter(first))
    save_file({**second, key: first[key]}, str(directory / "model-00002-of-00002.safetensors"))
    _refused(directory, CheckpointError, "stored in two files", key)


@pytest.mark.parametrize(
    "architectures, fragment",
    [
        ("BertForMaskedLM", "must be a list of names"),
        (["BertForMaskedLMX"], "unknown architectures ['BertForMaskedLMX']"),
        (["BioGptForCausalLM"], "BioGptForCausalLM is a biogpt model"),
        ([3], "must be a list of names"),
    ],
)
def test_architectures_must_be_a_list_of_known_names(hf_bert, tmp_path, architectures, fragment):
    directory = _copy(hf_bert, tmp_path / "arch")
    shutil.copyfile(hf_bert / "model.safetensors", directory / "model.safetensors")
    config = json.loads((hf_bert / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "architectures": architectures}))
    _refused(directory, ConfigError, fragment)


def test_architecture_argument_of_another_family_is_refused(hf_bert):
    with pytest.raises(ConfigError, match="BioGptModel is a biogpt model"):
        from_pretrained(hf_bert, architecture="BioGptModel")
    with pytest.raises(ConfigError, match="unknown architecture 'Nope'"):
        from_pretrained(hf_bert, architecture="Nope")


def test_config_json_that_is_not_json_names_the_file(hf_bert, tmp_path):
    directory = _copy(hf_bert, tmp_path / "badjson")
    (directory / "config.json").write_text("{")
    _refused(directory, ConfigError, str(directory / "config.json"))


# ---------------------------------------------------------------------------------------------
# Pretrained: typed, frozen; sharding a loaded model; missing tokenizer


def test_pretrained_is_frozen_and_shards_onto_a_mesh(hf_bert, reference):
    pre = from_pretrained(hf_bert)
    with pytest.raises(dataclasses.FrozenInstanceError):
        pre.params = {}  # type: ignore[misc]
    mesh = shd.make_mesh(4, 2)
    placed = pre.shard(mesh, "fsdp_tp")
    wanted = flatten(shd.param_shardings(pre.module, mesh, "fsdp_tp"))
    for path, x in flatten(placed.params).items():
        assert x.sharding == wanted[path], path
        np.testing.assert_array_equal(np.asarray(x), reference[path], err_msg=path)
    assert pre.params is not placed.params and placed.module is pre.module
    with pytest.raises(TypeError, match=r"pre.shard\(mesh, rules\)"):
        shd.shard_params(pre.params, mesh)


def test_missing_tokenizer_warns_at_load_and_raises_at_first_use(hf_bert, tmp_path, caplog):
    directory = tmp_path / "no_tokenizer"
    directory.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(hf_bert / name, directory / name)
    with caplog.at_level(logging.WARNING, logger="biomed_jax.loading"):
        pre = from_pretrained(directory)
    assert "no tokenizer files (vocab.txt missing)" in caplog.text
    with pytest.raises(FileNotFoundError, match=r"vocab.txt missing.*dataclasses.replace"):
        pre.tokenizer("a b")
    with pytest.raises(FileNotFoundError, match=r"vocab\.txt missing"):
        pre.tokenizer.encode("a b")
    with pytest.raises(FileNotFoundError, match=r"vocab\.txt missing"):
        biomed_jax.fill_mask("a [MASK]", model=pre)
    supplied = dataclasses.replace(pre, tokenizer=biomed_jax.BertTokenizer.from_pretrained(hf_bert))
    assert supplied.tokenizer("a b")["input_ids"] == [2, 5, 6, 3]


# ---------------------------------------------------------------------------------------------
# convert: empty or own directory only, replaced whole, usual permissions, no stale temporaries


def _modes(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mode & 0o777 for p in [directory, *directory.iterdir()]}


def test_convert_writes_files_with_the_umask_permissions(hf_bert, tmp_path):
    old = os.umask(0o027)
    try:
        assert umask() == 0o027
        out = convert(hf_bert, tmp_path / "out")
        atomic_write_text(tmp_path / "note.txt", "x")
    finally:
        os.umask(old)
    modes = _modes(out)
    assert modes.pop("out") == 0o750
    assert modes == {"config.json": 0o640, "model.safetensors": 0o640, "vocab.txt": 0o640}
    assert (tmp_path / "note.txt").stat().st_mode & 0o777 == 0o640


def test_convert_replaces_its_own_output_whole(hf_bert, hf_biogpt, tmp_path):
    out = convert(hf_bert, tmp_path / "out")
    assert (out / "vocab.txt").is_file()
    convert(hf_biogpt, out)  # a BioGPT over an earlier BERT conversion
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "generation_config.json",
        "merges.txt",
        "model.safetensors",
        "vocab.json",
    ]
    assert type(from_pretrained(out).module).__name__ == "BioGptForCausalLM"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporaries beside it


def test_convert_refuses_a_directory_that_is_not_its_own(hf_bert, reference, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an earlier output"):
        convert(hf_bert, foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    out = convert(hf_bert, tmp_path / "out")
    (out / "extra.txt").write_text("a file convert did not write")
    with pytest.raises(FileExistsError, match="not an earlier output"):
        convert(hf_bert, out)
    empty = tmp_path / "empty"
    empty.mkdir()
    convert(hf_bert, empty)
    loaded = flatten(load_params(empty))
    assert loaded.keys() == reference.keys()
    for key, value in reference.items():
        np.testing.assert_array_equal(loaded[key], value, err_msg=key)


_KILLED_CONVERT = """
import os, signal, sys
import safetensors.numpy
from biomed_jax import convert

def dying(tensors, path, metadata=None):
    with open(path, "wb") as f:
        f.write(b"\\0" * 4096)  # a partial weights file
    os.kill(os.getpid(), signal.SIGKILL)

safetensors.numpy.save_file = dying
convert(sys.argv[1], sys.argv[2])
"""


def test_killed_convert_leaves_nothing_the_next_convert_does_not_remove(hf_bert, tmp_path):
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-c", _KILLED_CONVERT, str(hf_bert), str(out)],
        capture_output=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert run.returncode == -signal.SIGKILL, run.stderr.decode()[-2000:]
    assert not out.exists()
    # its lock file (recording the writer) and the temporary directory with the partial weights
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".out.biomed_jax-lock",
        ".out.biomed_jax-new",
    ]
    record = json.loads((tmp_path / ".out.biomed_jax-lock").read_text())
    assert record["library"] == "biomed_jax" and record["host"] == socket.gethostname()
    partial = tmp_path / ".out.biomed_jax-new" / ".model.safetensors.biomed_jax-tmp"
    assert partial.stat().st_size == 4096
    convert(hf_bert, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (out / "model.safetensors").stat().st_size > 4096


_KILLED_WRITE = """
import os, signal, sys
from biomed_jax.files import atomic_path

with atomic_path(sys.argv[1]) as tmp:
    tmp.write_text("half a file")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_writers_temporary_goes_with_the_next_write_of_that_file(tmp_path):
    """A kill inside any atomic write (a manifest, a shard, weights) leaves its temporary and
    lock file; the next write of the same file removes both. Nothing else is removed: no
    directory is listed for leftovers, so look-alikes of other names, and of a dead writer's
    files of another target, all stay."""
    target = tmp_path / "manifest.json"
    run = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITE, str(target)], capture_output=True, timeout=120
    )
    assert run.returncode == -signal.SIGKILL, run.stderr.decode()[-2000:]
    killed = tmp_path / ".manifest.json.biomed_jax-tmp"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".manifest.json.biomed_jax-lock",
        killed.name,
    ]
    assert killed.read_text() == "half a file"
    host, pid = socket.gethostname(), 4_000_000
    kept = {
        tmp_path / ".notes.tmp": "not ours",
        tmp_path / f".other.json.{host}-{pid}-abc.tmp": "the old naming of a dead writer's",
        tmp_path / ".other.json.biomed_jax-tmp": "another target's, no lock file of ours",
    }
    for path, text in kept.items():
        path.write_text(text)
    script = "import sys; from biomed_jax.files import atomic_write_text as w; w(sys.argv[1], 'x')"
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "a")], check=True, timeout=120)
    assert killed.exists()  # another file's write does not look at it
    subprocess.run([sys.executable, "-c", script, str(target)], check=True, timeout=120)
    assert not killed.exists() and target.read_text() == "x"
    assert {p: p.read_text() for p in kept} == kept
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["a", "manifest.json", *(p.name for p in kept)]
    )


# ---------------------------------------------------------------------------------------------
# The one template


@pytest.mark.parametrize("kind", ["bert", "biogpt"])
@pytest.mark.parametrize("remat", [False, True])
def test_template_of_unrolled_modules_equals_their_own_init(kind, remat):
    """`abstract_params` traces the scanned stack and splits it: the same shapes, dtypes and
    logical names as tracing the unrolled module itself."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from biomed_jax.models.common import abstract_params

    if kind == "bert":
        module = biomed_jax.BertForSequenceClassification(
            biomed_jax.BertConfig(**{**BERT, "num_hidden_layers": 3}, num_labels=3),
            gradient_checkpointing=remat,
            param_dtype=jnp.bfloat16,
        )
    else:
        module = biomed_jax.BioGptForCausalLM(
            biomed_jax.BioGptConfig(**{**BIOGPT, "num_hidden_layers": 3}),
            gradient_checkpointing=remat,
            param_dtype=jnp.bfloat16,
        )
    ids = jnp.zeros((1, 1), jnp.int32)
    direct = jax.eval_shape(lambda: module.init(jax.random.key(0), ids))["params"]

    def leaves(tree):
        is_box = lambda x: isinstance(x, nn.Partitioned)
        flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_box)[0]
        return [(path, x.value.shape, x.value.dtype, x.names) for path, x in flat]

    want = leaves(direct)
    assert any("layer_2" in jax.tree_util.keystr(p) for p, *_ in want)
    assert leaves(abstract_params(module)) == want


def test_pretrained_built_without_a_tokenizer_says_so_at_first_use(hf_bert):
    pre = from_pretrained(hf_bert)
    bare = biomed_jax.Pretrained(pre.config, pre.params, pre.module)
    with pytest.raises(FileNotFoundError, match="built without a tokenizer; attach one"):
        bare.tokenizer("a")
    assert bare(np.array([[2, 5, 3]], np.int32)).logits.shape == (1, 3, BERT["vocab_size"])
