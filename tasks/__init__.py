"""The Prefect tasks, one module per pipeline step. Thin: retries, cache keys, logging, artifacts,
conditions. The work itself is in ``infra/`` and in the ``tuning``/``serving`` programs."""
