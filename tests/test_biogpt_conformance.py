"""Fast subset of the BioGPT conformance suite (the CLI runs the 347M configuration too)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conformance import biogpt as suite


def _assert_all_pass(rows):
    failed = [r for r in rows if not r.passed]
    assert rows and not failed, "\n".join(map(str, failed))


@pytest.mark.parametrize("case", suite.SMALL_CASES, ids=lambda c: c.name)
def test_small_configs_match_transformers(case):
    """Every hidden state, attention map and logits; right and left padding; float32 and bfloat16;
    the cached prefill + one-token steps against the full forward pass."""
    rows = []
    for arch in case.architectures:
        rows += suite.check_architecture(case.name, arch, case.hf_config, ("float32", "bfloat16"))
    _assert_all_pass(rows)
    names = {r.name for r in rows}
    layers = case.hf_config["num_hidden_layers"]
    assert {f"hidden_states[{layers}]", f"attentions[{layers - 1}]", "logits"} <= names
    assert {"cached logits", f"cached hidden_states[{layers}]"} <= names
    assert "jit compilations (prefill + decode step)" in names
    suites = {r.suite for r in rows}
    assert any("left-pad/float32" in s for s in suites)
    assert any("right-pad/bfloat16" in s for s in suites)
    hidden = [r for r in rows if "hidden_states" in r.name]
    assert all(r.ours_err is not None and r.ref_err is not None for r in hidden)  # vs float64


def test_reference_needs_mask_derived_positions_for_left_padding():
    """Why the suite passes position_ids: v5's BioGPT ignores the mask when deriving positions."""
    case = suite.SMALL_CASES[1]
    model = suite._reference("BioGptForCausalLM", case.hf_config, seed=0)
    batch = suite.make_batch(case.hf_config["vocab_size"], "left", length=12)
    valid = batch["attention_mask"].astype(bool)
    with torch.no_grad():
        default = model(
            input_ids=torch.tensor(batch["input_ids"], dtype=torch.long),
            attention_mask=torch.tensor(batch["attention_mask"], dtype=torch.long),
        ).logits.numpy()
    derived = suite._run_reference(model, batch).logits.numpy()
    np.testing.assert_allclose(default[0], derived[0], atol=1e-6)  # unpadded row: same positions
    assert np.abs(default - derived)[valid].max() > 1e-3  # left-padded rows: shifted positions
