"""A fake Kubernetes API server for tests, driven by the real ``kubernetes`` client over HTTP.

Why: no kube-apiserver, kind, k3s, kwok or envtest can be installed on the machines the tests run
on, yet kaiflow's Kubernetes platform must be tested against what an API server really answers —
validation errors, conflicts, watches — not against patched client methods.

    from tests.support.fakekube import FakeKube

    kube = FakeKube(versions=("1.30", "1.34")).start()
    kube.write_kubeconfig(tmp_path / "kubeconfig", namespace="default")
    kubernetes.config.load_kube_config(str(tmp_path / "kubeconfig"))
    ...; kube.get("batch/v1", "Job", "tune", "default"); kube.stop()

What it models:
- Discovery (``/api``, ``/api/v1``, ``/apis``, ``/apis/<group>[/<version>]``, ``/version``), enough
  for ``kubernetes.dynamic.DynamicClient``.
- Core v1 namespaces, nodes, pods (``/log``, ``/status``), services, configmaps, secrets,
  serviceaccounts, events, persistentvolumeclaims; apps/v1 statefulsets and deployments;
  batch/v1 jobs; rbac v1 roles, rolebindings, clusterroles, clusterrolebindings;
  apiextensions.k8s.io/v1 CRDs, and the custom resources of installed CRDs (404 until then) with
  their ``/status`` subresource. Multi-version CRDs store one object read at any served version
  (no conversion, like ``conversion: None``).
- Verbs: create (``generateName``, 409 AlreadyExists, 404 for a missing namespace), get, list
  (label selectors ``=, ==, !=, in, notin, exists, !exists``; field selectors on metadata.name and
  a few more), replace with resourceVersion checks (409), merge / strategic-merge (a subset:
  lists merged by key for containers, env, ports, volumes, volume mounts, conditions, ...) /
  JSON patches, server-side apply (``fieldManager`` required, ``force``, creates when absent,
  unchanged applies keep the resourceVersion, fields a manager stops applying are removed,
  conflicts only between apply managers), delete (returns the object; ``propagationPolicy``
  Background/Foreground delete dependents by ownerReferences at once, Orphan strips the
  references; batch/v1 Jobs default to Orphan as on a real server), deletecollection, watch
  (chunked JSON lines ADDED/MODIFIED/DELETED, ending at ``timeoutSeconds``; an ERROR 410 Expired
  event for a resourceVersion older than the event log), ``dryRun=All``.
- What the real ``kubectl`` needs (tests/kubectl): aggregated discovery (apidiscovery.k8s.io/v2,
  asked for by kubectl 1.30+ with ``Accept: ...;as=APIGroupDiscoveryList``; legacy documents
  otherwise), the ``all`` category on pods, services, statefulsets, deployments and jobs, OpenAPI v3 (``openapi.py``: built from the schemas below; PATCH operations
  list ``fieldValidation`` so ``--validate=strict`` is done by the server, which answers unknown
  fields 400 "strict decoding error" under ``fieldValidation=Strict``; strategic merge patch offered
  for built-ins only, so client-side apply sends CRDs a JSON merge patch), server-side printing
  (``tables.py``: ``Accept: ...;as=Table;g=meta.k8s.io`` answered with the built-in printers' columns
  or a CRD's additionalPrinterColumns; watches too, for ``kubectl get -w``), the ``scale`` subresource (StatefulSet, Deployment, CRDs
  declaring ``subresources.scale``; autoscaling/v1 Scale), finalizers (a delete of an object with
  finalizers sets ``deletionTimestamp`` and keeps it until an update removes the last one; no new
  finalizers once deleting), watch headers flushed at once (client-go reflectors wait for them).
- Validation of every write: built-in kinds with ``kubernetes_validate`` (strict) for each version
  in ``versions``; custom resources against the CRD's openAPIV3Schema with unknown fields
  **rejected** (never pruned) and ``default`` values filled in; a few semantic rules (Job
  restartPolicy, selector must match template labels, immutable Job template and workload
  selectors, CRD naming). Failures are 422 ``reason: Invalid`` Status bodies with ``causes``.
- metadata: uid, creationTimestamp, a global resourceVersion counter, generation bumped on changes
  outside metadata/status.
- Controllers (a background thread, see ``controllers.py``): NodeClaim → Node with GPU capacity
  (or a Launched=False failure), Job → Pod → Succeeded/Failed (``initContainerStatuses``; the str
  ``on_job_complete`` returns as the main containers' termination message; a named failing
  container), StatefulSet/Deployment → ready pods,
  a scheduler that only checks nodeSelector / required node affinity, taints/tolerations and
  ``nvidia.com/gpu`` allocatable, and pod failures on demand (ImagePullBackOff, Unschedulable,
  CrashLoopBackOff).
- HTTPS on a second port (``kube.serve_tls()``: ``tls_url``, ``ca_pem``) for in-cluster clients; the podman
  kubelet then mounts each pod's service-account token and ``ca.crt`` (tests/containers). Each
  request is kept in ``kube.requests`` with the listener it came in on and its bearer token.
- Faults on demand: ``fail_next`` (status and/or delay per method + regex on the URL path, query
  excluded; ``status=0`` with ``delay_s`` serves the request after the delay), ``conflict_next``
  (any write of the object, creates included, answers 409 Conflict).

Beyond the interface others code against: ``kube.create(obj)`` / ``kube.install_crd(path)`` (set-up
straight into the store, validated), ``kube.store`` (state, resourceVersions, event log),
``kube.controllers.step()`` / ``.errors`` / ``.interval_s``, ``controllers.INSTANCE_TYPES`` (the GPU
table NodeClaims use), ``printer.columns(crd, obj)`` (``kubectl get`` columns of a custom resource),
and the pytest fixtures in ``fixtures.py``. Client quirks the tests found (real client, not the
fake): ``read_namespaced_pod_log`` returns ``"b'...'"`` unless called with
``_preload_content=False``; urllib3 retries a timed-out GET by itself but not a POST/PATCH.

What it does NOT model: authentication and RBAC enforcement (any token is accepted), admission
webhooks and admission plugins (no LimitRanges, quotas, pod security), CEL validation rules and
``format`` checks in CRD schemas, CRD conversion webhooks, managedFields (apply ownership is kept
as each manager's last applied configuration), graceful deletion of pods (no grace period), the
``foregroundDeletion`` finalizer (Foreground deletes dependents at once), real scheduling (no CPU/memory accounting, affinity other than
required node affinity, topology spread or preemption), container execution (pods never run
anything; ``pods/NAME/log`` returns ``kube.pod_logs[name]`` or a line naming the command),
``exec``/``attach``/``port-forward``/``proxy``, ``fieldValidation=Ignore/Warn`` (unknown fields are always refused), OpenAPI v2, protobuf and CBOR
request bodies (answered 415: ``kubectl create deployment|service|configmap ...`` use kubectl's typed
client, which sends protobuf; ``kubectl apply/create -f`` send JSON), pagination (``limit``/``continue`` ignored: lists are complete), bookmarks, and most
built-in defaulting (only the defaults listed in ``defaults.py``).
"""

from tests.support.fakekube.kube import FakeKube
from tests.support.fakekube.server import Request

__all__ = ["FakeKube", "Request"]
