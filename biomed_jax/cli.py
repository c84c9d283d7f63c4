"""`biomed-jax`: convert, inspect and run BiomedBERT / BioGPT from the command line.

JAX's persistent compilation cache is on by default (in the user cache dir, see
`biomed_jax.hub.cache_root`), so a second run of the same command does not compile again. Turn it
off with `--no-compilation-cache` or BIOMED_JAX_COMPILATION_CACHE=off; point it elsewhere with
BIOMED_JAX_COMPILATION_CACHE=DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

COMPILATION_CACHE_ENV = "BIOMED_JAX_COMPILATION_CACHE"
_OFF = ("0", "off", "false", "no", "")


def compilation_cache_dir() -> Path | None:
    """Where the CLI keeps compiled XLA programs, or None when turned off by the environment."""
    value = os.environ.get(COMPILATION_CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in _OFF else Path(value).expanduser()
    from biomed_jax.hub import cache_root

    return cache_root() / "xla"


def enable_compilation_cache(directory: Path) -> None:
    """Persist every compiled program (even quick ones: small models compile in well under 1 s)."""
    import jax

    directory.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


# ---------------------------------------------------------------------------------------------
# Subcommands


def cmd_convert(args: argparse.Namespace) -> int:
    from biomed_jax.hub import resolve
    from biomed_jax.loading import convert
    from biomed_jax.progress import progress_bar

    fairseq_file = Path(args.src).suffix == ".pt"  # a fairseq checkpoint file, not a directory
    with progress_bar(2, enabled=not args.quiet, unit="step") as bar:
        bar.set_description("resolve")
        src = (
            Path(args.src)
            if fairseq_file
            else resolve(args.src, revision=args.revision, cache_dir=args.cache_dir).path
        )
        bar.update()
        bar.set_description("convert")
        dst = convert(src, args.dst, architecture=args.architecture, to=args.to)
        bar.update()
    print(f"converted {args.src} -> {dst}")
    return 0


def _checkpoint_dtypes(directory: Path) -> list[str]:
    """The tensor dtypes stored in the checkpoint's weight files (headers only for safetensors)."""
    from biomed_jax.weights.formats import open_checkpoint

    with open_checkpoint(directory) as checkpoint:
        return sorted({str(file.dtype(key)) for key, file in checkpoint.owner.items()})


def model_info(
    name_or_path: str, revision: str | None = None, cache_dir: str | None = None
) -> dict:
    """Architecture, parameter count, dtype and files of a checkpoint (no weights are loaded,
    except from a fairseq `.pt`, which is read whole: its arguments are inside the pickle)."""
    from biomed_jax import fairseq
    from biomed_jax.hub import resolve
    from biomed_jax.loading import build, is_converted, read_config_json

    fairseq_files = fairseq.find_files(name_or_path)
    if fairseq_files is not None:
        return _fairseq_info(fairseq_files)
    directory = resolve(name_or_path, revision=revision, cache_dir=cache_dir).path
    hf_config = read_config_json(directory)
    config, module = build(directory)
    name = config.architectures[0]
    files = sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))
    return {
        "path": str(directory),
        "format": "biomed_jax" if is_converted(directory) else "huggingface",
        "architecture": name,
        "model_type": hf_config.get("model_type"),
        "parameters": _parameter_count(module),
        "dtype": _checkpoint_dtypes(directory),
        "files": {p.name: p.stat().st_size for p in files},
    }


def _parameter_count(module) -> int:
    import numpy as np

    from biomed_jax.loading import param_template
    from biomed_jax.trees import flatten

    return sum(int(np.prod(v.shape)) for v in flatten(param_template(module)).values())


def _fairseq_info(files) -> dict:
    """`model_info` of a fairseq BioGPT checkpoint: read whole (the pickle holds the arguments),
    checked as `from_pretrained` checks it, plus the task's stored prompt and source limit."""
    from biomed_jax import fairseq
    from biomed_jax.loading import ARCHITECTURES

    model = fairseq.read_model(files)
    name = model.config.architectures[0]
    arch = ARCHITECTURES[name]
    task = model.args.task
    return {
        "path": str(files.checkpoint),
        "format": "fairseq",
        "architecture": name,
        "model_type": model.config.model_type,
        "parameters": _parameter_count(arch.module(model.config)),
        # fairseq's `*.version` entries are bookkeeping, not weights
        "dtype": sorted(
            {str(v.dtype) for k, v in model.state_dict.items() if not k.endswith(".version")}
        ),
        "files": {
            p.name: p.stat().st_size for p in (files.checkpoint, files.dict_file, files.bpecodes)
        },
        "fairseq_task": {
            "name": _stored(task.get("_name") or task.get("task")),
            "prompt_tokens": list(model.args.prompt_words),
            "max_source_positions": _stored(task.get("max_source_positions")),
        },
    }


def _stored(value: object) -> object:
    """A stored fairseq argument for display: numbers as they are, anything else cut short (a
    file may store a huge value where a name is expected)."""
    from biomed_jax.errors import cut, shown

    if value is None or isinstance(value, bool | int | float):
        return value
    return cut(value) if isinstance(value, str) else shown(value)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def cmd_info(args: argparse.Namespace) -> int:
    info = model_info(args.model, args.revision, args.cache_dir)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"path:         {info['path']}")
    print(f"format:       {info['format']}")
    print(f"architecture: {info['architecture']} (model_type {info['model_type']})")
    print(f"parameters:   {info['parameters']:,}")
    print(f"dtype:        {', '.join(info['dtype'])}")
    if "fairseq_task" in info:
        task = info["fairseq_task"]
        prompt = " ".join(task["prompt_tokens"]) or "none"
        print(f"fairseq task: {task['name']} (prompt: {prompt}; ", end="")
        print(f"max_source_positions {task['max_source_positions']})")
    print("files:")
    for name, size in info["files"].items():
        print(f"  {name:<32} {_size(size):>10}")
    return 0


def _model_option(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--model", help=f"hub id or directory (default: {default})")


def cmd_fill_mask(args: argparse.Namespace) -> int:
    from biomed_jax.pipelines import fill_mask

    result = fill_mask(args.text, top_k=args.top_k, model=args.model)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    per_mask = [result] if result and isinstance(result[0], dict) else result
    for k, candidates in enumerate(per_mask):
        if len(per_mask) > 1:
            print(f"mask {k + 1}:")
        for c in candidates:
            print(f"  {c['score']:.4f}  {c['token_str']:<16} {c['sequence']}")
    return 0


def _layers(text: str) -> int | list[int]:
    values = [int(v) for v in text.split(",")]
    return values[0] if len(values) == 1 else values


def init_distributed(args: argparse.Namespace) -> None:
    """`jax.distributed.initialize` with the given flags (the rest auto-detected: TPU pods, SLURM,
    Open MPI, ...), when --distributed or any of its flags is set; before any other JAX call."""
    given = {
        "coordinator_address": args.coordinator,
        "num_processes": args.num_processes,
        "process_id": args.process_id,
    }
    given = {k: v for k, v in given.items() if v is not None}
    if not (args.distributed or given):
        return
    count, rank = args.num_processes, args.process_id
    if count is not None and count < 1:
        raise ValueError(f"--num-processes must be positive, got {count}")
    if rank is not None and (rank < 0 or (count is not None and rank >= count)):
        raise ValueError(
            f"--process-id must be in 0..{'N' if count is None else count}-1, got {rank}"
        )
    import jax

    jax.distributed.initialize(**given)


def local_devices(count: int | None) -> list | None:
    """The first `count` of this process's devices (None: let the pipeline take all)."""
    if count is None:
        return None
    import jax

    available = jax.local_devices()
    if not 1 <= count <= len(available):
        raise ValueError(f"--devices must be in 1..{len(available)} (local devices), got {count}")
    return available[:count]


JSONL_SUFFIXES = (".jsonl", ".ndjson")


def check_embed_input(path: Path, field: str | None) -> None:
    """JSONL input needs --field: refuse to embed raw JSON lines, naming the fields found."""
    if field is not None or not path.is_file():
        return  # a missing file: the pipeline says so
    with open(path, "rb") as f:
        first = f.readline(1 << 20)
    try:
        record = json.loads(first.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        record = None  # not UTF-8: the pipeline names the line
    if not isinstance(record, dict) and path.suffix.lower() not in JSONL_SUFFIXES:
        return  # a text file: one document per line
    found = (
        f"fields in its first line: {', '.join(record) or 'none'}"
        if isinstance(record, dict)
        else "its first line is not a JSON object"
    )
    raise ValueError(f"{path} is JSONL: pass --field NAME for the text ({found})")


def cmd_embed(args: argparse.Namespace) -> int:
    check_embed_input(Path(args.input), args.field)
    init_distributed(args)
    from biomed_jax.pipelines import embed_file

    manifest = embed_file(
        args.input,
        args.output,
        field=args.field,
        model=args.model,
        shard_size=args.shard_size,
        fmt=args.format,
        progress=not args.quiet,
        layers=args.layers,
        pooling=args.pooling,
        batch_size=args.batch_size,
        max_length=args.max_length,
        stride=args.stride,
        devices=local_devices(args.devices),
    )
    where = (
        f" (process {manifest['process_index']}, from document {manifest['first_document']})"
        if "process_index" in manifest
        else ""
    )
    print(
        f"{manifest['num_documents']} documents in {manifest['num_shards']} shards{where}: "
        f"{args.output}"
    )
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from biomed_jax.pipelines import generate_text

    texts = generate_text(
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        num_beams=args.num_beams,
        do_sample=args.do_sample,
        model=args.model,
        seed=args.seed,
        num_return_sequences=args.num_return_sequences,
        **({"min_length": args.min_length} if args.min_length else {}),
        **({"early_stopping": True} if args.early_stopping else {}),
    )
    for text in [texts] if isinstance(texts, str) else texts:
        print(text)
    return 0


def cmd_attention(args: argparse.Namespace) -> int:
    from biomed_jax.pipelines import attention, plot_attention

    if args.png:
        from biomed_jax.extras import require

        require("matplotlib")  # before loading the model

    result = attention(args.text, layers=args.layers, heads=args.heads, model=args.model)
    if args.png:
        print(f"wrote {plot_attention(result, args.png)}")
    if args.json or not args.png:
        out = {**result, "attentions": result["attentions"].round(6).tolist()}
        print(json.dumps(out) if args.json else _attention_summary(result))
    return 0


def _attention_summary(result: dict) -> str:
    """For each chosen layer and head: the token each token attends to most."""
    tokens, maps = result["tokens"], result["attentions"]
    lines = [" ".join(tokens)]
    for li, layer in enumerate(result["layers"]):
        for hi, head in enumerate(result["heads"]):
            top = maps[li, hi].argmax(-1)
            pairs = ", ".join(f"{t}->{tokens[j]}" for t, j in zip(tokens, top))
            lines.append(f"layer {layer} head {head}: {pairs}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Parser


def cmd_task(args: argparse.Namespace) -> int:
    """A BioGPT task on the repo's data file: JSONL results (--output, resumable; else stdout),
    summary JSON (stdout, or stderr when stdout carries the results)."""
    from biomed_jax.extras import require
    from biomed_jax.loading import from_pretrained
    from biomed_jax.tasks import get_task, run_task, task_settings
    from biomed_jax.tasks.results import check_output

    require("sacremoses")  # BioGPT's tokenizer: say so before loading the model
    task = get_task(args.task)
    for option, owner in (("gold", "pubmedqa"), ("entities", "re-bc5cdr")):
        if getattr(args, option) and task.name != owner:
            raise ValueError(f"--{option} applies to {owner} only")
    if args.output:  # before the model loads: never overwrite what this command reads
        model = Path(args.model)
        beside = model.parent if model.is_file() else None  # a fairseq .pt: dict.txt, bpecodes
        check_output(args.output, [args.input, args.gold, args.entities, model, beside])
    score_options = {}
    if args.entities:  # checked before the model loads and the examples run
        from biomed_jax.tasks.relation_extraction import check_entities

        with open(args.entities, encoding="utf-8") as f:
            score_options["entities"] = check_entities(json.load(f))
    pretrained = from_pretrained(args.model)
    settings = task_settings(
        task,
        pretrained,
        learned_prompt=args.learned_prompt,
        max_source_positions=args.max_source_positions,
        num_beams=args.beam,
        max_new_tokens=args.max_new_tokens,
    )
    load_options = {"gold_file": Path(args.gold)} if args.gold else {}
    _, summary = run_task(
        task,
        pretrained,
        args.input,
        settings=settings,
        batch_size=args.batch_size,
        limit=args.limit,
        load_options=load_options,
        score_options=score_options,
        output=args.output or sys.stdout,
        progress=not args.quiet,
    )
    print(json.dumps(summary), file=sys.stdout if args.output else sys.stderr)
    return 0


def _add_task_parser(sub: argparse._SubParsersAction) -> None:
    from biomed_jax.tasks import TASKS

    p = sub.add_parser(
        "task", help="run a fine-tuned BioGPT on a paper task's data file and score it"
    )
    p.add_argument("task", choices=sorted(TASKS), metavar="TASK", help=", ".join(sorted(TASKS)))
    p.add_argument(
        "--model",
        required=True,
        help="the task's fine-tuned checkpoint: directory, or fairseq .pt (whose stored arguments "
        "give the prompt and source limit)",
    )
    p.add_argument("--input", required=True, help="the repo's test file (test.json / .tsv)")
    p.add_argument(
        "--output",
        help="results JSONL, written batch by batch; a rerun resumes (default: stdout, not "
        "resumable)",
    )
    p.add_argument("--gold", help="pubmedqa: test_ground_truth.json (default: final_decision)")
    p.add_argument("--entities", help="re-bc5cdr: name -> id maps (default: from the input)")
    p.add_argument(
        "--learned-prompt",
        type=int,
        help="soft-prompt tokens (default: fairseq's stored, else the task's)",
    )
    p.add_argument(
        "--max-source-positions",
        type=int,
        help="source token limit (default: fairseq's stored, else the task's)",
    )
    p.add_argument("--beam", type=int, help="beam size (default 1, as the repo's infer.sh)")
    p.add_argument("--max-new-tokens", type=int, help="cap the answer (default: no cap)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--limit", type=int, help="only the first N examples")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_task)


def _add_hub_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--revision", help="hub revision (branch, tag or commit); default main")
    p.add_argument("--cache-dir", help="Hugging Face hub cache directory (default: HF_HOME's)")


def _add_distributed_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "multi-host",
        "run the same command on every host: each embeds its own block of the documents and "
        "writes its own process-NNNNN-* files",
    )
    g.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() (auto-detected on TPU pods, SLURM, Open MPI)",
    )
    g.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address (implies it)")
    g.add_argument("--num-processes", type=int, metavar="N", help="processes in all (implies it)")
    g.add_argument("--process-id", type=int, metavar="I", help="this one's rank (implies it)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="biomed-jax", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--no-compilation-cache",
        action="store_true",
        help=f"do not use JAX's persistent compilation cache (also: {COMPILATION_CACHE_ENV}=off)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "convert", help="convert an HF (directory or hub id) or fairseq BioGPT checkpoint"
    )
    p.add_argument(
        "src",
        metavar="SRC",
        help="HF checkpoint directory or hub id, or a fairseq BioGPT checkpoint (.pt file, or "
        "its directory with dict.txt and bpecodes)",
    )
    p.add_argument("dst", metavar="DST", help="output directory")
    p.add_argument("--architecture", help="module class (default: from config.json)")
    p.add_argument(
        "--to",
        choices=("biomed_jax", "hf"),
        default="biomed_jax",
        help="output layout: ours (default) or transformers' (its AutoModel*.from_pretrained "
        "reads it), every architecture",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_hub_options(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("info", help="architecture, parameter count, dtype and files of a model")
    p.add_argument(
        "model",
        metavar="MODEL",
        help="directory (HF, converted or fairseq), fairseq .pt file, or hub id",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_hub_options(p)
    p.set_defaults(func=cmd_info)

    enc, dec = "the BiomedBERT default", "microsoft/biogpt"
    p = sub.add_parser("fill-mask", help="top-k tokens for each [MASK] in TEXT")
    p.add_argument("text", metavar="TEXT")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print HF-style JSON")
    _model_option(p, enc)
    p.set_defaults(func=cmd_fill_mask)

    p = sub.add_parser(
        "embed", help="embed a text file (one document per line) or JSONL into sharded files"
    )
    p.add_argument(
        "input", metavar="INPUT", help="text file (a document a line), or JSONL with --field"
    )
    p.add_argument("output", metavar="OUTPUT_DIR", help="shards + manifest.json (resumable)")
    p.add_argument("--field", help="JSONL field holding the text")
    p.add_argument("--layers", type=_layers, default=-1, help="hidden state(s): -1 or 4,8,12")
    p.add_argument("--pooling", choices=("cls", "mean"), default="cls")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, help="tokens per window (default: 512, or fewer)")
    p.add_argument("--stride", type=int, help="cover long texts with windows overlapping STRIDE")
    p.add_argument("--shard-size", type=int, default=1024, help="documents per shard file")
    p.add_argument("--format", choices=("npy", "safetensors"), default="npy")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--devices", type=int, help="split each batch over the first N local devices (default: all)"
    )
    _model_option(p, enc)
    _add_distributed_options(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("generate", help="continue PROMPT with BioGPT")
    p.add_argument("prompt", metavar="PROMPT")
    p.add_argument("--max-new-tokens", type=int, default=50)
    p.add_argument("--num-beams", type=int, default=1)
    p.add_argument("--do-sample", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-length", type=int, default=0)
    p.add_argument("--early-stopping", action="store_true")
    p.add_argument("--num-return-sequences", type=int, default=1)
    _model_option(p, dec)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("attention", help="attention maps of TEXT (summary, JSON or --png grid)")
    p.add_argument("text", metavar="TEXT")
    p.add_argument("--layers", type=_layers, help="layer index or list (default: all)")
    p.add_argument("--heads", type=_layers, help="head index or list (default: all)")
    p.add_argument(
        "--png", metavar="FILE", help="draw a heat-map grid (needs matplotlib: the plot extra)"
    )
    p.add_argument("--json", action="store_true", help="print tokens and maps as JSON")
    _model_option(p, enc)
    p.set_defaults(func=cmd_attention)

    _add_task_parser(sub)

    sub.add_parser(
        "conformance",
        add_help=False,
        help="compare our models with transformers (see `biomed-jax conformance --help`)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # `conformance` forwards everything after it to the suite's own parser.
    command = next((a for a in argv if not a.startswith("-")), None)
    split = argv.index(command) + 1 if command == "conformance" else len(argv)
    args = parser.parse_args(argv[:split])
    from biomed_jax.interrupts import remembered

    try:
        with remembered():  # a Ctrl-C Python drops still stops the run at its next step
            cache = None if args.no_compilation_cache else compilation_cache_dir()
            if cache is not None:
                enable_compilation_cache(cache)
            if args.command == "conformance":
                from conformance.suite import main as conformance_main

                return conformance_main(argv[split:])
            return args.func(args)
    except (OSError, ValueError, ModuleNotFoundError) as e:  # OSError: missing or unwritable files
        print(f"biomed-jax {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C: one line, saying what was kept where it applies
        print(f"biomed-jax {args.command}: {str(e) or 'interrupted'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
