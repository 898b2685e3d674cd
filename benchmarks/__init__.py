"""tenantstore's benchmark suite: ours against the floor and the peers, side by side.

Run it with `python -m benchmarks` (see `README.md` here for the scenarios and how
to read the ratios). `main(argv)` is the entry point, also used by the smoke test.
"""

from benchmarks.cli import main

__all__ = ["main"]
