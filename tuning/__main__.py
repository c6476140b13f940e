"""``python -m tuning``: see ``tuning.cli``."""

from tuning import cli

raise SystemExit(cli.main())
