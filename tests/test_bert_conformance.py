"""Fast subset of the BERT conformance suite (the CLI runs the full one, base size included)."""

from __future__ import annotations

import pytest

from conformance import bert as suite


def _assert_all_pass(rows):
    failed = [r for r in rows if not r.passed]
    assert rows and not failed, "\n".join(map(str, failed))


@pytest.mark.parametrize("case", suite.SMALL_CASES, ids=lambda c: c.name)
def test_small_configs_match_transformers(case):
    rows = []
    for arch in case.architectures:
        rows += suite.check_architecture(case.name, arch, case.hf_config, ("float32", "bfloat16"))
    _assert_all_pass(rows)
    compared = {r.name for r in rows}
    assert {"hidden_states[0]", "attentions[0]", "logits"} <= compared
    judged = [r for r in rows if r.name != "all outputs finite (incl. fully padded row)"]
    assert all(r.ours_err is not None and r.ref_err is not None for r in judged)  # vs float64
    assert {r.suite.rsplit("/", 1)[1] for r in judged} == {"float32", "bfloat16"}


def test_real_minilm_checkpoint_on_pubmed(minilm_dir):
    rows = suite.check_minilm(("float32",))
    _assert_all_pass(rows)
    assert any(r.name == "hidden_states[6]" for r in rows)


@pytest.mark.slow
def test_base_size_masked_lm_fp32():
    rows = suite.check_architecture(
        "biomedbert-base", "BertForMaskedLM", suite.BASE, ("float32",), length=16
    )
    _assert_all_pass(rows)
    assert any(r.ref_err is not None and r.ref_err > 1e-6 for r in rows)  # the ratio rule decided
