"""Pipelines over several devices: each batch split over the 8 forced CPU devices (conftest), and
`embed_file` on several processes (a real 2-process `jax.distributed` run on CPU, and the
per-process blocks, resumption and reassembly in process with a patched process index).

Reference: the same pipeline on one device (no mesh); float32, 1e-5 absolute.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys
import types

import jax
import numpy as np
import pytest
from _tiny_models import SENTENCES
from jax.sharding import PartitionSpec as P

from biomed_jax import from_pretrained
from biomed_jax import sharding as shd
from biomed_jax.pipelines import _common, embed, embed_file, fill_mask
from biomed_jax.pipelines.stream import read_shards

EMBED = importlib.import_module("biomed_jax.pipelines.embed")  # the module, not the function
STREAM = importlib.import_module("biomed_jax.pipelines.stream")
FILL_MASK = importlib.import_module("biomed_jax.pipelines.fill_mask")
FP32_TOL = 1e-5
TEXTS = [f"{SENTENCES[i % len(SENTENCES)]} {i}" for i in range(13)]


@pytest.fixture(scope="module")
def ours(hf_bert):
    return from_pretrained(hf_bert)


@pytest.fixture
def one_device(monkeypatch):
    """Within the test: this process has one local device, so pipelines run as is (no mesh)."""
    first = jax.local_devices()[:1]

    def use_one():
        monkeypatch.setattr(jax, "local_devices", lambda *args, **kwargs: first)

    return use_one


def spy(monkeypatch, module, name):
    """Record the arguments of every call of `module.name` (a jitted pipeline step)."""
    calls, real = [], getattr(module, name)

    def record(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, record)
    return calls, real


def assert_split_over_8(x):
    """x [B, ...] is split along B into 8 blocks of B/8 rows, one on each device."""
    rows = x.shape[0] // 8
    assert x.shape[0] % 8 == 0 and len(x.sharding.device_set) == 8
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start)
    assert [s.index[0].start for s in shards] == list(range(0, x.shape[0], rows))
    assert [s.data.shape for s in shards] == [(rows, *x.shape[1:])] * 8
    assert len({s.device for s in shards}) == 8


def test_embed_splits_every_batch_over_8_devices(ours, monkeypatch, one_device):
    calls, real = spy(monkeypatch, EMBED, "_hidden")
    # batch_size 16: one batch of 13 rows, padded to 16 (2 rows a device); batch_size 4: batches
    # of 4 rows, padded to 8 (1 a device, 4 copies of the last row dropped again).
    cls = embed(TEXTS, model=ours, layers=[0, -1], batch_size=16)
    tokens = embed(TEXTS[:6], model=ours, layers=-1, pooling="none", batch_size=4)
    assert len(calls) == 1 + 2
    for args, _ in calls:
        _, params, ids, mask = args
        assert_split_over_8(ids)
        assert_split_over_8(mask)
        for leaf in jax.tree.leaves(params):  # replicated: every device holds the whole array
            assert len(leaf.sharding.device_set) == 8 and leaf.sharding.is_fully_replicated
    assert [args[2].shape[0] for args, _ in calls] == [16, 8, 8]
    # What the compiled program takes: the batch split over all 8 devices of the "data" axis.
    (module, params, ids, mask), kwargs = calls[1]
    with shd.use(ids.sharding.mesh, shd.DP):
        compiled = real.lower(module, params, ids, mask, **kwargs).compile()
    for sharding in compiled.input_shardings[0][2:]:
        assert sharding.spec == P("data") and sharding.mesh.devices.size == 8

    one_device()
    want_cls = embed(TEXTS, model=ours, layers=[0, -1], batch_size=16)
    want_tokens = embed(TEXTS[:6], model=ours, layers=-1, pooling="none", batch_size=4)
    assert len(calls) == 3 + 3  # the reference ran too (on one device: no mesh, plain arrays)
    assert all(isinstance(args[2], np.ndarray) for args, _ in calls[3:])
    assert cls.shape == want_cls.shape == (13, 2, 32)
    np.testing.assert_allclose(cls, want_cls, rtol=0, atol=FP32_TOL)
    for got, want in zip(tokens, want_tokens, strict=True):
        assert got["tokens"] == want["tokens"]
        np.testing.assert_array_equal(got["offsets"], want["offsets"])
        np.testing.assert_allclose(got["embeddings"], want["embeddings"], rtol=0, atol=FP32_TOL)


def test_embed_on_given_devices_and_rules(ours, one_device):
    """3 of the 8 devices (a batch of 4 padded to 6), and FSDP params on a (4, 2) mesh."""
    three = embed(TEXTS[:4], model=ours, pooling="mean", devices=jax.devices()[:3])
    mesh = shd.make_mesh(data=4, model=2)
    fsdp = _common.place(ours, mesh, "fsdp")
    assert any(not x.sharding.is_fully_replicated for x in jax.tree.leaves(fsdp.params))
    on_mesh = embed(TEXTS[:4], model=fsdp, pooling="mean", devices=mesh, rules="fsdp")
    one_device()
    want = embed(TEXTS[:4], model=ours, pooling="mean")
    np.testing.assert_allclose(three, want, rtol=0, atol=FP32_TOL)
    np.testing.assert_allclose(on_mesh, want, rtol=0, atol=FP32_TOL)


def candidates(results):
    """fill_mask's candidates of every mask of every text, in order."""
    return [c for r in results for mask in ([r] if isinstance(r[0], dict) else r) for c in mask]


def test_fill_mask_splits_batches_over_8_devices(ours, monkeypatch, one_device):
    texts = ["The patient was [MASK] with aspirin.", "[MASK] growth of [MASK] cells.", "a [MASK]"]
    calls, _ = spy(monkeypatch, FILL_MASK, "_top_k")
    got = fill_mask(texts, top_k=3, model=ours)
    assert len(calls) == 1
    assert_split_over_8(calls[0][0][2])
    one_device()
    want = fill_mask(texts, top_k=3, model=ours)
    flat, flat_want = candidates(got), candidates(want)
    assert [c["token"] for c in flat] == [c["token"] for c in flat_want] and len(flat) == 12
    np.testing.assert_allclose(
        [c["score"] for c in flat], [c["score"] for c in flat_want], rtol=0, atol=FP32_TOL
    )


def test_data_mesh_and_bad_devices(ours, monkeypatch):
    mesh = _common.data_mesh()
    assert dict(mesh.shape) == {"data": 8, "model": 1}
    assert list(mesh.devices.flat) == jax.local_devices()
    assert _common.data_mesh(mesh) is mesh
    with pytest.raises(ValueError, match="devices is empty"):
        embed("fever", model=ours, devices=[])
    with pytest.raises(ValueError, match="unknown rule set 'nope'"):
        embed("fever", model=ours, rules="nope")
    # A mesh holding another process's devices is refused (each process embeds on its own).
    monkeypatch.setattr(jax, "process_index", lambda *args: 1)
    with pytest.raises(ValueError, match="this process's devices only"):
        embed("fever", model=ours, devices=mesh)


def test_shard_batch_on_a_local_mesh_of_one_of_several_processes(monkeypatch):
    """A mesh of this process's devices takes the whole batch, even when there are 2 processes."""
    mesh = _common.data_mesh()
    monkeypatch.setattr(jax, "process_count", lambda *args: 2)
    batch = shd.shard_batch(np.arange(16).reshape(8, 2), mesh, shd.DP)
    assert_split_over_8(batch)
    np.testing.assert_array_equal(np.asarray(batch), np.arange(16).reshape(8, 2))


def _as_process(monkeypatch, index, count):
    monkeypatch.setattr(
        STREAM,
        "jax",
        types.SimpleNamespace(process_index=lambda: index, process_count=lambda: count),
    )


def test_embed_file_blocks_per_process_resume_and_reassemble(ours, tmp_path, monkeypatch):
    """3 processes (patched index) over 10 documents: blocks of 3, 3 and 4, their own files."""
    docs = tmp_path / "docs.txt"
    docs.write_text("\n".join(TEXTS[:10]) + "\n")
    out = tmp_path / "out"
    opts = {"model": ours, "shard_size": 2, "progress": False, "batch_size": 4}
    written = []
    real_write = STREAM._write_shard
    monkeypatch.setattr(
        STREAM, "_write_shard", lambda path, *a: written.append(path.name) or real_write(path, *a)
    )
    manifests = {}
    for index in (2, 0):
        _as_process(monkeypatch, index, 3)
        manifests[index] = embed_file(docs, out, **opts)
    with pytest.raises(ValueError, match=r"no manifest of process\(es\) \[1\] of 3"):
        read_shards(out)
    _as_process(monkeypatch, 1, 3)
    manifests[1] = embed_file(docs, out, **opts)
    assert [(m["first_document"], m["num_documents"], m["num_shards"]) for _, m in
            sorted(manifests.items())] == [(0, 3, 2), (3, 3, 2), (6, 4, 2)]  # fmt: skip
    expected = {f"process-0000{p}-shard-0000{k}.npy" for p in range(3) for k in range(2)}
    assert sorted(written) == sorted(expected)
    assert {p.name for p in out.iterdir()} == expected | {
        f"process-0000{p}-manifest.json" for p in range(3)
    }
    want = embed(TEXTS[:10], model=ours)
    np.testing.assert_allclose(read_shards(out), want, rtol=0, atol=FP32_TOL)

    # Process 1 killed after its first shard: its rerun writes only its missing shard.
    (out / "process-00001-shard-00001.npy").unlink()
    written.clear()
    embed_file(docs, out, **opts)
    assert written == ["process-00001-shard-00001.npy"]
    np.testing.assert_allclose(read_shards(out), want, rtol=0, atol=FP32_TOL)

    with pytest.raises(ValueError, match=r"other settings \(pooling\)"):
        embed_file(docs, out, **{**opts, "pooling": "mean"})
    _as_process(monkeypatch, 0, 2)
    with pytest.raises(ValueError, match=r"holds a run over 3 process\(es\), this one has 2"):
        embed_file(docs, out, **opts)
    monkeypatch.undo()  # one process again: the same directory is refused
    with pytest.raises(ValueError, match=r"holds a run over 3 process\(es\), this one has 1"):
        embed_file(docs, out, **opts)
    manifest = out / "process-00002-manifest.json"
    unfinished = {k: v for k, v in json.loads(manifest.read_text()).items() if k != "num_shards"}
    manifest.write_text(json.dumps(unfinished))
    with pytest.raises(ValueError, match="process 2 has not finished"):
        read_shards(out)
    with pytest.raises(FileNotFoundError, match="no manifest"):
        read_shards(tmp_path)


CHILD = """
import functools, json, os, sys, time
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
import importlib
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
# JAX's shutdown barrier times out after 1 s instead of 300: process 1 finishes ~3 s after 0.
jax.distributed.initialize = functools.partial(
    jax.distributed.initialize, shutdown_timeout_seconds=1
)
from biomed_jax import cli
stream = importlib.import_module("biomed_jax.pipelines.stream")
embed = importlib.import_module("biomed_jax.pipelines.embed")
log = {"writes": [], "batches": []}
real_write, real_text, real_hidden = stream._write_shard, stream.atomic_write_text, embed._hidden
def write(path, *args):
    log["writes"].append(path.name)
    time.sleep(1.0 * jax.process_index())
    return real_write(path, *args)
def write_text(path, *args):
    log["writes"].append(path.name)
    return real_text(path, *args)
def hidden(module, params, ids, mask, **kwargs):
    log["batches"].append(sorted({(d.process_index, d.id) for d in ids.sharding.device_set}))
    return real_hidden(module, params, ids, mask, **kwargs)
stream._write_shard, stream.atomic_write_text, embed._hidden = write, write_text, hidden
code = cli.main(sys.argv[2:])
log |= {"code": code, "process": jax.process_index(), "count": jax.process_count(),
        "devices": len(jax.devices()), "local": len(jax.local_devices())}
with open(sys.argv[1], "w") as f:
    json.dump(log, f)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_embed_cli_on_two_real_processes(hf_bert, ours, tmp_path):
    """`biomed-jax embed --coordinator ... --num-processes 2 --process-id I` in 2 processes of 2
    CPU devices each, joined by jax.distributed (gloo): each embeds its block over its own 2
    devices and writes only its own files; reassembled, they equal one process's run. Process 1
    ends seconds after process 0, past JAX's (shortened) shutdown barrier: both still exit 0."""
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS[:11]))
    out, script = tmp_path / "out", tmp_path / "child.py"
    script.write_text(CHILD)
    address = f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "BIOMED_JAX_COMPILATION_CACHE": "off", "HF_HUB_OFFLINE": "1"}
    args = ["embed", str(docs), str(out), "--field", "text", "--model", str(hf_bert),
            "--shard-size", "2", "--batch-size", "4", "--pooling", "mean", "--quiet",
            "--coordinator", address, "--num-processes", "2"]  # fmt: skip
    children = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(tmp_path / f"log{i}.json"),
                *args,
                f"--process-id={i}",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    results = [child.communicate(timeout=120) for child in children]
    for child, (_, stderr) in zip(children, results):
        assert child.returncode == 0, stderr[-3000:]
    assert "5 documents in 3 shards (process 0, from document 0)" in results[0][0]
    assert "6 documents in 3 shards (process 1, from document 5)" in results[1][0]

    logs = [json.loads((tmp_path / f"log{i}.json").read_text()) for i in range(2)]
    files = {p.name for p in out.iterdir()}
    for i, log in enumerate(logs):
        assert (log["code"], log["process"], log["count"]) == (0, i, 2)
        assert (log["devices"], log["local"]) == (4, 2)
        prefix = f"process-0000{i}-"
        mine = {f"{prefix}shard-0000{k}.npy" for k in range(3)} | {f"{prefix}manifest.json"}
        assert set(log["writes"]) == mine and mine <= files
        # every batch split over this process's own 2 devices, never another's
        assert log["batches"] and all(
            len(b) == 2 and {p for p, _ in b} == {i} for b in log["batches"]
        )
    assert len(files) == 8

    single = embed_file(docs, tmp_path / "single", field="text", model=ours, shard_size=2,
                        batch_size=4, pooling="mean", progress=False)  # fmt: skip
    assert single["num_documents"] == 11
    np.testing.assert_allclose(
        read_shards(out), read_shards(tmp_path / "single"), rtol=0, atol=FP32_TOL
    )
