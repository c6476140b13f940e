"""The Prefect flows (workspace) and the ``kaiflow`` command line."""
