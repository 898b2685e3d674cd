"""``python -m tenantstore``: the command line of `tenantstore.cli`."""

from .cli import main

raise SystemExit(main())
