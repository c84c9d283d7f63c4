"""What both fine-tuning examples share: arguments, model loading, the training loop, saving."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from biomed_jax import train
from biomed_jax.files import atomic_write_text
from biomed_jax.loading import (
    ARCHITECTURES,
    MissingTokenizer,
    from_pretrained,
    init_params,
)
from biomed_jax.models.config import BertConfig
from biomed_jax.saving import TRAIN_STATE, save_pretrained


def parser(description: str, data_help: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", required=True, help="BERT checkpoint directory (HF or converted)")
    p.add_argument(
        "--random-init",
        action="store_true",
        help="ignore weights: initialize from --model's config.json (needs only it and vocab.txt)",
    )
    p.add_argument("--data", type=Path, required=True, help=data_help)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--accumulation-steps", type=int, default=1)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--remat", action="store_true", help="recompute layer activations in backward")
    p.add_argument("--max-train", type=int, default=None, help="use only this many examples")
    p.add_argument("--max-eval", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--output", type=Path, help="write the fine-tuned model + training state here")
    p.add_argument("--resume", type=Path, help="a train_state.safetensors to continue from")
    p.add_argument("--json", type=Path, help="write the loss curve and metrics as JSON")
    return p


@contextlib.contextmanager
def user_errors(prog: str) -> Iterator[None]:
    """A missing --data file, a malformed record or a bad --model ends the example as one line,
    `prog: error: ...`, with exit status 2 (as `biomed-jax`'s errors do), not a traceback."""
    try:
        yield
    except (OSError, ValueError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def read_jsonl(
    file: Path, check: Callable[[dict[str, Any]], str | None], limit: int | None
) -> list[dict[str, Any]]:
    """The first `limit` (None: all) records of a JSONL file, one JSON object a line; `check`
    returns what is wrong with a record (None: nothing). Errors name the file and line."""
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such file (--data names the directory holding it)")
    records = []
    with open(file, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{file}:{number}: not a JSON object ({e})") from None
            problem = "not a JSON object" if not isinstance(record, dict) else check(record)
            if problem:
                raise ValueError(f"{file}:{number}: {problem}")
            records.append(record)
            if limit is not None and len(records) >= limit:
                break
    return records


def load_model(args: argparse.Namespace, architecture: str, labels: tuple[str, ...], **config):
    """(module, params, tokenizer) for `architecture` with a fresh head of len(labels) outputs."""
    overrides = {"num_labels": len(labels), "id2label": labels, **config}
    if args.random_init:
        from biomed_jax.tokenizers import BertTokenizer

        cfg = BertConfig.from_pretrained(args.model, **overrides)
        module = ARCHITECTURES[architecture].module(cfg)
        return module, init_params(module, args.seed), BertTokenizer.from_pretrained(args.model)
    model = from_pretrained(args.model, architecture=architecture, seed=args.seed, **overrides)
    if isinstance(model.tokenizer, MissingTokenizer):
        raise model.tokenizer.error()
    return model.module, model.params, model.tokenizer


def batches(n: int, batch_size: int, seed: int) -> Iterator[np.ndarray]:
    """Shuffled full batches of row indices (the last partial batch is dropped: one shape)."""
    order = np.random.RandomState(seed).permutation(n)
    for i in range(n // batch_size):
        yield order[i * batch_size : (i + 1) * batch_size]


MIN_BUCKET = 8


def length_bucket(length: int, width: int) -> int:
    """The padded length of a batch whose longest row has `length` tokens: the next power of two,
    at least MIN_BUCKET, at most the data's `width`."""
    return min(width, max(MIN_BUCKET, 1 << max(0, int(length) - 1).bit_length()))


def predict_all(state: train.TrainState, data: dict[str, np.ndarray], batch_size: int):
    """Logits for every row, in input order.

    Rows are sorted by length (the last real token's index) and cut into batches of
    `batch_size` (the last one padded by repeating its last row); each batch is cut to its length
    bucket (`length_bucket`), so a pass compiles a few shapes (8, 16, ..., width) and computes on
    little padding. Only trailing padding is cut; per-token logits come back [N, width, C], zero
    beyond each batch's bucket.
    """
    mask = data["attention_mask"]  # [N, T]
    n, width = mask.shape
    ends = np.where(mask.any(1), width - np.argmax(mask[:, ::-1] != 0, axis=1), 0)  # [N]
    order = np.argsort(-ends, kind="stable")
    out = None
    for start in range(0, n, batch_size):
        real = order[start : start + batch_size]
        rows = np.pad(real, (0, batch_size - len(real)), mode="edge")
        bucket = length_bucket(ends[rows].max(), width)
        batch = {k: v[rows][:, :bucket] for k, v in data.items() if k != "labels"}
        logits = np.asarray(train.predict(state, batch))[: len(real)]
        if out is None:
            shape = (n, width, *logits.shape[2:]) if logits.ndim == 3 else (n, *logits.shape[1:])
            out = np.zeros(shape, logits.dtype)
        if logits.ndim == 3:
            out[real, :bucket] = logits
        else:
            out[real] = logits
    return out


def fit(
    args: argparse.Namespace,
    module: Any,
    params: Any,
    tokenizer: Any,
    train_data: dict[str, np.ndarray],
    evaluate: Callable[[train.TrainState], dict[str, Any]],
) -> dict[str, Any]:
    """Train for args.epochs, evaluating after each epoch; returns the loss curve and metrics.
    With args.output, the model (and `tokenizer`) and the training state are saved there."""
    n = len(train_data["input_ids"])
    if n < args.batch_size:
        raise ValueError(f"{n} training examples is fewer than one batch of {args.batch_size}")
    per_epoch = n // args.batch_size
    updates = max(1, math.ceil(args.epochs * per_epoch / args.accumulation_steps))
    tx = train.create_optimizer(
        args.lr,
        updates,
        warmup_steps=int(args.warmup_ratio * updates),
        weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm,
        accumulation_steps=args.accumulation_steps,
    )
    state = train.create_train_state(
        module,
        params,
        tx,
        dtype=jnp.bfloat16 if args.dtype == "bfloat16" else None,
        gradient_checkpointing=args.remat,
    )
    if args.resume:
        state = train.restore_train_state(args.resume, state)
    done = int(state.step)
    key = jax.random.key(args.seed)
    history: dict[str, Any] = {"loss": [], "eval": [], "train_examples": n}
    window: list[jax.Array] = []
    started, step = time.perf_counter(), 0
    for epoch in range(args.epochs):
        for rows in batches(n, args.batch_size, args.seed + epoch):
            step += 1
            if step <= done:  # resuming: these batches were already seen
                continue
            batch = {k: v[rows] for k, v in train_data.items()}
            state, metrics = train.train_step(state, batch, jax.random.fold_in(key, step))
            window.append(metrics["loss"])
            if step % args.log_every == 0:
                loss = float(np.mean(jax.device_get(window)))
                window = []
                history["loss"].append({"step": step, "loss": loss})
                print(f"step {step:5d}  loss {loss:.4f}  ({time.perf_counter() - started:.0f} s)")
        scores = {"epoch": epoch + 1, "step": step, **evaluate(state)}
        history["eval"].append(scores)
        print(json.dumps(scores))
    history["seconds"] = time.perf_counter() - started
    if args.output:
        save(args.output, module, state, tokenizer)
    if args.json:
        atomic_write_text(args.json, json.dumps(history, indent=2))
    return history


def save(directory: Path, module: Any, state: train.TrainState, tokenizer: Any) -> None:
    """The fine-tuned model in transformers' layout (`save_pretrained`: loaded by ours and by
    transformers' `from_pretrained`) and the training state beside it (TRAIN_STATE, for --resume)."""
    name = type(module).__name__
    save_pretrained(directory, state.params, module.config, architecture=name, tokenizer=tokenizer)
    train.save_train_state(directory / TRAIN_STATE, state)
