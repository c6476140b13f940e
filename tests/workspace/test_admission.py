"""Kaito v0.12's admission cases, ported: each case is a workspace file that Kaito's webhook admits or
refuses (``api/v1beta1/workspace_validation_test.go``, its v1alpha1 twin, the ConfigMap validation,
``pkg/model/interface_test.go``), loaded as ``kaiflow validate`` loads it. Each asserts the verdict and
the exact field paths of the problems. The test id names the Kaito test case (``Kaito:Test.../case``);
``kaiflow:`` ids are the checks kaiflow adds, ``kaiflow-differs:`` ids pin a deliberate difference
(README, "Where kaiflow differs from Kaito")."""

from __future__ import annotations

import copy
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from workspace import admission, loader
from workspace.errors import SpecError

REPO = Path(__file__).resolve().parents[2]
DELETE = object()

INFERENCE = {
    "apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": "ws-test"},
    "resource": {"instanceType": "Standard_NC24ads_A100_v4", "labelSelector": {"matchLabels": {"apps": "test"}}},
    "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}},
}
TUNING = {
    "apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": "ws-test"},
    "resource": {"instanceType": "Standard_NC24ads_A100_v4", "labelSelector": {"matchLabels": {"apps": "test"}}},
    "tuning": {"preset": {"name": "phi-3-mini-4k-instruct"}, "method": "lora",
               "input": {"urls": ["https://example.com/data.jsonl"]},
               "output": {"image": "kaito.azurecr.io/test:0.0.0", "imagePushSecret": "secret"}},
}
A10, A10X2, V100X2, A100X2 = "Standard_NV36ads_A10_v5", "Standard_NV72ads_A10_v5", "Standard_NC12s_v3", "Standard_NC48ads_A100_v4"
BYO = {"KAIFLOW_PLATFORM": "kubernetes", "KAIFLOW_PROVISIONER": "byo"}
NAP = {"KAIFLOW_PLATFORM": "kubernetes", "KAIFLOW_PROVISIONER": "karpenter"}
PRIVATE_OK = {"KAIFLOW_ALLOW_PRIVATE_URLS": "true"}
ADAPTERS = [{"source": {"name": f"adapter-{i}", "image": f"fake.kaito.com/kaito-image:0.0.{i}"}} for i in (1, 2)]
QLORA_4BIT = "training_config:\n  QuantizationConfig:\n    load_in_4bit: true\n  TrainingArguments:\n    output_dir: output\n"


@dataclass
class Case:
    id: str
    changes: dict[str, Any]
    refused: list[str] = field(default_factory=list)  # the field paths of the problems; empty: admitted
    contains: str = ""
    base: dict = field(default_factory=lambda: INFERENCE)
    config_maps: dict[str, dict[str, str]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


def _set(doc: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        doc = doc.setdefault(p, {})
    if value is DELETE:
        doc.pop(last, None)
    else:
        doc[last] = value


def _text(case: Case) -> str:
    doc = copy.deepcopy(case.base)
    for dotted, value in case.changes.items():
        _set(doc, dotted.replace("kaito.sh.", "kaito.sh/").replace("kaiflow.io.", "kaiflow.io/"), value)
    docs = [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": n}, "data": d} for n, d in case.config_maps.items()]
    return yaml.safe_dump_all([*docs, doc], sort_keys=False)


def inf(id: str, changes: dict | None = None, refused: list[str] | None = None, contains: str = "", **kw) -> Case:
    return Case(id, changes or {}, refused or [], contains, INFERENCE, **kw)


def tun(id: str, changes: dict | None = None, refused: list[str] | None = None, contains: str = "", **kw) -> Case:
    return Case(id, changes or {}, refused or [], contains, TUNING, **kw)


ANN = "metadata.annotations"
RUNTIME = f"{ANN}[kaito.sh/runtime]"
MML = "inference.config (ConfigMap 'cfg').vllm.max-model-len"
TCM = "tuning.config (ConfigMap 'tcfg')"
R, INF, T = "Kaito:TestResourceSpecValidateCreate", "Kaito:TestInferenceSpecValidateCreate", "Kaito:TestTuningSpecValidateCreate"
A, W, D = "Kaito:TestAdapterSpecValidateCreateorUpdate", "Kaito:TestWorkspaceValidateCreate", "Kaito:TestDataSourceValidateCreate"
OUT, P, M = "Kaito:TestDataDestinationValidateCreate", "Kaito:TestValidatePartition", "Kaito:TestValidateMIGModelFit"
CM, PM = "Kaito:TestInferenceConfigMapValidation", "Kaito:TestWorkspaceValidatePerformanceModeAnnotation"
TC = "Kaito:tuning_config_validation"

CASES = [
    # -- TestResourceSpecValidateCreate (v1beta1 and v1alpha1)
    inf(f"{R}/Valid Resource", {"resource.instanceType": "Standard_ND96asr_v4"}),
    inf(f"{R}/Valid Resource - SKU Capacity == Model Requirement", {"resource.instanceType": A10}),
    inf(f"{R}/Invalid SKU", {"resource.instanceType": "Standard_invalid_sku"}, ["resource.instanceType"], "not a GPU instance type"),
    inf(f"{R}/Invalid SKU (a CPU-only size)", {"resource.instanceType": "Standard_E16s_v5"}, ["resource.instanceType"]),
    inf(f"{R}/Invalid SKU (close match)", {"resource.instanceType": "g5.xlarg"}, ["resource.instanceType"],
        "did you mean g5.xlarge"),
    inf(f"{R}/Only Template set", {"resource.instanceType": A10, "inference": {"template": {"spec": {"containers": []}}}}),
    inf(f"{R}/N-Prefix SKU", {"resource.instanceType": "Standard_Nsku"}),
    inf(f"{R}/D-Prefix SKU", {"resource.instanceType": "Standard_Dsku"}),
    tun(f"{R}/Tuning validation with single node", {"resource.instanceType": A10, "resource.count": 1}),
    tun(f"{R}/Tuning validation with multinode", {"resource.instanceType": A10, "resource.count": 2}, ["resource.count"],
        "tuning runs on one node"),
    inf(f"{R}/Invalid Preset Name", {"inference.preset.name": "Invalid-Preset-Name"}, ["inference.preset.name"], "unknown preset"),
    inf(f"{R}/vLLM + Distributed Inference", {"resource.instanceType": A10, "resource.count": 4,
        "inference.preset": {"name": "llama-3.1-8b-instruct", "presetOptions": {"modelAccessSecret": "hf-token"}}}),
    inf(f"{R}/Valid single A100 node with sufficient GPU memory", {"resource.instanceType": DELETE}, env=BYO),
    inf(f"{R}/Invalid - missing labelSelector for BYO mode", {"resource.instanceType": DELETE, "resource.labelSelector":
        {"matchLabels": {}}}, ["resource.labelSelector"], "selects no labels", env=BYO),
    inf(f"{R}/Invalid - matchLabels only contains reserved KAITO labels", {"resource.labelSelector": {"matchLabels": {
        "kaito.sh/workspace": "ws1", "kaito.sh/workspacenamespace": "ns1"}}}, ["resource.labelSelector.matchLabels"],
        "reserves"),
    inf(f"{R}/Deprecated Model", {"inference.preset.name": "phi-2"}, ["inference.preset.name"], "deprecated"),
    inf(f"{R}/Invalid - insufficient GPU memory for non-distributed model (transformers)", {
        "metadata.annotations": {"kaito.sh/runtime": "transformers"}, "resource.instanceType": A10,
        "inference.preset": {"name": "llama-3.3-70b-instruct", "presetOptions": {"modelAccessSecret": "hf-token"}}},
        [RUNTIME], "cannot run a model across nodes"),
    inf(f"{R}/v1alpha1 Insufficient total GPU memory", {"apiVersion": "kaito.sh/v1alpha1", "resource.instanceType": A10,
        "inference.preset.name": "phi-4"}, ["resource.instanceType"], "cannot hold phi-4"),
    inf(f"{R}/v1alpha1 Insufficient total GPU memory (bypass-resource-checks)", {"apiVersion": "kaito.sh/v1alpha1",
        "resource.instanceType": A10, "inference.preset.name": "phi-4",
        "metadata.annotations": {"kaito.sh/bypass-resource-checks": "True"}}),
    inf(f"{R}/v1alpha1 GPU count not validated (removed after mem estimator)", {"apiVersion": "kaito.sh/v1alpha1",
        "inference.preset.name": "phi-4"}),
    inf(f"{R}/v1alpha1 Valid Resource - SKU Capacity == Model Requirement", {"apiVersion": "kaito.sh/v1alpha1",
        "resource.instanceType": A10}),
    # -- TestValidatePartition, TestValidateMIGModelFit (BYO nodes: no instanceType)
    inf(f"{P}/accelerator with valid count", {"resource.instanceType": DELETE, "resource.partition": {"mode": "accelerator", "count": 2}}),
    inf(f"{P}/accelerator missing count", {"resource.instanceType": DELETE, "resource.partition": {"mode": "accelerator"}},
        ["resource.partition.count"]),
    inf(f"{P}/accelerator with profile set", {"resource.instanceType": DELETE, "resource.partition": {
        "mode": "accelerator", "count": 2, "profile": "1g.10gb"}}, ["resource.partition.profile"]),
    inf(f"{P}/mig with valid profile", {"resource.instanceType": DELETE, "resource.partition": {"mode": "mig", "profile": "2g.20gb"}}),
    inf(f"{P}/mig with count set", {"resource.instanceType": DELETE, "resource.partition": {
        "mode": "mig", "profile": "2g.20gb", "count": 2}}, ["resource.partition.count"]),
    inf(f"{P}/mig with an unknown profile", {"resource.instanceType": DELETE, "resource.partition": {"mode": "mig", "profile": "9g.1gb"}},
        ["resource.partition.profile"]),
    inf(f"{P}/unsupported mode", {"resource.instanceType": DELETE, "resource.partition": {"mode": "bogus"}}, ["resource.partition.mode"]),
    inf(f"{P}/partition only on BYO nodes (NAP enabled)", {"resource.partition": {"mode": "accelerator", "count": 2}},
        ["resource.partition"], "only supported on your own nodes"),
    tun(f"{P}/GPU partitioning is not supported for tuning workloads", {"resource.instanceType": DELETE,
        "resource.partition": {"mode": "accelerator", "count": 2}}, ["resource.partition"], "not supported for tuning"),
    inf(f"{M}/model fits within the MIG slice", {"resource.instanceType": DELETE, "resource.partition": {"mode": "mig", "profile": "1g.10gb"}}),
    inf(f"{M}/model exceeds the MIG slice", {"resource.instanceType": DELETE, "inference.preset.name": "phi-4",
        "resource.partition": {"mode": "mig", "profile": "1g.10gb"}}, ["resource.partition.profile"], "MIG slice"),
    inf(f"{M}/bypass annotation allows an oversized model", {"resource.instanceType": DELETE, "inference.preset.name": "phi-4",
        "resource.partition": {"mode": "mig", "profile": "1g.10gb"}, "metadata.annotations": {"kaito.sh/bypass-resource-checks": ""}}),
    # -- TestInferenceSpecValidateCreate (v1beta1 and v1alpha1)
    inf(f"{INF}/Invalid Preset Name", {"inference.preset.name": "Invalid-Preset-Name"}, ["inference.preset.name"]),
    inf(f"{INF}/Only Template set", {"inference": {"template": {"spec": {"containers": []}}}}),
    inf(f"{INF}/Preset and Template Unset", {"inference": {"config": "x"}}, ["inference"], "set inference.preset"),
    inf(f"{INF}/Preset and Template Set", {"inference.template": {"spec": {}}}, ["inference"], "only one of"),
    inf(f"{INF}/Adapeters more than 10", {"inference.adapters": [{"source": {"name": f"adapter-{i}", "image":
        f"fake.kaito.com/kaito-image:0.0.{i}"}, "strength": "0.5"} for i in range(1, 12)]}, ["inference"], "at most 10"),
    inf(f"{INF}/Valid with adapters/vllm", {"inference.adapters": ADAPTERS}),
    inf(f"{INF}/Valid with adapters/transformers", {"metadata.annotations": {"kaito.sh/runtime": "transformers"},
        "inference.adapters": [{**a, "strength": "0.5"} for a in ADAPTERS]}),
    inf(f"kaiflow-differs:{INF[6:]}/Adapters with strength/vllm (strength honoured by kaiflow's vLLM engine)",
        {"inference.adapters": [{**a, "strength": "0.5"} for a in ADAPTERS]}),
    inf(f"{INF}/Adapters names are duplicated", {"inference.adapters": [{"source": {"name": "adapter", "image":
        f"fake.kaito.com/kaito-image:0.0.{i}"}} for i in (1, 2)]}, ["inference"], "repeated: adapter"),
    inf(f"{INF}/Valid Preset"),
    inf(f"{INF}/Config specified with valid ConfigMap", {"inference.config": "cfg"},
        config_maps={"cfg": {"inference_config.yaml": "a: b"}}),
    inf(f"{INF}/download model at runtime with access secret", {"inference.preset": {"name": "llama-3.1-8b-instruct",
        "presetOptions": {"modelAccessSecret": "test-secret"}}}),
    inf(f"{INF}/download model at runtime but no access secret", {"inference.preset.name": "llama-3.1-8b-instruct"},
        ["inference.preset.presetOptions.modelAccessSecret"], "HF_TOKEN"),
    inf(f"{INF}/Preset with model weights packaged but with access secret (v0.12 downloads every preset: admitted)",
        {"inference.preset.presetOptions": {"modelAccessSecret": "test-secret"}}),
    inf(f"{INF}/v1alpha1 Private Access Without Image", {"apiVersion": "kaito.sh/v1alpha1", "inference.preset.accessMode": "private"},
        ["inference.preset.presetOptions.image"]),
    inf(f"{INF}/v1alpha1 Private Access With Image", {"apiVersion": "kaito.sh/v1alpha1", "inference.preset.accessMode": "private",
        "inference.preset.presetOptions": {"image": "myacr.azurecr.io/phi-3:0.0.1"}}),
    # -- TestAdapterSpecValidateCreateorUpdate
    inf(f"{A}/Missing Source", {"inference.adapters": [{"strength": "0.5"}]}, ["inference.adapters[0].source"]),
    inf(f"{A}/Missing Source Name", {"inference.adapters": [{"source": {"image": "fake.kaito.com/kaito-image:0.0.1"}}]},
        ["inference.adapters[0].source.name"]),
    inf(f"{A}/Invalid Strength, not a number", {"inference.adapters": [{**ADAPTERS[0], "strength": "invalid"}]},
        ["inference.adapters[0].strength"], "not a number"),
    inf(f"{A}/Invalid Strength, larger than 1", {"inference.adapters": [{**ADAPTERS[0], "strength": "1.5"}]},
        ["inference.adapters[0].strength"], "between 0 and 1"),
    inf(f"{A}/Invalid Source Name, longer than 253", {"inference.adapters": [{"source": {"name": "adapter1" * 32,
        "image": "fake.kaito.com/kaito-image:0.0.1"}}]}, ["inference.adapters[0].source.name"]),
    inf(f"{A}/Valid Adapter", {"inference.adapters": ADAPTERS[:1]}),
    inf(f"{A}/Missing both Image and Volume", {"inference.adapters": [{"source": {"name": "adapter-1"}, "strength": "0.5"}]},
        ["inference.adapters[0].source"], "either image or volumeSource"),
    inf(f"{A}/Valid Adapter with Volume source", {"inference.adapters": [{"source": {"name": "adapter-1",
        "volumeSource": {"persistentVolumeClaim": {"claimName": "test-pvc"}}}, "strength": "0.5"}]}),
    inf(f"{INF}/Valid with volume adapters/vllm", {"inference.adapters": [{"source": {"name": f"adapter-{i}",
        "volumeSource": {"persistentVolumeClaim": {"claimName": f"pvc-adapter-{i}"}}}} for i in (1, 2)]}),
    inf(f"kaiflow:{A[6:]}/adapter with both image and volumeSource", {"inference.adapters": [{"source": {
        "name": "adapter-1", "image": "fake.kaito.com/kaito-image:0.0.1", "volumeSource": {"emptyDir": {}}}}]},
        ["inference.adapters[0].source"], "not both"),
    inf(f"{A}/Adapter with unsupported URLs source", {"inference.adapters": [{"source": {"name": "adapter-1",
        "urls": ["https://example.com/adapter.bin"]}}]}, ["inference.adapters[0].source"], "unknown field 'urls'"),
    inf(f"kaiflow:{A[6:]}/adapter image reference with an upper-case repository", {"inference.adapters": [{"source": {
        "name": "adapter-1", "image": "fake.kaito.com/Kaito-Image:0.0.1"}}]}, ["inference.adapters[0].source.image"], "lowercase"),
    # -- TestWorkspaceValidateCreate
    inf(f"{W}/Neither Inference nor Tuning specified", {"inference": DELETE}, [""], "needs inference, tuning, or both"),
    inf(f"kaiflow-differs:{W[6:]}/Both Inference and Tuning specified (tune, then serve the fresh adapter)",
        {"tuning": TUNING["tuning"]}),
    inf(f"{W}/Only Inference specified"),
    tun(f"{W}/Only Tuning specified"),
    inf(f"{W}/Unsupported node image family annotation", {ANN: {"kaito.sh/node-image-family": "CustomLinux"}},
        [f"{ANN}[kaito.sh/node-image-family]"]),
    inf(f"{W}/Supported node image family annotation (normalised)", {ANN: {"kaito.sh/node-image-family": " Ubuntu "}}),
    # -- TestWorkspaceValidateName
    inf("Kaito:TestWorkspaceValidateName/Valid name", {"metadata.name": "valid-name"}),
    inf("Kaito:TestWorkspaceValidateName/Name with invalid characters", {"metadata.name": "phi-3.5-mini"}, ["metadata.name"],
        "e.g. 'phi-3-5-mini'"),
    inf("Kaito:TestWorkspaceValidateName/Name start with invalid character", {"metadata.name": "-mini"}, ["metadata.name"]),
    inf("kaiflow:TestWorkspaceValidateName/Name starts with a digit (a Service name is a DNS-1035 label)",
        {"metadata.name": "3-mini"}, ["metadata.name"], "DNS-1035"),
    inf("kaiflow:TestWorkspaceValidateName/Name longer than 63 characters", {"metadata.name": "w" * 64}, ["metadata.name"]),
    # -- TestWorkspaceValidatePerformanceModeAnnotation
    inf(f"{PM}/no annotation is valid"),
    inf(f"{PM}/balanced is valid", {ANN: {"kaito.sh/performance-mode": "balanced"}}),
    inf(f"{PM}/interactivity is valid", {ANN: {"kaito.sh/performance-mode": "interactivity"}}),
    inf(f"{PM}/throughput is valid", {ANN: {"kaito.sh/performance-mode": "throughput"}}),
    inf(f"{PM}/unknown value is invalid", {ANN: {"kaito.sh/performance-mode": "fast"}}, [f"{ANN}[kaito.sh/performance-mode]"]),
    inf(f"{PM}/use local weights true is valid", {ANN: {"kaito.sh/use-local-weights": "true"}}),
    inf(f"{PM}/use local weights false is valid", {ANN: {"kaito.sh/use-local-weights": "false"}}),
    inf(f"{PM}/use local weights non-boolean is invalid", {ANN: {"kaito.sh/use-local-weights": "yes"}},
        [f"{ANN}[kaito.sh/use-local-weights]"]),
    # -- TestWorkspaceValidateNodeClassNameAnnotation (the operator's NodeClass list is cluster state: names only)
    inf("Kaito:TestWorkspaceValidateNodeClassNameAnnotation/empty annotation falls back to the default",
        {ANN: {"kaito.sh/node-class-name": ""}}),
    inf("Kaito:TestWorkspaceValidateNodeClassNameAnnotation/KAITO-managed NodeClass is valid",
        {ANN: {"kaito.sh/node-class-name": "image-family-azure-linux"}}),
    inf("kaiflow:TestWorkspaceValidateNodeClassNameAnnotation/not an object name",
        {ANN: {"kaito.sh/node-class-name": "Not A Name"}}, [f"{ANN}[kaito.sh/node-class-name]"]),
    # -- TestWorkspaceValidateNAPFeatureGate
    inf("Kaito:TestWorkspaceValidateNAPFeatureGate/NAP enabled - instanceType required", {"resource.instanceType": DELETE},
        ["resource.instanceType"], "KAIFLOW_PROVISIONER=byo", env=NAP),
    inf("Kaito:TestWorkspaceValidateNAPFeatureGate/NAP enabled - instanceType provided (valid)", {"resource.instanceType": A10}, env=NAP),
    inf("kaiflow-differs:TestWorkspaceValidateNAPFeatureGate/NAP disabled - instanceType kept for sizing", env=BYO),
    inf("Kaito:TestWorkspaceValidateNAPFeatureGate/NAP disabled - instanceType empty (valid)", {"resource.instanceType": DELETE}, env=BYO),
    # -- TestTuningSpecValidateCreate
    tun(f"{T}/All fields valid", {"tuning.input": {"name": "valid-input", "image": "kaito.azurecr.io/test:0.0.0"}}),
    tun(f"{T}/Verify QLoRA Config", {"tuning.method": "qlora", "tuning.input": {"image": "kaito.azurecr.io/test:0.0.0"}}),
    tun(f"{T}/Verify QLoRA Config (method in any case, as Kaito lowercases it)", {"tuning.method": "QLoRA"}),
    tun(f"{T}/Missing Input", {"tuning.input": DELETE}, ["tuning.input"]),
    tun(f"{T}/Missing Output", {"tuning.output": DELETE}, ["tuning.output"]),
    tun(f"{T}/Missing Preset", {"tuning.preset": DELETE}, ["tuning.preset"]),
    tun(f"{T}/Invalid Preset", {"tuning.preset.name": "invalid-preset"}, ["tuning.preset.name"]),
    tun(f"{T}/Invalid Method", {"tuning.method": "invalid-method"}, ["tuning.method"]),
    tun(f"{T}/Invalid Input Source Casing", {"tuning.input": {"image": "kaito.azurecr.io/INPUT:0.0.0"}}, ["tuning.input.image"],
        "must be lowercase"),
    tun(f"{T}/Invalid Output Destination Casing", {"tuning.output.image": "kaito.azurecr.io/OUTPUT:0.0.0"},
        ["tuning.output.image"], "'kaito.azurecr.io/output:0.0.0'"),
    tun(f"kaiflow:{T[6:]}/preset that does not support tuning", {"tuning.preset.name": "mistral-large-3-675b-instruct"},
        ["tuning.preset.name"], "does not support tuning"),
    # -- TestDataSourceValidateCreate
    tun(f"{D}/URLs specified only", {"tuning.input.urls": ["http://example.com/data"]}),
    tun(f"{D}/Unsupported URL scheme", {"tuning.input.urls": ["ftp://example.com/data"]}, ["tuning.input"]),
    tun(f"{D}/Loopback URL", {"tuning.input.urls": ["http://127.0.0.1/data"]}, ["tuning.input.urls[0]"], "loopback"),
    tun(f"{D}/Private URL", {"tuning.input.urls": ["http://10.0.0.1/data"]}, ["tuning.input.urls[0]"], "private"),
    tun(f"{D}/Link-local URL", {"tuning.input.urls": ["http://169.254.169.254/latest/meta-data"]}, ["tuning.input.urls[0]"]),
    tun(f"{D}/IPv6 loopback URL", {"tuning.input.urls": ["http://[::1]/data"]}, ["tuning.input.urls[0]"]),
    tun(f"{D}/Metadata hostname URL", {"tuning.input.urls": ["http://metadata.google.internal/computeMetadata/v1"]},
        ["tuning.input.urls[0]"], "metadata"),
    tun(f"kaiflow:{D[6:]}/localhost URL", {"tuning.input.urls": ["http://localhost:8080/d.jsonl"]}, ["tuning.input.urls[0]"]),
    tun(f"kaiflow:{D[6:]}/second of two URLs private", {"tuning.input.urls": ["https://example.com/a", "http://192.168.1.4/b"]},
        ["tuning.input.urls[1]"]),
    tun(f"kaiflow:{D[6:]}/Loopback URL with KAIFLOW_ALLOW_PRIVATE_URLS=true", {"tuning.input.urls": ["http://127.0.0.1:8765/qa.jsonl"]},
        env=PRIVATE_OK),
    tun(f"{D}/Volume specified only", {"tuning.input": {"volumeSource": {"persistentVolumeClaim": {"claimName": "data"}}}}),
    tun(f"{D}/Image specified only", {"tuning.input": {"image": "aimodels.azurecr.io/data-image:latest"}}),
    tun(f"{D}/Image without URL Specified", {"tuning.input": {"image": "data-image:latest", "imagePullSecrets": ["pull-secret"]}}),
    tun(f"{D}/Image without Tag Specified", {"tuning.input": {"image": "aimodels.azurecr.io/data-image"}}),
    tun(f"{D}/Invalid image", {"tuning.input": {"image": "!ValidImage", "imagePullSecrets": ["pull-secret"]}},
        ["tuning.input.image"], "invalid reference format"),
    tun(f"{D}/None specified", {"tuning.input": {}}, ["tuning.input"], "none given"),
    tun(f"{D}/URLs and Volume specified", {"tuning.input.volumeSource": {"emptyDir": {}}}, ["tuning.input"]),
    tun(f"{D}/All fields specified", {"tuning.input.image": "aimodels.azurecr.io/data-image:latest"}, ["tuning.input"]),
    # -- TestDataDestinationValidateCreate
    tun(f"{OUT}/No fields specified", {"tuning.output": {}}, ["tuning.output"]),
    tun(f"{OUT}/Volume specified only", {"tuning.output": {"volumeSource": {"persistentVolumeClaim": {"claimName": "out"}}}}),
    tun(f"{OUT}/Image specified only", {"tuning.output.image": "aimodels.azurecr.io/data-image:latest"}),
    tun(f"{OUT}/Image without URL Specified", {"tuning.output.image": "data-image:latest"}),
    tun(f"{OUT}/Image without Tag Specified", {"tuning.output.image": "aimodels.azurecr.io/data-image"}),
    tun(f"{OUT}/Invalid image", {"tuning.output.image": "!ValidImage"}, ["tuning.output.image"]),
    tun(f"{OUT}/Both fields specified", {"tuning.output.volumeSource": {"emptyDir": {}}}, ["tuning.output"]),
    tun(f"kaiflow-differs:{OUT[6:]}/Image without imagePushSecret (the platform's credentials)", {"tuning.output.imagePushSecret": DELETE}),
    tun(f"kaiflow:{OUT[6:]}/imagePushSecret not a Secret name", {"tuning.output.imagePushSecret": "My_Secret"},
        ["tuning.output.imagePushSecret"]),
    tun(f"kaiflow:{OUT[6:]}/Kaito's template placeholders (notes, not errors)", {"tuning.output": {
        "image": "ACR_REPO_HERE.azurecr.io/IMAGE_NAME_HERE:0.0.1", "imagePushSecret": "ACR_REGISTRY_SECRET_HERE"}}),
    # -- TestInferenceConfigMapValidation (v1beta1: the context window; v1alpha1: max-model-len required)
    inf(f"{CM}/Valid max-model-len within ModelTokenLimit", {"resource.instanceType": A10X2, "inference.config": "cfg"},
        config_maps={"cfg": {"inference_config.yaml": "vllm:\n  max-model-len: 2048\n  gpu-memory-utilization: 0.84\n"}}),
    inf(f"{CM}/max-model-len exceeds ModelTokenLimit", {"resource.instanceType": A10X2, "inference.config": "cfg"}, [MML],
        "exceeds phi-3-mini-4k-instruct's context window of 4096", config_maps={"cfg": {"inference_config.yaml":
        "vllm:\n  max-model-len: 20480\n  gpu-memory-utilization: 0.84\n"}}),
    inf(f"kaiflow:{CM[6:]}/max-model-len not an integer", {"inference.config": "cfg"}, [MML], "not an integer",
        config_maps={"cfg": {"inference_config.yaml": "vllm:\n  max-model-len: lots\n"}}),
    inf(f"{CM}/max-model-len not checked under the transformers runtime", {"inference.config": "cfg",
        ANN: {"kaito.sh/runtime": "transformers"}}, config_maps={"cfg": {"inference_config.yaml": "vllm:\n  max-model-len: 20480\n"}}),
    inf(f"{CM}/inference_config.yaml in ConfigMap (missing-key-config)", {"inference.config": "cfg"},
        ["inference.config (ConfigMap 'cfg')"], "no inference_config.yaml key", config_maps={"cfg": {"other_key": "some value"}}),
    inf(f"{CM}/v1alpha1 Single Instance, Multi-GPU with >=20GB per GPU and max-model-len set (no error)", {
        "apiVersion": "kaito.sh/v1alpha1", "resource.instanceType": A10X2, "inference.config": "cfg"},
        config_maps={"cfg": {"inference_config.yaml": "vllm:\n  max-model-len: 2048\n"}}),
    inf(f"{CM}/v1alpha1 Single Instance, Single-GPU (no max-model-len required)", {
        "apiVersion": "kaito.sh/v1alpha1", "resource.instanceType": A10, "inference.config": "cfg"},
        config_maps={"cfg": {"inference_config.yaml": "vllm:\n  gpu-memory-utilization: 0.95\n"}}),
    inf(f"{CM}/v1alpha1 Single Instance, Multi-GPU with >=20GB per GPU (no max-model-len required)", {
        "apiVersion": "kaito.sh/v1alpha1", "resource.instanceType": A100X2, "inference.config": "cfg"},
        config_maps={"cfg": {"inference_config.yaml": "vllm:\n  gpu-memory-utilization: 0.95\n"}}),
    inf(f"{CM}/v1alpha1 Multi Instances, distributed inference and max-model-len missing", {
        "apiVersion": "kaito.sh/v1alpha1", "resource.instanceType": A10, "resource.count": 2, "inference.config": "cfg"},
        ["inference.config (ConfigMap 'cfg')"], "needs max-model-len",
        config_maps={"cfg": {"inference_config.yaml": "vllm:\n  gpu-memory-utilization: 0.95\n"}}),
    inf(f"{CM}/v1alpha1 Multi Instances, distributed inference and max-model-len set", {
        "apiVersion": "kaito.sh/v1alpha1", "resource.instanceType": A10, "resource.count": 2, "inference.config": "cfg"},
        config_maps={"cfg": {"inference_config.yaml": "vllm:\n  max-model-len: 2048\n"}}),
    inf(f"{CM}/v1alpha1 Multi-GPU with <20GB per GPU and the default ConfigMap", {"apiVersion": "kaito.sh/v1alpha1",
        "resource.instanceType": V100X2}, ["inference.config"], "max-model-len"),
    # -- the tuning ConfigMap (tuning_config_validation.go: schema, method, output_dir)
    tun(f"{TC}/qlora with load_in_4bit", {"tuning.method": "qlora", "tuning.config": "tcfg"},
        config_maps={"tcfg": {"training_config.yaml": QLORA_4BIT}}),
    tun(f"{TC}/qlora with load_in_8bit", {"tuning.method": "qlora", "tuning.config": "tcfg"},
        config_maps={"tcfg": {"training_config.yaml": "training_config:\n  QuantizationConfig:\n    load_in_8bit: true\n"}}),
    tun(f"{TC}/qlora with neither 4-bit nor 8-bit loading", {"tuning.method": "qlora", "tuning.config": "tcfg"},
        [f"{TCM}.training_config.QuantizationConfig"], "method qlora needs load_in_4bit",
        config_maps={"tcfg": {"training_config.yaml": "training_config:\n  QuantizationConfig:\n    load_in_4bit: false\n"}}),
    tun(f"kaiflow-differs:{TC[6:]}/qlora without QuantizationConfig (the method's 4-bit defaults fill it)",
        {"tuning.method": "qlora", "tuning.config": "tcfg"},
        config_maps={"tcfg": {"training_config.yaml": "training_config:\n  TrainingArguments:\n    max_steps: 60\n"}}),
    tun(f"{TC}/lora with 4-bit on", {"tuning.config": "tcfg"}, [f"{TCM}.training_config.QuantizationConfig.load_in_4bit"],
        "method lora", config_maps={"tcfg": {"training_config.yaml": QLORA_4BIT}}),
    tun(f"{TC}/lora with 4-bit off", {"tuning.config": "tcfg"},
        config_maps={"tcfg": {"training_config.yaml": "training_config:\n  QuantizationConfig:\n    load_in_4bit: false\n"}}),
    tun(f"{TC}/both 4-bit and 8-bit", {"tuning.method": "qlora", "tuning.config": "tcfg"},
        [f"{TCM}.training_config.QuantizationConfig"], "cannot both be true", config_maps={"tcfg": {"training_config.yaml":
        "training_config:\n  QuantizationConfig:\n    load_in_4bit: true\n    load_in_8bit: true\n"}}),
    tun(f"{TC}/load_in_4bit not a boolean", {"tuning.method": "qlora", "tuning.config": "tcfg"},
        [f"{TCM}.training_config.QuantizationConfig.load_in_4bit"], "true or false", config_maps={"tcfg": {"training_config.yaml":
        "training_config:\n  QuantizationConfig:\n    load_in_4bit: 'yes'\n"}}),
    tun(f"{TC}/Unrecognized section", {"tuning.config": "tcfg"}, [f"{TCM}.training_config"], "did you mean 'LoraConfig'",
        config_maps={"tcfg": {"training_config.yaml": "training_config:\n  LoRAConfig:\n    r: 8\n"}}),
    tun(f"{TC}/Expected 'training_config' key to contain a map", {"tuning.config": "tcfg"}, [TCM], "'training_config:' mapping",
        config_maps={"tcfg": {"training_config.yaml": "LoraConfig:\n  r: 8\n"}}),
    tun(f"{TC}/does not contain 'training_config.yaml'", {"tuning.config": "tcfg"}, [TCM], "no training_config.yaml key",
        config_maps={"tcfg": {"other": "x"}}),
    tun(f"{TC}/output_dir outside /mnt", {"tuning.config": "tcfg"}, [f"{TCM}.training_config.TrainingArguments.output_dir"],
        "under /mnt", config_maps={"tcfg": {"training_config.yaml": "training_config:\n  TrainingArguments:\n    output_dir: ../etc\n"}}),
    tun(f"{TC}/output_dir is /mnt itself", {"tuning.config": "tcfg"}, [f"{TCM}.training_config.TrainingArguments.output_dir"],
        config_maps={"tcfg": {"training_config.yaml": "training_config:\n  TrainingArguments:\n    output_dir: ''\n"}}),
    tun(f"{TC}/output_dir under /mnt", {"tuning.config": "tcfg"},
        config_maps={"tcfg": {"training_config.yaml": "training_config:\n  TrainingArguments:\n    output_dir: /mnt/results\n"}}),
    # -- pkg/model TestPresetParamValidate: the runtime
    inf("Kaito:TestPresetParamValidate/transformers runtime with supported model", {ANN: {"kaito.sh/runtime": "transformers"}}),
    inf("Kaito:TestPresetParamValidate/transformers runtime with unsupported model", {ANN: {"kaito.sh/runtime": "transformers"},
        "inference.preset.name": "phi-4-mini-instruct"}, [RUNTIME], "does not support inference with the transformers runtime"),
    inf("kaiflow-differs:TestPresetParamValidate/vllm with adapter strength enabled", {"inference.adapters": [
        {**ADAPTERS[0], "strength": "0.3"}]}),
    inf("Kaito:TestPresetParamValidate/vllm lora allowed with adapters enabled", {ANN: {"kaito.sh/runtime": "vllm"},
        "inference.adapters": ADAPTERS}),
    # -- kaito.sh/* annotations: unknown keys and values refused (Kaito would ignore them)
    inf("kaiflow:annotations/runtime value misspelt", {ANN: {"kaito.sh/runtime": "transformer"}}, [RUNTIME],
        "did you mean 'transformers'"),
    inf("kaiflow:annotations/unknown kaito.sh key", {ANN: {"kaito.sh/runtme": "vllm"}}, [f"{ANN}[kaito.sh/runtme]"],
        "did you mean 'kaito.sh/runtime'"),
    inf("kaiflow:annotations/enablelb lower-case true is ignored by Kaito", {ANN: {"kaito.sh/enablelb": "true"}},
        [f"{ANN}[kaito.sh/enablelb]"], "write 'True'"),
    inf("kaiflow:annotations/enablelb True", {ANN: {"kaito.sh/enablelb": "True"}}),
    inf("kaiflow:annotations/bypass-resource-checks false still bypasses", {ANN: {"kaito.sh/bypass-resource-checks": "false"}},
        [f"{ANN}[kaito.sh/bypass-resource-checks]"], "remove the annotation"),
    inf("kaiflow:annotations/disable-benchmark", {ANN: {"kaito.sh/disable-benchmark": "true"}}),
    inf("kaiflow:annotations/model-streaming", {ANN: {"kaito.sh/model-streaming": "off"}}, [f"{ANN}[kaito.sh/model-streaming]"]),
    inf("kaiflow:annotations/kaiflow.io key misspelt", {ANN: {"kaiflow.io/retrain-schedul": "0 3 * * 0"}},
        [f"{ANN}[kaiflow.io/retrain-schedul]"], "did you mean 'kaiflow.io/retrain-schedule'"),
    inf("kaiflow:annotations/other prefixes are the user's", {ANN: {"example.com/team": "a"}}),
    # -- labelSelector (CRD: required; LabelSelectorAsMap: matchLabels or 'In' with one value)
    inf("Kaito:CRD/labelSelector required", {"resource.labelSelector": DELETE}, ["resource.labelSelector"], "required"),
    inf("kaiflow-differs:CRD/labelSelector not needed on this machine (instanceType local)",
        {"resource": {"instanceType": "local"}, "inference.preset.name": "tiny-phi-3"}),
    inf("Kaito:LabelSelectorAsMap/NotIn cannot become node labels", {"resource.labelSelector": {"matchExpressions": [
        {"key": "apps", "operator": "NotIn", "values": ["a"]}]}}, ["resource.labelSelector.matchExpressions[0]"]),
    inf("Kaito:LabelSelectorAsMap/In with one value", {"resource.labelSelector": {"matchExpressions": [
        {"key": "apps", "operator": "In", "values": ["a"]}]}}),
    inf("kaiflow:labels/invalid label value", {"resource.labelSelector": {"matchLabels": {"apps": "a b"}}},
        ["resource.labelSelector.matchLabels[apps]"], "not a valid label value"),
    inf("kaiflow:labels/invalid label key", {"resource.labelSelector": {"matchLabels": {"-apps": "a"}}},
        ["resource.labelSelector.matchLabels[-apps]"], "not a valid label key"),
    # -- gated models (Kaito: downloadAuthRequired), placeholders, several problems at once
    tun("kaiflow:placeholders/the Kaito examples' Arc instance type", {"resource.instanceType": "<your-vm-sku>"}),
    inf("kaiflow:several problems/one line each", {"metadata.name": "bad.name", "resource.instanceType": "Standard_E16s_v5",
        ANN: {"kaito.sh/performance-mode": "fast"}}, ["metadata.name", "resource.instanceType", f"{ANN}[kaito.sh/performance-mode]"]),
    inf("kaiflow:typo/labelselector is one problem, not unknown plus missing", {"resource.labelSelector": DELETE,
        "resource.labelselector": {"matchLabels": {"apps": "x"}}}, ["resource"], "unknown field 'labelselector'; did you mean 'labelSelector'?"),
    tun("kaiflow:typo/preest is one problem, not unknown plus missing", {"tuning.preset": DELETE,
        "tuning.preest": {"name": "phi-3-mini-4k-instruct"}}, ["tuning"], "did you mean 'preset'?"),
]


@pytest.fixture
def env(monkeypatch):
    for key in ("KAIFLOW_PLATFORM", "KAIFLOW_PROVISIONER", "KAIFLOW_ALLOW_PRIVATE_URLS"):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_enough_cases_are_ported():
    kaito = [c for c in CASES if "Kaito:" in c.id]
    assert len(CASES) >= 100 and len(kaito) >= 80, (len(CASES), len(kaito))
    assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_admission(case: Case, env):
    for key, value in case.env.items():
        env.setenv(key, value)
    text = _text(case)
    if not case.refused:
        bundle = loader.load_text(text, source="case.yaml")
        assert len(bundle.workspaces) == 1
        return
    with pytest.raises(SpecError) as info:
        loader.load_text(text, source="case.yaml")
    problems = info.value.problems
    assert sorted(p.path for p in problems) == sorted(case.refused), str(info.value)
    lines = str(info.value).splitlines()
    assert len(lines) == len(problems) and all(line.startswith("case.yaml") for line in lines), lines
    if case.contains:
        assert case.contains in str(info.value), str(info.value)


def test_placeholders_are_noted_not_refused(env):
    ws = loader.load_file(REPO / "examples" / "seed" / "kaito_workspace_phi_3.yaml").workspaces[0]
    assert [n.path for n in admission.notes(ws)] == ["tuning.output.image", "tuning.output.imagePushSecret"]


def test_runtime_property_reads_the_annotation():
    ws = loader.parse_workspace(copy.deepcopy(INFERENCE))
    assert ws.runtime == "vllm"
    doc = copy.deepcopy(INFERENCE)
    doc["metadata"]["annotations"] = {"kaito.sh/runtime": "transformers"}
    assert loader.parse_workspace(doc).runtime == "transformers"


def test_transformers_runtime_serves_with_the_transformers_engine_on_kubernetes():
    from infra.kube import manifests
    from workspace import settings

    def engine(annotations: dict | None) -> str:
        doc = copy.deepcopy(INFERENCE)
        if annotations:
            doc["metadata"]["annotations"] = annotations
        ws = loader.parse_workspace(doc)
        objs = manifests.objects_for(ws, {}, settings.load(), provisioner="byo")
        sts = next(o for o in objs if o["kind"] == "StatefulSet")
        container = sts["spec"]["template"]["spec"]["containers"][0]
        cmd = container.get("command", []) + container.get("args", [])
        return cmd[cmd.index("--engine") + 1]

    assert engine({"kaito.sh/runtime": "transformers"}) == "transformers"
    assert engine(None) == "auto"


EXAMPLES = sorted({*REPO.glob("examples/**/*.yaml"), *Path("/work/shared/seed").glob("*.yaml"),
                   *Path("/work/shared/kaito-examples").rglob("*.yaml")})


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p).replace(str(REPO) + "/", ""))
def test_every_example_still_validates(path, env):
    if "examples/local" in str(path):
        env.setenv("KAIFLOW_ALLOW_PRIVATE_URLS", "true")  # its data is served on 127.0.0.1, as `make demo` does
    loader.load_file(path, require_workspace=False)


def test_the_local_demo_needs_the_private_url_setting(env):
    with pytest.raises(SpecError) as info:
        loader.load_file(REPO / "examples" / "local" / "tune-and-serve.yaml")
    assert [p.path for p in info.value.problems] == ["tuning.input.urls[0]"]
    assert "KAIFLOW_ALLOW_PRIVATE_URLS=true" in str(info.value)


def test_validate_prints_one_error_per_line_for_every_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    doc = copy.deepcopy(INFERENCE)
    doc["metadata"]["name"] = "bad.name"
    doc["resource"]["instanceType"] = "Standard_E16s_v5"
    bad.write_text(yaml.safe_dump(doc))
    good = REPO / "examples" / "seed" / "workspace-phi-3-mini.yaml"
    r = subprocess.run([sys.executable, "-m", "flows.cli", "validate", "-f", str(bad), "-f", str(good)],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if line]
    assert errors == [f"error: {bad}: metadata.name: " + errors[0].split("metadata.name: ", 1)[1],
                      f"error: {bad}: resource.instanceType: " + errors[1].split("resource.instanceType: ", 1)[1]], r.stderr
    assert f"{good}: valid:" in r.stdout and "Traceback" not in r.stderr



def test_plan_and_apply_print_each_problem_on_its_own_error_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    doc = copy.deepcopy(INFERENCE)
    doc["metadata"]["name"] = "bad.name"
    doc["resource"]["instanceType"] = "Standard_E16s_v5"
    bad.write_text(yaml.safe_dump(doc))
    for command in (["plan"], ["apply", "--dry-run"]):
        r = subprocess.run([sys.executable, "-m", "flows.cli", *command, "-f", str(bad)], capture_output=True, text=True,
                           cwd=REPO, timeout=120)
        lines = r.stderr.splitlines()
        assert r.returncode == 1 and len(lines) == 2 and all(line.startswith(f"error: {bad}: ") for line in lines), r.stderr
