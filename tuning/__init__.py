"""The tuning program (``python -m tuning``): Kaito-compatible LoRA/QLoRA with peft, trl and bitsandbytes.

It runs inside a Kubernetes Job on a GPU node or as a local process, and imports neither Prefect
nor Kubernetes. Modules:

    config      training_config.yaml sections → one resolved dict (pure; the flow's cache key)
    known_keys  accepted keys of the library dataclasses (snapshot, so config needs no torch)
    data        dataset files in a folder → canonical chat / prompt-completion / text rows
    train       model + adapter + trl SFTTrainer, checkpoints and resume, atomic adapter output
    progress    ``KAIFLOW_PROGRESS {json}`` lines and the metrics.json summary
    protocol    what the program promises the flow: progress lines, exit codes, ``error:`` line,
                the ``COMPLETE`` marker and ``metrics.json`` (the flow imports it too)
    cli         flags, exit codes (0 ok, 2 bad config/dataset, 1 other failure)
"""

import logging as _logging

# bitsandbytes' CPU backend looks for an optional hub kernel when it is imported and, without the
# `kernels` package, warns "pip install kernels" before falling back to its own kernel: that opened
# every tuning log with advice the user need not follow. Errors from it still show.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
