"""A task's results file: JSONL appended batch by batch, resumable after Ctrl-C or a kill.

`RESULTS.jsonl` holds one JSON object per example (its "id" first); `RESULTS.jsonl.run.json`
beside it records what the results depend on: the task, its settings and the model's
fingerprint (`model_fingerprint`: weights, config, tokenizer). Each batch's lines are written,
flushed and fsynced at once, so a killed run leaves whole lines and at most one partial last
line, which the next run drops. A rerun with the same task, settings and model keeps the lines
there and computes only the missing examples; anything else is refused. When every example is
done the file is rewritten in input order (temporary file + rename), as one uninterrupted run
writes it. A run holds the claim on the file (`biomed_jax.files.owned`, as every output of ours)
while it appends: a second run into the same file is refused, naming the first.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from biomed_jax.files import atomic_write_text, fsync_path, owned

FORMAT = "biomed_jax.task-results/1"


def record_path(path: Path) -> Path:
    """The run record beside a results file."""
    return path.with_name(path.name + ".run.json")


def check_output(output: str | Path, reads: Iterable[str | Path | None]) -> None:
    """Refuse an output (or its run record) that is one of the files the command reads; a
    directory in `reads` (a checkpoint's) stands for every file already in it."""
    output = Path(output)
    for target in (output, record_path(output)):
        for source in (Path(s) for s in reads if s is not None):
            inside = (
                source.is_dir() and target.is_file() and target.parent.resolve() == source.resolve()
            )
            if inside or target.resolve() == source.resolve() or _same_file(target, source):
                raise ValueError(
                    f"--output {output} would overwrite {target if inside else source}, which "
                    "this command reads: choose another output file"
                )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run: the results finished so far are on disk (or already written)."""

    def __init__(self, done: int, total: int, where: str, resumable: bool) -> None:
        super().__init__(done, total, where)
        self.done, self.total, self.where, self.resumable = done, total, where, resumable

    def __str__(self) -> str:
        kept = "kept in" if self.resumable else "written to"
        again = "; rerun the same command to resume" if self.resumable else ""
        return f"interrupted: {self.done} of {self.total} results {kept} {self.where}{again}"


class ResultsFile:
    """An open results file: the results already there (`done`, by id) and `append`."""

    def __init__(self, path: Path, record: dict[str, Any]) -> None:
        self.path = Path(path)
        self.record = {"format": FORMAT, **record}
        self._file = None
        self._claim = contextlib.ExitStack()
        self.done: dict[str, dict[str, Any]] = {}

    def __enter__(self) -> ResultsFile:
        self._claim.enter_context(owned(self.path))  # refused while another run writes it
        try:
            return self._open()
        except BaseException:
            self._claim.close()
            raise

    def _open(self) -> ResultsFile:
        existed = self.path.exists()
        recorded = self._read_record()
        if existed and self.path.stat().st_size and recorded is None:
            raise FileExistsError(
                f"{self.path} exists and is not a results file of biomed-jax task (no "
                f"{record_path(self.path).name} beside it): refusing to overwrite it; choose "
                "another output file or remove it"
            )
        self._file = open(self.path, "a+b")  # noqa: SIM115 (closed in __exit__)
        try:
            self.done = self._read_results()
            if self.done:
                _check_same_run(self.path, recorded, self.record)
            elif recorded != self.record:
                atomic_write_text(record_path(self.path), json.dumps(self.record, indent=2))
            if not existed:
                fsync_path(self.path.parent)
        except BaseException:
            self._file.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._claim.close()

    def _read_record(self) -> dict[str, Any] | None:
        path = record_path(self.path)
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a run record of biomed-jax task ({e})") from None
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise ValueError(f"{path}: not a run record of biomed-jax task ({FORMAT})")
        return record

    def _read_results(self) -> dict[str, dict[str, Any]]:
        """The whole lines in the file, by id; a partial last line (a kill mid-write) is cut off."""
        self._file.seek(0)
        data = self._file.read()
        whole = data[: data.rfind(b"\n") + 1]
        if len(whole) < len(data):
            self._file.truncate(len(whole))
            os.fsync(self._file.fileno())
        done: dict[str, dict[str, Any]] = {}
        for number, line in enumerate(whole.splitlines(), 1):
            try:
                result = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                result = None
            if not isinstance(result, dict) or not isinstance(result.get("id"), str):
                raise ValueError(f"{self.path}:{number}: not a result line of biomed-jax task")
            if result["id"] in done:
                raise ValueError(f"{self.path}:{number}: a second result for id {result['id']!r}")
            done[result["id"]] = result
        return done

    def append(self, results: Sequence[dict[str, Any]]) -> None:
        """Write one batch's lines and make them durable before returning."""
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results)
        self._file.write(text.encode("utf-8"))
        self._file.flush()
        os.fsync(self._file.fileno())

    def finish(self, results: Sequence[dict[str, Any]]) -> None:
        """Replace the file by all the results in input order (same lines, one rename)."""
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results)
        with contextlib.suppress(OSError):
            self._file.flush()
        atomic_write_text(self.path, text)


def _check_same_run(path: Path, recorded: dict[str, Any] | None, record: dict[str, Any]) -> None:
    """Refuse to add to results computed with another task, settings or model."""
    if recorded is None:
        raise ValueError(
            f"{path} holds results but its run record {record_path(path).name} is missing: "
            "choose another output file or remove it"
        )
    if recorded == record:
        return
    changed = [k for k in record.keys() | recorded.keys() if record.get(k) != recorded.get(k)]
    names = []
    for key in sorted(changed):
        if key == "settings" and isinstance(recorded.get(key), dict):
            ours, theirs = record[key], recorded[key]
            names += [
                f"{k} {theirs.get(k)!r} -> {ours.get(k)!r}"
                for k in sorted(ours.keys() | theirs.keys())
                if ours.get(k) != theirs.get(k)
            ]
        elif key == "model_fingerprint":
            names.append("the model (weights, config or tokenizer)")
        else:
            names.append(key)
    raise ValueError(
        f"{path} holds results of another run ({', '.join(names)}): rerun with what it was "
        "computed with, or choose another output file"
    )
