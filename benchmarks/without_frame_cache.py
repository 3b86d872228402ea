"""`efm`'s command line with the frame cache off: every frame runs through the image tower at
every control step, as before `models/frame_cache.py`. For timing a stage both ways on one
machine, e.g. (README, "Acting keeps each frame's image-tower work"):

  .venv/bin/efm self-improve --domain tabletop --select SEL --out DIR_A --seed 2 --quiet
  .venv/bin/python benchmarks/without_frame_cache.py self-improve --domain tabletop --select SEL --out DIR_B --seed 2 --quiet
"""

from __future__ import annotations

import sys

from efm.models import frame_cache


def main() -> int:
    frame_cache.FrameCache.__call__ = lambda self, inputs: inputs  # type: ignore[method-assign]
    from efm.cli import main as efm_main

    return efm_main()


if __name__ == "__main__":
    sys.exit(main())
