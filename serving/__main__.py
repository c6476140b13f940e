"""`python -m serving ...`: see `serving.cli`.

The guard matters: vLLM starts its engine core in a *spawned* process, which re-imports this
module as `__mp_main__`; without it every child would start another server.
"""

from serving import cli

if __name__ == "__main__":
    raise SystemExit(cli.main())
