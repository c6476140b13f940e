"""kaiflow's settings, from ``KAIFLOW_*`` environment variables (pydantic-settings).

Every ``KAIFLOW_*`` variable is a field here (the README's settings table lists them); nothing else
reads them from the environment. ``load()`` reads the environment again on each call, so a test
that sets a variable sees it at once. ``home`` (``KAIFLOW_HOME``) is inherited from
``presets.home.HomeSettings``, because the tuning and serving programs need it below this layer.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from presets.home import HomeSettings


class Settings(HomeSettings):
    model_config = SettingsConfigDict(env_prefix="KAIFLOW_", extra="ignore")

    platform: Literal["local", "kubernetes", "aks"] = Field("local", description="Where the work runs.")
    # home: KAIFLOW_HOME, from HomeSettings
    allow_private_urls: bool = Field(False, description="Allow dataset URLs on loopback/private addresses.")
    dataset_attempts: int = Field(5, ge=1, description="Tries of one dataset download (resumed with Range) before the pull step fails.")
    dataset_backoff_s: float = Field(0.5, ge=0, description="First wait between dataset download tries (doubling, at most 15 s).")
    max_dataset_bytes: int = Field(50 << 30, gt=0, description="Largest dataset a pull accepts, all files together (bytes).")
    retry_backoff_s: float = Field(1.0, ge=0, description="Backoff factor of Prefect task retries of transient faults (seconds).")
    engine: Literal["auto", "vllm", "transformers"] = Field("auto", description="Inference engine for local serving.")
    serve_host: str = Field("127.0.0.1", description="Address local inference servers listen on.")
    health_timeout_s: float = Field(600.0, description="How long to wait for a new inference server to be healthy.")

    # --- images: registries and OCI layouts (infra.registry) ---
    registry: str | None = Field(None, description="Registry for image references without a host (e.g. 127.0.0.1:5000); none: an OCI layout under oci_layout_root.")
    oci_layout_root: str | None = Field(None, description="Where OCI image layouts of bare references go (default: KAIFLOW_HOME/oci-layout).")
    insecure_registries: str = Field("", description="Registries (host or host:port, comma-separated) spoken to over plain HTTP; loopback always is.")
    docker_config: str | None = Field(None, description="docker config.json to read registry credentials from, read only (default: $DOCKER_CONFIG/config.json, ~/.docker/config.json).")
    registry_username: str | None = Field(None, description="Registry username (with KAIFLOW_REGISTRY_PASSWORD), before any docker config.")
    registry_password: SecretStr | None = Field(None, description="Registry password or token for KAIFLOW_REGISTRY_USERNAME.")
    registry_attempts: int = Field(5, ge=1, description="Tries of one registry exchange (infra.retry's in-call layer) before the step fails.")
    registry_backoff_s: float = Field(0.5, ge=0, description="First wait between tries of a registry exchange (doubling, at most 10 s).")

    # --- Kubernetes platform (issue 7) ---
    kubeconfig: Path | None = Field(None, description="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or in-cluster).")
    kube_context: str | None = Field(None, description="kubeconfig context (default: the current one).")
    namespace: str | None = Field(None, description="Namespace for workspaces that name none (default: the context's, else 'default').")
    provisioner: Literal["karpenter", "byo", "aks"] = Field(
        "karpenter", description="Where GPU nodes come from on Kubernetes: Karpenter NodeClaims, your own labelled nodes, or AKS agent pools.")
    image: str = Field("ghcr.io/kaiflow/kaiflow:0.1.0", description="Container image holding the tuning and serving programs.")
    kube_wait_timeout_s: float = Field(1800.0, description="How long to wait for nodes, Jobs and StatefulSets on Kubernetes.")
    kube_request_timeout_s: float = Field(30.0, gt=0, description="Timeout of one Kubernetes API request (seconds).")
    kube_backoff_s: float = Field(0.2, ge=0, description="First wait between tries of a Kubernetes API request that hit a transient fault.")
    termination_log: Path = Field(
        Path("/dev/termination-log"), description="Where the in-pod steps (python -m infra.pod) write their result for the flow to read.")

    # --- AKS agent pools (issue 8) ---
    azure_subscription_id: str | None = Field(None, description="Azure subscription of the AKS cluster (provisioner aks).")
    azure_resource_group: str | None = Field(None, description="Resource group of the AKS cluster.")
    azure_cluster: str | None = Field(None, description="AKS managed cluster name; kaiflow adds one agent pool per workspace to it.")
    azure_base_url: str = Field("https://management.azure.com", description="Azure Resource Manager endpoint (sovereign clouds, or a test server).")
    azure_ca_bundle: Path | None = Field(None, description="CA bundle (PEM) to verify the ARM endpoint with, instead of the system's.")
    azure_credential: str = Field("default", description="'default' (azure-identity DefaultAzureCredential) or 'module:callable' returning a TokenCredential.")
    azure_retry_total: int = Field(3, ge=0, description="In-call retries of ARM 429/5xx/connection faults by azure-core (honours Retry-After); then the task retries.")
    azure_poll_interval_s: float = Field(15.0, ge=0, description="Seconds between polls of an agent pool's long-running operation when ARM sends no Retry-After.")
    aks_os_sku: Literal["Ubuntu", "AzureLinux"] = Field("Ubuntu", description="OS image of the GPU agent pools.")
    aks_spot: bool = Field(False, description="Spot GPU capacity (evicted when Azure needs it back; pods get the spot toleration).")
    aks_pool_timeout_s: float = Field(1800.0, gt=0, description="How long to wait for an agent pool to be created or deleted.")

    # --- Prefect deployments, server, schedules (issue 9) ---
    database_url: SecretStr | None = Field(
        None, description="Prefect server database (postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DB) for `kaiflow server`; default SQLite under KAIFLOW_HOME.")
    via_server: bool = Field(False, description="`kaiflow apply` triggers the `workspace` deployment on the server instead of running in-process.")
    work_pool: str = Field("kaiflow-process", description="Work pool `kaiflow deploy`/`server` register the deployments in.")
    worker_poll_s: float = Field(5.0, description="How often the worker `kaiflow server` starts asks the server for runs (seconds).")
    retrain_tolerance: float = Field(
        0.02, ge=0, description="Retrain promotes a candidate whose held-out loss is at most serving's x (1 + this) and whose exact-match is not lower.")
    retrain_holdout: float = Field(
        0.1, gt=0, lt=1, description="Fraction of rows retrain holds out for evaluation when the training config sets no DatasetConfig.train_test_split.")
    gpu_quota: str = Field("", description="GPU quota per SKU for the gpu-<sku> concurrency limits, in nodes: 'Standard_NC6s_v3=2,local=1'.")
    gpu_default_limit: int = Field(1, ge=0, description="gpu-<sku> limit for SKUs not named in KAIFLOW_GPU_QUOTA.")
    gpu_wait_s: float = Field(21600.0, gt=0, description="How long a run waits for a GPU or workspace slot before failing (seconds).")


def load() -> Settings:
    return Settings()


RUN_SETTINGS = (
    "allow_private_urls", "dataset_attempts", "dataset_backoff_s", "max_dataset_bytes", "retry_backoff_s",
    "engine", "health_timeout_s", "registry", "insecure_registries", "registry_attempts", "registry_backoff_s",
    "namespace", "provisioner", "image", "kube_wait_timeout_s", "retrain_tolerance", "retrain_holdout",
)
"""Settings that shape one run and travel with it when another process runs it (``apply --via-server``,
a deployment run): a worker started earlier, in another shell, does not see the caller's environment.
Left out on purpose: secrets (registry password, database URL: never in flow parameters), paths of
the machine that runs the flow (home, kubeconfig, docker config, OCI layout root), and what belongs to
the server as a whole (its GPU quota, work pool, where it listens)."""


def env_name(field: str) -> str:
    return "KAIFLOW_" + field.upper()


def for_run() -> dict[str, str]:
    """The run-shaping ``KAIFLOW_*`` variables this process's environment sets, to pass with a run."""
    return {env_name(f): os.environ[env_name(f)] for f in RUN_SETTINGS if env_name(f) in os.environ}


@contextmanager
def applied(values: dict[str, str] | None) -> Iterator[Settings]:
    """Run with ``values`` (from :func:`for_run` of the caller) over this process's environment, then restore it.

    Refuses names outside :data:`RUN_SETTINGS` and values the setting does not accept, naming both.
    """
    values = dict(values or {})
    allowed = {env_name(f) for f in RUN_SETTINGS}
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ValueError(f"settings: {', '.join(unknown)} cannot be passed with a run; "
                         f"these can: {', '.join(sorted(allowed))}")
    before = {k: os.environ.get(k) for k in values}
    os.environ.update({k: str(v) for k, v in values.items()})
    try:
        yield load()  # validates the values: a bad one fails here, naming the variable
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
