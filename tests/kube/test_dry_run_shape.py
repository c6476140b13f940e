"""What a Kubernetes user checks in `kaiflow apply --dry-run` (issue 24 item 10), on every example:
plain YAML (no anchors or aliases), pods a namespace at the Pod Security "restricted" level admits
(securityContext) with CPU/memory requests on every container, no empty ``imagePullSecrets``, volume
names that are DNS-1123 labels (Kaito's ``ACR_REGISTRY_SECRET_HERE`` placeholder included), and the
tuning Job's name explained where the dry run cannot know it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from flows import cli

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p for p in (ROOT / "examples").rglob("*.yaml") if "data" not in p.parts)
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def pod_specs(obj: dict) -> list[dict]:
    if obj["kind"] in ("Job", "StatefulSet"):
        return [obj["spec"]["template"]["spec"]]
    return []


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, str]:
    import contextlib
    import io

    out = {}
    with pytest.MonkeyPatch.context() as env:  # restored after: later tests keep the session's home
        env.setenv("KAIFLOW_ALLOW_PRIVATE_URLS", "true")  # examples/local pull from make demo's 127.0.0.1 server
        env.setenv("KAIFLOW_HOME", str(tmp_path_factory.mktemp("home")))
        for path in EXAMPLES:
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                rc = cli.main(["apply", "--dry-run", "-o", "yaml", "-f", str(path)])
            if rc == 0:
                out[str(path.relative_to(ROOT))] = buf.getvalue()
    return out


def test_most_examples_render(rendered):
    assert len(rendered) >= len(EXAMPLES) - 3, sorted(set(map(str, EXAMPLES)) - set(rendered))


def test_plain_yaml_without_anchors_or_aliases(rendered):
    for name, text in rendered.items():
        assert not re.search(r"[&*]id\d{3}", text), name


def test_every_generated_pod_passes_restricted_and_requests_cpu_and_memory(rendered):
    pods = 0
    for name, text in rendered.items():
        for obj in yaml.safe_load_all(text):
            for pod in pod_specs(obj):
                if obj["kind"] == "StatefulSet" and "securityContext" not in pod:
                    continue  # the user's own inference.template: theirs to set
                pods += 1
                sc = pod["securityContext"]
                assert sc["runAsNonRoot"] is True and sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
                for c in [*pod.get("initContainers", []), *pod["containers"]]:
                    csc = c["securityContext"]
                    assert csc["allowPrivilegeEscalation"] is False and csc["capabilities"] == {"drop": ["ALL"]}, (name, c["name"])
                    assert {"cpu", "memory"} <= set(c["resources"]["requests"]), (name, c["name"])
                assert pod.get("imagePullSecrets", None) != [], name
                for v in pod.get("volumes", []):
                    assert DNS_LABEL.match(v["name"]) and len(v["name"]) <= 63, (name, v["name"])
    assert pods > 40


def test_kaitos_secret_placeholder_gives_a_valid_volume_name_and_keeps_the_secret_name(rendered):
    text = rendered["examples/kaito/kaito_workspace_tuning_phi_3.yaml"]
    job = next(o for o in yaml.safe_load_all(text) if o["kind"] == "Job")
    secret_vols = [v for v in job["spec"]["template"]["spec"]["volumes"] if "secret" in v]
    assert [v["secret"]["secretName"] for v in secret_vols] == ["ACR_REGISTRY_SECRET_HERE"]
    assert DNS_LABEL.match(secret_vols[0]["name"])


def test_the_dry_runs_tuning_job_name_is_explained(rendered):
    text = rendered["examples/kaito/kaito_workspace_tuning_phi_3.yaml"]
    assert "# the tuning Job: at apply its name ends with the first 10 hex digits of the tuning cache key" in text
