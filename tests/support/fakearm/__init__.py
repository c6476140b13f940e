"""A fake Azure Resource Manager for one AKS cluster, over HTTPS on 127.0.0.1, for the real client.

Why: no Azure here, and kaiflow's AKS code must agree with what ``azure-mgmt-containerservice``
(41.8) actually sends and expects — URLs, api-version, JSON bodies, the long-running-operation
protocol, error bodies — so the tests drive the real client over real HTTP(S), no patching.

    from tests.support import fakearm

    with fakearm.FakeArm(poll_rounds=1) as arm:      # self-signed cert made on the spot
        arm.url, arm.ca_file                          # base_url and connection_verify for the client
        arm.subscription, arm.resource_group, arm.cluster, arm.location
        fakearm.attach_kube(arm, kube)                # pool ready -> its Nodes appear in a FakeKube
        arm.fail("PUT", 429, "TooManyRequests", "...", retry_after=1)    # then success
        arm.fail("PUT", 0, "QuotaExceeded", "...", at="operation")       # the LRO ends Failed
        arm.requests, arm.pool_requests("PUT"), arm.pools

What it models:
- ``GET`` of the managed cluster; agent pool ``PUT``/``GET``/``DELETE`` and the pool list under
  ``/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ContainerService/managedClusters/{c}``.
- Bearer authentication (401 without one; a fixed ``token`` if given); the ``api-version`` the client
  sends checked against ``SUPPORTED_API_VERSIONS`` (400 ``InvalidApiVersionParameter`` otherwise).
- PUT validation as AKS does it where it matters: Linux pool names (``^[a-z][a-z0-9]{0,11}$``), vmSize,
  count, mode, osSKU, osDiskSizeGB range, taint syntax, spot fields only with Spot, and — stricter
  than ARM, to catch typos — unknown property names rejected; changing vmSize/osType/osDiskSizeGB/
  scaleSetPriority of an existing pool is ``PropertyChangeNotAllowed``.
- Long-running operations exactly as ARM answers them: PUT -> 201 (200 on update) with
  ``Azure-AsyncOperation``; ``GET .../locations/{loc}/operations/{id}`` answers ``InProgress``
  ``poll_rounds`` times, then ``Succeeded`` or ``Failed`` with an ``error``; the client then GETs the
  pool. DELETE -> 202 with ``Azure-AsyncOperation`` and ``Location``, polled the same way; DELETE of
  a missing pool -> 204. A second PUT/DELETE while an operation runs -> 409 ``OperationNotAllowed``.
- What AKS adds by itself: ``provisioningState``, powerState, versions; for Spot pools the
  ``kubernetes.azure.com/scalesetpriority=spot:NoSchedule`` taint and label.
- Faults on demand (:meth:`FakeArm.fail`): any status/code/message for the next N matching requests
  (with ``Retry-After``), or a failure at the end of the operation (quota as ARM reports it).
- Hooks ``on_pool_ready(pool)`` / ``on_pool_deleted(pool)`` run when an operation succeeds (before the
  client sees ``Succeeded``); :func:`attach_kube` uses them to add/remove the pool's Nodes — AKS
  labels (``kubernetes.azure.com/agentpool``, instance type, mode, OS SKU), the pool's nodeLabels and
  nodeTaints, GPU count/product/memory from the SKU catalog. ``on_request(recorded)`` runs with
  each request before it is answered. Hook exceptions go to ``hook_errors``; those and exceptions
  while handling a request (answered 500) fail the test (``internal_errors()``, tests/conftest.py).
- Requests are recorded (method, path, query, JSON body, status); the Authorization header is not.

What it does not model: Azure AD (any bearer token passes unless ``token`` is set), other resource
providers (Compute quotas, VM SKU lists), ARM's own throttling counters, regions/zones, the managed
cluster's PUT, node-image upgrades, autoscaling, scaling an existing pool's VMs one by one (a count
change is one operation), etag/if-match semantics, pagination of lists, and ``Location``-header
polling (only ``Azure-AsyncOperation``, which is what AKS sends).
"""

from tests.support.fakearm.nodes import attach_kube, gpu_shape, node_labels, node_names, node_taints
from tests.support.fakearm.server import SUPPORTED_API_VERSIONS, FakeArm, Fault, Recorded

__all__ = [
    "FakeArm", "Fault", "Recorded", "SUPPORTED_API_VERSIONS",
    "attach_kube", "gpu_shape", "node_labels", "node_names", "node_taints",
]
