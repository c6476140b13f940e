"""The fake ARM server itself: AKS agent pools over HTTPS with long-running operations.

See the package docstring for what it models. Everything here is stdlib HTTP plus ``certs``.
"""

from __future__ import annotations

import json
import re
import shutil
import ssl
import tempfile
import threading
import traceback
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from tests.support import fake_errors
from tests.support.fakearm import certs

# What azure-mgmt-containerservice 41.8 sends (its default api-version); others get ARM's 400.
SUPPORTED_API_VERSIONS = ("2026-08-01",)
PROVIDER = "Microsoft.ContainerService"
POOL_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,11}$")
TAINT_RE = re.compile(r"^[A-Za-z0-9./_-]+=[A-Za-z0-9._-]*:(NoSchedule|PreferNoSchedule|NoExecute)$")
# Agent pool properties a client may write (the 2026-08-01 schema's writable ones that matter here).
WRITABLE = {
    "count", "vmSize", "osDiskSizeGB", "osDiskType", "osType", "osSKU", "maxPods", "type", "mode",
    "enableAutoScaling", "minCount", "maxCount", "nodeLabels", "nodeTaints", "tags", "availabilityZones",
    "scaleSetPriority", "scaleSetEvictionPolicy", "spotMaxPrice", "orchestratorVersion", "vnetSubnetID",
    "enableNodePublicIP", "kubeletDiskType", "upgradeSettings", "gpuInstanceProfile", "gpuProfile",
}
IMMUTABLE = ("vmSize", "osType", "osDiskSizeGB", "scaleSetPriority")
SPOT_TAINT = "kubernetes.azure.com/scalesetpriority=spot:NoSchedule"


@dataclass
class Recorded:
    """One request as the fake saw it (the Authorization header is never kept, only whether it was there)."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    status: int = 0
    bearer: bool = False


@dataclass
class Fault:
    """An answer on demand: ``times`` requests matching ``method`` and ``path_re`` get it.

    ``at="request"`` answers the request itself with ``status``; ``at="operation"`` accepts a PUT/DELETE
    and fails its long-running operation with ``code``/``message`` (as ARM does for quota errors)."""

    method: str
    status: int
    code: str
    message: str
    times: int = 1
    at: str = "request"
    retry_after: int | None = None
    path_re: str = ".*"


@dataclass
class _Operation:
    kind: str  # "create" | "delete"
    pool: str
    rounds_left: int
    error: dict | None = None
    status: str = "InProgress"


@dataclass
class FakeArm:
    """A fake Azure Resource Manager for one AKS cluster (see the package docstring)."""

    subscription: str = "00000000-0000-4000-8000-000000000001"
    resource_group: str = "kaiflow-rg"
    cluster: str = "kaiflow-aks"
    location: str = "eastus"
    poll_rounds: int = 1
    token: str | None = None
    api_versions: tuple[str, ...] = SUPPORTED_API_VERSIONS
    on_pool_ready: Callable[[dict], None] | None = None
    on_pool_deleted: Callable[[dict], None] | None = None
    # called with each request, recorded and before it is answered (under the fake's lock): a test
    # changes the fake's state "after N requests" instead of after some seconds
    on_request: Callable[[Recorded], None] | None = None
    requests: list[Recorded] = field(default_factory=list)
    pools: dict[str, dict] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    hook_errors: list[BaseException] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.handler_errors: list[str] = []  # exceptions inside request handling (answered 500)
        fake_errors.register(self)
        self._ops: dict[str, _Operation] = {}
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._dir = Path(tempfile.mkdtemp(prefix="fakearm-"))
        self.ca_file, self._key_file = certs.make_self_signed(self._dir)

    # ------------------------------------------------------------ life cycle

    def start(self) -> "FakeArm":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.ca_file, self._key_file)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fakearm", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "FakeArm":
        return self.start()

    def internal_errors(self) -> list[str]:
        """Exceptions raised inside the fake: its hooks, its request handling."""
        return [f"hook: {e!r}" for e in self.hook_errors] + [f"handler: {e}" for e in self.handler_errors]

    def clear_internal_errors(self) -> None:
        self.hook_errors.clear()
        self.handler_errors.clear()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server, "start() first"
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    @property
    def cluster_path(self) -> str:
        return (f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}"
                f"/providers/{PROVIDER}/managedClusters/{self.cluster}")

    # ------------------------------------------------------------ test controls

    def fail(self, method: str, status: int, code: str, message: str, *, times: int = 1, at: str = "request",
             retry_after: int | None = None, path_re: str = ".*") -> Fault:
        """Queue a fault (see :class:`Fault`); returns it (its ``times`` counts down as it is used)."""
        fault = Fault(method.upper(), status, code, message, times, at, retry_after, path_re)
        with self._lock:
            self.faults.append(fault)
        return fault

    def seed_pool(self, name: str, properties: dict, state: str = "Succeeded") -> dict:
        """Put a pool in place as if created earlier (no hooks run)."""
        with self._lock:
            pool = self._pool_json(name, dict(properties), state)
            self.pools[name] = pool
            return pool

    def pool_requests(self, method: str | None = None, pool: str | None = None) -> list[Recorded]:
        """Requests to agent pools (not to operations), optionally one method / one pool."""
        out = [r for r in self.requests if "/agentPools" in r.path]
        if method:
            out = [r for r in out if r.method == method.upper()]
        if pool:
            out = [r for r in out if r.path.endswith(f"/agentPools/{pool}")]
        return out

    # ------------------------------------------------------------ request handling

    def handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> tuple[int, dict, Any]:
        parts = urlsplit(raw_path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        auth = headers.get("Authorization", "")
        rec = Recorded(method, parts.path, query, parsed, bearer=auth.startswith("Bearer "))
        with self._lock:
            self.requests.append(rec)
            self._run_hook(self.on_request, rec)
            status, extra, payload = self._route(method, parts.path, query, auth, parsed, body)
        rec.status = status
        return status, extra, payload

    def _route(self, method: str, path: str, query: dict, auth: str, body: Any, raw: bytes) -> tuple[int, dict, Any]:
        if not auth.startswith("Bearer ") or (self.token and auth != f"Bearer {self.token}"):
            return _err(401, "InvalidAuthenticationToken", "The access token is missing or invalid.")
        if query.get("api-version") not in self.api_versions:
            return _err(400, "InvalidApiVersionParameter",
                        f"The api-version '{query.get('api-version')}' is invalid. The supported versions are "
                        f"'{', '.join(self.api_versions)}'.")
        fault = self._take_fault(method, path, "request")
        if fault:
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            status, extra, payload = _err(fault.status, fault.code, fault.message)
            return status, {**extra, **headers}, payload
        op = re.fullmatch(rf"/subscriptions/{self.subscription}/providers/{PROVIDER}/locations/{self.location}"
                          r"/operations/([0-9a-f-]+)", path)
        if op and method == "GET":
            return self._operation_status(op.group(1))
        if not path.lower().startswith(self.cluster_path.lower()):
            return _err(404, "ResourceNotFound",
                        f"The Resource '{PROVIDER}/managedClusters/...' under resource group '...' was not found.")
        rest = path[len(self.cluster_path):]
        if rest == "" and method == "GET":
            return 200, {}, self._cluster_json()
        if rest == "/agentPools" and method == "GET":
            return 200, {}, {"value": list(self.pools.values())}
        m = re.fullmatch(r"/agentPools/([^/]+)", rest)
        if not m:
            return _err(404, "NotFound", f"{method} {path} is not modelled by the fake ARM")
        name = m.group(1)
        if method == "GET":
            return (200, {}, self.pools[name]) if name in self.pools else _err(
                404, "NotFound", f"agentPool {name} not found in managed cluster {self.cluster}")
        if method == "PUT":
            return self._put_pool(name, body, raw)
        if method == "DELETE":
            return self._delete_pool(name)
        return _err(405, "MethodNotAllowed", f"{method} is not allowed here")

    def _take_fault(self, method: str, path: str, at: str) -> Fault | None:
        for fault in self.faults:
            if fault.times > 0 and fault.at == at and fault.method == method and re.search(fault.path_re, path):
                fault.times -= 1
                return fault
        return None

    def _busy(self, name: str) -> bool:
        return any(op.pool == name and op.status == "InProgress" for op in self._ops.values())

    def _put_pool(self, name: str, body: Any, raw: bytes) -> tuple[int, dict, Any]:
        problem = self._validate_put(name, body)
        if problem:
            return _err(400, *problem)
        if self._busy(name):
            return _err(409, "OperationNotAllowed",
                        f"Operation is not allowed because there's an in progress operation on agent pool {name}. "
                        "Please wait for it to finish before starting a new operation.")
        props = dict(body["properties"])
        old = self.pools.get(name)
        if old:
            for key in IMMUTABLE:
                if key in props and props[key] != old["properties"].get(key):
                    return _err(400, "PropertyChangeNotAllowed", f"Changing property '{key}' is not allowed.")
        fault = self._take_fault("PUT", f"{self.cluster_path}/agentPools/{name}", "operation")
        pool = self._pool_json(name, props, "Updating" if old else "Creating")
        self.pools[name] = pool
        error = {"code": fault.code, "message": fault.message} if fault else None
        return (200 if old else 201), self._start_op("create", name, error), pool

    def _delete_pool(self, name: str) -> tuple[int, dict, Any]:
        if name not in self.pools:
            return 204, {}, None
        if self._busy(name):
            return _err(409, "OperationNotAllowed",
                        f"Operation is not allowed because there's an in progress operation on agent pool {name}.")
        fault = self._take_fault("DELETE", f"{self.cluster_path}/agentPools/{name}", "operation")
        self.pools[name]["properties"]["provisioningState"] = "Deleting"
        headers = self._start_op("delete", name, {"code": fault.code, "message": fault.message} if fault else None)
        headers["Location"] = headers["Azure-AsyncOperation"].replace("/operations/", "/operationresults/")
        return 202, headers, None

    def _validate_put(self, name: str, body: Any) -> tuple[str, str] | None:
        if not POOL_NAME_RE.match(name):
            return ("InvalidParameter", f"The value of parameter agentPoolProfile.name is invalid: '{name}'. Linux "
                    "agent pool names must start with a lowercase letter, have at most 12 characters and contain "
                    "only lowercase letters and numbers.")
        if not isinstance(body, dict) or not isinstance(body.get("properties"), dict):
            return ("InvalidRequestContent", "The request content must be an agent pool with 'properties'.")
        props = body["properties"]
        unknown = sorted(set(props) - WRITABLE)
        if unknown:
            return ("InvalidRequestContent", f"Could not find member(s) {unknown} on object of type 'AgentPoolProperties'.")
        checks = [
            (isinstance(props.get("vmSize"), str) and props["vmSize"], "vmSize is required"),
            (isinstance(props.get("count"), int) and 0 <= props["count"] <= 1000, "count must be an integer 0-1000"),
            (props.get("mode", "User") in ("System", "User", "Gateway"), "mode must be System, User or Gateway"),
            (props.get("osSKU", "Ubuntu") in ("Ubuntu", "AzureLinux", "Ubuntu2204", "Ubuntu2404", "AzureLinux3"),
             f"osSKU {props.get('osSKU')!r} is not supported"),
            (props.get("osDiskSizeGB") is None or (isinstance(props["osDiskSizeGB"], int) and 30 <= props["osDiskSizeGB"] <= 2048),
             "osDiskSizeGB must be an integer 30-2048"),
            (all(isinstance(t, str) and TAINT_RE.match(t) for t in props.get("nodeTaints") or []),
             f"nodeTaints {props.get('nodeTaints')} must be key=value:Effect"),
            (all(isinstance(v, str) for v in (props.get("nodeLabels") or {}).values()), "nodeLabels values must be strings"),
            (props.get("scaleSetPriority", "Regular") in ("Regular", "Spot"), "scaleSetPriority must be Regular or Spot"),
            (props.get("scaleSetPriority") == "Spot" or ("spotMaxPrice" not in props and "scaleSetEvictionPolicy" not in props),
             "spotMaxPrice and scaleSetEvictionPolicy are only allowed with scaleSetPriority Spot"),
        ]
        for ok, message in checks:
            if not ok:
                return ("InvalidParameter", message)
        return None

    def _start_op(self, kind: str, pool: str, error: dict | None) -> dict:
        op_id = str(uuid.uuid4())
        self._ops[op_id] = _Operation(kind, pool, self.poll_rounds, error)
        url = (f"{self.url}/subscriptions/{self.subscription}/providers/{PROVIDER}/locations/{self.location}"
               f"/operations/{op_id}?api-version={self.api_versions[0]}")
        return {"Azure-AsyncOperation": url, "Retry-After": "0"}

    def _operation_status(self, op_id: str) -> tuple[int, dict, Any]:
        op = self._ops.get(op_id)
        if op is None:
            return _err(404, "NotFound", f"operation {op_id} not found")
        if op.status == "InProgress":
            if op.rounds_left > 0:
                op.rounds_left -= 1
            else:
                self._finish(op)
        body: dict[str, Any] = {"id": op_id, "name": op_id, "status": op.status}
        if op.error and op.status == "Failed":
            body["error"] = op.error
        return 200, {}, body

    def _finish(self, op: _Operation) -> None:
        pool = self.pools.get(op.pool)
        if op.error:
            op.status = "Failed"
            if pool is not None:
                pool["properties"]["provisioningState"] = "Failed"
            return
        op.status = "Succeeded"
        if pool is None:
            return
        if op.kind == "create":
            pool["properties"]["provisioningState"] = "Succeeded"
            self._run_hook(self.on_pool_ready, pool)
        else:
            del self.pools[op.pool]
            self._run_hook(self.on_pool_deleted, pool)

    def _run_hook(self, hook: Callable[[Any], None] | None, arg: Any) -> None:
        if hook is None:
            return
        try:
            hook(json.loads(json.dumps(arg)) if isinstance(arg, dict) else arg)
        except BaseException as exc:  # noqa: BLE001 - surfaced to the test through hook_errors
            self.hook_errors.append(exc)

    # ------------------------------------------------------------ JSON shapes

    def _pool_json(self, name: str, props: dict, state: str) -> dict:
        props = dict(props)
        props.setdefault("mode", "User")
        props.setdefault("osType", "Linux")
        props.setdefault("osSKU", "Ubuntu")
        props.setdefault("type", "VirtualMachineScaleSets")
        if props.get("scaleSetPriority") == "Spot":  # AKS adds these to every spot pool by itself
            props["nodeTaints"] = list(props.get("nodeTaints") or []) + [SPOT_TAINT]
            props["nodeLabels"] = {**(props.get("nodeLabels") or {}), "kubernetes.azure.com/scalesetpriority": "spot"}
        props.update(provisioningState=state, powerState={"code": "Running"}, orchestratorVersion="1.33.2",
                     nodeImageVersion="AKSUbuntu-2204gen2containerd-202611.01.0")
        return {
            "id": f"{self.cluster_path}/agentPools/{name}",
            "name": name,
            "type": f"{PROVIDER}/managedClusters/agentPools",
            "properties": props,
        }

    def _cluster_json(self) -> dict:
        return {
            "id": self.cluster_path, "name": self.cluster, "location": self.location,
            "type": f"{PROVIDER}/ManagedClusters",
            "properties": {"provisioningState": "Succeeded", "kubernetesVersion": "1.33.2",
                           "agentPoolProfiles": [{"name": n, **p["properties"]} for n, p in self.pools.items()]},
        }


def _err(status: int, code: str, message: str) -> tuple[int, dict, Any]:
    return status, {}, {"error": {"code": code, "message": message}}


def _handler(fake: FakeArm) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            try:
                status, headers, payload = fake.handle(self.command, self.path, self.headers, body)
            except Exception as exc:  # noqa: BLE001 - a bug in the fake: recorded for the test, answered 500
                fake.handler_errors.append(f"{self.command} {self.path}: {exc!r}\n{traceback.format_exc()}")
                status, headers, payload = _err(500, "InternalServerError", f"fakearm failed: {exc!r}")
            data = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("x-ms-request-id", str(uuid.uuid4()))
            for key, value in headers.items():
                self.send_header(key, value)
            if data:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if data:
                self.wfile.write(data)

        do_GET = do_PUT = do_DELETE = do_PATCH = do_POST = _serve

        def log_message(self, *args: Any) -> None:  # quiet: tests read fake.requests instead
            pass

    return Handler
