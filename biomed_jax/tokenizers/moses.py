"""Moses tokenization as BioGPT uses it, fast, with character offsets into the original text.

`MosesPreTokenizer.tokenize(text)` equals sacremoses
`MosesTokenizer(lang).tokenize(text, aggressive_dash_splits=True, escape=True)` token for token. The
regexes, character classes and non-breaking prefixes are sacremoses' own; what changes is how they
run: the rules anchored on one character (``-`` ``,`` ``'``) are tried only where that character
occurs (re.sub's leftmost, non-overlapping scan, replayed exactly), padding is a memoized
`str.translate`, and the prefix rule uses sets instead of rebuilding them per call.

`align(text, tokens)` then walks the original text once and gives every token character its source
span, through XML escaping (``&amp;`` -> ``&``), dash splits (``@-@`` -> ``-``), dropped control
characters and sacremoses' multi-dot markers.
"""

from __future__ import annotations

import re
from itertools import pairwise

import sacremoses

_M = sacremoses.MosesTokenizer
_JUNK = re.compile(r"[\000-\037]")
_DIGITS = re.compile(r"^[0-9]+")
_ESCAPES = {
    "&": "&amp;",
    "|": "&#124;",
    "<": "&lt;",
    ">": "&gt;",
    "'": "&apos;",
    '"': "&quot;",
    "[": "&#91;",
    "]": "&#93;",
}  # sacremoses escape_xml; "&" goes first there, so one simultaneous translate is the same
_ESCAPE_TABLE = str.maketrans(_ESCAPES)
_UNESCAPES = tuple((seq, char) for char, seq in _ESCAPES.items())
_DASH = "@-@"

# (pattern, template, anchor, k): every match of `pattern` has `anchor` at match.start() + k.
_COMMA_RULES = (
    (*_M.COMMA_SEPARATE_1, ",", 1),
    (*_M.COMMA_SEPARATE_2, ",", 0),
    (*_M.COMMA_SEPARATE_3, ",", 1),
)
_APOSTROPHE_RULES = tuple((*rule, "'", 1) for rule in _M.ENGLISH_SPECIFIC_APOSTROPHE)
_TRAILING_DOT_APOSTROPHE = (*_M.TRAILING_DOT_APOSTROPHE, ".'", 0)


def anchored_sub(pattern: re.Pattern, template: str, anchor: str, k: int, text: str) -> str:
    """`pattern.sub(template, text)`, trying matches only where `anchor` sits k characters in."""
    j = text.find(anchor, k)
    if j < 0:
        return text
    out, last = [], 0
    while j >= 0:
        start = j - k
        if start >= last:
            m = pattern.match(text, start)
            if m is not None:
                out.append(text[last:start])
                out.append(m.expand(template))
                last = m.end()
        j = text.find(anchor, j + 1)
    out.append(text[last:])
    return "".join(out)


class _PadTable(dict):
    """`str.translate` table for PAD_NOT_ISALNUM (" \\1 " around every char outside its set)."""

    def __init__(self, keep: frozenset[str]):
        super().__init__()
        self.keep = keep

    def __missing__(self, code: int) -> int | str:
        c = chr(code)
        value = code if c in self.keep or c.isspace() else f" {c} "
        self[code] = value
        return value


class MosesPreTokenizer:
    """sacremoses' English tokenizer with BioGPT's settings (aggressive dash splits, escaping)."""

    def __init__(self, lang: str = "en"):
        if lang != "en":
            raise ValueError(
                f"only the English Moses rules (BioGPT's) are implemented, got {lang!r}"
            )
        self._moses = moses = _M(lang=lang)
        self._alnum = frozenset(moses.IsAlnum)
        self._alpha = frozenset(moses.IsAlpha)
        self._lower = frozenset(moses.IsLower)
        self._prefixes = frozenset(moses.NONBREAKING_PREFIXES)
        self._numeric_prefixes = frozenset(moses.NUMERIC_ONLY_PREFIXES)
        self._pad = _PadTable(self._alnum | frozenset(".'`,-"))

    def tokenize(self, text: str) -> list[str]:
        """The Moses tokens of `text`, escaped (``&`` -> ``&amp;``)."""
        text = " ".join(text.split())  # DEDUPLICATE_SPACE (+ strip, which comes later anyway)
        if _JUNK.search(text):
            text = _JUNK.sub("", text).strip()
        text = text.translate(self._pad)
        if "-" in text:
            text = self._split_dashes(text)
        if ".." in text:
            text = self._moses.replace_multidots(text)
        for rule in _COMMA_RULES:
            text = anchored_sub(*rule, text)
        if "'" in text:
            for rule in _APOSTROPHE_RULES:
                text = anchored_sub(*rule, text)
        tokens = self._split_final_periods(text.split())
        if tokens and tokens[-1].endswith(".'"):
            text = anchored_sub(*_TRAILING_DOT_APOSTROPHE, " ".join(tokens))
        else:
            text = " ".join(tokens)
        if "MULTI" in text:
            text = self._moses.restore_multidots(text)
        return text.translate(_ESCAPE_TABLE).split()

    def _split_dashes(self, text: str) -> str:
        """AGGRESSIVE_HYPHEN_SPLIT: every "-" between two IsAlnum characters becomes " @-@ "."""
        alnum, out, last = self._alnum, [], 0
        j = text.find("-", 1)
        while j >= 0:
            # matches cannot overlap: each consumes [alnum, "-"] and "-" is not alnum
            if j + 1 < len(text) and text[j - 1] in alnum and text[j + 1] in alnum:
                out.append(text[last:j])
                out.append(" @-@ ")
                last = j + 1
            j = text.find("-", j + 1)
        out.append(text[last:])
        return "".join(out)

    def _split_final_periods(self, tokens: list[str]) -> list[str]:
        """sacremoses handles_nonbreaking_prefixes: "word." -> "word ." unless a prefix rule holds."""
        n = len(tokens)
        for i, token in enumerate(tokens):
            if len(token) < 2 or token[-1] != ".":
                continue
            prefix = token[:-1]
            if (
                ("." in prefix and any(c in self._alpha for c in prefix))
                or (prefix in self._prefixes and prefix not in self._numeric_prefixes)
                or (i != n - 1 and tokens[i + 1][0] in self._lower)
            ):
                continue
            if prefix in self._numeric_prefixes and i + 1 < n and _DIGITS.match(tokens[i + 1]):
                continue
            tokens[i] = prefix + " ."
        return tokens


_MULTIDOT_MARKER = _M.MULTIDOT_MARKER


def _skippable(c: str) -> bool:
    return c.isspace() or c <= "\x1f"


def _is_junk(c: str) -> bool:
    return c <= "\x1f" and not c.isspace()


def align(text: str, tokens: list[str]) -> list[tuple[int, tuple[tuple[int, int], ...] | None]]:
    """Where each Moses token of `text` comes from.

    One entry per token: (start, None) when the token is `text[start:start + len(token)]`
    verbatim, else (start, spans) with one (start, end) source span per token character (an
    escape sequence's characters all point at the one character it stands for).
    """
    out = []
    p, n = 0, len(text)
    for token in tokens:
        while p < n and _skippable(text[p]):
            p += 1
        if "&" not in token and text.startswith(token, p):
            out.append((p, None))
            p += len(token)
            continue
        if token == _DASH:  # a split "-"
            _expect(text, p, "-", token)
            out.append((p, ((p, p + 1),) * 3))
            p += 1
            continue
        start, spans, i = p, [], 0
        while i < len(token):
            while p < n and _is_junk(text[p]):
                p += 1  # ASCII_JUNK, dropped inside a token
            c = token[i]
            if c == "&":
                seq, char = next((s, ch) for s, ch in _UNESCAPES if token.startswith(s, i))
                _expect(text, p, char, token)
                spans += [(p, p + 1)] * len(seq)
                p += 1
                i += len(seq)
            elif p < n and text[p] == c:
                spans.append((p, p + 1))
                p += 1
                i += 1
            elif c == "." and (dots := _marker_dots(text, p)):
                spans += dots
                p = dots[-1][1]
                i += len(dots)
            else:
                _expect(text, p, c, token)
        out.append((start, tuple(spans)))
    return out


def _marker_dots(text: str, p: int) -> list[tuple[int, int]]:
    """Spans of the dots that sacremoses' restore_multidots makes of a literal "DOT..MULTI" at p
    (control characters inside it were deleted before); [] if there is none."""
    letters, where = [], []
    while p < len(text) and (text[p] in "DOTMULI" or _is_junk(text[p])):
        if not _is_junk(text[p]):
            letters.append(text[p])
            where.append(p)
        p += 1
    m = _MULTIDOT_MARKER.match("".join(letters))
    if m is None:
        return []
    bounds = [where[3 * d] for d in range((m.end() - 5) // 3)] + [where[m.end() - 1] + 1]
    return list(pairwise(bounds))


def _expect(text: str, p: int, char: str, token: str) -> None:
    if p >= len(text) or text[p] != char:
        raise AssertionError(f"cannot align Moses token {token!r} at {p} of {text!r}")
