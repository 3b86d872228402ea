"""Progress bars for long work: redrawn in a terminal, plain lines in logs.

A pipeline task's output is a log (kfp.local prefixes each line of it; Vertex AI stores
lines), where tqdm's carriage-return redraws would pile up into one endless line. Off a
terminal each update is therefore a line of its own, at most every `LOG_INTERVAL` seconds.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

LOG_INTERVAL = 30.0  # seconds between progress lines off a terminal
QUIET_ENV = "EFM_QUIET"  # "1": no bars at all; how `efm run --quiet` reaches its pipeline's tasks


def progress_bar(iterable: Iterable[Any] | None = None, *, total: int | None, desc: str, enabled: bool,
                 initial: int = 0) -> tqdm:
    enabled = enabled and os.environ.get(QUIET_ENV) != "1"
    if sys.stderr.isatty():
        return tqdm(iterable, total=total, initial=initial, desc=desc, disable=not enabled, mininterval=2.0)
    return tqdm(iterable, total=total, initial=initial, desc=desc, disable=not enabled, file=sys.stdout,
                mininterval=LOG_INTERVAL, maxinterval=LOG_INTERVAL, ascii=True, ncols=100,
                bar_format="{l_bar}{bar}{r_bar}\n")
