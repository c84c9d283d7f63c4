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

    src = resolve(args.src, revision=args.revision, cache_dir=args.cache_dir).path
    dst = convert(src, args.dst, architecture=args.architecture)
    print(f"converted {args.src} -> {dst}")
    return 0


_SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def _checkpoint_dtypes(directory: Path) -> list[str]:
    """The tensor dtypes stored in the checkpoint's weight files (headers only for safetensors)."""
    from safetensors import safe_open

    from biomed_jax.weights.io import CheckpointError, read_hf_state_dict

    dtypes: set[str] = set()
    files = sorted(directory.glob("*.safetensors"))
    for file in files:
        try:
            with safe_open(str(file), framework="numpy") as f:
                for key in f.keys():  # noqa: SIM118
                    code = f.get_slice(key).get_dtype()
                    dtypes.add(_SAFETENSORS_DTYPES.get(code, code))
        except Exception as e:  # safetensors raises its own error types for bad headers
            raise CheckpointError(
                f"cannot read {file}: corrupt or truncated safetensors ({e})"
            ) from e
    if not files:
        dtypes.update(str(v.dtype) for v in read_hf_state_dict(directory).values())
    return sorted(dtypes)


def model_info(
    name_or_path: str, revision: str | None = None, cache_dir: str | None = None
) -> dict:
    """Architecture, parameter count, dtype and files of a checkpoint (no weights are loaded)."""
    import numpy as np

    from biomed_jax.hub import resolve
    from biomed_jax.loading import (
        ARCHITECTURES,
        _read_config_json,
        is_converted,
        param_template,
        resolve_architecture,
    )
    from biomed_jax.weights.io import flatten

    directory = resolve(name_or_path, revision=revision, cache_dir=cache_dir).path
    hf_config = _read_config_json(directory)
    name = resolve_architecture(hf_config, None)
    arch = ARCHITECTURES[name]
    module = arch.module(arch.config.from_dict(hf_config))
    count = sum(int(np.prod(v.shape)) for v in flatten(param_template(module)).values())
    files = sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))
    return {
        "path": str(directory),
        "format": "biomed_jax" if is_converted(directory) else "huggingface",
        "architecture": name,
        "model_type": hf_config.get("model_type"),
        "parameters": count,
        "dtype": _checkpoint_dtypes(directory),
        "files": {p.name: p.stat().st_size for p in files},
    }


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
    print("files:")
    for name, size in info["files"].items():
        print(f"  {name:<32} {_size(size):>10}")
    return 0


# ---------------------------------------------------------------------------------------------
# Parser


def _add_hub_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--revision", help="hub revision (branch, tag or commit); default main")
    p.add_argument("--cache-dir", help="Hugging Face hub cache directory (default: HF_HOME's)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="biomed-jax", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--no-compilation-cache",
        action="store_true",
        help=f"do not use JAX's persistent compilation cache (also: {COMPILATION_CACHE_ENV}=off)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("convert", help="convert an HF checkpoint (directory or hub id) to ours")
    p.add_argument("src", metavar="SRC", help="HF checkpoint directory or hub id")
    p.add_argument("dst", metavar="DST", help="output directory")
    p.add_argument("--architecture", help="module class (default: from config.json)")
    _add_hub_options(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("info", help="architecture, parameter count, dtype and files of a model")
    p.add_argument("model", metavar="MODEL", help="directory (HF or converted) or hub id")
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_hub_options(p)
    p.set_defaults(func=cmd_info)

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
    cache = None if args.no_compilation_cache else compilation_cache_dir()
    if cache is not None:
        enable_compilation_cache(cache)
    if args.command == "conformance":
        from conformance.suite import main as conformance_main

        return conformance_main(argv[split:])
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"biomed-jax {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
