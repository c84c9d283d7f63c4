"""`biomed-jax task` as a long job: results streamed batch by batch, Ctrl-C and kills at random
points, resumed runs equal to an uninterrupted one, refusals (other settings or model, an output
that is an input, a foreign file, a second writer), and per-row decoding lengths inside a batch.

The model is a tiny fairseq BioGPT (tests/_fairseq_models.py: D=32, 2 layers, 64 positions, a
57-word dictionary, `--learned-prompt 1`) whose random weights never emit EOS, so every row
decodes until the position table is full: rows of one batch stop at different lengths.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from _fairseq_models import WORDS, write_model_dir
from conftest import REPO

from biomed_jax import from_pretrained
from biomed_jax.cli import main
from biomed_jax.errors import OutputBusyError
from biomed_jax.tasks import generate_answers, get_task, prompt_ids, run_task, task_settings
from biomed_jax.tasks.results import Interrupted, ResultsFile, record_path

pytest.importorskip("sacremoses")

POSITIONS = 64
VOCAB = [*WORDS, "..."]  # "..." replaces the end of a source cut at max_source_positions
LEARNED = 1  # dc-hoc's --learned-prompt
SOURCE_LIMIT = ["--max-source-positions", "24"]


def write_model(directory: Path, seed: int = 0) -> Path:
    """checkpoint.pt + dict.txt + bpecodes of a prompt-tuned tiny BioGPT (dc-hoc's prompt)."""
    return write_model_dir(
        directory, (32, 2, 4, 64, POSITIONS), words=VOCAB, learned=LEARNED, seed=seed
    )


def write_hoc(path: Path, count: int, seed: int = 0) -> Path:
    """`text<TAB>labels` lines of 2 to 20 words (lengths mixed, so batches mix them)."""
    rng = random.Random(seed)
    words = ["the", "thing", "in", "a", "cat", "sat", "on", "mat", "4", "2"]
    lines = [
        " ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) + "\tempty"
        for _ in range(count)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tiny_task_model")
    write_model(directory)
    return directory


@pytest.fixture(scope="module")
def model(model_dir):
    return from_pretrained(model_dir)


@pytest.fixture
def hoc(tmp_path) -> Path:
    return write_hoc(tmp_path / "hoc.tsv", 12)


def _settings(model, **overrides):
    return task_settings("dc-hoc", model, max_source_positions=24, **overrides)


def test_batched_rows_stop_at_their_own_length_as_alone(model, hoc):
    """No cap: each row decodes to the position table, whatever its batch (fairseq's per-row
    limit) and without a second pass; batch 4 gives what batch 1 gives."""
    settings = _settings(model)
    examples = get_task("dc-hoc").load(hoc).examples
    alone = generate_answers(model, examples, settings, batch_size=1)
    batched = generate_answers(model, examples, settings, batch_size=4)
    assert batched == alone
    prompts = [prompt_ids(model.tokenizer, e.source, settings) for e in examples]
    assert len({len(p) for p in prompts}) > 3  # batches mix prompt lengths
    for prompt, ids in zip(prompts, batched):
        assert ids[: len(prompt)] == prompt
        assert len(ids) == POSITIONS  # no EOS from this model: every row fills the table


def test_results_are_streamed_per_batch_and_resumed(model, hoc, tmp_path):
    out = tmp_path / "out.jsonl"
    settings = _settings(model, max_new_tokens=3)
    written: list[int] = []

    class Counting(ResultsFile):
        def append(self, results):
            super().append(results)
            written.append(len(out.read_text().splitlines()))  # durable after each batch

    import biomed_jax.tasks.runner as runner

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "ResultsFile", Counting)
        reference, summary = run_task(
            "dc-hoc", model, hoc, settings=settings, batch_size=4, output=out
        )
    assert written == [4, 8, 12]
    full = out.read_text(encoding="utf-8")
    assert [json.loads(line) for line in full.splitlines()] == reference  # input order at the end
    assert json.loads(record_path(out).read_text())["settings"]["max_new_tokens"] == 3

    # a kill after 5 lines and half of the sixth: the partial line is dropped, the rest kept
    lines = full.splitlines(keepends=True)
    out.write_text("".join(lines[:5]) + lines[5][:17], encoding="utf-8")
    computed = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "decode_batches", _recording(runner.decode_batches, computed))
        resumed, again = run_task("dc-hoc", model, hoc, settings=settings, batch_size=4, output=out)
    assert sum(computed) == 12 - 5  # only the missing examples were decoded
    assert out.read_text(encoding="utf-8") == full and resumed == reference and again == summary


def _recording(decode_batches, computed):
    def wrapped(pretrained, prompts, settings, batch_size):
        computed.append(len(prompts))
        yield from decode_batches(pretrained, prompts, settings, batch_size)

    return wrapped


def test_ctrl_c_keeps_the_finished_batches(model, hoc, tmp_path):
    import biomed_jax.tasks.runner as runner

    out = tmp_path / "out.jsonl"
    settings = _settings(model, max_new_tokens=2)

    def interrupted_after_two(pretrained, prompts, settings, batch_size):
        for k, batch in enumerate(decode(pretrained, prompts, settings, batch_size)):
            if k == 2:
                raise KeyboardInterrupt
            yield batch

    decode = runner.decode_batches
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "decode_batches", interrupted_after_two)
        with pytest.raises(Interrupted) as caught:
            run_task("dc-hoc", model, hoc, settings=settings, batch_size=4, output=out)
    assert str(caught.value) == (
        f"interrupted: 8 of 12 results kept in {out}; rerun the same command to resume"
    )
    assert len(out.read_text().splitlines()) == 8


def test_a_rerun_with_other_settings_or_model_is_refused(model, hoc, tmp_path):
    out = tmp_path / "out.jsonl"
    settings = _settings(model, max_new_tokens=2)
    run_task("dc-hoc", model, hoc, settings=settings, limit=2, output=out)
    before = out.read_bytes()
    with pytest.raises(ValueError, match=r"another run \(max_new_tokens 2 -> 3\)"):
        run_task("dc-hoc", model, hoc, settings=_settings(model, max_new_tokens=3), output=out)
    other = from_pretrained(write_model(tmp_path / "other", seed=1).parent)
    with pytest.raises(ValueError, match=r"another run \(the model \(weights"):
        run_task("dc-hoc", other, hoc, settings=settings, output=out)
    assert out.read_bytes() == before
    # another input under the same ids: refused, naming the id
    write_hoc(hoc, 12, seed=1)
    with pytest.raises(ValueError, match=r"result for id '1' was computed from another source"):
        run_task("dc-hoc", model, hoc, settings=settings, output=out)
    assert out.read_bytes() == before


def test_outputs_that_are_read_or_foreign_are_refused(model_dir, hoc, tmp_path, capsys):
    base = ["task", "dc-hoc", "--model", str(model_dir / "checkpoint.pt"), "--input", str(hoc)]
    base += ["--max-new-tokens", "2", "--quiet", *SOURCE_LIMIT]
    original = hoc.read_bytes()
    for target in (hoc, model_dir / "dict.txt", model_dir / "checkpoint.pt"):
        before = target.read_bytes()
        assert main([*base, "--output", str(target)]) == 2
        err = capsys.readouterr().err
        assert f"--output {target} would overwrite {target}, which this command reads" in err
        assert target.read_bytes() == before
    link = tmp_path / "link.tsv"
    link.hardlink_to(hoc)
    assert main([*base, "--output", str(link)]) == 2
    assert f"would overwrite {hoc}" in capsys.readouterr().err
    assert hoc.read_bytes() == original
    mine = tmp_path / "mine.jsonl"
    mine.write_text("a user's own lines\n")
    assert main([*base, "--output", str(mine)]) == 2
    assert "exists and is not a results file of biomed-jax task" in capsys.readouterr().err
    assert mine.read_text() == "a user's own lines\n"


def test_a_second_writer_is_refused(model, hoc, tmp_path):
    out = tmp_path / "out.jsonl"
    settings = _settings(model, max_new_tokens=2)
    run_task("dc-hoc", model, hoc, settings=settings, limit=1, output=out)
    record = json.loads(record_path(out).read_text())
    record.pop("format")
    holding, release = threading.Event(), threading.Event()

    def other_run() -> None:  # another writer (a thread here; a process is refused alike)
        with ResultsFile(out, record):
            holding.set()
            release.wait(60)

    other = threading.Thread(target=other_run)
    other.start()
    try:
        assert holding.wait(60)
        with pytest.raises(OutputBusyError, match=rf"pid {os.getpid()}"):
            run_task("dc-hoc", model, hoc, settings=settings, output=out)
    finally:
        release.set()
        other.join()


def test_only_relation_extraction_reports_skipped_documents(model, tmp_path):
    def record(relations):
        return {"title": "the cat", "abstract": "sat on the mat", "relations": relations,
                "chemical2id": {"cat": "D1"}, "disease2id": {"mat": "D2"}}  # fmt: skip

    relation = {"chemical": "D1", "disease": "D2"}
    (tmp_path / "t.json").write_text(json.dumps({"1": record([relation]), "2": record([])}))
    settings = task_settings("re-bc5cdr", model, max_source_positions=24, max_new_tokens=2)
    _, summary = run_task("re-bc5cdr", model, tmp_path / "t.json", settings=settings)
    assert summary["skipped_without_gold_relations"] == 1 and summary["examples"] == 1
    settings = _settings(model, max_new_tokens=2)
    hoc = write_hoc(tmp_path / "hoc.tsv", 2)
    assert (
        "skipped_without_gold_relations" not in run_task("dc-hoc", model, hoc, settings=settings)[1]
    )


# ---- the CLI killed at random points ---------------------------------------------------------

DEFAULT_SIGINT = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
CLI = DEFAULT_SIGINT + "import sys; from biomed_jax.cli import main; sys.exit(main(sys.argv[1:]))"


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CLI, *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


@pytest.mark.slow  # ~1 min on a loaded 2-core machine: 6 CLI processes
def test_cli_killed_at_random_points_resumes_to_the_uninterrupted_result(model_dir, tmp_path):
    """SIGKILL and SIGINT (Ctrl-C) at random moments: while loading, and after random numbers of
    results (mid-batch); each rerun resumes; the final file is byte for byte the uninterrupted
    run's, its summary the same, and every line ever on disk is one of its lines."""
    count = 24
    hoc = write_hoc(tmp_path / "hoc.tsv", count, seed=3)
    env = {
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "BIOMED_JAX_COMPILATION_CACHE": str(tmp_path / "xla"),
        "XLA_FLAGS": "",
    }
    args = ["task", "dc-hoc", "--model", str(model_dir), "--input", str(hoc), *SOURCE_LIMIT]
    args += ["--batch-size", "2"]
    reference = tmp_path / "reference.jsonl"
    done = _start([*args, "--output", str(reference)], env)
    out, err = done.communicate(timeout=600)
    assert done.returncode == 0, err
    summary = json.loads(out.splitlines()[-1])
    expected = reference.read_text(encoding="utf-8")
    expected_lines = set(expected.splitlines())

    target = tmp_path / "resumed.jsonl"
    rng = random.Random(31)
    after = sorted(rng.sample(range(1, count - 2), 3))  # kill once this many results are on disk
    kills = [(signal.SIGKILL, None), *zip((signal.SIGINT, signal.SIGKILL, signal.SIGINT), after)]
    for how, results in kills:
        process = _start([*args, "--output", str(target)], env)
        if results is None:  # while importing, loading or compiling
            time.sleep(rng.uniform(0.5, 2.5))
        else:  # once this process wrote a batch (its Ctrl-C handler is in place by then)
            deadline, at_start = time.monotonic() + 300, _lines(target)
            while _lines(target) < max(results, at_start + 1) and process.poll() is None:
                assert time.monotonic() < deadline
                time.sleep(0.005)
        process.send_signal(how)
        out, err = process.communicate(timeout=300)
        assert process.returncode == (130 if how == signal.SIGINT else -signal.SIGKILL), err
        if how == signal.SIGINT:
            assert "Traceback" not in err, err
            assert err.strip().splitlines()[-1].startswith("biomed-jax task: interrupted"), err
        kept = target.read_text(encoding="utf-8") if target.exists() else ""
        whole = kept[: kept.rfind("\n") + 1]
        assert set(whole.splitlines()) <= expected_lines  # only finished, correct lines
        assert len(whole.splitlines()) < count
    process = _start([*args, "--output", str(target)], env)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    assert target.read_text(encoding="utf-8") == expected
    assert json.loads(out.splitlines()[-1]) == summary
