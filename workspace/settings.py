"""kaiflow's settings, from ``KAIFLOW_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KAIFLOW_", extra="ignore")

    platform: Literal["local", "kubernetes", "aks"] = Field("local", description="Where the work runs.")
    home: Path = Field(Path("~/.kaiflow"), description="Where the local platform keeps its state.")
    allow_private_urls: bool = Field(False, description="Allow dataset URLs on loopback/private addresses.")
    engine: Literal["auto", "vllm", "transformers"] = Field("auto", description="Inference engine for local serving.")
    serve_host: str = Field("127.0.0.1", description="Address local inference servers listen on.")
    health_timeout_s: float = Field(600.0, description="How long to wait for a new inference server to be healthy.")

    # --- Kubernetes platform (issue 7) ---
    kubeconfig: Path | None = Field(None, description="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or in-cluster).")
    kube_context: str | None = Field(None, description="kubeconfig context (default: the current one).")
    namespace: str | None = Field(None, description="Namespace for workspaces that name none (default: the context's, else 'default').")
    provisioner: Literal["karpenter", "byo", "aks"] = Field(
        "karpenter", description="Where GPU nodes come from on Kubernetes: Karpenter NodeClaims, your own labelled nodes, or AKS agent pools.")
    image: str = Field("ghcr.io/kaiflow/kaiflow:0.1.0", description="Container image holding the tuning and serving programs.")
    kube_wait_timeout_s: float = Field(1800.0, description="How long to wait for nodes, Jobs and StatefulSets on Kubernetes.")

    # --- AKS agent pools (issue 8) ---

    # --- Prefect deployments, server, schedules (issue 9) ---
    database_url: SecretStr | None = Field(
        None, description="Prefect server database (postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DB) for `kaiflow server`; default SQLite under KAIFLOW_HOME.")
    via_server: bool = Field(False, description="`kaiflow apply` triggers the `workspace` deployment on the server instead of running in-process.")
    work_pool: str = Field("kaiflow-process", description="Work pool `kaiflow deploy`/`server` register the deployments in.")
    worker_poll_s: float = Field(5.0, description="How often the worker `kaiflow server` starts asks the server for runs (seconds).")


    @property
    def home_dir(self) -> Path:
        return self.home.expanduser()


def load() -> Settings:
    return Settings()
