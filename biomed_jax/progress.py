"""Progress bars: tqdm on stderr, drawn only on a terminal (quiet in logs, pipes and tests)."""

from __future__ import annotations

import sys
from typing import Any


def progress_bar(total: int | None, *, enabled: bool = True, **kwargs: Any):
    """A `tqdm` bar over `total` steps on stderr; `enabled=False` (`--quiet`) or a stderr that is
    not a TTY turns it off. Other arguments (unit, desc, initial, ...) go to tqdm."""
    from tqdm import tqdm  # installed with huggingface-hub

    return tqdm(total=total, file=sys.stderr, disable=True if not enabled else None, **kwargs)
