"""HTTP for the fake: URL routing, discovery documents, verbs, watch streams, faults, request log.

Plain ``http.server`` (HTTP/1.1, keep-alive, one thread per connection) so the real
``kubernetes`` client talks to it through urllib3 exactly as it talks to a cluster. Watches are
chunked streams of JSON lines that end at ``timeoutSeconds``.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import re
import ssl
import sys
import threading
import time
import traceback
import urllib.parse
from typing import Any, Callable

import yaml

from tests.support.fakekube import openapi, resources, selectors, store, tables

CORE_PREFIX = "/api"
GROUPS_PREFIX = "/apis"
MAX_WATCH_S = 300.0
AGGREGATED = "APIGroupDiscoveryList"


DISCONNECTS = (BrokenPipeError, ConnectionResetError, ssl.SSLEOFError)   # the client went away (a watch it stopped)


@dataclasses.dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: Any
    https: bool = False    # came in on the HTTPS listener (FakeKube.serve_tls)
    token: str = ""        # the bearer token it carried (any is accepted)


@dataclasses.dataclass
class Fault:
    method: str
    path_regex: str
    status: int
    times: int
    delay_s: float
    reason: str


@dataclasses.dataclass
class Route:
    rtype: resources.ResourceType | None
    namespace: str | None
    name: str | None
    subresource: str | None


class ApiHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True   # headers and body go out at once: no 40 ms delayed-ACK stalls per request
    wbufsize = 1 << 16
    kube: Any = None  # the FakeKube; set on a subclass per server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence per-request stderr lines
        pass

    # ---- plumbing ----
    def _send(self, code: int, body: Any, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _error(self, err: store.ApiError) -> None:
        self._send(err.code, err.status_body())

    def _read_body(self) -> tuple[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        content_type = (self.headers.get("Content-Type") or "application/json").split(";")[0].strip()
        if not raw:
            return content_type, None
        if content_type in ("application/vnd.kubernetes.protobuf", "application/cbor"):
            raise store.ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - "
                                 f"accepted media types include: application/json, application/yaml ({content_type} "
                                 "is not modelled by fakekube)")
        try:
            return content_type, json.loads(raw)
        except ValueError:
            try:
                return content_type, yaml.safe_load(raw)
            except yaml.YAMLError as err:
                raise store.ApiError(400, "BadRequest", f"the request body is neither JSON nor YAML: {err}") from None

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

    def do_PATCH(self) -> None:  # noqa: N802
        self._handle("PATCH")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))
        seen = {"https": isinstance(self.connection, ssl.SSLSocket),
                "token": (self.headers.get("Authorization") or " ").split(" ", 1)[-1]}  # "Bearer x" / "bearer x"
        try:
            content_type, body = self._read_body()
        except store.ApiError as err:
            self.kube.requests.append(Request(method, parsed.path, query, "", None, **seen))
            return self._error(err)
        self.kube.requests.append(Request(method, parsed.path, query, content_type, body, **seen))
        fault = self.kube._take_fault(method, parsed.path)
        if fault is not None:
            if fault.delay_s:
                time.sleep(fault.delay_s)
            if fault.status:
                return self._error(store.ApiError(fault.status, fault.reason, f"injected fault: {fault.reason}"))
        try:
            self._dispatch(method, parsed.path, query, content_type, body)
        except store.ApiError as err:
            self._error(_strict_decoding(err, query))
        except DISCONNECTS:
            pass
        except Exception as err:  # noqa: BLE001 - a bug in the fake: recorded for the test, answered 500
            self.kube.handler_errors.append(f"{method} {parsed.path}: {err!r}\n{traceback.format_exc()}")
            try:
                self._error(store.ApiError(500, "InternalError", f"fakekube handler failed: {err!r}"))
            except OSError:
                pass

    # ---- routing ----
    def _dispatch(self, method: str, path: str, query: dict[str, str], content_type: str, body: Any) -> None:
        path = path.rstrip("/") or "/"
        if method == "GET" and (path == "/openapi/v3" or path.startswith("/openapi/v3/")):
            return self._openapi(path)
        if method == "GET" and path in (CORE_PREFIX, GROUPS_PREFIX) and AGGREGATED in (self.headers.get("Accept") or ""):
            return self._send(200, self._aggregated(path), f"application/json;g=apidiscovery.k8s.io;v=v2;as={AGGREGATED}")
        discovery = self._discovery(path) if method == "GET" else None
        if discovery is not None:
            return self._send(200, discovery)
        route = self._route(path)
        if route.rtype is None:
            raise store.ApiError(404, "NotFound", "the server could not find the requested resource")
        verbs: dict[str, Callable[..., None]] = {"GET": self._get, "POST": self._post, "PUT": self._put,
                                                  "PATCH": self._patch, "DELETE": self._delete}
        verbs[method](route, query, content_type, body)

    def _route(self, path: str) -> Route:
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif parts[0] == "apis" and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return Route(None, None, None, None)
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces" and self.kube.store.type_for_path(group, version, rest[2]):
            namespace, rest = rest[1], rest[2:]
        if not rest:
            return Route(None, None, None, None)
        rtype = self.kube.store.type_for_path(group, version, rest[0])
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if rtype is None or len(rest) > 3 or (sub and sub not in rtype.subresources):
            return Route(None, None, None, None)
        return Route(rtype, namespace, name, sub)

    def _discovery(self, path: str) -> dict[str, Any] | None:
        st = self.kube.store
        with st.lock:
            if path == "/version":
                major, minor = self.kube.versions[-1].split(".")[:2]
                return {"major": major, "minor": minor, "gitVersion": f"v{major}.{minor}.0-fakekube",
                        "gitCommit": "fakekube", "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z",
                        "goVersion": "go1.22", "compiler": "gc", "platform": "linux/amd64"}
            if path == CORE_PREFIX:
                return {"kind": "APIVersions", "versions": ["v1"],
                        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}
            if path == GROUPS_PREFIX:
                groups = []
                for group, versions in st.group_versions().items():
                    if not group:
                        continue
                    gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
                    groups.append({"name": group, "versions": gvs, "preferredVersion": self._preferred(group, gvs)})
                return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
            m = re.fullmatch(r"/apis/([^/]+)", path)
            if m and m.group(1) in st.group_versions():
                gvs = [{"groupVersion": f"{m.group(1)}/{v}", "version": v} for v in st.group_versions()[m.group(1)]]
                return {"kind": "APIGroup", "apiVersion": "v1", "name": m.group(1), "versions": gvs,
                        "preferredVersion": self._preferred(m.group(1), gvs)}
            m = re.fullmatch(r"/api/(v1)|/apis/([^/]+)/([^/]+)", path)
            if m:
                group, version = ("", "v1") if m.group(1) else (m.group(2), m.group(3))
                types = [t for t in st.types if t.group == group and t.version == version]
                if not types:
                    return None
                entries = [e for t in types for e in t.discovery_entry()]
                return {"kind": "APIResourceList", "apiVersion": "v1",
                        "groupVersion": f"{group}/{version}" if group else version, "resources": entries}
        return None

    def _aggregated(self, path: str) -> dict[str, Any]:
        """Aggregated discovery (apidiscovery.k8s.io/v2, what kubectl 1.30+ asks for first): every group,
        version and resource in one document; versions in preference order."""
        st = self.kube.store
        items = []
        with st.lock:
            for group, versions in st.group_versions().items():
                if (path == CORE_PREFIX) != (group == ""):
                    continue
                gvs = [{"groupVersion": f"{group}/{v}" if group else v, "version": v} for v in versions]
                preferred = self._preferred(group, gvs)["version"]
                ordered = [preferred] + [v for v in versions if v != preferred]
                entries = []
                for version in ordered:
                    resources_ = [t.aggregated_entry() for t in st.types if t.group == group and t.version == version]
                    entries.append({"version": version, "resources": resources_, "freshness": "Current"})
                items.append({"metadata": {"name": group}, "versions": entries})
        return {"kind": AGGREGATED, "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items}

    def _preferred(self, group: str, gvs: list[dict[str, str]]) -> dict[str, str]:
        """A CRD group's preferred version is its highest by Kubernetes' version order (v1 > v1beta2 >
        v1beta1 > v1alpha1), as the apiextensions server ranks them: not the storage version."""
        if any(t.group == group and t.custom for t in self.kube.store.types):
            return min(gvs, key=lambda gv: _kube_aware_key(gv["version"]))
        return gvs[0]

    def _openapi(self, path: str) -> None:
        st = self.kube.store
        version = self.kube.versions[-1]
        with st.lock:
            types = list(st.types)
        if path == "/openapi/v3":
            return self._send(200, openapi.root(types, version))
        parts = path[len("/openapi/v3/"):].split("/")
        if parts == ["api", "v1"]:
            doc = openapi.group_version(types, "", "v1", version)
        elif len(parts) == 3 and parts[0] == "apis":
            doc = openapi.group_version(types, parts[1], parts[2], version)
        else:
            doc = None
        if doc is None:
            raise store.ApiError(404, "NotFound", f"no OpenAPI v3 document for {path}")
        self._send(200, doc)

    # ---- verbs ----
    def _get(self, route: Route, query: dict[str, str], content_type: str, body: Any) -> None:
        st = self.kube.store
        as_table = tables.wants_table(self.headers.get("Accept"))
        if route.name is None:
            if query.get("watch", "").lower() in ("true", "1"):
                return self._watch(route, query)
            listed = self._list(route, query)
            if as_table:
                return self._send(200, tables.table(route.rtype, listed["items"], listed["metadata"]["resourceVersion"],
                                                    query.get("includeObject") or "Metadata"))
            return self._send(200, listed)
        if route.subresource == "log":
            return self._log(route, query)
        if route.subresource == "scale":
            return self._send(200, st.get_scale(route.rtype, route.namespace, route.name))
        obj = st.get(route.rtype, route.namespace, route.name)
        if as_table and route.subresource is None:
            return self._send(200, tables.table(route.rtype, [obj], obj["metadata"].get("resourceVersion", ""),
                                                query.get("includeObject") or "Metadata"))
        self._send(200, obj)

    def _predicate(self, query: dict[str, str]) -> Callable[[dict[str, Any]], bool]:
        try:
            labels = selectors.parse_label_selector(query.get("labelSelector"))
            fields = selectors.parse_field_selector(query.get("fieldSelector"))
        except selectors.SelectorError as err:
            raise store.ApiError(400, "BadRequest", str(err)) from None
        return lambda obj: labels(obj.get("metadata", {}).get("labels") or {}) and fields(obj)

    def _list(self, route: Route, query: dict[str, str]) -> dict[str, Any]:
        st = self.kube.store
        with st.lock:
            items = st.list(route.rtype, route.namespace, self._predicate(query))
            rv = st.rv
        return {"kind": f"{route.rtype.kind}List", "apiVersion": route.rtype.api_version,
                "metadata": {"resourceVersion": str(rv)}, "items": items}

    def _log(self, route: Route, query: dict[str, str]) -> None:
        pod = self.kube.store.get(route.rtype, route.namespace, route.name)
        text = self.kube.pod_logs.get(route.name)
        if text is None:
            containers = pod.get("spec", {}).get("containers") or [{}]
            wanted = query.get("container") or containers[0].get("name")
            container = next((c for c in containers if c.get("name") == wanted), containers[0])
            command = " ".join((container.get("command") or []) + (container.get("args") or []))
            text = f"fakekube: container {container.get('name')} ran: {command or container.get('image')}\n"
        if query.get("tailLines"):
            text = "".join(text.splitlines(keepends=True)[-int(query["tailLines"]):])
        self._send(200, text.encode(), "text/plain")

    def _post(self, route: Route, query: dict[str, str], content_type: str, body: Any) -> None:
        if route.name is not None:
            raise store.ApiError(405, "MethodNotAllowed", "POST is only allowed on collections")
        if not isinstance(body, dict):
            raise store.ApiError(400, "BadRequest", "the request body must be an object")
        self._check_body_type(route, body)
        self.kube.store.check_conflict_fault(route.rtype, (body.get("metadata") or {}).get("name") or "")
        created = self.kube.store.create(route.rtype, body, route.namespace, dry_run=_dry_run(query))
        self._send(201, created)

    def _check_body_type(self, route: Route, body: dict[str, Any]) -> None:
        kind, api_version = body.get("kind"), body.get("apiVersion")
        if kind and kind != route.rtype.kind:
            raise store.ApiError(400, "BadRequest", f"the body kind {kind!r} does not match the URL's "
                                 f"resource {route.rtype.plural!r} ({route.rtype.kind})")
        if api_version and api_version != route.rtype.api_version:
            raise store.ApiError(400, "BadRequest", f"the body apiVersion {api_version!r} does not match the URL "
                                 f"({route.rtype.api_version})")

    def _put(self, route: Route, query: dict[str, str], content_type: str, body: Any) -> None:
        if route.name is None or not isinstance(body, dict):
            raise store.ApiError(400, "BadRequest", "PUT needs an object name in the URL and an object body")
        if route.subresource == "scale":
            return self._send(200, self.kube.store.update_scale(route.rtype, route.namespace, route.name, body,
                                                                None, _dry_run(query)))
        self._check_body_type(route, body)
        obj = self.kube.store.replace(route.rtype, route.namespace, route.name, body, route.subresource,
                                      dry_run=_dry_run(query))
        self._send(200, obj)

    def _patch(self, route: Route, query: dict[str, str], content_type: str, body: Any) -> None:
        if route.name is None:
            raise store.ApiError(405, "MethodNotAllowed", "PATCH needs an object name")
        if route.subresource == "scale":
            return self._send(200, self.kube.store.update_scale(route.rtype, route.namespace, route.name, body,
                                                                content_type, _dry_run(query)))
        force = query.get("force", "").lower() in ("true", "1")
        obj, created = self.kube.store.patch(route.rtype, route.namespace, route.name, body, content_type,
                                             route.subresource, query.get("fieldManager"), force, _dry_run(query))
        self._send(201 if created else 200, obj)

    def _delete(self, route: Route, query: dict[str, str], content_type: str, body: Any) -> None:
        options = body if isinstance(body, dict) else {}
        propagation = query.get("propagationPolicy") or options.get("propagationPolicy")
        if propagation is None and (query.get("orphanDependents", "").lower() == "true" or options.get("orphanDependents")):
            propagation = "Orphan"
        precondition = (options.get("preconditions") or {}).get("resourceVersion")
        st = self.kube.store
        if route.name is None:
            with st.lock:
                items = st.list(route.rtype, route.namespace, self._predicate(query))
                for item in items:
                    st.delete(route.rtype, item["metadata"].get("namespace"), item["metadata"]["name"], propagation,
                              _dry_run(query))
            return self._send(200, {"kind": f"{route.rtype.kind}List", "apiVersion": route.rtype.api_version,
                                    "metadata": {}, "items": items})
        obj = st.delete(route.rtype, route.namespace, route.name, propagation, _dry_run(query), precondition)
        self._send(200, obj)

    # ---- watch ----
    def _watch(self, route: Route, query: dict[str, str]) -> None:
        st = self.kube.store
        timeout = min(float(query.get("timeoutSeconds") or MAX_WATCH_S), MAX_WATCH_S)
        deadline = time.monotonic() + timeout
        predicate = self._predicate(query)
        namespace = route.namespace if route.rtype.namespaced else None
        rtype = route.rtype
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()      # the headers now: a client-go reflector waits for them before anything else
        with st.lock:
            since = query.get("resourceVersion") or "0"
            if since == "0":
                pending = [("ADDED", obj) for obj in st.list(rtype, namespace, predicate)]
                last = st.rv
            else:
                last = int(since)
                pending = []
                if last < st.oldest_event_rv() - 1:
                    gone = store.ApiError(410, "Expired", f"too old resource version: {last} ({st.oldest_event_rv()})")
                    pending = [("ERROR", gone.status_body())]
                    deadline = 0
        as_table = tables.wants_table(self.headers.get("Accept"))     # kubectl get -w
        include = query.get("includeObject") or "Metadata"

        def shown(event_type: str, obj: dict[str, Any]) -> tuple[str, dict[str, Any]]:
            if not as_table or event_type == "ERROR":
                return event_type, obj
            return event_type, tables.table(rtype, [obj], obj["metadata"].get("resourceVersion", ""), include)
        try:
            self._write_events([shown(t, o) for t, o in pending])
            while time.monotonic() < deadline and not self.kube.stopping:
                with st.lock:
                    events = list(st.events_since(last, rtype.storage_key))
                    if not events:
                        st.changed.wait(min(0.25, max(0.0, deadline - time.monotonic())))
                        events = list(st.events_since(last, rtype.storage_key))
                    if events:
                        last = events[-1][0]
                batch = []
                for _, event_type, obj in events:
                    if namespace and obj["metadata"].get("namespace") != namespace:
                        continue
                    if predicate(obj):
                        presented = dict(obj, apiVersion=rtype.api_version, kind=rtype.kind)
                        batch.append(shown(event_type, presented))
                self._write_events(batch)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except DISCONNECTS:
            self.close_connection = True

    def _write_events(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        for event_type, obj in events:
            line = json.dumps({"type": event_type, "object": obj}).encode() + b"\n"
            self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
        if events:
            self.wfile.flush()


def _kube_aware_key(version: str) -> tuple[int, int, int, str]:
    """Sort key of k8s.io/apimachinery's CompareKubeAwareVersionStrings (ascending = preferred first)."""
    m = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", version)
    if not m:
        return (3, 0, 0, version)
    stability = {None: 0, "beta": 1, "alpha": 2}[m.group(2)]
    return (stability, -int(m.group(1)), -int(m.group(3) or 0), version)


def _strict_decoding(err: store.ApiError, query: dict[str, str]) -> store.ApiError:
    """With ``fieldValidation=Strict`` (what kubectl sends), unknown fields answer 400 as a real server's decoder does."""
    unknown = err.unknown_fields
    if err.code != 422 or not unknown or query.get("fieldValidation") != "Strict":
        return err
    kind, version = err.details.get("kind", ""), err.details_version
    fields = ", ".join(f'unknown field "{f}"' for f in unknown)
    return store.ApiError(400, "BadRequest", f'{kind} in version "{version}" cannot be handled as a {kind}: '
                          f"strict decoding error: {fields}")


def _dry_run(query: dict[str, str]) -> bool:
    return query.get("dryRun") == "All"


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], DISCONNECTS):   # a client that hung up is not worth a traceback
            super().handle_error(request, client_address)


def start_server(kube: Any, tls: Any = None) -> tuple[Server, threading.Thread]:
    """The API on a free port of 127.0.0.1; with ``tls`` (an ``ssl.SSLContext``) over HTTPS."""
    handler = type("BoundApiHandler", (ApiHandler,), {"kube": kube})
    server = Server(("127.0.0.1", 0), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)  # handshake in the request's thread
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True,
                              name="fakekube-http")
    thread.start()
    return server, thread


