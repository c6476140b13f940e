"""Fixtures for the retrain tests: a real Prefect server (``prefect_api``), question/answer data served
over HTTP by ``tests.support.fileserver``, the local platform with the transformers engine, adapter
images in the on-disk OCI layout, and one torch thread for every program the flows start."""

from __future__ import annotations

import threading

import pytest

from tests.support import fileserver, workspaces

ENV = {
    "KAIFLOW_ALLOW_PRIVATE_URLS": "true",
    "KAIFLOW_ENGINE": "transformers",
    "KAIFLOW_RETRY_BACKOFF_S": "0.2",
    "KAIFLOW_RETRAIN_HOLDOUT": "0.25",
    "KAIFLOW_GPU_WAIT_S": "300",
    "OMP_NUM_THREADS": "1",  # the tuning, evaluation and serving processes: steady on shared 2-core machines
}

# A Kaito training_config.yaml small enough for tests: the tiny model memorises a few dozen rows in 60 steps (~3 s).
CONFIG = """
apiVersion: v1
kind: ConfigMap
metadata: {{name: {name}-config}}
data:
  training_config.yaml: |
    training_config:
      TrainingArguments:
        max_steps: 60
        logging_steps: 10
        save_steps: 60
"""

WORKSPACE = """
apiVersion: kaito.sh/v1beta1
kind: Workspace
metadata:
  name: {name}
resource:
  instanceType: local
tuning:
  preset: {{name: tiny-phi-3}}
  method: qlora
  config: {name}-config
  input:
    urls: ["{url}"]
  output:
    image: "adapters/{name}:1"
"""

INFERENCE = """inference:
  preset: {name: tiny-phi-3}
"""


@pytest.fixture(scope="module")
def retrain_env(prefect_api, tiny_model, tmp_path_factory):
    """Environment for in-process flow runs; yields the file server serving ``www/``."""
    with workspaces.environ(ENV), fileserver.FileServer(tmp_path_factory.mktemp("www")) as srv:
        yield srv


def load_workspace(name: str, url: str, *, inference: bool):
    """The workspace and its ConfigMaps, through the same loader ``kaiflow apply`` uses."""
    from workspace import loader

    text = CONFIG.format(name=name) + "---" + WORKSPACE.format(name=name, url=url) + (INFERENCE if inference else "")
    bundle = loader.load_text(text, source=f"{name}.yaml")
    return bundle.workspaces[0], bundle.config_maps


def thread(target) -> "threading.Thread":
    """A thread that runs ``target`` in a copy of this context: Prefect keeps its settings (the
    ``prefect_api`` server's URL) in a context variable, and a bare thread would start Prefect's
    temporary server instead of talking to the session's."""
    import contextvars

    return threading.Thread(target=contextvars.copy_context().run, args=(target,))
