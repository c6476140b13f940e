"""What Kaito's admission webhook refuses at ``kubectl apply``, refused by ``kaiflow validate`` too.

A Kaito user trusts that a workspace the webhook admits will run and that a broken one is refused at
once, not an hour later on a GPU node. ``admit`` applies Kaito v0.12's create-time rules (the
``validateCreate`` family in ``api/v1beta1/workspace_validation.go`` and its v1alpha1 twin, the
ConfigMap checks in ``tuning_config_validation.go`` / ``inference_config_validation.go``, the
``kaito.sh/*`` annotations of ``labels.go``, the runtime check of ``pkg/model``) to a parsed
workspace and returns every problem found, each with its field path and what to change. A few
checks go beyond the webhook where they are cheap and certain (a Service name must be a DNS-1035
label; a gated model needs a token; label syntax; image references of adapters).

Rules that need the cluster (existing nodes, the operator's NodeClass list, the release namespace's
default ConfigMaps) are not here. ConfigMaps are checked when the file carries them; one a workspace
names but the file lacks is read from the cluster on Kubernetes (``kaiflow validate`` notes it).

Where kaiflow differs on purpose (both tuning and inference in one workspace; adapter ``strength``
under vLLM; ``imagePushSecret`` optional; a ``qlora`` ConfigMap without ``QuantizationConfig`` gets
4-bit loading from the method's defaults; unknown ``kaito.sh/*`` annotations and values refused, not
ignored), the README's "Where kaiflow differs from Kaito" lists each with why.
"""

from __future__ import annotations

import difflib
import ipaddress
import posixpath
import re
import urllib.parse
from typing import Any

import yaml

import presets
from presets import sizing
from workspace import spec
from workspace.errors import Problem

RUNTIME_ANNOTATION = "kaito.sh/runtime"
BYPASS_ANNOTATION = "kaito.sh/bypass-resource-checks"
LOCAL = "local"

# Every kaito.sh/* annotation Kaito v0.12 reads on a Workspace (api/v1beta1/labels.go,
# pkg/modelmirror/consts, pkg/controllers/autoupgrade) and the values it acts on. None: any name-like value.
ANNOTATION_VALUES: dict[str, tuple[str, ...] | None] = {
    RUNTIME_ANNOTATION: spec.RUNTIMES,
    "kaito.sh/performance-mode": ("balanced", "interactivity", "throughput"),
    "kaito.sh/use-local-weights": ("true", "false"),
    "kaito.sh/disable-benchmark": ("true", "false"),
    "kaito.sh/enablelb": ("True", "False"),
    "kaito.sh/node-image-family": ("ubuntu", "azurelinux"),
    "kaito.sh/model-streaming": ("enabled", "disabled"),
    BYPASS_ANNOTATION: None,
    "kaito.sh/node-class-name": None,
    "kaito.sh/model-mirror-storage-class": None,
    "kaito.sh/streaming-service-account": None,
    "kaito.sh/upgrade-start-time": None,
}
KAIFLOW_ANNOTATIONS = ("kaiflow.io/retrain-schedule", "kaiflow.io/retrain-timezone")

# Labels Kaito puts on its own nodes; a selector of only these would match other workspaces' nodes.
RESERVED_SELECTOR_LABELS = frozenset({
    "kaito.sh/workspace", "kaito.sh/ragengine", "kaito.sh/workspacenamespace", "kaito.sh/ragenginenamespace",
    "karpenter.kaito.sh/workspace-name", "karpenter.kaito.sh/workspace-namespace",
    "karpenter.kaito.sh/inferenceset", "karpenter.kaito.sh/inferenceset-namespace",
})

# Presets Kaito v0.12 refuses under the transformers runtime: no entry in
# presets/workspace/models/transformer_runtime_inference_parameters.go (they need transformers 5).
NO_TRANSFORMERS_RUNTIME = frozenset({
    "phi-4-mini-instruct", "ministral-3-3b-instruct", "ministral-3-8b-instruct", "ministral-3-14b-instruct",
})
DEPRECATED_PRESETS = frozenset({"phi-2"})  # supported_models.yaml: deprecated: true
# The sections of Kaito's TrainingConfig (api/v1beta1/tuning_config_validation.go).
TRAINING_SECTIONS = ("ModelConfig", "QuantizationConfig", "LoraConfig", "TrainingArguments", "DatasetConfig", "DataCollator")
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.google", "instance-data.ec2.internal"})
# NVIDIA MIG profiles Kaito knows (pkg/utils/mig/mig.go).
MIG_PROFILES = frozenset({
    "1g.6gb", "2g.12gb", "4g.24gb", "1g.5gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb", "1g.10gb", "1g.20gb",
    "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb", "1g.12gb", "1g.24gb", "2g.24gb", "3g.47gb", "4g.47gb", "7g.94gb",
    "3g.48gb", "4g.48gb", "7g.96gb", "1g.18gb", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb",
    "1g.23gb", "1g.45gb", "2g.45gb", "3g.90gb", "4g.90gb", "7g.180gb",
})

# Template placeholders in Kaito's own examples (ACR_REPO_HERE.azurecr.io/IMAGE_NAME_HERE:0.0.1,
# <your-vm-sku>): the webhook would refuse them; kaiflow lets them validate with a note to replace them.
PLACEHOLDER = re.compile(r"<[^<>]+>|\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*_HERE\b")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

# The image reference grammar of github.com/distribution/reference (what Kaito's ParseDockerRef uses).
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_REFERENCE = re.compile(
    rf"^((?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    r"(?::[\w][\w.-]{0,127})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)


def admit(ws: spec.Workspace, config_maps: dict[str, dict[str, str]] | None = None, *,
          allow_private_urls: bool = False, platform: str = LOCAL, provisioner: str = "karpenter") -> list[Problem]:
    """Every create-time problem of ``ws`` (empty: admitted). ``config_maps`` are those in the same file;
    ``allow_private_urls`` is ``KAIFLOW_ALLOW_PRIVATE_URLS``; ``platform``/``provisioner`` decide whether
    ``resource.instanceType`` is needed (Kaito: when nodes are auto-provisioned)."""
    cms = config_maps or {}
    out: list[Problem] = []
    out += _metadata(ws)
    out += _resource(ws, platform, provisioner)
    if ws.inference:
        out += _inference(ws, cms)
    if ws.tuning:
        out += _tuning(ws, cms, allow_private_urls)
    return out


# -- metadata ----------------------------------------------------------------------------------


def _metadata(ws: spec.Workspace) -> list[Problem]:
    out: list[Problem] = []
    name = ws.metadata.name
    if len(name) > 63 or not DNS1035_LABEL.match(name):
        fixed = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63].rstrip("-")
        fixed = fixed if fixed[:1].isalpha() else f"ws-{fixed}"[:63].rstrip("-")
        why = "has a '.'" if "." in name else ("is longer than 63 characters" if len(name) > 63 else "does not start with a letter")
        out.append(Problem("metadata.name", (
            f"'{name}' {why}: the name becomes the inference Service's name, which must be a DNS-1035 label "
            f"(lowercase letters, digits and '-', starting with a letter, at most 63 characters); e.g. '{fixed}'")))
    for key, value in (ws.metadata.annotations or {}).items():
        out += _annotation(key, value)
    return out


def _annotation(key: str, value: str) -> list[Problem]:
    path = f"metadata.annotations[{key}]"
    if key.startswith("kaiflow.io/"):
        if key not in KAIFLOW_ANNOTATIONS:
            return [Problem(path, f"unknown kaiflow annotation{_close(key, KAIFLOW_ANNOTATIONS, ', '.join(KAIFLOW_ANNOTATIONS))}")]
        return []
    if not key.startswith("kaito.sh/"):
        return []
    if key not in ANNOTATION_VALUES:
        return [Problem(path, "unknown Kaito annotation (Kaito would ignore it silently)"
                        + _close(key, list(ANNOTATION_VALUES), ", ".join(ANNOTATION_VALUES)))]
    allowed = ANNOTATION_VALUES[key]
    if key == BYPASS_ANNOTATION:
        if value.strip().lower() == "false":
            return [Problem(path, "Kaito bypasses the resource checks whenever this annotation is present, whatever "
                                  "its value; remove the annotation to keep the checks")]
        return []
    if allowed is None:
        if value and not spec.DNS1123_SUBDOMAIN.match(value) and key != "kaito.sh/upgrade-start-time":
            return [Problem(path, f"'{value}' is not a valid object name (lowercase letters, digits, '-' and '.')")]
        return []
    got = value.strip().lower() if key == "kaito.sh/node-image-family" else value
    if got in allowed:
        return []
    hint = ""
    if key == "kaito.sh/enablelb" and value.lower() in ("true", "false"):
        hint = f"; Kaito acts only on 'True' (capital T): write '{value.capitalize()}'"
    return [Problem(path, f"'{value}' is not one of {', '.join(allowed)}{hint or _close(value, allowed, '')}")]


# -- resource ----------------------------------------------------------------------------------


def _resource(ws: spec.Workspace, platform: str, provisioner: str) -> list[Problem]:
    out: list[Problem] = []
    r = ws.resource or spec.ResourceSpec()
    instance = r.instance_type or ""
    local = instance == LOCAL
    if instance and not local:
        out += _instance_type(instance)
    elif not instance and platform != LOCAL and provisioner != "byo" and r.partition is None:
        out.append(Problem("resource.instanceType", (
            f"required when nodes are provisioned (KAIFLOW_PROVISIONER={provisioner}): set a GPU instance type, "
            "e.g. Standard_NC24ads_A100_v4 (`kaiflow skus` lists them), or use your own labelled nodes with "
            "KAIFLOW_PROVISIONER=byo")))
    if r.label_selector is None:
        if not local:
            out.append(Problem("resource.labelSelector", (
                "required field is missing: add labelSelector.matchLabels, the labels of the GPU nodes "
                f"(provisioned nodes get them), e.g. labelSelector: {{matchLabels: {{apps: {ws.name[:40]}}}}}")))
    else:
        out += _label_selector(r.label_selector)
    if r.partition is not None:
        out += _partition(r, instance)
    if ws.tuning:
        if (r.count or 1) > 1:
            out.append(Problem("resource.count", (
                f"tuning runs on one node (Kaito: no multinode tuning yet); set resource.count to 1, not {r.count}")))
        if r.partition is not None:
            out.append(Problem("resource.partition", "GPU partitioning is not supported for tuning workloads; remove it"))
    return out


def _instance_type(instance: str) -> list[Problem]:
    try:
        presets.get_sku(instance)
        return []
    except presets.UnknownSku:
        pass
    if instance.startswith(("Standard_N", "Standard_D")):
        return []  # Kaito admits Azure N- and D-series sizes it does not list; not sized
    if PLACEHOLDER.fullmatch(instance):
        return []  # a template placeholder, as in Kaito's Arc examples (see notes); not sized
    names = [s.name for s in presets.skus()]
    def key(n: str) -> str:  # compare what follows Azure's common prefix: a typo, not another size family
        return n.removeprefix("Standard_").lower()

    by_key = {key(n): n for n in names}
    close = [by_key[k] for k in difflib.get_close_matches(key(instance), list(by_key), n=3, cutoff=0.75)]
    hint = (f"; did you mean {', '.join(close)}?" if close else
            f"; pick a GPU instance type from `kaiflow skus`, e.g. {', '.join(names[:3])}")
    return [Problem("resource.instanceType", f"'{instance}' is not a GPU instance type Kaito supports{hint}")]


def _label_selector(sel: spec.LabelSelector) -> list[Problem]:
    out: list[Problem] = []
    base = "resource.labelSelector"
    labels = sel.match_labels or {}
    for key, value in labels.items():
        out += _label(f"{base}.matchLabels[{key}]", key, value)
    if labels and all(k in RESERVED_SELECTOR_LABELS for k in labels):
        out.append(Problem(f"{base}.matchLabels", (
            f"only labels Kaito reserves for its own nodes ({', '.join(sorted(labels))}); add at least one label "
            "of your own, or the selector would match other workspaces' nodes")))
    for i, expr in enumerate(sel.match_expressions or []):
        where = f"{base}.matchExpressions[{i}]"
        if expr.operator != "In" or len(expr.values or []) != 1:
            out.append(Problem(where, (
                f"operator {expr.operator} with {len(expr.values or [])} value(s) cannot become node labels; Kaito takes "
                f"only 'In' with exactly one value: use matchLabels: {{{expr.key}: VALUE}}")))
        for v in expr.values or []:
            out += _label(where, expr.key, v)
    if not labels and not sel.match_expressions:
        out.append(Problem(base, "selects no labels: add labelSelector.matchLabels, the labels of the GPU nodes"))
    return out


def _label(path: str, key: str, value: str) -> list[Problem]:
    prefix, _, name = key.rpartition("/")
    ok = bool(_LABEL_NAME.match(name)) and len(name) <= 63 and (
        not prefix or (len(prefix) <= 253 and bool(spec.DNS1123_SUBDOMAIN.match(prefix))))
    out = []
    if not ok:
        out.append(Problem(path, (f"'{key}' is not a valid label key: [prefix/]name, the name at most 63 letters, "
                                  "digits, '-', '_' or '.', starting and ending with a letter or digit")))
    if len(str(value)) > 63 or not _LABEL_VALUE.match(str(value)):
        out.append(Problem(path, (f"'{value}' is not a valid label value: at most 63 letters, digits, '-', '_' or '.', "
                                  "starting and ending with a letter or digit")))
    return out


def _partition(r: spec.ResourceSpec, instance: str) -> list[Problem]:
    p = r.partition
    assert p is not None
    out: list[Problem] = []
    if instance:
        out.append(Problem("resource.partition", (
            "GPU partitioning is only supported on your own nodes (Kaito: node auto-provisioning disabled); "
            "remove resource.instanceType or the partition")))
    if not p.mode:
        out.append(Problem("resource.partition.mode", "required field is missing: mig or accelerator"))
    elif p.mode == "accelerator":
        if p.profile:
            out.append(Problem("resource.partition.profile", "profile is not valid for accelerator mode; remove it"))
        if p.count is None:
            out.append(Problem("resource.partition.count", "required for accelerator mode: the number of whole GPUs, e.g. 2"))
    elif p.mode == "mig":
        if p.count is not None:
            out.append(Problem("resource.partition.count", "count is only valid for accelerator mode; remove it"))
        if p.profile not in MIG_PROFILES:
            close = _close(p.profile or "", sorted(MIG_PROFILES), "e.g. 1g.10gb, 3g.40gb, 7g.80gb")
            out.append(Problem("resource.partition.profile", f"'{p.profile or ''}' is not a known MIG profile{close}"))
    else:
        out.append(Problem("resource.partition.mode", f"'{p.mode}' is not one of mig, accelerator"))
    return out


# -- inference ---------------------------------------------------------------------------------


def _inference(ws: spec.Workspace, cms: dict[str, dict[str, str]]) -> list[Problem]:
    inf = ws.inference
    assert inf is not None
    out: list[Problem] = []
    model: presets.ModelPreset | None = None
    known = True
    if inf.preset is not None:
        problems, model, known = _preset(inf.preset, "inference.preset")
        out += problems
        if known:
            out += _fit(ws, inf.preset.name, model)
    for i, a in enumerate(inf.adapters or []):
        if a.source.image and a.source.volume_source:  # Kaito #1877: an image or a volume
            out.append(Problem(f"inference.adapters[{i}].source", "set either image or volumeSource, not both"))
        elif a.source.image:
            out += _image(f"inference.adapters[{i}].source.image", a.source.image)
        elif not a.source.volume_source:
            out.append(Problem(f"inference.adapters[{i}].source", (
                "either image or volumeSource must be specified: the OCI image holding the adapter "
                "(e.g. myregistry.azurecr.io/adapters/x:0.1) or a volume with its files (e.g. the tuning "
                "output's persistentVolumeClaim)")))
        for j, secret in enumerate(a.source.image_pull_secrets or []):
            out += _secret(f"inference.adapters[{i}].source.imagePullSecrets[{j}]", secret)
    if ws.runtime == "vllm" and inf.preset is not None and known:
        out += _inference_config(ws, cms, model)
    return out


def _preset(p: spec.PresetSpec, where: str) -> tuple[list[Problem], presets.ModelPreset | None, bool]:
    """The preset's problems, its catalog entry (None outside the catalog) and whether it is known at all
    (an unknown or deprecated name stops the checks that depend on the model)."""
    name = p.name
    if name.lower() in DEPRECATED_PRESETS:
        return [Problem(f"{where}.name", f"model {name} is deprecated and no longer supported (Kaito v0.12); "
                                         "run `kaiflow presets` for current ones")], None, False
    model = presets.get_model(name) if presets.is_preset(name) else None
    if model is None and not presets.looks_like_hf_id(name):
        return [Problem(f"{where}.name", str(presets.UnknownPreset(name, presets.model_names())))], None, False
    opts = p.preset_options or spec.PresetOptions()
    out: list[Problem] = []
    if p.access_mode == "private" and not opts.image:
        out.append(Problem(f"{where}.presetOptions.image", "required when accessMode is private: the image holding the model weights"))
    if opts.image:
        out += _image(f"{where}.presetOptions.image", opts.image)
    if model is not None and model.gated and not opts.model_access_secret and p.access_mode != "private":
        out.append(Problem(f"{where}.presetOptions.modelAccessSecret", (
            f"{name} is a gated model ({model.hf_id}): name a Secret holding your Hugging Face token under the key "
            "HF_TOKEN, e.g. presetOptions: {modelAccessSecret: hf-token}")))
    if opts.model_access_secret:
        out += _secret(f"{where}.presetOptions.modelAccessSecret", opts.model_access_secret)
    for j, secret in enumerate(opts.image_pull_secrets or []):
        out += _secret(f"{where}.presetOptions.imagePullSecrets[{j}]", secret)
    return out, model, True


def _fit(ws: spec.Workspace, name: str, model: presets.ModelPreset | None) -> list[Problem]:
    """Kaito's admission-time sizing: the transformers runtime cannot span nodes (never bypassed); the
    v1alpha1 webhook and the transformers runtime refuse a model the nodes cannot hold, and a MIG slice
    smaller than the weights, unless kaito.sh/bypass-resource-checks is set. vLLM on v1beta1 is sized by
    ``kaiflow plan`` (Kaito: the node estimator)."""
    runtime_path = f"metadata.annotations[{RUNTIME_ANNOTATION}]"
    transformers = ws.runtime == "transformers"
    if transformers and name.lower() in NO_TRANSFORMERS_RUNTIME:
        return [Problem(runtime_path, f"model {name} does not support inference with the transformers runtime; "
                                      "remove the annotation (vllm, the default)")]
    if model is None:
        return []
    bypass = BYPASS_ANNOTATION in (ws.metadata.annotations or {})
    r = ws.resource or spec.ResourceSpec()
    weights_gib = sizing.gib(model.weights_gb)
    if r.partition is not None and r.partition.mode == "mig" and r.partition.profile in MIG_PROFILES and not bypass:
        slice_gib = int(float(r.partition.profile.split(".")[1].removesuffix("gb")))
        if weights_gib > slice_gib:
            return [Problem("resource.partition.profile", (
                f"{name} needs at least {weights_gib:.1f} GiB for its weights, more than the {r.partition.profile} "
                "MIG slice holds; pick a larger profile"))]
    instance = r.instance_type or ""
    try:
        sku = presets.get_sku(instance) if instance and instance != LOCAL else None
    except presets.UnknownSku:
        sku = None
    if sku is None or sku.gpu_count == 0:
        return []
    fitting = ", ".join(sizing.fitting_skus(model, cloud=sku.cloud, limit=3)) or "none"
    needed = sizing.plan_inference(model, sku)  # count None: the nodes the model needs
    if transformers:
        p = needed
        if not p.fits or p.nodes > 1:
            need = f"needs {p.nodes} nodes of {sku.name}" if p.fits else f"does not fit {sku.name}"
            return [Problem(runtime_path, (
                f"the transformers runtime cannot run a model across nodes, and {name} ({model.weights_gb:g} GB of "
                f"weights) {need}: pick an instance type where it fits on one node ({fitting}) or remove the "
                "annotation to serve it with vllm"))]
    if (transformers or ws.api_version == "kaito.sh/v1alpha1") and not bypass:
        count = r.count or 1  # Kaito's default
        if not needed.fits or needed.nodes > count:
            why = f"it needs {needed.nodes} nodes" if needed.fits else (needed.reason or "too little GPU memory")
            return [Problem("resource.instanceType", (
                f"{count} x {sku.name} ({sku.gpu_count} x {sku.gpu_memory_gib:g} GiB) cannot hold {name}: {why} "
                "(Kaito: insufficient total GPU memory); raise resource.count or pick an instance type that fits "
                f"on one node: {fitting}"))]
    return []


def _inference_config(ws: spec.Workspace, cms: dict[str, dict[str, str]], model: presets.ModelPreset | None) -> list[Problem]:
    inf = ws.inference
    assert inf is not None
    name = inf.config
    where = f"inference.config (ConfigMap '{name}')"
    vllm: dict[str, Any] = {}
    if name:
        cm = cms.get(name)
        if cm is None:
            return []  # read from the cluster on Kubernetes; `kaiflow validate` notes it
        text = cm.get("inference_config.yaml")
        if text is None:
            return [Problem(where, f"has no inference_config.yaml key (keys: {', '.join(cm) or 'none'}); "
                                   "put the vLLM settings under data.inference_config.yaml")]
        try:
            doc = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            return [Problem(where, f"inference_config.yaml is not valid YAML: {getattr(exc, 'problem', exc)}")]
        if not isinstance(doc, dict):
            return [Problem(where, "inference_config.yaml must be a mapping with a vllm: section")]
        section = doc.get("vllm") or {}
        if not isinstance(section, dict) or any(isinstance(v, (dict, list)) for v in section.values()):
            return [Problem(f"{where}.vllm", "must map vLLM argument names to single values, e.g. max-model-len: 4096")]
        vllm = section
    out: list[Problem] = []
    raw = vllm.get("max-model-len")
    if raw is not None and str(raw).strip() != "":
        try:
            value = int(str(raw).strip())
        except ValueError:
            return [Problem(f"{where}.vllm.max-model-len", f"'{raw}' is not an integer; write a token count, e.g. 4096")]
        if model is not None and value > model.context_length:
            out.append(Problem(f"{where}.vllm.max-model-len", (
                f"{value} exceeds {model.name}'s context window of {model.context_length} tokens; "
                f"set it to at most {model.context_length}")))
    elif ws.api_version == "kaito.sh/v1alpha1":
        out += _v1alpha1_max_model_len(ws, model, where if name else "inference.config")
    return out


def _v1alpha1_max_model_len(ws: spec.Workspace, model: presets.ModelPreset | None, where: str) -> list[Problem]:
    """Kaito's v1alpha1 webhook wants max-model-len on multi-GPU instances with < 20 GiB per GPU and on
    more than one node (its default inference ConfigMap sets none)."""
    r = ws.resource or spec.ResourceSpec()
    sku = None
    if r.instance_type and r.instance_type != LOCAL:
        try:
            sku = presets.get_sku(r.instance_type)
        except presets.UnknownSku:
            sku = None
    small_gpus = sku is not None and sku.gpu_count > 1 and sku.gpu_memory_gib < 20
    if not small_gpus and (r.count or 1) <= 1:
        return []
    suggestion = 4096
    if model is not None and sku is not None and sku.gpu_count > 0:
        p = sizing.plan_inference(model, sku, r.count)
        low = getattr(p, "context_low", None) or p.max_model_len  # the low end of what vLLM's auto-fit picks
        if p.fits and isinstance(low, int) and low > 0:
            suggestion = low
    return [Problem(where, (
        "kaito.sh/v1alpha1 needs max-model-len in the vllm section of inference_config.yaml on multi-GPU "
        "instances with less than 20 GiB per GPU or on more than one node: add a ConfigMap with "
        f"inference_config.yaml: 'vllm: {{max-model-len: {suggestion}}}' and name it in inference.config"))]


# -- tuning ------------------------------------------------------------------------------------


def _tuning(ws: spec.Workspace, cms: dict[str, dict[str, str]], allow_private_urls: bool) -> list[Problem]:
    t = ws.tuning
    assert t is not None
    out: list[Problem] = []
    problems, model, _ = _preset(t.preset, "tuning.preset")
    out += problems
    if model is not None and not model.tuning_supported:
        able = [m.name for m in presets.models() if m.tuning_supported and not m.is_local]
        out.append(Problem("tuning.preset.name", f"{model.name} does not support tuning; presets that do: {', '.join(able)}"))
    for i, url in enumerate(t.input.urls or []):
        msg = url_problem(url, allow_private_urls)
        if msg:
            out.append(Problem(f"tuning.input.urls[{i}]", msg))
    if t.input.image:
        out += _image("tuning.input.image", t.input.image)
    for j, secret in enumerate(t.input.image_pull_secrets or []):
        out += _secret(f"tuning.input.imagePullSecrets[{j}]", secret)
    if t.output.image:
        out += _image("tuning.output.image", t.output.image)
    if t.output.image_push_secret:
        out += _secret("tuning.output.imagePushSecret", t.output.image_push_secret)
    if t.config and t.config in cms:
        out += _training_config(t.config, cms[t.config], t.method)
    return out


def url_problem(url: str, allow_private: bool) -> str | None:
    """Why Kaito refuses ``url`` as a tuning dataset URL, or None. No DNS lookup (``kaiflow plan`` and the
    pull resolve the host); literal loopback/private/link-local addresses and local or cloud-metadata host
    names are refused unless ``allow_private`` (KAIFLOW_ALLOW_PRIVATE_URLS, for tests and local demos)."""
    if url.startswith("hf://datasets/"):
        return None  # a kaiflow extension: a Hugging Face dataset
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        return f"'{url}' must use http or https (or hf://datasets/ORG/NAME)"
    try:
        host = (parts.hostname or "").lower()
    except ValueError:
        host = ""
    if not host:
        return f"'{url}' is not a valid URL: it has no host"
    if allow_private:
        return None
    tail = "; set KAIFLOW_ALLOW_PRIVATE_URLS=true to allow it (tests, local demos)"
    if host == "localhost" or host.endswith(".localhost") or host in METADATA_HOSTS:
        return f"'{url}' targets a local or cloud-metadata endpoint (Kaito refuses these){tail}"
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    mapped = getattr(addr, "ipv4_mapped", None)
    addr = mapped or addr
    if not addr.is_global or addr.is_multicast:
        return f"'{url}' targets a loopback, private or link-local address (Kaito refuses these){tail}"
    return None


def _training_config(name: str, cm: dict[str, str], method: str) -> list[Problem]:
    where = f"tuning.config (ConfigMap '{name}')"
    text = cm.get("training_config.yaml")
    if text is None:
        return [Problem(where, f"has no training_config.yaml key (keys: {', '.join(cm) or 'none'}); put Kaito's "
                               "tuning parameters under data.training_config.yaml")]
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return [Problem(where, f"training_config.yaml is not valid YAML: {getattr(exc, 'problem', exc)}")]
    body = doc.get("training_config") if isinstance(doc, dict) else None
    if not isinstance(body, dict):
        return [Problem(where, "training_config.yaml must hold a 'training_config:' mapping with the sections "
                               f"{', '.join(TRAINING_SECTIONS)}")]
    out: list[Problem] = []
    for section in body:
        if section not in TRAINING_SECTIONS:
            out.append(Problem(f"{where}.training_config", (
                f"unknown section '{section}'{_close(str(section), TRAINING_SECTIONS, ', '.join(TRAINING_SECTIONS))}")))
    quant = body.get("QuantizationConfig")
    if quant is not None:
        out += _quantization(f"{where}.training_config.QuantizationConfig", quant if isinstance(quant, dict) else {}, method)
    args = body.get("TrainingArguments")
    if isinstance(args, dict) and "output_dir" in args:
        out += _output_dir(f"{where}.training_config.TrainingArguments.output_dir", args["output_dir"])
    return out


def _quantization(where: str, quant: dict[str, Any], method: str) -> list[Problem]:
    flags: dict[str, bool] = {}
    for key in ("load_in_4bit", "load_in_8bit"):
        value = quant.get(key)
        if value is not None and not isinstance(value, bool):
            return [Problem(f"{where}.{key}", f"'{value}' must be true or false (unquoted)")]
        flags[key] = bool(value)
    if flags["load_in_4bit"] and flags["load_in_8bit"]:
        return [Problem(where, "load_in_4bit and load_in_8bit cannot both be true; pick one")]
    if method == "lora" and (flags["load_in_4bit"] or flags["load_in_8bit"]):
        on = "load_in_4bit" if flags["load_in_4bit"] else "load_in_8bit"
        return [Problem(f"{where}.{on}", "must not be true for method lora (a 16-bit base); "
                                         "set it to false, or use method: qlora")]
    if method == "qlora" and not (flags["load_in_4bit"] or flags["load_in_8bit"]):
        return [Problem(where, "method qlora needs load_in_4bit: true (or load_in_8bit: true); "
                               "set one, or use method: lora")]
    return []


def _output_dir(where: str, value: Any) -> list[Problem]:
    if not isinstance(value, str):
        return [Problem(where, f"{value!r} is not a string; write a directory under /mnt, e.g. \"/mnt/results\"")]
    clean = posixpath.normpath(posixpath.join("/mnt", value))
    if clean == "/mnt" or not clean.startswith("/mnt"):
        return [Problem(where, f"'{value}' must be a directory under /mnt, e.g. \"/mnt/results\"")]
    return []


# -- references and names ----------------------------------------------------------------------


def image_problem(ref: str) -> str | None:
    """Why ``ref`` is not an image reference Kaito's ``reference.ParseDockerRef`` accepts, or None."""
    if re.fullmatch(r"[a-f0-9]{64}", ref):
        return f"'{ref}' is a bare 64-character hex string; write [registry/]repository[:tag][@digest]"
    first, slash, rest = ref.partition("/")
    if slash and (any(c in first for c in ".:") or first == "localhost" or first.lower() != first):
        remainder = rest
        domain = first
    else:
        domain, remainder = "", ref
    repo = remainder.split("@", 1)[0].split(":", 1)[0]
    if repo.lower() != repo and _REFERENCE.match(ref.replace(repo, repo.lower(), 1)):
        fixed = (f"{domain}/" if domain else "") + remainder.replace(repo, repo.lower(), 1)
        return f"'{ref}': the repository name ({repo}) must be lowercase, e.g. '{fixed}'"
    m = _REFERENCE.match(ref)
    if not m:
        return (f"'{ref}' is not a valid image reference (invalid reference format): write "
                "[registry/]repository[:tag][@digest], e.g. myregistry.azurecr.io/adapters/phi-3:0.1")
    if len(m.group(1)) > 255:
        return f"'{ref}': the repository name must not be more than 255 characters"
    return None


def notes(ws: spec.Workspace) -> list[Problem]:
    """Template placeholders left in ``ws`` (accepted, not checked): each to replace before ``apply``."""
    found = []
    for path, value in _placeholder_fields(ws):
        if value and PLACEHOLDER.search(value):
            found.append(Problem(path, f"'{value}' is a template placeholder: replace it before apply"))
    return found


def _placeholder_fields(ws: spec.Workspace) -> list[tuple[str, str | None]]:
    fields: list[tuple[str, str | None]] = [("resource.instanceType", ws.instance_type)]
    if ws.inference:
        for i, a in enumerate(ws.inference.adapters or []):
            fields.append((f"inference.adapters[{i}].source.image", a.source.image))
    if ws.tuning:
        fields += [("tuning.input.image", ws.tuning.input.image), ("tuning.output.image", ws.tuning.output.image),
                   ("tuning.output.imagePushSecret", ws.tuning.output.image_push_secret)]
    return fields


def _image(path: str, ref: str) -> list[Problem]:
    if PLACEHOLDER.search(ref):
        return []
    msg = image_problem(ref)
    return [Problem(path, msg)] if msg else []


def _secret(path: str, name: str) -> list[Problem]:
    if PLACEHOLDER.search(name):
        return []
    if len(name) > 253 or not spec.DNS1123_SUBDOMAIN.match(name):
        return [Problem(path, f"'{name}' is not a valid Secret name (lowercase letters, digits, '-' and '.')")]
    return []


def _close(word: str, choices: Any, fallback: str) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{close[0]}'?"
    return f"; known: {fallback}" if fallback else ""
