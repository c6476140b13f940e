"""infra.registry's public surface, its settings and its one lookup of named secrets.

The surface test lists what the rest of kaiflow (tasks, flows, infra.datasets, infra.pod, the
Kubernetes platform, bench/ and the tests) calls as ``registry.<name>``: splitting or renaming
inside the package must keep each of them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from infra import registry, retry
from workspace import settings as kaiflow_settings

USED_BY_KAIFLOW = {
    "push_adapter", "pull", "copy", "store_for", "qualify", "parse_reference", "for_secret",
    "credentials_from_docker_config", "resolve_credentials", "RegistrySettings", "Credentials", "RegistryStore",
    "LayoutStore", "Store", "PullResult", "Reference", "ADAPTER_FILES", "OCI_MANIFEST", "OCI_CONFIG", "OCI_LAYER_TGZ",
}


def test_the_names_kaiflow_uses_are_exported():
    assert USED_BY_KAIFLOW <= set(registry.__all__)
    assert all(getattr(registry, name, None) is not None for name in registry.__all__)


def test_each_store_implements_every_primitive_of_the_protocol():
    for cls in (registry.LayoutStore, registry.RegistryStore):
        for name in ("parse", "has_blob", "put_blob", "iter_blob", "put_manifest", "get_manifest"):
            assert name in vars(cls), (cls.__name__, name)


def test_settings_come_from_kaiflow_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("KAIFLOW_HOME", str(tmp_path / "home"))
    for var in ("KAIFLOW_OCI_LAYOUT_ROOT", "KAIFLOW_REGISTRY", "KAIFLOW_INSECURE_REGISTRIES", "KAIFLOW_DOCKER_CONFIG",
                "KAIFLOW_REGISTRY_ATTEMPTS", "KAIFLOW_REGISTRY_BACKOFF_S"):
        monkeypatch.delenv(var, raising=False)
    default = registry.RegistrySettings.from_env()
    assert default.layout_root == tmp_path / "home" / "oci-layout" == registry.RegistrySettings().layout_root
    assert (default.registry, default.insecure_registries, default.docker_config) == (None, (), None)
    assert (default.attempts, default.backoff_s) == (5, 0.5)

    monkeypatch.setenv("KAIFLOW_OCI_LAYOUT_ROOT", str(tmp_path / "layouts"))
    monkeypatch.setenv("KAIFLOW_REGISTRY", "myacr.azurecr.io")
    monkeypatch.setenv("KAIFLOW_INSECURE_REGISTRIES", " lab.local:5000, ,mirror.lan ")
    monkeypatch.setenv("KAIFLOW_DOCKER_CONFIG", str(tmp_path / "config.json"))
    monkeypatch.setenv("KAIFLOW_REGISTRY_ATTEMPTS", "2")
    monkeypatch.setenv("KAIFLOW_REGISTRY_BACKOFF_S", "0.2")
    s = registry.RegistrySettings.from_env()
    assert s.layout_root == tmp_path / "layouts" and s.registry == "myacr.azurecr.io"
    assert s.insecure_registries == ("lab.local:5000", "mirror.lan")
    assert s.docker_config == tmp_path / "config.json"
    assert s.retry_policy() == retry.Policy(attempts=2, backoff_s=0.2, max_backoff_s=10.0)


def test_the_registry_password_is_a_secret_of_the_settings(monkeypatch):
    monkeypatch.setenv("KAIFLOW_REGISTRY_USERNAME", "robot")
    monkeypatch.setenv("KAIFLOW_REGISTRY_PASSWORD", "hunter2-Pa55")
    config = kaiflow_settings.load()
    assert "hunter2" not in repr(config) and "hunter2" not in str(config.model_dump())
    creds = registry.resolve_credentials("myacr.azurecr.io", registry.RegistrySettings(docker_config=None))
    assert (creds.username, creds.password) == ("robot", "hunter2-Pa55") and "hunter2" not in repr(creds)
    assert creds.source == "KAIFLOW_REGISTRY_USERNAME/KAIFLOW_REGISTRY_PASSWORD"


def test_for_secret_finds_a_named_secret_under_kaiflow_home(monkeypatch, tmp_path):
    monkeypatch.setenv("KAIFLOW_HOME", str(tmp_path))
    secrets = tmp_path / "secrets"
    config = {"auths": {"myacr.azurecr.io": {"username": "u", "password": "p"}}}
    for name, filename in (("k8s-style", ".dockerconfigjson"), ("docker-style", "config.json"), ("both", "config.json"),
                           ("both", ".dockerconfigjson")):
        (secrets / name).mkdir(parents=True, exist_ok=True)
        (secrets / name / filename).write_text(json.dumps(config))
    assert registry.for_secret("k8s-style") == secrets / "k8s-style" / ".dockerconfigjson"
    assert registry.for_secret("docker-style") == secrets / "docker-style" / "config.json"
    assert registry.for_secret("both") == secrets / "both" / ".dockerconfigjson"  # a Kubernetes secret's key wins
    found = registry.credentials_from_docker_config(registry.for_secret("k8s-style"), "myacr.azurecr.io")
    assert (found.username, found.password) == ("u", "p")


@pytest.mark.parametrize("name", [None, "", "missing", "..", "../secrets/k8s-style", "a/b", ".hidden"])
def test_for_secret_is_none_without_a_name_a_file_or_a_valid_name(monkeypatch, tmp_path, name):
    monkeypatch.setenv("KAIFLOW_HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "secrets" / "k8s-style").mkdir(parents=True)
    (tmp_path / "home" / "secrets" / "k8s-style" / ".dockerconfigjson").write_text("{}")
    (tmp_path / "home" / "secrets" / ".hidden").mkdir()
    (tmp_path / "home" / "secrets" / ".hidden" / "config.json").write_text("{}")
    assert registry.for_secret(name) is None


def test_no_module_of_the_package_reads_kaiflow_variables_itself():
    """workspace/settings.py is the one reader of KAIFLOW_* variables (DOCKER_CONFIG is docker's own)."""
    reads = re.compile(r"""(environ\b[^\n]*|getenv\()["']KAIFLOW_""")
    assert [p.name for p in Path(registry.__file__).parent.glob("*.py") if reads.search(p.read_text())] == []
