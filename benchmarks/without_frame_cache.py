"""`efm`'s command line with the frame cache off: every frame runs through the image tower at
every control step, as before `models/frame_cache.py`. For timing a stage both ways on one
machine, e.g. (README, "Acting keeps each frame's image-tower work"):

  .venv/bin/efm self-improve --domain tabletop --select SEL --out DIR_A --seed 2 --quiet
  .venv/bin/python benchmarks/without_frame_cache.py self-improve --domain tabletop --select SEL --out DIR_B --seed 2 --quiet

`every_frame()` does the same inside a benchmark (`sft_throughput.py`'s latency both ways).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from efm.models.frame_cache import FrameCache


@contextlib.contextmanager
def every_frame() -> Iterator[None]:
    """Within: every `FrameCache` hands its inputs on as they are."""
    keep = FrameCache.__call__
    FrameCache.__call__ = lambda self, inputs: inputs  # type: ignore[method-assign]
    try:
        yield
    finally:
        FrameCache.__call__ = keep  # type: ignore[method-assign]


def main() -> int:
    from efm.cli import main as efm_main

    with every_frame():
        return efm_main()


if __name__ == "__main__":
    sys.exit(main())
