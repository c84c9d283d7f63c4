"""Conformance of biomed_jax to PyTorch `transformers`: the suite (`biomed-jax conformance`), and
`check` / `assert_conforms` for any checkpoint, live or from a recorded golden
(docs/conformance.md)."""

from conformance.model import ModelReport, Settings, assert_conforms, check, run
from conformance.report import Row

__all__ = ["ModelReport", "Row", "Settings", "assert_conforms", "check", "run"]
