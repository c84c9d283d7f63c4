"""Training conformance against PyTorch: losses and every parameter gradient through `transformers`,
and AdamW steps against `torch.optim.AdamW` with the HF Trainer's decay grouping.

Tolerances (float32 on CPU, never relaxed): loss 1e-6 relative; each gradient tensor (one per HF
tensor, so per layer) max |ours - torch| <= 1e-5 * max |torch|; parameters after AdamW steps 1e-6.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from biomed_jax import BertConfig, train
from biomed_jax.loading import ARCHITECTURES, param_template
from biomed_jax.trees import flatten
from biomed_jax.weights.bert_names import bert_name_table
from biomed_jax.weights.formats import in_memory
from biomed_jax.weights.plan import make_plan
from biomed_jax.weights.reader import read_params

LOSS_RTOL = 1e-6
GRAD_RTOL = 1e-5  # of each tensor's largest |gradient|
PARAM_ATOL = 1e-6
# The attention key bias adds q.b_k to every score of a query row, which softmax ignores: its exact
# gradient is 0 and both frameworks return round-off (~1e-13). There we require both sides to be
# round-off: below ZERO_GRAD_RTOL of the model's largest gradient.
ZERO_GRAD_PATHS = ("attention/key/bias",)
ZERO_GRAD_RTOL = 1e-8

SMALL = dict(
    vocab_size=211,
    hidden_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=80,
    max_position_embeddings=40,
)
BASE = dict(
    vocab_size=30522,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    max_position_embeddings=512,
)


def torch_model(arch: str, hf_config: dict, seed: int = 0, **extra):
    torch.manual_seed(seed)
    config = transformers.BertConfig(**hf_config, **extra, attn_implementation="eager")
    return getattr(transformers, arch)(config).eval()  # eval: dropout off


def to_ours(arch: str, model, tensors: dict[str, np.ndarray]) -> tuple:
    """(our module, `tensors` (HF names) mapped onto our parameter tree by the name table)."""
    config = BertConfig.from_dict(model.config.to_dict())
    module = ARCHITECTURES[arch].module(config)
    checkpoint = in_memory(arch, tensors)
    tree = read_params(
        checkpoint, make_plan(checkpoint, bert_name_table(arch), param_template(module))
    )
    return module, tree


def make_batch(
    arch: str, vocab_size: int, num_labels: int, batch: int, length: int, multi_label=False, seed=0
):
    rng = np.random.RandomState(seed)
    ids = rng.randint(0, vocab_size, (batch, length)).astype(np.int32)
    mask = np.ones((batch, length), np.int32)
    mask[1, length - length // 4 :] = 0
    types = np.zeros((batch, length), np.int32)
    types[:, length // 2 :] = 1
    if arch == "BertForTokenClassification":
        labels = rng.randint(0, num_labels, (batch, length)).astype(np.int32)
        labels[mask == 0] = -100
        labels[0, 0] = labels[0, -1] = -100  # special tokens
    elif multi_label:
        labels = (rng.rand(batch, num_labels) > 0.5).astype(np.float32)
    elif num_labels == 1:
        labels = rng.randn(batch).astype(np.float32)
    else:
        labels = rng.randint(0, num_labels, (batch,)).astype(np.int32)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": labels}


def torch_loss_and_grads(model, batch) -> tuple[float, dict[str, np.ndarray]]:
    model.zero_grad()
    labels = torch.tensor(batch["labels"])
    labels = labels.long() if labels.dtype == torch.int32 else labels
    inputs = {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items() if k != "labels"}
    loss = model(**inputs, labels=labels).loss
    loss.backward()
    grads = {k: p.grad.numpy().copy() for k, p in model.named_parameters()}
    return float(loss.detach()), grads


def check_gradients(arch: str, hf_config: dict, batch_size: int, length: int, **extra) -> None:
    model = torch_model(arch, hf_config, **extra)
    multi = extra.get("problem_type") == "multi_label_classification"
    batch = make_batch(
        arch, hf_config["vocab_size"], model.config.num_labels, batch_size, length, multi
    )
    ref_loss, ref_grads = torch_loss_and_grads(model, batch)
    weights = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    module, params = to_ours(arch, model, weights)
    _, ref_tree = to_ours(arch, model, ref_grads)
    del model, weights, ref_grads

    state = train.create_train_state(module, params, train.adamw())
    loss, grads = jax.jit(jax.value_and_grad(lambda p, b: train.compute_loss(state, p, b)))(
        state.params, {k: jnp.asarray(v) for k, v in batch.items()}
    )
    assert abs(float(loss) - ref_loss) <= LOSS_RTOL * abs(ref_loss), (float(loss), ref_loss)

    ours, ref = flatten(jax.device_get(grads)), flatten(ref_tree)
    assert ours.keys() == ref.keys()
    failures = []
    largest = max(np.abs(v).max() for v in ref.values())
    for path, theirs in ref.items():
        mine = np.asarray(ours[path])
        if path.endswith(ZERO_GRAD_PATHS):
            worst = max(np.abs(mine).max(), np.abs(theirs).max())
            if worst > ZERO_GRAD_RTOL * largest:
                failures.append(f"{path}: expected round-off, got {worst:.3g}")
            continue
        # Each tensor (one HF tensor: layers are unrolled) on its own scale.
        scale, diff = np.abs(theirs).max(), np.abs(mine - theirs).max()
        if not (np.isfinite(mine).all() and diff <= GRAD_RTOL * scale):
            failures.append(f"{path}: max diff {diff:.3g}, largest grad {scale:.3g}")
    assert not failures, "\n".join(failures)
    assert any(np.abs(v).max() > 0 for v in ours.values())


@pytest.mark.parametrize(
    "arch, extra",
    [
        ("BertForSequenceClassification", {"num_labels": 3}),
        ("BertForSequenceClassification", {"num_labels": 1}),  # regression
        (
            "BertForSequenceClassification",
            {"num_labels": 4, "problem_type": "multi_label_classification"},
        ),
        ("BertForTokenClassification", {"num_labels": 5}),
    ],
    ids=["single-label", "regression", "multi-label", "token"],
)
def test_small_gradients_match_torch(arch, extra):
    check_gradients(arch, SMALL, 3, 12, **extra)


@pytest.mark.slow
def test_base_size_gradients_match_torch():
    for arch in ("BertForSequenceClassification", "BertForTokenClassification"):
        check_gradients(arch, BASE, 2, 16, num_labels=3)
