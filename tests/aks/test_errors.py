"""What an Azure user meets, as kaiflow reports it: each ARM failure -> reason, message, retried or not.

Faults come from the fake ARM over HTTPS, as ARM sends them (status, ``error.code``, text); the real
client and azure-core's own retry policy handle them before infra.aks maps what is left.
"""

from __future__ import annotations

import time

import pytest

from infra import aks
from tests.aks.conftest import TOKEN, StaticCredential, aks_settings
from workspace import errors
from workspace import plan as plan_mod

POOL_PATH = r"/agentPools/[a-z0-9]+$"
QUOTA_TEXT = (
    "Operation could not be completed as it results in exceeding approved standardNCSv3Family Cores quota. "
    "Additional details - Deployment Model: Resource Manager, Location: eastus, Current Limit: 0, "
    "Current Usage: 0, Additional Required: 6, (Minimum) New Limit Required: 6."
)


def _ensure(ws, settings, credential=None):
    return aks.ensure_agent_pool(ws, plan_mod.plan_workspace(ws, "aks"), settings,
                                 credential=credential or StaticCredential())


CASES = [
    pytest.param(dict(method="PUT", status=0, code="QuotaExceeded", message=QUOTA_TEXT, at="operation"),
                 errors.QuotaExceeded, "QuotaExceeded", ["vCPU quota", "Standard_NC6s_v3", "1 x Standard_NC6s_v3 = 6 vCPUs",
                                                         "az vm list-usage", "QuotaExceeded"], id="quota-at-operation"),
    pytest.param(dict(method="PUT", status=0, code="OperationNotAllowed", message=QUOTA_TEXT, at="operation"),
                 errors.QuotaExceeded, "QuotaExceeded", ["vCPU quota", "standardNCSv3Family"], id="compute-quota-text"),
    pytest.param(dict(method="PUT", status=400, code="BadRequest",
                      message="The VM size of Standard_NC6s_v3 is not allowed in your subscription in location 'eastus'."),
                 errors.SkuUnavailable, "SKUNotAvailable", ["az vm list-skus", "--size Standard_NC6s_v3", "kaiflow skus"],
                 id="vm-size-not-allowed"),
    pytest.param(dict(method="PUT", status=409, code="SkuNotAvailable",
                      message="The requested VM size Standard_NC6s_v3 is currently not available in location 'eastus'."),
                 errors.SkuUnavailable, "SKUNotAvailable", ["az vm list-skus"], id="sku-not-available"),
    pytest.param(dict(method="PUT", status=403, code="AuthorizationFailed",
                      message="The client 'abc' with object id 'abc' does not have authorization to perform action "
                              "'Microsoft.ContainerService/managedClusters/agentPools/write'."),
                 errors.ProvisioningError, "AuthorizationFailed",
                 ["Azure Kubernetes Service Contributor Role", "az role assignment create"], id="authorization"),
    pytest.param(dict(method="PUT", status=409, code="OperationNotAllowed",
                      message="Operation is not allowed: Another operation (Updating) is in progress, please wait for "
                              "it to finish before starting a new operation."),
                 errors.ProvisioningError, "PoolBusy", ["wait for it to finish", "az aks nodepool show"], id="busy-409"),
    pytest.param(dict(method="PUT", status=412, code="EtagMismatch", message="The etag does not match."),
                 errors.ProvisioningError, "PoolBusy", ["apply again"], id="etag-mismatch"),
]


@pytest.mark.parametrize("fault, kind, reason, words", CASES)
def test_arm_failures_become_reasons_that_say_what_to_do(arm, settings, seed_workspace, fault, kind, reason, words):
    arm.fail(path_re=POOL_PATH, **fault)
    with pytest.raises(errors.KaiflowError) as info:
        _ensure(seed_workspace, settings)
    err = info.value
    assert type(err) is kind and err.reason == reason and not err.transient
    assert not errors.is_transient(err)
    for word in words:
        assert word in err.message
    assert err.__cause__ is None and TOKEN not in err.message
    assert len(arm.pool_requests("PUT")) == 1  # not retried, by azure-core or by kaiflow


def test_throttled_put_is_retried_after_retry_after(arm, settings, seed_workspace):
    arm.fail("PUT", 429, "TooManyRequests", "Too many requests, retry later.", retry_after=1, path_re=POOL_PATH)
    start = time.monotonic()
    result = _ensure(seed_workspace, settings)
    assert result["created"] is True
    assert [r.status for r in arm.pool_requests("PUT")] == [429, 201]
    assert time.monotonic() - start >= 1.0  # azure-core honoured Retry-After


def test_server_error_then_success(arm, settings, seed_workspace):
    arm.fail("PUT", 500, "InternalServerError", "An internal error occurred.", path_re=POOL_PATH)
    arm.fail("GET", 503, "ServiceUnavailable", "Try again.", path_re="/operations/")
    result = _ensure(seed_workspace, settings)
    assert result["created"] is True
    assert [r.status for r in arm.pool_requests("PUT")] == [500, 201]
    assert 503 in [r.status for r in arm.requests if "/operations/" in r.path]


def test_throttling_that_outlasts_the_retries_is_transient_for_the_task(arm, seed_workspace):
    settings = aks_settings(arm, azure_retry_total=1)
    arm.fail("PUT", 429, "TooManyRequests", "Too many requests.", times=5, path_re=POOL_PATH)
    with pytest.raises(errors.TransientError) as info:
        _ensure(seed_workspace, settings)
    assert info.value.reason == "ARMThrottled" and errors.is_transient(info.value)
    assert len(arm.pool_requests("PUT")) == 2  # azure-core: one try + azure_retry_total retries


def test_server_errors_that_outlast_the_retries_are_transient(arm, seed_workspace):
    settings = aks_settings(arm, azure_retry_total=0)
    arm.fail("GET", 502, "BadGateway", "Bad gateway.", path_re=POOL_PATH)
    with pytest.raises(errors.TransientError) as info:
        _ensure(seed_workspace, settings)
    assert info.value.reason == "ARMUnavailable" and "502" in info.value.message
    assert arm.pool_requests("PUT") == []


def test_unreachable_arm_is_transient(seed_workspace, arm):
    settings = aks_settings(arm, azure_base_url="https://127.0.0.1:1", azure_retry_total=0)
    with pytest.raises(errors.TransientError) as info:
        _ensure(seed_workspace, settings)
    assert info.value.reason == "ARMUnreachable" and "https://127.0.0.1:1" in info.value.message


def test_untrusted_certificate_is_not_accepted(arm, seed_workspace):
    settings = aks_settings(arm, azure_ca_bundle=None, azure_retry_total=0)
    with pytest.raises(errors.ProvisioningError) as info:
        _ensure(seed_workspace, settings)
    assert info.value.reason == "ARMCertificateUntrusted" and not info.value.transient
    assert "KAIFLOW_AZURE_CA_BUNDLE" in info.value.message and arm.requests == []


def test_wrong_token_is_an_authentication_failure(arm, settings, seed_workspace):
    with pytest.raises(errors.ProvisioningError) as info:
        _ensure(seed_workspace, settings, StaticCredential("some-other-token-value"))
    assert info.value.reason == "AuthenticationFailed" and "az login" in info.value.message
    assert "some-other-token-value" not in info.value.message and not info.value.transient


def test_missing_cluster_is_named(arm, seed_workspace):
    settings = aks_settings(arm, azure_cluster="no-such-cluster")
    with pytest.raises(errors.ProvisioningError) as info:
        _ensure(seed_workspace, settings)
    assert info.value.reason == "ClusterNotFound"
    assert "no-such-cluster" in info.value.message and "KAIFLOW_AZURE_CLUSTER" in info.value.message


def test_unconfigured_cluster_names_the_variables(seed_workspace):
    from workspace import settings as settings_mod

    settings = settings_mod.Settings(platform="aks", provisioner="aks", azure_subscription_id="sub")
    with pytest.raises(errors.ProvisioningError) as info:
        _ensure(seed_workspace, settings)
    assert info.value.reason == "AzureNotConfigured"
    assert "KAIFLOW_AZURE_RESOURCE_GROUP" in info.value.message and "KAIFLOW_AZURE_CLUSTER" in info.value.message
    assert "KAIFLOW_AZURE_SUBSCRIPTION_ID" not in info.value.message


def test_quota_failure_leaves_no_half_made_state_behind_for_the_next_apply(arm, settings, seed_workspace):
    arm.fail("PUT", 0, "QuotaExceeded", QUOTA_TEXT, at="operation", path_re=POOL_PATH)
    with pytest.raises(errors.QuotaExceeded):
        _ensure(seed_workspace, settings)
    # once the quota is raised, applying again re-puts the Failed pool and succeeds
    result = _ensure(seed_workspace, settings)
    assert result["pool"] in arm.pools and arm.pools[result["pool"]]["properties"]["provisioningState"] == "Succeeded"
    assert len(arm.pool_requests("PUT")) == 2


def test_delete_of_a_busy_pool_is_reported(arm, settings, seed_workspace):
    _ensure(seed_workspace, settings)
    arm.fail("DELETE", 409, "OperationNotAllowed", "Another operation (Scaling) is in progress.", path_re=POOL_PATH)
    with pytest.raises(errors.ProvisioningError) as info:
        aks.delete_agent_pool(seed_workspace, settings, credential=StaticCredential())
    assert info.value.reason == "PoolBusy" and aks.pool_name(seed_workspace) in arm.pools
