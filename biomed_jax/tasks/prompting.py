"""What every BioGPT task shares: the prompt-tuned input, decoding settings, answer extraction.

microsoft/BioGPT fine-tunes with `--task language_modeling_prompt --learned-prompt N`: the model
sees `</s> SOURCE learned1 ... learnedN` and continues with the answer sentence
(`src/language_model_prompt_dataset.py`, `collate` without `--prefix`). `inference.py` decodes
with fairseq's generator (beam 1, nothing longer than the position table, never <pad>) and
writes the whole line: source, prompt and answer, BPE-joined and Moses-detokenized
(`infer.sh`). Each task's `postprocess.py` then strips a final period, cuts everything up to the
last run of learned tokens (or a known phrase) and parses what is left.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from biomed_jax.errors import ConfigError

END_OF_WORD = "</w>"  # our vocabularies mark word-final pieces (fairseq: no "@@")
ELLIPSIS = "..."  # replaces the last kept source token when the source is cut
# Cut-off phrases of every postprocess.py; the first that occurs wins (BC5CDR writes
# "in conclusion ," with Moses' space, the others "in conclusion,").
PREFIXES = (r"(learned[0-9]+ )+", "we can conclude that", "we have that", "in conclusion,")
BC5CDR_PREFIXES = (r"(learned[0-9]+ )+", "in conclusion ,", "we can conclude that", "we have that")


@dataclasses.dataclass(frozen=True)
class TaskSettings:
    """How one fine-tuned checkpoint was trained and is decoded (fairseq's names in brackets).

    learned_prompt: number of soft-prompt tokens appended to the source [--learned-prompt].
    learned_prompt_pattern: their names, pattern + 1..N [--learned-prompt-pattern].
    max_source_positions: longest source in tokens; longer ones keep the first n - 1 and "..."
        [--max-source-positions; fairseq's default 384].
    num_beams: beam size [inference.py --beam, 1 in every infer.sh].
    max_new_tokens: None = as inference.py (--decoding_length 1024): until EOS or the position
        table is full; a number caps the answer (quick runs on random models).
    """

    learned_prompt: int = 9
    learned_prompt_pattern: str = "learned"
    max_source_positions: int = 640
    num_beams: int = 1
    max_new_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.learned_prompt < 0:
            raise ConfigError(f"learned_prompt must be >= 0, got {self.learned_prompt}")
        if self.max_source_positions < 2:
            raise ConfigError(f"max_source_positions must be >= 2, got {self.max_source_positions}")
        if self.num_beams < 1:
            raise ConfigError(f"num_beams must be >= 1, got {self.num_beams}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    def replace(self, **changes: Any) -> TaskSettings:
        """These settings with the non-None `changes` applied."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def with_fairseq_args(self, args: Mapping[str, Any]) -> TaskSettings:
        """These settings updated from a fairseq checkpoint's task arguments (its `args` Namespace
        or `cfg["task"]`, as a mapping): the prompt as the checkpoint was trained with it."""
        if args.get("prefix"):
            raise ConfigError("--prefix prompts (prompt before the source) are not supported")
        if args.get("manual_prompt"):
            raise ConfigError("--manual-prompt checkpoints are not supported")
        return self.replace(
            learned_prompt=args.get("learned_prompt"),
            learned_prompt_pattern=args.get("learned_prompt_pattern"),
            max_source_positions=args.get("max_source_positions"),
        )

    @property
    def prompt_words(self) -> list[str]:
        """fairseq `setup_prompt`: learned1 ... learnedN."""
        return [f"{self.learned_prompt_pattern}{i + 1}" for i in range(self.learned_prompt)]


def word_ids(tokenizer: Any, words: Sequence[str]) -> list[int]:
    """The ids of whole dictionary words (fairseq `encode_line` of symbols, no BPE)."""
    vocab = tokenizer.get_vocab()
    missing = [w for w in words if w + END_OF_WORD not in vocab]
    if missing:
        raise ConfigError(
            f"the tokenizer's vocabulary has no {', '.join(map(repr, missing))} (as "
            f"'{missing[0]}{END_OF_WORD}'); the fine-tuned checkpoints' dictionaries carry the "
            "learned prompt tokens: is this the task's model, and learned_prompt its count?"
        )
    return [vocab[w + END_OF_WORD] for w in words]


def prompt_ids(tokenizer: Any, source: str, settings: TaskSettings) -> list[int]:
    """`</s> SOURCE learned1 ... learnedN` as ids: Moses + BPE of the source, cut to
    `max_source_positions` as `LanguageModelPromptDataset.__getitem__` cuts it."""
    source_ids = tokenizer(source)["input_ids"]
    bos, body = source_ids[:1], source_ids[1:]
    if len(body) > settings.max_source_positions:
        body = [*body[: settings.max_source_positions - 1], *word_ids(tokenizer, [ELLIPSIS])]
    return bos + body + word_ids(tokenizer, settings.prompt_words)


def output_line(tokenizer: Any, ids: Sequence[int]) -> str:
    """The line infer.sh leaves after `sed 's/@@ //g'` and detokenizer.perl: every token but
    BOS/EOS (fairseq `Dictionary.string`), BPE joined, Moses-detokenized."""
    dropped = {tokenizer.eos_token_id, tokenizer.bos_token_id}
    kept = [int(i) for i in ids if int(i) not in dropped]
    return tokenizer.decode(kept, skip_special_tokens=False).strip()


def drop_final_period(line: str) -> str:
    """postprocess.py's first step: strip, then drop one final '.'."""
    line = line.strip()
    return line[:-1] if line.endswith(".") else line


def strip_prefix(line: str, prefixes: Sequence[str] = PREFIXES) -> str:
    """postprocess.py `strip_prefix`: the text after the last match of the first pattern found.

    With a capture group `re.split` also returns the captured text, but never as the last item,
    so the result is the text after the final match, as in the scripts.
    """
    for pattern in prefixes:
        if re.search(pattern, line) is not None:
            return re.split(pattern, line)[-1].strip()
    return line


def answer_text(line: str, prefixes: Sequence[str] = PREFIXES) -> str:
    """The answer part of an output line: final period dropped, source and prompt cut off."""
    return strip_prefix(drop_final_period(line), prefixes)
