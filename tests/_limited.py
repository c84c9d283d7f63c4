"""Run hostile-input cases in a subprocess with a memory and a time limit.

`run_cases(cases, good, ...)` starts ONE child (`python tests/_limited.py SPEC`) that imports
biomed_jax, caps its address space at what it already uses + `extra_memory` (RLIMIT_AS), and
then, for each case in order: runs `CALLS[case.call](case.path)` and records the exception
(type, message, seconds) or "no error"; then runs the good call and compares its result with the
reference arrays, bit for bit (no state may leak from a bad file into the next load). Each result
is printed as one JSON line as soon as it is known, so a crash still says which case caused it.

To add a call, add it to CALLS: a function path -> dict of name -> numpy array (or None).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Case:
    """One hostile input: `call` (a CALLS name) on `path`, expected to fail with `error`
    (a class name) whose message contains every string of `match`."""

    name: str
    call: str
    path: str
    error: str = "CheckpointError"
    match: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What the child saw for one case."""

    error: str | None  # exception class name, None when the call returned
    message: str
    seconds: float
    good: str  # "exact", or why the good checkpoint did not load exactly after this case


@dataclasses.dataclass(frozen=True)
class Run:
    outcomes: dict[str, Outcome]
    returncode: int  # < 0: killed by that signal
    stderr: str


def run_cases(
    cases: list[Case],
    *,
    good_call: str,
    good_path: str,
    reference: str,
    workdir: Path,
    extra_memory: int = 1 << 30,
    timeout_s: float = 300,
) -> Run:
    """Run `cases` in one limited child; `reference`: an .npz of what `good_call` must return."""
    spec = workdir / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "cases": [dataclasses.asdict(c) for c in cases],
                "good": {"call": good_call, "path": good_path, "reference": reference},
                "extra_memory": extra_memory,
            }
        )
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)  # one CPU device: less memory, same reading
    try:
        proc = subprocess.run(
            [sys.executable, __file__, str(spec)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=env,
            cwd=workdir,
        )
        stdout, stderr, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or ""
        stderr, rc = f"timed out after {timeout_s} s", -9
    outcomes = {}
    for line in stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            name = row.pop("name")
            outcomes[name] = Outcome(**row)
    return Run(outcomes, rc, stderr[-3000:])


# -- the child ------------------------------------------------------------------------------------


def _flat_params(pre: Any) -> dict[str, Any]:
    import numpy as np

    from biomed_jax.weights.io import flatten

    out = {k: np.asarray(v) for k, v in flatten(pre.params).items()}
    if pre.tokenizer is not None:
        out["tokenizer:ids"] = np.asarray(pre.tokenizer("the patient was treated.")["input_ids"])
    return out


def _from_pretrained(path: str) -> dict[str, Any]:
    from biomed_jax import from_pretrained

    return _flat_params(from_pretrained(path))


def _config(path: str) -> None:
    from biomed_jax import BertConfig, BioGptConfig

    text = Path(path, "config.json").read_text(encoding="utf-8", errors="replace")
    (BioGptConfig if '"biogpt"' in text else BertConfig).from_pretrained(path)


def _tokenizer(path: str) -> dict[str, Any]:
    import numpy as np

    from biomed_jax import BertTokenizer, BioGptTokenizer

    cls = BertTokenizer if Path(path, "vocab.txt").exists() else BioGptTokenizer
    return {"ids": np.asarray(cls.from_pretrained(path)("a b ab")["input_ids"])}


def _model_info(path: str) -> None:
    from biomed_jax.cli import model_info

    model_info(path)


def _load_torch_zip(path: str) -> dict[str, Any]:
    from biomed_jax.weights.torch_zip import load_torch_zip

    return load_torch_zip(path)


def _read_safetensors(path: str) -> dict[str, Any]:
    from biomed_jax.weights.io import read_safetensors

    return read_safetensors(path)


CALLS = {
    "from_pretrained": _from_pretrained,
    "config": _config,
    "tokenizer": _tokenizer,
    "model_info": _model_info,
    "load_torch_zip": _load_torch_zip,
    "read_safetensors": _read_safetensors,
}


def _compare(got: dict[str, Any], reference: dict[str, Any]) -> str:
    import numpy as np

    if got.keys() != reference.keys():
        return f"keys differ: {sorted(set(got) ^ set(reference))[:5]}"
    for key, ref in reference.items():
        value = np.asarray(got[key])
        if value.dtype != ref.dtype or value.shape != ref.shape:
            return f"{key}: {value.dtype}{value.shape} != {ref.dtype}{ref.shape}"
        if value.tobytes() != ref.tobytes():
            return f"{key}: values differ"
    return "exact"


def _vm_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def _child(spec_file: str) -> None:
    import resource

    import numpy as np

    import biomed_jax  # noqa: F401  (imported before the limit: it is not what is measured)

    spec = json.loads(Path(spec_file).read_text())
    good = spec["good"]
    with np.load(good["reference"], allow_pickle=False) as f:
        reference = {k: f[k] for k in f.files}
    CALLS[good["call"]](good["path"])  # warm up (first-use compilation) before the limit
    limit = _vm_size() + spec["extra_memory"]
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for case in spec["cases"]:
        start = time.perf_counter()
        try:
            CALLS[case["call"]](case["path"])
            error, message = None, "no error"
        except Exception as e:
            error, message = type(e).__name__, str(e)
        seconds = time.perf_counter() - start
        try:
            verdict = _compare(CALLS[good["call"]](good["path"]), reference)
        except Exception as e:
            verdict = f"good checkpoint failed: {type(e).__name__}: {e}"
        row = {"name": case["name"], "error": error, "message": message, "seconds": seconds}
        print(json.dumps({**row, "good": verdict}), flush=True)


if __name__ == "__main__":
    _child(sys.argv[1])
