"""The kubernetes platform resolves the pods' image (KAIFLOW_IMAGE) before it asks for nodes:
an image its (reachable) registry does not have is refused, saying what to run, and nothing is
created in the cluster. The real flow against the fake API server and Debian's docker-registry."""

from __future__ import annotations

import pytest

from flows.workspace_flow import workspace_flow
from tests.support.registry import LocalRegistry
from workspace import loader
from workspace.errors import SpecError

TEXT = """
apiVersion: kaito.sh/v1beta1
kind: Workspace
metadata: {name: imgcheck}
resource:
  instanceType: Standard_NC6s_v3
  labelSelector: {matchLabels: {app: imgcheck}}
inference:
  preset: {name: tiny-phi-3}
"""


@pytest.mark.slow
def test_an_image_the_registry_lacks_is_refused_before_any_node(kube_env, prefect_api, tmp_path, monkeypatch):
    kube = kube_env
    with LocalRegistry(tmp_path / "registry") as reg:
        monkeypatch.setenv("KAIFLOW_IMAGE", f"{reg.host}/kaiflow:missing")
        bundle = loader.load_text(TEXT, source="imgcheck.yaml")
        with pytest.raises(SpecError, match=rf"KAIFLOW_IMAGE={reg.host}/kaiflow:missing: no such image in {reg.host}; "
                                            r"build and push kaiflow's image with `make images PUSH="):
            workspace_flow(workspace=bundle.workspaces[0], config_maps=bundle.config_maps, platform="kubernetes")
    assert kube.list("karpenter.sh/v1", "NodeClaim") == []
    assert kube.list("apps/v1", "StatefulSet", "default") == []
