"""Fixtures for the AKS agent-pool tests: a fake ARM over HTTPS, settings pointing at it, a credential.

The credential is a documented parameter of ``infra.aks`` (any azure-core ``TokenCredential``), not a
patch: the real client sends its token as a bearer header, and the fake ARM checks it.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support import fakearm
from workspace import loader
from workspace import settings as settings_mod

REPO = Path(__file__).resolve().parents[2]
SEED_TUNING = REPO / "examples" / "seed" / "kaito_workspace_phi_3.yaml"
TOKEN = "fake-arm-token-not-a-secret-but-treated-as-one"


class StaticCredential:
    """A TokenCredential that hands out one fixed token (azure-core calls ``get_token(*scopes)``)."""

    def __init__(self, token: str = TOKEN):
        self.token = token
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: object):
        from azure.core.credentials import AccessToken

        self.scopes.append(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)


@pytest.fixture
def arm():
    with fakearm.FakeArm(token=TOKEN) as server:
        yield server


@pytest.fixture
def credential() -> StaticCredential:
    return StaticCredential()


def aks_settings(arm: fakearm.FakeArm, **overrides: object) -> settings_mod.Settings:
    values: dict[str, object] = dict(
        platform="aks", provisioner="aks",
        azure_subscription_id=arm.subscription, azure_resource_group=arm.resource_group,
        azure_cluster=arm.cluster, azure_base_url=arm.url, azure_ca_bundle=arm.ca_file,
        azure_poll_interval_s=0, azure_retry_total=2,
    )
    values.update(overrides)
    return settings_mod.Settings(**values)


@pytest.fixture
def settings(arm: fakearm.FakeArm) -> settings_mod.Settings:
    return aks_settings(arm)


@pytest.fixture
def seed_workspace():
    return loader.load_file(SEED_TUNING).workspaces[0]


from tests.support.fakekube.fixtures import fakekube, kube_crds  # noqa: E402,F401  (flow test)
