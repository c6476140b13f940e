"""`FakeKube`: the object tests hold — start/stop, kubeconfig, state for assertions, nodes, faults."""

from __future__ import annotations

import copy
import re
import threading
from pathlib import Path
from typing import Any

import yaml

from tests.support import fake_errors
from tests.support.fakekube import controllers as controllers_mod
from tests.support.fakekube import selectors, server, store

GPU = "nvidia.com/gpu"


class FakeKube:
    """A fake Kubernetes API server on 127.0.0.1 for the real ``kubernetes`` client (see the package docstring)."""

    def __init__(self, versions: tuple[str, ...] = ("1.30", "1.34"), controllers: bool = True):
        self.versions = tuple(versions)
        self.store = store.Store(self.versions)
        self.requests: list[server.Request] = []
        self.pod_logs: dict[str, str] = {}
        self.faults: list[server.Fault] = []
        self._faults_lock = threading.Lock()
        self.stopping = False
        self.controllers = controllers_mod.Controllers(self)
        self._run_controllers = controllers
        self._server: server.Server | None = None
        self._tls_server: server.Server | None = None
        self.url = ""
        self.tls_url = ""       # after serve_tls(): the same API over HTTPS
        self.ca_pem = b""       # the CA that signed its certificate (a pod's ca.crt)
        self.handler_errors: list[str] = []  # exceptions inside request handlers (answered 500)
        fake_errors.register(self)

    # ---- lifecycle ----
    def start(self) -> "FakeKube":
        self.stopping = False
        self._server, _ = server.start_server(self)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        if self._run_controllers:
            self.controllers.start()
        return self

    def serve_tls(self) -> "FakeKube":
        """Serve the same API over HTTPS too, on another port of 127.0.0.1 (``tls_url``), with a
        certificate for 127.0.0.1 signed by a CA made here (``ca_pem``): what a pod's in-cluster
        configuration (service-account token + ``ca.crt`` + ``KUBERNETES_SERVICE_HOST/PORT``) needs.
        Any bearer token is accepted, as on plain HTTP."""
        import ssl
        import tempfile

        ca_pem, cert_pem, key_pem = _self_signed_ca_and_cert("127.0.0.1")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "cert.pem").write_bytes(cert_pem + ca_pem)
            (Path(tmp) / "key.pem").write_bytes(key_pem)
            ctx.load_cert_chain(Path(tmp) / "cert.pem", Path(tmp) / "key.pem")
        self._tls_server, _ = server.start_server(self, tls=ctx)
        self.tls_url = f"https://127.0.0.1:{self._tls_server.server_address[1]}"
        self.ca_pem = ca_pem
        return self

    def stop(self) -> None:
        self.stopping = True
        self.controllers.stop()
        with self.store.lock:
            self.store.changed.notify_all()
        for srv in (self._server, self._tls_server):
            if srv is not None:
                srv.shutdown()
                srv.server_close()
        self._server = self._tls_server = None
        self.tls_url = ""

    def __enter__(self) -> "FakeKube":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def write_kubeconfig(self, path: str | Path, namespace: str = "default") -> Path:
        """A kubeconfig (context ``fakekube``) that ``kubernetes.config.load_kube_config`` loads."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "fakekube", "preferences": {},
            "clusters": [{"name": "fakekube", "cluster": {"server": self.url}}],
            "users": [{"name": "fakekube", "user": {"token": "fakekube-token"}}],
            "contexts": [{"name": "fakekube", "context": {"cluster": "fakekube", "user": "fakekube",
                                                          "namespace": namespace}}],
        }
        path.write_text(yaml.safe_dump(config))
        return path

    # ---- its own failures ----
    def internal_errors(self) -> list[str]:
        """Exceptions raised inside the fake (controllers, ``on_job_complete``, request handlers)."""
        return [f"controller: {e}" for e in self.controllers.errors] + [f"handler: {e}" for e in self.handler_errors]

    def clear_internal_errors(self) -> None:
        """Forget them (a test that breaks the fake on purpose)."""
        self.controllers.errors.clear()
        self.handler_errors.clear()

    # ---- state ----
    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        try:
            return self.store.get(self.store.find_type(api_version, kind), namespace, name)
        except store.ApiError:
            return None

    def list(self, api_version: str, kind: str, namespace: str | None = None,
             labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
        try:
            rtype = self.store.find_type(api_version, kind)
        except store.ApiError:
            return []
        match = selectors.labels_dict_selector(labels)
        return self.store.list(rtype, namespace, lambda obj: match(obj["metadata"].get("labels") or {}))

    def create(self, obj: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        """Create an object directly in the store (validated like an API create); for test set-up."""
        rtype = self.store.find_type(obj["apiVersion"], obj["kind"])
        return self.store.create(rtype, obj, namespace or obj.get("metadata", {}).get("namespace") or
                                 ("default" if rtype.namespaced else None))

    def install_crd(self, path: str | Path) -> list[dict[str, Any]]:
        """Create every CustomResourceDefinition in a YAML file; returns them."""
        docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
        return [self.create(d) for d in docs if d.get("kind") == "CustomResourceDefinition"]

    # ---- nodes ----
    def add_node(self, name: str, *, labels: dict[str, str], gpu_count: int = 1,
                 gpu_product: str = "Tesla-V100-PCIE-16GB", gpu_memory_mib: int = 16384,
                 instance_type: str | None = None, ready: bool = True,
                 taints: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """A Node with GPU capacity and GPU Feature Discovery labels (as the NVIDIA GPU operator sets them)."""
        node = controllers_mod.node_object(name, labels=labels, gpu_count=gpu_count, gpu_product=gpu_product,
                                           gpu_memory_mib=gpu_memory_mib, instance_type=instance_type, ready=ready,
                                           taints=taints)
        return self.create(node)

    def remove_node(self, name: str) -> None:
        self.store.delete(self.store.find_type("v1", "Node"), None, name)

    # ---- faults ----
    def fail_next(self, method: str, path_regex: str, status: int = 500, times: int = 1, delay_s: float = 0,
                  reason: str = "InternalError") -> None:
        """The next ``times`` requests whose method and URL path match answer ``status`` with a Status body.

        With ``delay_s`` the answer is delayed first (a client timeout shorter than that sees a
        timeout); ``status=0`` with a delay serves the request normally after the delay.
        """
        with self._faults_lock:
            self.faults.append(server.Fault(method.upper(), path_regex, status, times, delay_s, reason))

    def conflict_next(self, kind: str, name: str, times: int = 1) -> None:
        """The next ``times`` writes (PUT, PATCH, apply, DELETE) of that object answer 409 Conflict."""
        with self.store.lock:
            self.store.conflicts.append([kind.lower(), name, times])

    def _take_fault(self, method: str, path: str) -> server.Fault | None:
        with self._faults_lock:
            for fault in self.faults:
                if fault.times > 0 and fault.method in (method, "*") and re.search(fault.path_regex, path):
                    fault.times -= 1
                    return copy.copy(fault)
        return None


def _self_signed_ca_and_cert(ip: str) -> tuple[bytes, bytes, bytes]:
    """(CA certificate, a server certificate for ``ip`` signed by it, that certificate's key), PEM."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fakekube-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip)),
                                                        x509.DNSName("kubernetes.default.svc")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return (ca.public_bytes(pem), cert.public_bytes(pem),
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
