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

from biomed_jax.errors import ConfigError, shown
from biomed_jax.fairseq import MAX_LEARNED_PROMPT
from biomed_jax.validation import INT32_MAX

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
        """Every field's type and range, checked before anything is built from it (a billion
        prompt words, a beam of a million rows): one ConfigError naming every bad field."""
        ranges = {
            "learned_prompt": (0, MAX_LEARNED_PROMPT),
            "max_source_positions": (2, INT32_MAX),
            "num_beams": (1, INT32_MAX),
            "max_new_tokens": (1, INT32_MAX),
        }
        problems = []
        for name, (low, high) in ranges.items():
            value = getattr(self, name)
            if name == "max_new_tokens" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                problems.append(f"{name} must be an int in [{low}, {high}], got {shown(value)}")
        pattern = self.learned_prompt_pattern
        if not isinstance(pattern, str) or len(pattern) > 100 or pattern.split() != [pattern]:
            problems.append(f"learned_prompt_pattern must be a word, got {shown(pattern)}")
        if problems:
            raise ConfigError("task settings: " + "; ".join(problems))

    def replace(self, **changes: Any) -> TaskSettings:
        """These settings with the non-None `changes` applied."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def with_fairseq_args(self, args: Mapping[str, Any]) -> TaskSettings:
        """These settings updated from a fairseq checkpoint's task arguments (its `args` Namespace
        or `cfg["task"]`, as a mapping): the prompt as the checkpoint was trained with it. No
        `learned_prompt` means none (fairseq's default), as the checkpoint's dictionary has it."""
        if args.get("prefix"):
            raise ConfigError("--prefix prompts (prompt before the source) are not supported")
        if args.get("manual_prompt"):
            raise ConfigError("--manual-prompt checkpoints are not supported")
        return self.replace(
            learned_prompt=args.get("learned_prompt") or 0,
            learned_prompt_pattern=args.get("learned_prompt_pattern") or "learned",
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


def _span(words: Sequence[str]) -> str:
    """'learned1..learned9 (9 tokens)', 'learned1 (1 token)', 'none'."""
    if not words:
        return "none"
    names = words[0] if len(words) == 1 else f"{words[0]}..{words[-1]}"
    return f"{names} ({len(words)} token{'s' if len(words) > 1 else ''})"


def learned_prompt_ids(tokenizer: Any, settings: TaskSettings) -> list[int]:
    """The ids of `learned1 ... learnedN`. A tokenizer that knows its model's prompt (fairseq
    checkpoints and their conversions: `tokenizer.prompt_tokens`) is the source of truth; the
    settings must name the same tokens. Other tokenizers: the settings' words looked up whole."""
    own = tuple(getattr(tokenizer, "prompt_tokens", ()))
    if not own:
        return word_ids(tokenizer, settings.prompt_words)
    asked = tuple(w + END_OF_WORD for w in settings.prompt_words)
    if asked != own:
        strip = [t.removesuffix(END_OF_WORD) for t in own]
        raise ConfigError(
            f"the task settings ask for the prompt {_span(settings.prompt_words)}, but the "
            f"checkpoint was trained with {_span(strip)}: leave --learned-prompt (learned_prompt) "
            f"and the prompt pattern at the checkpoint's values"
        )
    return list(tokenizer.prompt_ids)


def prompt_ids(tokenizer: Any, source: str, settings: TaskSettings) -> list[int]:
    """`</s> SOURCE learned1 ... learnedN` as ids: Moses + BPE of the source, cut to
    `max_source_positions` as `LanguageModelPromptDataset.__getitem__` cuts it."""
    source_ids = tokenizer(source)["input_ids"]
    bos, body = source_ids[:1], source_ids[1:]
    if len(body) > settings.max_source_positions:
        body = [*body[: settings.max_source_positions - 1], *word_ids(tokenizer, [ELLIPSIS])]
    return bos + body + learned_prompt_ids(tokenizer, settings)


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
