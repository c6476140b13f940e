"""The Kubernetes platform: a workspace as NodeClaims, a tuning Job, a StatefulSet and a Service.

    manifests.py   PURE: Workspace + plan -> the objects, in apply order (also what --dry-run prints)
    client.py      the official ``kubernetes`` client from settings (kubeconfig/context/in-cluster),
                   namespace resolution, one generic request helper with retries on transient faults
    errors.py      ApiException / urllib3 faults -> kaiflow errors (transient or with what to do)
    apply.py       server-side apply (fieldManager "kaiflow"), delete, watch-based waits
    platform.py    what the tasks call: provision, run_tuning, deploy, teardown, logs, write_status

Nothing here is imported on the local path or by ``kaiflow --help``: the ``kubernetes`` package
loads only inside these modules' functions.
"""
