"""transformers' own expectations for the real microsoft/biogpt, shipped as a golden.

transformers' BioGPT integration tests (`tests/models/biogpt/test_modeling_biogpt.py`, marked
slow, run by transformers' CI on the real checkpoint; SOURCE) pin three things, typed in below:
- `test_inference_lm_head_model`: logits[0, :3, :3] for input ids [[2, 4805, 9, 656, 21]]
  ("</s>COVID-19 is"), `assert_close` with rtol = atol = 1e-4;
- `test_biogpt_generation_beam_search`: beam search, 5 beams, min_length 100, max_length 1024,
  early stopping, on "COVID-19 is": the decoded text (special tokens kept);
- `test_batch_generation`: greedy, max_length 20, two prompts left-padded with pad = eos (2), and
  each prompt alone (the shorter one with max_length less its padding): the decoded texts.

`build` writes them into the golden format (`conformance.golden`) as `GOLDEN`; rebuild it with
`python -m conformance.published` (tests check the shipped file equals the build). The values
come with no float64 run: the logits are judged by the test's own bound, generation by the
decoded text, exactly. The golden pins the checkpoint's structure, not its weight hashes
(transformers' test names only the hub id). `check_local` runs it when microsoft/biogpt is in
the local Hugging Face cache and says why it is skipped otherwise; any directory holding the
checkpoint runs it with `biomed-jax conformance --model DIR --golden microsoft/biogpt`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from conformance import corpus, golden
from conformance.report import Row, skipped

SOURCE = (
    "https://github.com/huggingface/transformers/blob/01080c629600d4ff3121446bb4f4a2e240c2cf41/"
    "tests/models/biogpt/test_modeling_biogpt.py"
)
MODEL_ID = "microsoft/biogpt"
GOLDEN = corpus.DATA / "golden-microsoft-biogpt.safetensors"


@dataclasses.dataclass(frozen=True)
class Generation:
    """A generate call and the texts it must decode to."""

    name: str
    input_ids: list[list[int]]
    attention_mask: list[list[int]]
    settings: dict[str, Any]
    texts: list[str]
    skip_special_tokens: bool
    note: str


@dataclasses.dataclass(frozen=True)
class Expectations:
    """Published values for one checkpoint: a logits slice and generated texts."""

    model: str
    structure: dict[str, Any]
    logits_ids: list[list[int]]
    logits_slice: list[list[float]]  # logits[0, :rows, :columns]
    rtol: float
    atol: float
    generations: tuple[Generation, ...]
    source: str


_COVID = [[2, 4805, 9, 656, 21]]  # "</s>COVID-19 is" in BioGPT's vocabulary
_HELLO = [2, 313, 3666, 399, 7, 10241, 4316, 21, 14, 1161]  # "</s>Hello, my dog is a little"
_TODAY = [2, 18538, 7, 174]  # "</s>Today, I"
_BATCH_TEXTS = [
    "Hello, my dog is a little bit bigger than a little bit.",
    "Today, I have a good idea of how to use the information",
]
_PADDING = len(_HELLO) - len(_TODAY)
BIOGPT = Expectations(
    model=MODEL_ID,
    structure={
        "model_type": "biogpt",
        "vocab_size": 42384,
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
        "hidden_act": "gelu",
        "max_position_embeddings": 1024,
        "scale_embedding": True,
    },
    logits_ids=_COVID,
    logits_slice=[
        [-9.5236, -9.8918, 10.4557],
        [-11.0469, -9.6423, 8.1022],
        [-8.8664, -7.8826, 5.5325],
    ],
    rtol=1e-4,
    atol=1e-4,
    generations=(
        Generation(
            "beam5-covid",
            _COVID,
            [[1] * 5],
            {"min_length": 100, "max_length": 1024, "num_beams": 5, "early_stopping": True},
            [
                "</s>COVID-19 is a global pandemic caused by severe acute respiratory syndrome "
                "coronavirus 2 (SARS-CoV-2), the causative agent of coronavirus disease 2019 "
                "(COVID-19), which has spread to more than 200 countries and territories, "
                "including the United States (US), Canada, Australia, New Zealand, the United "
                "Kingdom (UK), and the United States of America (USA), as of March 11, 2020, "
                "with more than 800,000 confirmed cases and more than 800,000 deaths. </s>"
            ],
            False,
            "test_biogpt_generation_beam_search",
        ),
        Generation(
            "greedy-batch-left-padded",
            [_HELLO, [2] * _PADDING + _TODAY],
            [[1] * len(_HELLO), [0] * _PADDING + [1] * len(_TODAY)],
            {"max_length": 20, "pad_token_id": 2},
            _BATCH_TEXTS,
            True,
            "test_batch_generation: batched",
        ),
        Generation(
            "greedy-alone-0",
            [_HELLO],
            [[1] * len(_HELLO)],
            {"max_length": 20},
            _BATCH_TEXTS[:1],
            True,
            "test_batch_generation: first prompt alone",
        ),
        Generation(
            "greedy-alone-1",
            [_TODAY],
            [[1] * len(_TODAY)],
            {"max_length": 20 - _PADDING},
            _BATCH_TEXTS[1:],
            True,
            "test_batch_generation: second prompt alone, max_length less its padding",
        ),
    ),
    source=SOURCE,
)


def build(expect: Expectations, path: str | Path) -> Path:
    """The golden file of `expect`: one forward entry (the logits slice, judged by its absolute
    bound) and one generation entry per generate call (judged by the decoded texts)."""
    ids = np.asarray(expect.logits_ids, np.int32)
    expected = np.asarray(expect.logits_slice, np.float64)  # [rows, columns] of batch row 0
    rows, columns = expected.shape
    arrays = {
        "inputs/right/0/input_ids": ids,
        "inputs/right/0/attention_mask": np.ones_like(ids),
        "forward/right/logits/positions": np.arange(rows, dtype=np.int32),
        "forward/right/logits/columns": np.tile(np.arange(columns, dtype=np.int32), (rows, 1)),
        "forward/right/logits/truth": expected,
    }
    entries = []
    for g in expect.generations:
        prefix = f"generate/{g.name}/0/"
        arrays[prefix + "input_ids"] = np.asarray(g.input_ids, np.int32)
        arrays[prefix + "attention_mask"] = np.asarray(g.attention_mask, np.int32)
        entries.append(
            {
                "name": g.name,
                "settings": g.settings,
                "batches": 1,
                "texts": [g.texts],
                "skip_special_tokens": g.skip_special_tokens,
                "note": g.note,
            }
        )
    header = {
        "checkpoint": {"model": expect.model, "structure": expect.structure, "parameters": None},
        "reference": f"published: {expect.source}",
        "texts": [],
        "settings": {"dtypes": ["float32"], "sides": ["right"], "policy": "fast"},
        "batches": {"right": 1},
        "forward": [
            {
                "name": "logits",
                "side": "right",
                "kind": "logits",
                "width": expect.structure["vocab_size"],
                "atol": expect.atol,
                "rtol": expect.rtol,
            }
        ],
        "generate": entries,
    }
    return golden.write(path, header, arrays)


def local_checkpoint(model_id: str = MODEL_ID, cache_dir: str | Path | None = None) -> Path | None:
    """The checkpoint's snapshot in the local Hugging Face cache, if its weights are there
    (nothing is downloaded)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(model_id, cache_dir=cache_dir, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        return None
    weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    return path if any((path / name).is_file() for name in weights) else None


def check_local(full_size: bool = True, cache_dir: str | Path | None = None) -> list[Row]:
    """The shipped golden on microsoft/biogpt from the local cache, or a row saying why not."""
    from conformance import model

    suite = "microsoft-biogpt/published/float32"
    if not full_size:
        return [skipped(suite, f"--fast ({MODEL_ID} is full size)")]
    path = local_checkpoint(cache_dir=cache_dir)
    if path is None:
        where = cache_dir or "the Hugging Face cache (HF_HUB_CACHE)"
        return [
            skipped(
                suite,
                f"{MODEL_ID} is not in {where}: `hf download {MODEL_ID}` once, or run "
                f"`biomed-jax conformance --model DIR --golden {MODEL_ID}` on a copy",
            )
        ]
    try:
        return model.run(path, golden=GOLDEN).rows
    except golden.GoldenError as e:
        return [Row(suite, "checkpoint", (), math.inf, 0.0, False, str(e))]


GOLDENS = {MODEL_ID: GOLDEN}  # shipped goldens, by the name `--golden` accepts


def cases(
    full_size: bool = True, dtypes: tuple[str, ...] = ("float32",)
) -> list[tuple[str, Callable[[], list[Row]]]]:
    """The `published` group of the suite: microsoft/biogpt against transformers' tests."""
    del dtypes  # the published values are float32
    return [("microsoft-biogpt", functools.partial(check_local, full_size))]


if __name__ == "__main__":
    print(build(BIOGPT, Path(sys.argv[1]) if len(sys.argv) > 1 else GOLDEN))
