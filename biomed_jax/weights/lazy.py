"""Sharded loading: each device reads only its own slice of each tensor from safetensors.

A parameter is built with `jax.make_array_from_callback`: for every device shard, the callback
reads exactly that block with `safe_open(...).get_slice(key)[index]` (transposed for torch Linear
weights, stacked over layers for the scanned stack, one layer of a stacked tensor for unrolled
layers), so no parameter is ever materialised whole on one device, nor whole in host memory when
it is sharded. Works for our converted files and for HF safetensors (single file or
`model-*-of-*` shards) through the model's name table; on several hosts each host reads only the
shards of its own devices.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding

from biomed_jax.errors import CheckpointError
from biomed_jax.models.common import STACKED, layer_name
from biomed_jax.weights.convert import NameTable, match_keys
from biomed_jax.weights.io import flatten, unflatten

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Source:
    """Where one parameter (or one layer of a stacked parameter) lives in the checkpoint."""

    file: str
    key: str
    transpose: bool = False
    layer: int | None = None  # the block [layer, ...] of a tensor stacked over layers


def safetensors_files(directory: Path) -> list[Path]:
    single = directory / "model.safetensors"
    files = [single] if single.is_file() else sorted(directory.glob("model-*-of-*.safetensors"))
    if not files:
        raise CheckpointError(f"no safetensors weights in {directory}")
    return files


@contextmanager
def _open_all(files: list[Path]) -> Iterator[dict[str, Any]]:
    from safetensors import SafetensorError, safe_open

    with ExitStack() as stack:
        try:
            yield {str(f): stack.enter_context(safe_open(str(f), framework="numpy")) for f in files}
        except (SafetensorError, OSError) as e:
            raise CheckpointError(
                f"cannot read {files}: corrupt or truncated safetensors ({e})"
            ) from e


def plan_converted(handles: Mapping[str, Any]) -> dict[str, Source | list[Source]]:
    """Our converted layout: keys are already our '/'-paths."""
    return {key: Source(file, key) for file, f in handles.items() for key in f.keys()}  # noqa: SIM118


def plan_hf(
    handles: Mapping[str, Any], table: NameTable, num_layers: int
) -> tuple[dict[str, Source | list[Source]], list[str]]:
    """HF keys matched by the name table (as `convert_state_dict` does); returns the plan and the
    problems (unmapped keys, incomplete layer stacks)."""
    owner = {key: file for file, f in handles.items() for key in f.keys()}  # noqa: SIM118
    matched, unexpected = match_keys(table, owner)
    plan: dict[str, Source | list[Source]] = {}
    layered: dict[str, dict[int, Source]] = {}
    problems = [f"unexpected checkpoint tensor {k}" for k in unexpected]
    for raw_key, m in matched.items():
        source = Source(owner[raw_key], raw_key, m.transpose)
        if m.layer is None:
            plan[m.path] = source
        else:
            layered.setdefault(m.path, {})[m.layer] = source
    for path, by_layer in layered.items():
        if sorted(by_layer) != list(range(num_layers)):
            problems.append(
                f"{path}: layers {sorted(by_layer)} present, expected 0..{num_layers - 1}"
            )
        else:
            plan[path] = [by_layer[i] for i in range(num_layers)]
    return plan, problems


def per_layer(
    handles: Mapping[str, Any], plan: Mapping[str, Source | list[Source]]
) -> dict[str, Source | list[Source]]:
    """A plan for the stacked layout turned into one for unrolled layers: `.../layer/...` (a list
    of per-layer sources, or one tensor stacked over layers) becomes `.../layer_0/...`, ..."""
    out: dict[str, Source | list[Source]] = {}
    for path, source in plan.items():
        parts = path.split("/")
        if STACKED not in parts:
            out[path] = source
            continue
        at = parts.index(STACKED)
        if isinstance(source, list):
            layers = source
        else:
            count = _shape(handles, source)[0]
            layers = [dataclasses.replace(source, layer=i) for i in range(count)]
        for i, layer in enumerate(layers):
            out["/".join([*parts[:at], layer_name(i), *parts[at + 1 :]])] = layer
    return out


def _shape(handles: Mapping[str, Any], source: Source | list[Source]) -> tuple[int, ...]:
    first = source[0] if isinstance(source, list) else source
    shape = tuple(handles[first.file].get_slice(first.key).get_shape())
    shape = shape[::-1] if first.transpose else shape
    shape = shape[1:] if first.layer is not None else shape
    return (len(source), *shape) if isinstance(source, list) else shape


def _reader(handles: Mapping[str, Any], source: Source | list[Source], dtype: Any) -> Callable:
    """index (tuple of slices into our layout) -> that block as a numpy array of `dtype`."""

    def one(src: Source, index: tuple[slice, ...]) -> np.ndarray:
        view = handles[src.file].get_slice(src.key)
        if src.transpose:
            index = index[::-1]
        if src.layer is not None:
            index = (src.layer, *index)  # [layer, ...]: no transposed stacks exist
        block = np.asarray(view[index])
        return block.T if src.transpose else block

    def read(index: tuple[slice, ...]) -> np.ndarray:
        if isinstance(source, list):
            layers = range(len(source))[index[0]]
            block = np.stack([one(source[i], index[1:]) for i in layers])
        else:
            block = one(source, index)
        return np.ascontiguousarray(block, dtype=dtype)

    return read


def load_sharded(
    directory: str | Path,
    template: Mapping[str, Any],
    shardings: Mapping[str, Any],
    *,
    table: NameTable | None = None,
    num_layers: int = 0,
    init_fresh: Callable[[Any], Mapping[str, Any]] | None = None,
    dtype: Any = None,
) -> dict[str, Any]:
    """Parameters of `template` (ShapeDtypeStructs) read shard by shard onto `shardings`.

    table=None reads our converted layout; otherwise HF keys are mapped through `table`.
    Files hold the layer stack scanned; a template with unrolled layers gets each layer read
    straight onto its own shards.
    init_fresh(shardings) initializes the params the table lists as `fresh` when the checkpoint
    lacks them (task heads), directly onto their shards. Raises CheckpointError listing every
    missing, unexpected or misshapen tensor.
    """
    expected = flatten(template)
    placement = flatten(shardings)
    files = safetensors_files(Path(directory))
    with _open_all(files) as handles:
        if table is None:
            plan, problems = plan_converted(handles), []
        else:
            plan, problems = plan_hf(handles, table, num_layers)
        if not any(STACKED in path.split("/") for path in expected):
            plan = per_layer(handles, plan)
        fresh_prefixes = table.fresh if table is not None else ()
        missing = sorted(set(expected) - set(plan))
        fresh = [p for p in missing if any(p.startswith(f) for f in fresh_prefixes)]
        problems += [
            f"missing parameter {p} {tuple(expected[p].shape)}" for p in missing if p not in fresh
        ]
        problems += [
            f"checkpoint maps to {p}, which this model does not have"
            for p in sorted(set(plan) - set(expected))
        ]
        for path in sorted(set(plan) & set(expected)):
            got, want = _shape(handles, plan[path]), tuple(expected[path].shape)
            if got != want:
                problems.append(f"shape mismatch for {path}: checkpoint {got}, model {want}")
        if problems:
            raise CheckpointError(
                f"{directory} does not fit the model:\n  " + "\n  ".join(problems)
            )
        out = {}
        for path, spec in expected.items():
            if path in fresh:
                continue
            target = np.dtype(dtype if dtype is not None else spec.dtype)
            sharding: NamedSharding = placement[path]
            out[path] = jax.make_array_from_callback(
                tuple(spec.shape), sharding, _reader(handles, plan[path], target)
            )
    if fresh:
        if init_fresh is None:
            raise CheckpointError(f"checkpoint lacks {fresh} and no initializer was given")
        logger.warning("newly initialized (not in the checkpoint): %s", ", ".join(fresh))
        initial = flatten(init_fresh(shardings))
        for path in fresh:
            out[path] = initial[path] if dtype is None else initial[path].astype(dtype)
    return unflatten(out)


def load_on_mesh(
    directory: str | Path,
    module: Any,
    architecture: str,
    mesh: Any,
    rules: Any,
    dtype: Any,
    seed: int = 0,
) -> dict[str, Any]:
    """`from_pretrained(..., mesh=)`: the params of `module` from `directory`, placed by `rules`.

    safetensors (ours or HF) are read shard by shard, straight into the module's layer layout
    (files hold the stack scanned; unrolled layers read their own layer's blocks); a
    pytorch_model.bin (a zip that cannot be sliced) is converted in host memory first and then
    split onto the devices.
    """
    from biomed_jax import loading, sharding
    from biomed_jax.models.common import to_layout

    directory = Path(directory)
    shardings = sharding.param_shardings(module, mesh, rules)
    template = loading.param_template(module)
    if loading.is_converted(directory):
        return load_sharded(directory, template, shardings, dtype=dtype)
    try:
        safetensors_files(directory)
    except CheckpointError:
        params = loading._convert_hf(directory, module, architecture, dtype, seed)
        return jax.device_put(to_layout(params, module.scan_layers), shardings)
    return load_sharded(
        directory,
        template,
        shardings,
        table=loading.ARCHITECTURES[architecture].name_table(architecture),
        num_layers=module.config.num_hidden_layers,
        init_fresh=lambda s: jax.jit(lambda: loading.init_params(module, seed), out_shardings=s)(),
        dtype=dtype,
    )
