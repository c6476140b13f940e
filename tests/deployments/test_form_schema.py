"""The `workspace` deployment's run form (issue 24 item 11): built from the flow's parameter schema,
it offers what a user writes, labelled as a user reads it, and not what the API server sets."""

from __future__ import annotations

import pytest
from prefect.utilities.callables import parameter_schema

from flows.workspace_flow import workspace_flow
from workspace import loader, spec
from workspace.errors import SpecError


def test_the_form_has_no_server_set_fields_and_readable_labels():
    schema = parameter_schema(workspace_flow.fn).model_dump_for_openapi()
    defs = schema["definitions"]
    ws = defs["Workspace"]["properties"]
    assert "status" not in ws and ws["apiVersion"]["title"] == "API version"
    assert set(defs["ObjectMeta"]["properties"]) == {"name", "namespace", "labels", "annotations"}
    assert defs["ResourceSpec"]["properties"]["instanceType"]["title"] == "Instance type"


def test_kubectl_get_output_still_loads_and_its_parameters_leave_server_fields_out(tmp_path):
    f = tmp_path / "ws.yaml"
    f.write_text("""
apiVersion: kaito.sh/v1beta1
kind: Workspace
metadata:
  name: from-kubectl
  uid: 7c9e6679-7425-40de-944b-e07fc1f90ae7
  resourceVersion: "4711"
  generation: 2
  creationTimestamp: "2026-12-01T00:00:00Z"
resource: {instanceType: local}
inference: {preset: {name: tiny-phi-3}}
status:
  conditions: [{type: InferenceReady, status: "True"}]
""")
    ws = loader.load_files([str(f)]).workspaces[0]
    assert ws.metadata.uid and ws.status is not None
    params = ws.to_parameters()
    assert params["metadata"] == {"name": "from-kubectl"} and "status" not in params


def test_a_run_that_skipped_the_loader_is_still_admitted_as_kaito_would(prefect_api):
    """A run from the UI form or `prefect deployment run` never reads a file: the flow itself applies
    Kaito's admission rules first (here a name with a dot, which becomes a Service name)."""
    ws = spec.Workspace.model_validate({"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace",
                                        "metadata": {"name": "has.dot"}, "resource": {"instanceType": "local"},
                                        "inference": {"preset": {"name": "tiny-phi-3"}}})
    with pytest.raises(SpecError) as caught:
        workspace_flow(workspace=ws, platform="local")
    assert "workspace has.dot: metadata.name:" in str(caught.value)
