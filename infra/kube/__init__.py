"""The Kubernetes platform: a workspace as NodeClaims, a tuning Job, a StatefulSet and a Service.

    manifests.py   PURE: Workspace + plan -> the objects, in apply order (also what --dry-run prints)
    client.py      the official ``kubernetes`` client from settings (kubeconfig/context/in-cluster),
                   namespace resolution, one generic request helper with retries on transient faults
    errors.py      ApiException / urllib3 faults -> kaiflow errors (transient or with what to do)
    apply.py       server-side apply (fieldManager "kaiflow"), delete, watch-based waits
    objects.py     reading status: conditions, a workspace's pods, container states
    crstatus.py    the Workspace CR: owner of it all; its status mirrored from the record (CrMirror)
    nodes.py       node sources: Karpenter NodeClaims, your own labelled nodes, AKS agent pools
    jobs.py        tuning and evaluation Jobs: reuse by cache key, failures, termination messages
    inference.py   StatefulSet + Service: apply, readiness, snapshot and rollback
    views.py       what get/describe/logs show; deleting the workspace's objects by label

The platform the tasks call (``infra.platforms.kubernetes``) puts these together; state goes in
and out of these modules as parameters and return values, progress through a status sink.

Nothing here is imported on the local path or by ``kaiflow --help``: the ``kubernetes`` package
loads only inside these modules' functions.
"""
