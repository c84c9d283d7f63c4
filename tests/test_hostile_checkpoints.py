"""Hostile and broken checkpoints: each ends in a clear error, and nothing else.

Every file is crafted here (pickles opcode by opcode, zips by hand, broken configs and tokenizer
files). The cases run in limited children (`_limited.run_cases`: RLIMIT_AS at baseline + 1-3 GiB,
a time limit): each must raise the documented error naming the file and the tensor or field,
with no signal, no hang and no allocation past the limit; after each case the same child loads a
good checkpoint and compares it bit for bit with a reference made by torch (nothing leaks).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from _limited import Case, run_cases
from safetensors.torch import save_file

from biomed_jax.errors import CheckpointError
from biomed_jax.weights.dtypes import READABLE_DTYPES
from biomed_jax.weights.torch_zip import load_torch_zip

# -- crafting torch.save files by hand --------------------------------------------------------------


def _str(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _int(i: int) -> bytes:
    n = (i.bit_length() + 8) // 8
    return b"\x8a" + bytes([n]) + i.to_bytes(n, "little", signed=True)


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def _tensor(key="0", storage="FloatStorage", numel=6, offset=0, size=(2, 3), stride=(3, 1)):
    """The opcodes of `_rebuild_tensor_v2(storage, offset, size, stride, False, {})`."""
    pid = _tuple(_str("storage"), _global("torch", storage), _str(key), _str("cpu"), _int(numel))
    args = _tuple(
        pid + b"Q",
        _int(offset),
        _tuple(*map(_int, size)),
        _tuple(*map(_int, stride)),
        b"\x89",  # NEWFALSE
        b"}",  # EMPTY_DICT
    )
    return _global("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def _state(**entries: bytes) -> bytes:
    """A protocol-2 pickle of {name: value opcodes}."""
    return b"\x80\x02}(" + b"".join(_str(k) + v for k, v in entries.items()) + b"u."


def _zip(path: Path, pickle: bytes, storages: dict[str, bytes], **extra: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle)
        for key, data in storages.items():
            z.writestr(f"archive/data/{key}", data)
        for name, data in extra.items():
            z.writestr(f"archive/{name}", data)
    return path


F32x6 = np.arange(6, dtype=np.float32).tobytes()


def _deflate_bomb(path: Path, size: int) -> None:
    """A storage member of `size` zero bytes deflated into a few MB (written without expanding)."""
    chunk_size = 1 << 24
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = c.compress(bytes(chunk_size)) + c.flush(zlib.Z_FULL_FLUSH)  # state reset: repeatable
    body = chunk * (size // chunk_size) + zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    pickle = _state(w=_tensor(numel=size // 4, size=(size // 4,), stride=(1,)))
    members = [
        ("archive/data.pkl", pickle, 0, len(pickle), zlib.crc32(pickle)),
        ("archive/data/0", body, 8, size, 0),  # CRC never reached
    ]
    out, central = bytearray(), bytearray()
    for name, data, method, raw_size, crc in members:
        fields = (20, 0, method, 0, 0, crc, len(data), raw_size, len(name), 0)
        header = struct.pack("<4s5H3L2H", b"PK\x03\x04", *fields) + name.encode()
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, *fields, 0, 0, 0, 0, len(out))
        central += name.encode()
        out += header + data
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 2, 2, len(central), len(out), 0)
    path.write_bytes(bytes(out + central + end))


def _many_transposed_views(path: Path, count: int = 3000, n: int = 512) -> None:
    """`count` entries, each a transposed view of one n x n float32 storage (1 MiB): 3 GiB of
    copies from a 1 MiB file (the calls are memoized: a few bytes an entry)."""
    pid = _tuple(
        _str("storage"), _global("torch", "FloatStorage"), _str("0"), _str("cpu"), _int(n * n)
    )
    size, stride = _tuple(_int(n), _int(n)), _tuple(_int(1), _int(n))
    args = _tuple(pid + b"Q", _int(0), size, stride, b"\x89", b"}")
    first = _global("torch._utils", "_rebuild_tensor_v2") + b"q\x01" + args + b"q\x02R"
    rest = b"".join(_str(f"k{i}") + b"h\x01h\x02R" for i in range(1, count))
    _zip(path, b"\x80\x02}(" + _str("k0") + first + rest + b"u.", {"0": bytes(4 * n * n)})


def _many_members(count: int) -> Callable[[Path], None]:
    """A torch zip with `count` empty storage members, the last name written twice (22 MB for
    200,000: the old duplicate check was quadratic, 9 s at 20,000 members, hours at 200,000)."""

    def build(path: Path) -> None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zipfile warns of the duplicate name
            with zipfile.ZipFile(path, "w") as z:
                z.writestr("archive/data.pkl", _state(w=_tensor()))
                for i in range(count - 1):
                    z.writestr(f"archive/data/{i}", b"")
                z.writestr(f"archive/data/{count - 2}", b"")

    return build


def _big_endian(path: Path) -> None:
    _zip(path, _state(w=_tensor()), {"0": F32x6}, byteorder=b"big")


def _compressed(path: Path) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", _state(w=_tensor()))
        z.writestr("archive/data/0", F32x6)


def _truncated(path: Path) -> None:
    good = (path.parent / "good.bin").read_bytes()
    path.write_bytes(good[: len(good) // 2])


def _flipped(path: Path) -> None:
    good = path.parent / "good.bin"
    with zipfile.ZipFile(good) as z:
        info = z.getinfo("good/data/0")
    data = bytearray(good.read_bytes())
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    start = info.header_offset + 30 + name_len + extra_len  # the member's bytes
    data[start + 5] ^= 0xFF  # inside a storage: the CRC check fails
    path.write_bytes(bytes(data))


def _torch_saved(value) -> Callable[[Path], None]:
    return lambda path: torch.save({"w": value}, path)


class _Exploit:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        import os

        return (os.system, (self.cmd,))


@dataclasses.dataclass(frozen=True)
class Hostile:
    """A hostile file: `build(path)` writes it; `call` on it must raise `error` matching `match`
    (the string "{path}" in `match` stands for the file's path)."""

    name: str
    build: Callable[[Path], None]
    call: str = "load_torch_zip"
    error: str = "CheckpointError"
    match: tuple[str, ...] = ()
    suffix: str = ".bin"


def _bin(name, pickle, *match, storages=None, error="CheckpointError") -> Hostile:
    storages = {"0": F32x6} if storages is None else storages
    return Hostile(name, lambda path: _zip(path, pickle, storages), error=error, match=match)


def _unsafe(name, pickle, *match) -> Hostile:
    return _bin(name, pickle, *match, error="UnsafeCheckpointError")


T, G = _tensor, _global
CMD = "touch pwned"  # run in the child's working directory; the test checks it never appears
SYSTEM = G("os", "system")

READER_CASES = [
    # Views that leave their storage, or make huge arrays out of a small one.
    _bin("negative_offset", _state(w=T(offset=-3)), "'w'", "offset"),
    _bin("negative_stride", _state(w=T(size=(6,), stride=(-1,), offset=5)), "'w'", "stride"),
    _bin("stride_minus_2_40", _state(w=T(size=(2,), stride=(-(1 << 40),))), "'w'", "stride"),
    _bin("stride_plus_2_40", _state(w=T(size=(2,), stride=(1 << 40,))), "'w'", "storage has 6"),
    _bin("view_past_end", _state(w=T(size=(7,), stride=(1,))), "'w'", "needs 7 elements"),
    _bin("offset_past_end", _state(w=T(offset=1)), "'w'", "storage has 6"),
    _bin("zero_stride_16gib", _state(w=T(size=(1 << 16, 1 << 16), stride=(0, 0))), "'w'", "stride"),
    _bin("zero_stride_4tib", _state(w=T(size=(1 << 20, 1 << 20), stride=(1, 0))), "'w'", "stride"),
    _bin("overlapping_view", _state(w=T(size=(4, 3), stride=(1, 1))), "'w'", "needs 12 elements"),
    _bin("nine_dims", _state(w=T(size=(1,) * 9, stride=(1,) * 9)), "'w'", "at most 8"),
    _bin("huge_empty_shape", _state(w=T(size=(0, 1 << 40, 1 << 40), stride=(1, 1, 1))), "'w'"),
    _bin("size_not_int", _state(w=T(size=(2,), stride=(1,)).replace(_int(2), _str("2"), 1)), "'w'"),
    # Storages that lie about their size, are missing, compressed, or shared inconsistently.
    _bin(
        "storage_bigger_than_member",
        _state(w=T(numel=12, size=(12,), stride=(1,))),
        "'w'",
        "holds 24 bytes",
    ),
    _bin("storage_missing", _state(w=T(key="7")), "'w'", "data/7", "missing"),
    _bin("storage_key_path", _state(w=T(key="../0")), "'w'", "not a number"),
    _bin("storage_two_dtypes", _state(a=T(), b=T(storage="IntStorage")), "'b'", "storage 0"),
    Hostile("deflate_bomb_2_2gb", lambda p: _deflate_bomb(p, 2200 << 20), match=("compressed",)),
    Hostile("compressed_members", _compressed, match=("compressed",)),
    Hostile("big_endian", _big_endian, match=("little-endian",)),
    # Many members: counted before anything else, duplicates found in linear time.
    Hostile("zip_200k_members_one_twice", _many_members(200_000), match=("200001 zip members",)),
    Hostile(
        "zip_60k_members_one_twice",
        _many_members(60_000),
        match=("appear twice", "archive/data/59998"),
    ),
    Hostile("transposed_views_3gib", _many_transposed_views, match=("'k1'", "views copied")),
    # Broken zips and pickles.
    Hostile("truncated_zip", _truncated, match=("{path}", "corrupt")),
    Hostile("flipped_byte", _flipped, match=("{path}", "CRC")),
    Hostile(
        "legacy_not_zip",
        lambda p: p.write_bytes(b"\x80\x02}q\x00."),
        error="UnsafeCheckpointError",
        match=("not a torch zip",),
    ),
    _bin("pickle_5mib", b"\x80\x02" + b")" * (5 << 20) + b".", "larger than 4194304 bytes"),
    _bin("pickle_without_stop", _state(w=T())[:-1], "STOP"),
    _bin("pickle_garbage", b"\x80\x02\xff\xfe", "data.pkl"),
    _bin("reduce_on_empty_stack", b"\x80\x02R.", "too short a stack"),
    _bin("binget_unset_memo", b"\x80\x02h\x07.", "memo"),
    _bin("top_level_tuple", b"\x80\x02" + _tuple(T()) + b".", "expected a dict"),
    _bin("key_not_a_string", b"\x80\x02}(" + _int(3) + T() + b"u.", "not named tensors"),
    _bin("value_not_a_tensor", _state(w=_str("hello")), "not named tensors"),
    _bin("duplicate_key", b"\x80\x02}(" + _str("w") + T() + _str("w") + T() + b"u.", "twice"),
    _bin("setitem_on_tuple", b"\x80\x02)" + _str("a") + _str("b") + b"s.", "SETITEM"),
    _bin(
        "persistent_id_wrong_shape",
        _state(
            w=G("torch._utils", "_rebuild_tensor_v2")
            + _tuple(
                _tuple(_str("storage")) + b"Q",
                _int(0),
                _tuple(_int(1)),
                _tuple(_int(1)),
                b"\x89",
                b"}",
            )
            + b"R"
        ),
        "'w'",
        "('storage', ...)",
    ),
    # dtypes no model can use: named, refused.
    _bin(
        "complex_storage", _state(w=T(storage="ComplexFloatStorage", numel=3)), "'w'", "complex64"
    ),
    Hostile(
        "float8_tensor",
        _torch_saved(torch.zeros(4, dtype=torch.float8_e4m3fn)),
        match=("'w'", "float8_e4m3fn"),
    ),
    Hostile(
        "uint16_tensor", _torch_saved(torch.zeros(4, dtype=torch.uint16)), match=("'w'", "uint16")
    ),
    Hostile(
        "complex_tensor",
        _torch_saved(torch.zeros(4, dtype=torch.complex64)),
        match=("'w'", "complex64"),
    ),
    # Code execution: refused, never run.
    _unsafe("exec_global_reduce", b"\x80\x02" + SYSTEM + _tuple(_str(CMD)) + b"R.", "os.system"),
    _unsafe(
        "exec_builtins_eval",
        b"\x80\x02"
        + G("builtins", "eval")
        + _tuple(_str(f"__import__('os').system('{CMD}')"))
        + b"R.",
        "builtins.eval",
    ),
    _unsafe(
        "exec_posix_system",
        b"\x80\x02" + G("posix", "system") + _tuple(_str(CMD)) + b"R.",
        "posix.system",
    ),
    _unsafe(
        "exec_stack_global",
        b"\x80\x04\x8c\x02os\x8c\x06system\x93" + _tuple(_str(CMD)) + b"R.",
        "os.system",
    ),
    _unsafe("exec_inst", b"(" + _str(CMD) + b"ios\nsystem\n.", "INST"),
    _unsafe("exec_obj", b"\x80\x02(" + SYSTEM + _str(CMD) + b"o.", "os.system"),
    _unsafe(
        "exec_newobj",
        b"\x80\x02" + G("subprocess", "Popen") + _tuple(_str(CMD)) + b"\x81.",
        "subprocess.Popen",
    ),
    _unsafe("exec_ext1", b"\x80\x02\x82\x01" + _tuple(_str(CMD)) + b"R.", "EXT1"),
    _unsafe("exec_in_persistent_id", _state(w=_tuple(SYSTEM, _str(CMD)) + b"Q"), "os.system"),
    _unsafe(
        "exec_allowed_global_bad_args",
        _state(w=G("collections", "OrderedDict") + _tuple(_str(CMD)) + b"R"),
        "refusing the call",
    ),
    _unsafe(
        "exec_call_storage_type",
        _state(w=G("torch", "FloatStorage") + _tuple(_str(CMD)) + b"R"),
        "refusing the call",
    ),
    _unsafe("exec_protocol5_buffer", b"\x80\x05\x97.", "NEXT_BUFFER"),
    Hostile(
        "exec_torch_save_reduce",
        lambda p: torch.save({"w": torch.zeros(2), "evil": _Exploit(CMD)}, p),
        error="UnsafeCheckpointError",
        match=("posix.system",),
    ),
    # Plain data beyond torch.save's grammar: read only by load_pickle (fairseq), when asked for.
    _unsafe("list_in_state_dict", _state(w=b"]"), "EMPTY_LIST"),
    _unsafe("float_in_state_dict", _state(w=b"G" + struct.pack(">d", 1.0)), "BINFLOAT"),
    _unsafe("newobj_in_state_dict", _state(w=G("collections", "OrderedDict") + b")\x81"), "NEWOBJ"),
    # State that would outlive a load: BUILD on the storage stand-in or a rebuild function.
    _unsafe(
        "build_on_storage_type",
        _state(w=G("torch", "FloatStorage") + b"}" + _str("dtype") + G("numpy", "int8") + b"sb"),
        "numpy.int8",
    ),
    _unsafe(
        "build_on_storage_type_plain_state",
        _state(w=G("torch", "FloatStorage") + b"}" + _str("dtype") + _str("int8") + b"sb"),
        "BUILD",
    ),
    _unsafe(
        "build_on_rebuild_function",
        _state(w=G("torch._utils", "_rebuild_tensor_v2") + b"}b"),
        "BUILD",
    ),
    # safetensors: dtypes no model can use, broken headers.
    Hostile(
        "safetensors_float8",
        lambda p: save_file({"w": torch.zeros(4, dtype=torch.float8_e4m3fn)}, str(p)),
        "read_safetensors",
        match=("'w'", "F8_E4M3"),
        suffix=".safetensors",
    ),
    Hostile(
        "safetensors_huge_header",
        lambda p: p.write_bytes(struct.pack("<Q", 1 << 40) + b"{}"),
        "read_safetensors",
        match=("{path}", "header"),
        suffix=".safetensors",
    ),
]


def _build_all(cases: list[Hostile], d: Path) -> list[Case]:
    out = []
    for h in cases:
        path = d / f"{h.name}{h.suffix}"
        h.build(path)
        match = tuple(m.replace("{path}", str(path)) for m in h.match)
        out.append(Case(h.name, h.call, str(path), h.error, match))
    return out


def _run_files(cases: list[Hostile], d: Path, good_call: str, good: Path):
    """Write `cases` into `d` and run them in one limited child; after each, `good_call` on
    `good` must return d/good_ref.npz exactly."""
    built = {c.name: c for c in _build_all(cases, d)}
    run = run_cases(
        list(built.values()),
        good_call=good_call,
        good_path=str(good),
        reference=str(d / "good_ref.npz"),
        workdir=d,
        extra_memory=1 << 30,
    )
    return built, run, d


def _check(case: Case, run, workdir: Path) -> None:
    assert run.returncode == 0, f"child died (signal {-run.returncode}):\n{run.stderr}"
    outcome = run.outcomes.get(case.name)
    assert outcome is not None, f"no result for {case.name}:\n{run.stderr}"
    assert outcome.error == case.error, f"{outcome.error}: {outcome.message}"
    assert case.path in outcome.message, outcome.message  # names the file
    for text in case.match:
        assert text in outcome.message, outcome.message
    assert outcome.seconds < 20, f"took {outcome.seconds:.1f} s"
    assert len(outcome.message) < 5000, f"a message of {len(outcome.message)} characters"
    assert outcome.good == "exact", outcome.good
    assert not (workdir / "pwned").exists(), "the pickle ran code"


@pytest.fixture(scope="module")
def reader_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile_reader")
    torch.manual_seed(0)
    good = {
        "w": torch.randn(5, 7),
        "t": torch.randn(4, 6).t(),  # a non-contiguous view
        "slice": torch.randn(10)[3:8],  # a storage offset
        "half": torch.randn(3).half(),
        "ids": torch.arange(9),
        "mask": torch.tensor([True, False]),
    }
    torch.save(good, d / "good.bin")
    np.savez(d / "good_ref.npz", **{k: v.contiguous().numpy() for k, v in good.items()})
    return _run_files(READER_CASES, d, "load_torch_zip", d / "good.bin")


@pytest.mark.parametrize("name", [h.name for h in READER_CASES])
def test_hostile_file_is_refused_cleanly(reader_run, name):
    cases, run, d = reader_run
    _check(cases[name], run, d)


def test_crafted_files_are_what_torch_reads(tmp_path):
    """The hand-made opcodes are a real torch.save state dict: torch and our reader agree."""
    pickle = _state(w=T(), v=T(offset=1, size=(2, 2), stride=(1, 2)))
    path = _zip(tmp_path / "crafted.bin", pickle, {"0": F32x6}, version=b"3\n")
    ours = load_torch_zip(path)
    theirs = torch.load(path, weights_only=True)
    assert ours.keys() == theirs.keys() == {"w", "v"}
    for k in ours:
        np.testing.assert_array_equal(ours[k], theirs[k].numpy())


# -- fairseq checkpoints: plain data beyond torch.save's grammar, read without unpickling ------------


def _namespace(state: bytes = b"}" + _str("arch") + _str("transformer_lm") + b"s") -> bytes:
    """argparse.Namespace() + BUILD(state): how pickle writes a Namespace."""
    return G("argparse", "Namespace") + b")\x81" + state + b"b"


def _numpy_scalar(dtype: str, data: bytes) -> bytes:
    """numpy's scalar(dtype(name, False, True) + BUILD(state), _codecs.encode(bytes, 'latin1'))."""
    state = _tuple(_int(3), _str("<"), b"N", b"N", b"N", _int(-1), _int(-1), _int(0))
    dt = G("numpy", "dtype") + _tuple(_str(dtype), b"\x89", b"\x88") + b"R" + state + b"b"
    raw = G("_codecs", "encode") + _tuple(_str(data.decode("latin1")), _str("latin1")) + b"R"
    return G("numpy._core.multiarray", "scalar") + _tuple(dt, raw) + b"R"


def _fairseq(args: bytes = _namespace(), extra: bytes = b"N", model: bytes = T()) -> bytes:
    """A protocol-2 fairseq checkpoint pickle: {model: {w}, args, extra_state}."""
    entries = _str("model") + b"}(" + _str("w") + model + b"u" + _str("args") + args
    return b"\x80\x02}(" + entries + _str("extra_state") + extra + b"u."


def _fs(name, pickle, *match, error="CheckpointError") -> Hostile:
    """A fairseq checkpoint with this pickle (and a 6-float storage); read_fairseq_checkpoint."""
    return Hostile(
        name, lambda path: _zip(path, pickle, {"0": F32x6}), "read_fairseq", error, match, ".pt"
    )


def _nested_lists(depth: int) -> bytes:
    return b"]" * depth + b"a" * (depth - 1)


def _shared_tuple(doublings: int) -> bytes:
    """A pair of the previous value, `doublings` times over: 2**doublings leaves."""
    return b"N" + b"q\x00h\x00\x86" * doublings  # BINPUT 0, BINGET 0, TUPLE2


FAIRSEQ_CASES = [
    _fs(
        "fairseq_reduce_in_args",
        _fairseq(_namespace(b"}" + _str("arch") + SYSTEM + _tuple(_str(CMD)) + b"Rs")),
        "os.system",
        error="UnsafeCheckpointError",
    ),
    _fs(
        "fairseq_newobj_unlisted",
        _fairseq(G("subprocess", "Popen") + _tuple(_str(CMD)) + b"\x81"),
        "subprocess.Popen",
        error="UnsafeCheckpointError",
    ),
    # BUILD on a stand-in shared by every load: refused (a record of this load may take state).
    *(
        _fs(
            f"fairseq_build_on_{module}_{name}",
            _fairseq(G(module, name) + b"}" + _str("name") + _str("x") + b"sb"),
            "BUILD",
            error="UnsafeCheckpointError",
        )
        for module, name in [
            ("argparse", "Namespace"),
            ("typing", "Any"),
            ("collections", "defaultdict"),
        ]
    ),
    _fs(
        "fairseq_build_twice",
        _fairseq(_namespace() + b"}b"),
        "BUILD",
        error="UnsafeCheckpointError",
    ),
    # A record built with other arguments, in a file that then fails: the next load is unchanged.
    _fs(
        "fairseq_build_then_broken",
        _fairseq(_namespace(b"}" + _str("decoder_layers") + _int(99) + b"s"), model=_str("x")),
        "'model' entries that are not named tensors",
    ),
    _fs("fairseq_namespace_state_tuple", _fairseq(_namespace(_tuple(_str("x")))), "not a dict"),
    _fs(
        "fairseq_namespace_with_arguments",
        _fairseq(G("argparse", "Namespace") + _tuple(_str("x")) + b"\x81"),
        "arguments",
    ),
    _fs(
        "fairseq_numpy_object_dtype",
        _fairseq(extra=_numpy_scalar("O8", bytes(8))),
        "'extra_state'",
        "numpy dtype",
        error="UnsafeCheckpointError",
    ),
    _fs(
        "fairseq_numpy_scalar_short_bytes",
        _fairseq(extra=_numpy_scalar("f8", bytes(4))),
        "'extra_state'",
        "has 4 bytes",
    ),
    _fs(
        "fairseq_codecs_1mib_text",
        _fairseq(extra=_numpy_scalar("f8", bytes(1 << 20))),
        "not a numpy scalar",
    ),
    _fs(
        "fairseq_call_of_a_type_name",
        _fairseq(extra=G("builtins", "float") + _tuple(_str("1e308")) + b"R"),
        "refusing the call builtins.float",
        error="UnsafeCheckpointError",
    ),
    _fs(
        "fairseq_set_opcode",
        _fairseq(extra=b"\x8f"),
        "EMPTY_SET",
        error="UnsafeCheckpointError",
    ),
    # Sizes: a list past MAX_VALUES, a tuple shared 2**40 times, deep nesting, a cycle.
    _fs("fairseq_huge_list", _fairseq(extra=b"](" + b"N" * (1 << 20) + b"e"), "more than"),
    _fs("fairseq_shared_tuple_2_40", _fairseq(extra=_shared_tuple(40)), "more than"),
    _fs("fairseq_nested_100k", _fairseq(extra=_nested_lists(100_000)), "64 levels deep"),
    _fs("fairseq_cycle", _fairseq(extra=b"]q\x00h\x00a"), "a cycle?"),
    _fs(
        "fairseq_storage_reference_alone",
        _fairseq(extra=_tuple(_str("storage"), G("torch", "FloatStorage"), _str("0")) + b"Q"),
        "'extra_state'",
        "storage reference outside a tensor",
    ),
    _fs(
        "fairseq_bad_view_in_optimizer_state",
        _fairseq(extra=b"}(" + _str("exp_avg") + T(offset=-3) + b"u"),
        "tensor 'extra_state'/'exp_avg'",
        "offset",
    ),
]


@pytest.fixture(scope="module")
def fairseq_run(tmp_path_factory):
    from _fairseq_models import (
        fairseq_state,
        model_args,
        seeded_hf_model,
        task_args,
        write_checkpoint,
    )

    d = tmp_path_factory.mktemp("hostile_fairseq")
    margs, targs = model_args(8, 1, 2, 16, 16), task_args(16)
    state = fairseq_state(seeded_hf_model(8, 1, 2, 16, 16, 50))
    good = write_checkpoint(d / "good.pt", state, margs, targs, style="namespace")
    args = json.dumps([margs, targs], sort_keys=True).encode()
    reference = {k: v.numpy() for k, v in state.items()}
    np.savez(d / "good_ref.npz", **reference, **{"args:json": np.frombuffer(args, np.uint8)})
    return _run_files(FAIRSEQ_CASES, d, "read_fairseq", good)


@pytest.mark.parametrize("name", [h.name for h in FAIRSEQ_CASES])
def test_hostile_fairseq_checkpoint_is_refused_cleanly(fairseq_run, name):
    cases, run, d = fairseq_run
    _check(cases[name], run, d)


# -- broken configs and tokenizer files ------------------------------------------------------------


def _edit_json(name: str, **changes) -> Callable[[Path], None]:
    """Set (or, with None, delete) keys of the good checkpoint's JSON file `name`."""

    def edit(d: Path) -> None:
        data = json.loads((d / name).read_text())
        for key, value in changes.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        (d / name).write_text(json.dumps(data))

    return edit


def _write(name: str, content: bytes) -> Callable[[Path], None]:
    return lambda d: (d / name).write_bytes(content)


def _fifo(name: str) -> Callable[[Path], None]:
    """`name` replaced by a FIFO: reading it would block forever."""

    def build(d: Path) -> None:
        import os

        (d / name).unlink(missing_ok=True)
        os.mkfifo(d / name)

    return build


def _load(name, edit, *match, call="from_pretrained", error="ConfigError") -> Hostile:
    """A copy of the good checkpoint directory changed by `edit(directory)`."""
    return Hostile(name, edit, call, error, match, suffix="")


WORD_EMBEDDINGS = "bert.embeddings.word_embeddings.weight"


def _hostile_bin(d: Path) -> None:
    """The weights as a pytorch_model.bin whose word embeddings run backwards out of storage."""
    (d / "model.safetensors").unlink()
    tensor = _tensor(size=(6,), stride=(-1,), offset=5)
    _zip(d / "pytorch_model.bin", _state(**{WORD_EMBEDDINGS: tensor}), {"0": F32x6})


LABELS = {"0": "A", "1": "B", "2": "C"}
LOAD_CASES = [
    _load("num_labels_1e8", _edit_json("config.json", num_labels=1e8), "config.json", "num_labels"),
    # 1e8 labels x 32 wide: 12.8 GB of float32, past this child's address-space limit.
    _load(
        "num_labels_100M", _edit_json("config.json", num_labels=10**8), "config.json", "parameters"
    ),
    _load(
        "num_labels_1G", _edit_json("config.json", num_labels=10**9), "config.json", "parameters"
    ),
    _load(
        "num_hidden_layers_100000",
        _edit_json("config.json", num_hidden_layers=100_000),
        "config.json",
        "num_hidden_layers",
    ),
    _load(
        "info_num_hidden_layers_100000",
        _edit_json("config.json", num_hidden_layers=100_000),
        "config.json",
        "num_hidden_layers",
        call="model_info",
    ),
    _load(
        "layer_norm_eps_nan",
        _edit_json("config.json", layer_norm_eps=float("nan")),
        "config.json",
        "layer_norm_eps",
    ),
    _load(
        "layer_norm_eps_negative",
        _edit_json("config.json", layer_norm_eps=-1e-12),
        "config.json",
        "layer_norm_eps",
    ),
    _load(
        "num_attention_heads_0",
        _edit_json("config.json", num_attention_heads=0),
        "config.json",
        "num_attention_heads",
    ),
    _load(
        "hidden_size_string",
        _edit_json("config.json", hidden_size="64"),
        "config.json",
        "hidden_size",
        "'64'",
    ),
    _load(
        "vocab_size_negative", _edit_json("config.json", vocab_size=-5), "config.json", "vocab_size"
    ),
    _load(
        "dropout_above_one",
        _edit_json("config.json", hidden_dropout_prob=1.5),
        "config.json",
        "hidden_dropout_prob",
    ),
    _load(
        "pad_token_outside_vocab",
        _edit_json("config.json", pad_token_id=106),
        "config.json",
        "pad_token_id",
    ),
    _load(
        "id2label_gap",
        _edit_json("config.json", id2label={"0": "A", "2": "C"}),
        "config.json",
        "id2label",
        "[1]",
    ),
    _load(
        "id2label_bad_key",
        _edit_json("config.json", id2label={"zero": "A"}),
        "config.json",
        "'zero'",
    ),
    _load(
        "label2id_mismatch",
        _edit_json("config.json", id2label=LABELS, label2id={"A": 0, "B": 2, "C": 1}),
        "config.json",
        "label2id",
    ),
    _load(
        "every_bad_field_at_once",
        _edit_json(
            "config.json",
            hidden_size="64",
            layer_norm_eps=float("nan"),
            num_hidden_layers=0,
            id2label={"1": "B"},
            foo=1,
        ),
        "config.json",
        "hidden_size",
        "layer_norm_eps",
        "num_hidden_layers",
        "id2label",
        "'foo'",
    ),
    _load(
        "config_malformed_json",
        _write("config.json", b'{\n  "hidden_size": 32,\n  oops\n}'),
        "config.json",
        "line 3",
    ),
    _load("config_not_an_object", _write("config.json", b"[1, 2]"), "config.json", "JSON object"),
    _load(
        "config_not_utf8",
        _write("config.json", b'{"model_type": "bert", "x": "\xff"}'),
        "config.json",
        "UTF-8",
    ),
    _load("config_deep_nesting", _write("config.json", b"[" * 100_000), "config.json"),
    # A hostile pytorch_model.bin reached through from_pretrained and `biomed-jax info`.
    _load(
        "bin_negative_stride",
        _hostile_bin,
        "pytorch_model.bin",
        WORD_EMBEDDINGS,
        "stride",
        error="CheckpointError",
    ),
    _load(
        "info_bin_negative_stride",
        _hostile_bin,
        "pytorch_model.bin",
        WORD_EMBEDDINGS,
        "stride",
        call="model_info",
        error="CheckpointError",
    ),
    # Files that are not regular files: a FIFO would block the reader forever.
    _load("config_json_fifo", _fifo("config.json"), "config.json", "not a regular file"),
    _load(
        "pytorch_model_bin_fifo",
        lambda d: (d / "model.safetensors").unlink() or _fifo("pytorch_model.bin")(d),
        "pytorch_model.bin",
        error="CheckpointError",
    ),
    # Tokenizer files (read after the weights, by from_pretrained).
    _load(
        "vocab_txt_not_utf8",
        lambda d: (d / "vocab.txt").write_bytes(
            (d / "vocab.txt").read_bytes().replace(b"[SEP]", b"[S\xffP]")
        ),
        "vocab.txt",
        "line 4",
    ),
    _load(
        "vocab_txt_duplicate",
        lambda d: (d / "vocab.txt").write_text((d / "vocab.txt").read_text() + "the\n"),
        "vocab.txt",
        "duplicate",
        "'the'",
    ),
    _load("vocab_txt_empty", _write("vocab.txt", b""), "vocab.txt", "empty"),
    _load(
        "vocab_txt_without_mask",
        lambda d: (d / "vocab.txt").write_text(
            (d / "vocab.txt").read_text().replace("[MASK]\n", "")
        ),
        "mask_token",
    ),
    _load(
        "tokenizer_config_malformed",
        _write("tokenizer_config.json", b'{"do_lower_case": tru}'),
        "tokenizer_config.json",
        "line 1",
    ),
    _load(
        "tokenizer_config_bad_fields",
        _edit_json(
            "tokenizer_config.json",
            model_max_length="512",
            padding_side="middle",
            do_lower_case="yes",
        ),
        "tokenizer_config.json",
        "model_max_length",
        "padding_side",
        "do_lower_case",
    ),
    _load(
        "special_tokens_map_bad_token",
        _write("special_tokens_map.json", b'{"unk_token": 5}'),
        "special_tokens_map.json",
        "unk_token",
    ),
    _load(
        "added_tokens_bad_id",
        _edit_json("tokenizer_config.json", added_tokens_decoder={"x": {"content": "[PAD]"}}),
        "tokenizer_config.json",
        "added_tokens_decoder",
    ),
]

BIOGPT_VOCAB = {
    "<s>": 0,
    "<pad>": 1,
    "</s>": 2,
    "<unk>": 3,
    "a</w>": 4,
    "b</w>": 5,
    "a": 6,
    "ab</w>": 7,
}
BIOGPT_MERGES = "a b</w> 100\n"


def _biogpt(name, edit, *match) -> Hostile:
    return _load(name, edit, *match, call="tokenizer")


TOKENIZER_CASES = [
    _biogpt(
        "vocab_json_malformed", _write("vocab.json", b'{"<s>": 0,\n "a": }'), "vocab.json", "line 2"
    ),
    _biogpt("vocab_json_not_object", _write("vocab.json", b'["<s>"]'), "vocab.json", "JSON object"),
    _biogpt(
        "vocab_json_bad_ids", _edit_json("vocab.json", a="6", b=-1), "vocab.json", "'a'", "'b'"
    ),
    _biogpt("vocab_json_shared_id", _edit_json("vocab.json", b=6), "vocab.json", "id 6"),
    _biogpt(
        "merges_bad_line", _write("merges.txt", b"a b</w> 100\nonlyone\n"), "merges.txt", "line 2"
    ),
    _biogpt(
        "merges_not_utf8", _write("merges.txt", b"a b</w> 100\n\xff b 1\n"), "merges.txt", "line 2"
    ),
    _biogpt(
        "added_tokens_json_bad", _write("added_tokens.json", b'{"<x>": "8"}'), "added_tokens.json"
    ),
    _biogpt(
        "tokenizer_config_bad_eos",
        _write("tokenizer_config.json", b'{"eos_token": ["</s>"]}'),
        "tokenizer_config.json",
        "eos_token",
    ),
]


def _build_dirs(cases: list[Hostile], good: Path, d: Path) -> list[Case]:
    out = []
    for h in cases:
        path = d / h.name
        shutil.copytree(good, path)
        h.build(path)
        out.append(Case(h.name, h.call, str(path), h.error, h.match))
    return out


@pytest.fixture(scope="module")
def load_run(tmp_path_factory, hf_bert):
    from _limited import _flat_params

    from biomed_jax import from_pretrained

    d = tmp_path_factory.mktemp("hostile_load")
    np.savez(d / "good_ref.npz", **_flat_params(from_pretrained(hf_bert)))
    cases = {c.name: c for c in _build_dirs(LOAD_CASES, hf_bert, d)}
    run = run_cases(
        list(cases.values()),
        good_call="from_pretrained",
        good_path=str(hf_bert),
        reference=str(d / "good_ref.npz"),
        workdir=d,
        extra_memory=3 << 30,
    )
    return cases, run, d


@pytest.fixture(scope="module")
def tokenizer_run(tmp_path_factory):
    import transformers

    d = tmp_path_factory.mktemp("hostile_tokenizer")
    good = d / "good"
    good.mkdir()
    (good / "vocab.json").write_text(json.dumps(BIOGPT_VOCAB))
    (good / "merges.txt").write_text(BIOGPT_MERGES)
    hf = transformers.BioGptTokenizer(str(good / "vocab.json"), str(good / "merges.txt"))
    np.savez(d / "good_ref.npz", ids=np.asarray(hf("a b ab")["input_ids"]))
    cases = {c.name: c for c in _build_dirs(TOKENIZER_CASES, good, d)}
    run = run_cases(
        list(cases.values()),
        good_call="tokenizer",
        good_path=str(good),
        reference=str(d / "good_ref.npz"),
        workdir=d,
    )
    return cases, run, d


@pytest.mark.slow  # ~50 s on a loaded 2-core machine: a good from_pretrained after each case
@pytest.mark.parametrize("name", [h.name for h in LOAD_CASES])
def test_broken_config_or_tokenizer_file_is_refused_cleanly(load_run, name):
    cases, run, d = load_run
    _check(cases[name], run, d)


@pytest.mark.parametrize("name", [h.name for h in TOKENIZER_CASES])
def test_broken_biogpt_tokenizer_file_is_refused_cleanly(tokenizer_run, name):
    cases, run, d = tokenizer_run
    _check(cases[name], run, d)


# -- fairseq model directories: arguments, sizes and files that are not what they say ------------

FS_SHAPE = (8, 1, 2, 16, 16)  # width, layers, heads, ffn, positions
FS_LEARNED = 9
BIG = "x" * (1 << 20)


def _fairseq_checkpoint(directory: Path, model=None, task=None, state=None) -> None:
    """The good model's directory, with its arguments or tensors changed."""
    from _fairseq_models import write_model_dir

    write_model_dir(directory, FS_SHAPE, learned=FS_LEARNED, model=model, task=task, state=state)


def _fs_dir(name, *match, error="ConfigError", call="from_pretrained", build=None, **edits):
    return Hostile(
        name,
        build or (lambda d: _fairseq_checkpoint(d, **edits)),
        call,
        error,
        match,
        suffix="",
    )


ZERO_D = torch.tensor(1.0)
FAIRSEQ_DIR_CASES = [
    _fs_dir(
        "fairseq_learned_prompt_1e9",
        "checkpoint.pt",
        "learned_prompt=1000000000",
        task={"learned_prompt": 10**9},
    ),
    _fs_dir(
        "fairseq_100k_references_to_1mb",
        "checkpoint.pt",
        "decoder_learned_pos=",
        model={"decoder_learned_pos": [BIG] * 100_000},
    ),
    _fs_dir(
        "fairseq_activation_fn_list",
        "checkpoint.pt",
        "activation_fn=['gelu']",
        model={"activation_fn": ["gelu"]},
    ),
    _fs_dir(
        "fairseq_tensor_as_decoder_layers",
        "checkpoint.pt",
        "decoder_layers=array(1",
        model={"decoder_layers": torch.tensor(1)},
    ),
    _fs_dir(
        "fairseq_string_false",
        "checkpoint.pt",
        "no_scale_embedding='False' (must be True or False)",
        model={"no_scale_embedding": "False"},
    ),
    _fs_dir(
        "fairseq_string_positions",
        "checkpoint.pt",
        "max_target_positions='16'",
        model={"max_target_positions": "16", "tokens_per_sample": "16"},
    ),
    _fs_dir(
        "fairseq_heads_not_dividing_width",
        "checkpoint.pt",
        "num_attention_heads = decoder_attention_heads",
        model={"decoder_attention_heads": 3},
    ),
    _fs_dir(
        "fairseq_0d_embedding",
        "checkpoint.pt",
        "decoder.embed_tokens.weight has shape ()",
        error="CheckpointError",
        state={"decoder.embed_tokens.weight": ZERO_D, "decoder.output_projection.weight": ZERO_D},
    ),
    _fs_dir(
        "fairseq_dict_20mb_line",
        "dict.txt",
        "line 1",
        build=_write("dict.txt", b"x" * (20 << 20) + b"\n"),
    ),
    _fs_dir(
        "fairseq_dict_not_utf8",
        "dict.txt",
        "line 2",
        build=_write("dict.txt", b"the 5\n\xff 4\n"),
    ),
    _fs_dir(
        "fairseq_only_pt_is_a_fifo",
        "config.json",
        error="FileNotFoundError",
        build=_fifo("checkpoint.pt"),
    ),
    _fs_dir(
        "info_fairseq_only_pt_is_a_fifo",
        "config.json",
        error="FileNotFoundError",
        call="model_info",
        build=_fifo("checkpoint.pt"),
    ),
    _fs_dir(
        "dict_txt_is_a_fifo",
        "dict.txt is not a regular file",
        error="FileNotFoundError",
        build=_fifo("dict.txt"),
    ),
]


@pytest.fixture(scope="module")
def fairseq_dir_run(tmp_path_factory):
    from _limited import _flat_params

    from biomed_jax import from_pretrained

    d = tmp_path_factory.mktemp("hostile_fairseq_dir")
    good = d / "good"
    _fairseq_checkpoint(good)
    np.savez(d / "good_ref.npz", **_flat_params(from_pretrained(good)))
    cases = {c.name: c for c in _build_dirs(FAIRSEQ_DIR_CASES, good, d)}
    run = run_cases(
        list(cases.values()),
        good_call="from_pretrained",
        good_path=str(good),
        reference=str(d / "good_ref.npz"),
        workdir=d,
        extra_memory=2 << 30,
    )
    return cases, run, d


@pytest.mark.parametrize("name", [h.name for h in FAIRSEQ_DIR_CASES])
def test_hostile_fairseq_directory_is_refused_cleanly(fairseq_dir_run, name):
    cases, run, d = fairseq_dir_run
    _check(cases[name], run, d)


def _corrupt(original: bytes, rng) -> bytes:
    """1-3 random bytes changed, deleted or inserted."""
    data = bytearray(original)
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(data))
        kind = rng.random()
        if kind < 0.6:
            data[at] = rng.randrange(256)
        elif kind < 0.8:
            del data[at]
        else:
            data.insert(at, rng.randrange(256))
    return bytes(data)


def test_corrupted_bytes_give_a_checkpoint_error_or_the_same_tensors(tmp_path):
    """1,500 random corruptions of a real torch.save file (bytes changed, cut or inserted, in
    the file or in data.pkl re-zipped): each raises a CheckpointError naming the file, or loads
    the original tensors exactly (the file) or tensors within the file's size (a new pickle);
    no other exception escapes."""
    import random

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    state = {**model.state_dict(), "t": torch.randn(3, 5).t(), "ids": torch.arange(4)}
    torch.save(state, tmp_path / "f.bin")
    expected = {k: v.contiguous().numpy() for k, v in state.items()}
    original = (tmp_path / "f.bin").read_bytes()
    with zipfile.ZipFile(tmp_path / "f.bin") as z:
        pickle = z.read("f/data.pkl")
        others = {n: z.read(n) for n in z.namelist() if n != "f/data.pkl"}
    rng = random.Random(0)
    path = tmp_path / "corrupt.bin"
    for i in range(1500):
        in_pickle = i % 2 == 0
        data = _corrupt(pickle if in_pickle else original, rng)
        if in_pickle:
            _zip(path, data, {}, **{n.removeprefix("f/"): d for n, d in others.items()})
        else:
            path.write_bytes(data)
        try:
            loaded = load_torch_zip(path)
        except CheckpointError as e:
            assert str(path) in str(e), str(e)
            continue
        if in_pickle:  # a valid but different pickle: tensors of readable dtypes, within the file
            for k, v in loaded.items():
                assert isinstance(k, str) and v.dtype in READABLE_DTYPES, (i, k, v.dtype)
                assert v.nbytes <= path.stat().st_size, (i, k, v.shape)
            continue
        assert loaded.keys() == expected.keys()  # the zip's CRCs guard the rest
        for k, v in expected.items():
            assert loaded[k].dtype == v.dtype and np.array_equal(loaded[k], v), (i, k)


def test_corrupted_fairseq_pickles_give_a_checkpoint_error_or_plain_data(tmp_path):
    """1,000 random corruptions of a fairseq checkpoint's data.pkl (Namespace args, numpy
    scalars, a defaultdict, optimizer tensors), re-zipped: each raises a CheckpointError naming
    the file, or reads as plain data with tensors within the file's size."""
    import random

    from _fairseq_models import (
        fairseq_state,
        model_args,
        seeded_hf_model,
        task_args,
        write_checkpoint,
    )

    from biomed_jax.weights.fairseq import read_fairseq_checkpoint

    state = fairseq_state(seeded_hf_model(8, 1, 2, 16, 16, 50))
    good = write_checkpoint(
        tmp_path / "f.pt", state, model_args(8, 1, 2, 16, 16), task_args(16), "namespace"
    )
    with zipfile.ZipFile(good) as z:
        pickle = z.read("f/data.pkl")
        others = {n.removeprefix("f/"): z.read(n) for n in z.namelist() if n != "f/data.pkl"}
    rng = random.Random(0)
    path = tmp_path / "corrupt.pt"
    errors = 0
    for i in range(1000):
        data = _corrupt(pickle, rng)
        _zip(path, data, {}, **others)
        try:
            ckpt = read_fairseq_checkpoint(path)
        except CheckpointError as e:
            assert str(path) in str(e), str(e)
            errors += 1
            continue
        for k, v in ckpt.model.items():
            assert isinstance(v, np.ndarray) and v.nbytes <= path.stat().st_size, (i, k)
        json.dumps([ckpt.model_args, ckpt.task_args])  # plain data
    assert errors > 500  # most corruptions are caught
