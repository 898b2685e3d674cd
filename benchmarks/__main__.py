"""`python -m benchmarks`: run the benchmark suite (see benchmarks/README.md)."""

from benchmarks.cli import main

raise SystemExit(main())
