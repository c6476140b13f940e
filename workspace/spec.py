"""The Workspace spec: Kaito's ``kaito.sh/v1alpha1`` and ``kaito.sh/v1beta1`` Workspace as pydantic models.

Fields sit at the top level as in Kaito (``resource``, ``inference``, ``tuning``; ``status`` apart).
Every field has a description: the Prefect UI renders the ``workspace`` deployment's run form from
this schema. Names are camelCase on the wire (YAML/JSON, by alias) and snake_case in Python.

One extension over Kaito: a workspace may carry both ``tuning`` and ``inference``; the flow then
tunes and serves the fresh adapter (an adapter whose ``source.image`` equals ``tuning.output.image``,
added automatically when the user lists none).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel
from pydantic.json_schema import SkipJsonSchema

API_VERSIONS = ("kaito.sh/v1alpha1", "kaito.sh/v1beta1")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
MAX_ADAPTERS = 10
SERVER_SET = ("uid", "resourceVersion", "generation", "creationTimestamp")
RUNTIMES = ("vllm", "transformers")  # the values of the kaito.sh/runtime annotation; vllm is the default


_SPELLED = {"api": "API", "urls": "URLs", "gpu": "GPU", "id": "ID"}


def _title(name: str, info: Any) -> str:
    """Labels in the Prefect UI's run form: "Instance type", "API version" (not "Instancetype")."""
    first, *rest = name.split("_")
    return " ".join([_SPELLED.get(first, first.capitalize()), *(_SPELLED.get(w, w) for w in rest)])


class Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", validate_assignment=True,
        field_title_generator=_title,
    )

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_unset=True)

    def to_parameters(self) -> dict[str, Any]:
        """:meth:`to_dict` without what the API server sets (uid, resourceVersion, ..., status): a flow
        run's parameters, which the server checks against the schema that leaves those out."""
        out = self.to_dict()
        out.pop("status", None)
        for key in SERVER_SET:
            (out.get("metadata") or {}).pop(key, None)
        return out


class ObjectMeta(Model):
    name: str = Field(description="Workspace name: lowercase letters, digits and '-', starting with a letter, at most 63 characters (it names the inference Service).")
    namespace: str | None = Field(None, description="Kubernetes namespace (kubernetes/aks platforms); default from the context.")
    labels: dict[str, str] | None = Field(None, description="Labels copied onto every object the workspace creates.")
    annotations: dict[str, str] | None = Field(None, description="Annotations, e.g. kaito.sh/performance-mode: throughput.")
    # set by the API server and ignored on apply: accepted from `kubectl get -o yaml`, but kept out of
    # the JSON schema, so the Prefect UI's run form does not offer them as inputs
    uid: SkipJsonSchema[str | None] = Field(None, description="Set by the API server; ignored on apply.")
    resource_version: SkipJsonSchema[str | None] = Field(None, description="Set by the API server; ignored on apply.")
    generation: SkipJsonSchema[int | None] = Field(None, description="Set by the API server; ignored on apply.")
    creation_timestamp: SkipJsonSchema[str | None] = Field(None, description="Set by the API server; ignored on apply.")

    @field_validator("name")
    @classmethod
    def _dns_name(cls, v: str) -> str:
        if len(v) > 253 or not DNS1123_SUBDOMAIN.match(v):
            raise ValueError(
                f"'{v}' is not a valid name: use lowercase letters, digits, '-' and '.', "
                "starting and ending with a letter or digit (DNS-1123), e.g. 'workspace-phi-3-mini'"
            )
        return v


class LabelSelectorRequirement(Model):
    key: str = Field(description="Label key.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(description="In, NotIn, Exists or DoesNotExist.")
    values: list[str] | None = Field(None, description="Values for In/NotIn.")


class LabelSelector(Model):
    match_labels: dict[str, str] | None = Field(None, description="Nodes must carry all these labels; provisioned nodes get them.")
    match_expressions: list[LabelSelectorRequirement] | None = Field(None, description="Set-based node label requirements.")


class ResourcePartition(Model):
    mode: str | None = Field(None, description="Partition mode: 'accelerator' (whole GPUs) or 'mig' (an NVIDIA MIG slice); your own nodes only.")
    count: int | None = Field(None, ge=1, description="Number of whole GPUs (accelerator mode only).")
    profile: str | None = Field(None, description="MIG profile, e.g. 1g.10gb (mig mode only).")


class ResourceSpec(Model):
    instance_type: str | None = Field(
        None,
        description="GPU instance type of the nodes, e.g. Standard_NC6s_v3 (Azure) or g5.xlarge (AWS); 'local' is this machine.",
    )
    count: int | None = Field(None, ge=1, description="Number of GPU nodes (default: as many as the model needs, at least 1).")
    label_selector: LabelSelector | None = Field(None, description="Selects the GPU nodes; provisioned nodes get these labels.")
    preferred_nodes: list[str] | None = Field(None, description="Names of existing nodes to use first (bring-your-own nodes).")
    partition: ResourcePartition | None = Field(None, description="Accelerator partitioning (v1beta1).")


class PresetOptions(Model):
    image: str | None = Field(None, description="Image holding the model weights (private presets).")
    image_pull_secrets: list[str] | None = Field(None, description="Secrets to pull the private model image.")
    model_access_secret: str | None = Field(None, description="Secret with HF_TOKEN for gated models (e.g. Llama).")


class PresetSpec(Model):
    name: str = Field(description="Preset model name, e.g. phi-3-mini-4k-instruct (see `kaiflow presets`), or an org/model Hugging Face id.")
    access_mode: Literal["public", "private"] | None = Field(None, description="public (default) or private (weights from presetOptions.image).")
    preset_options: PresetOptions | None = Field(None, description="Options for private or gated models.")


class AdapterSource(Model):
    name: str = Field(description="Adapter name (DNS-1123 label); requests select it with \"model\": NAME.")
    image: str | None = Field(None, description="OCI image holding the adapter (Kaito layout: /data/adapter_*.{json,safetensors}).")
    image_pull_secrets: list[str] | None = Field(None, description="Secrets to pull the adapter image.")
    volume_source: VolumeSource | None = Field(
        None, description="A volume holding the adapter's files, e.g. a tuning job's output persistentVolumeClaim "
                          "(Kaito #1877); on the local platform, hostPath.path. Instead of image.")

    @field_validator("name")
    @classmethod
    def _label(cls, v: str) -> str:
        if len(v) > 63 or not DNS1123_LABEL.match(v):
            raise ValueError(f"'{v}' is not a valid adapter name: lowercase letters, digits and '-', at most 63 characters")
        return v


class AdapterSpec(Model):
    source: AdapterSource = Field(description="Where the adapter comes from.")
    strength: str | None = Field(
        None, description="How strongly the adapter applies, a number from 0 (base model) to 1 (full adapter), as a string like \"1.0\"."
    )

    @field_validator("strength", mode="before")
    @classmethod
    def _strength(cls, v: Any) -> Any:
        if v is None:
            return v
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"'{v}' is not a number: write a strength from 0 to 1, e.g. \"0.5\"") from None
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"{v} is out of range: strength must be between 0 and 1")
        return str(v)

    @property
    def strength_value(self) -> float:
        return 1.0 if self.strength is None else float(self.strength)


class InferenceSpec(Model):
    preset: PresetSpec | None = Field(None, description="The model to serve.")
    template: dict[str, Any] | None = Field(None, description="A custom pod template (Kubernetes PodTemplateSpec) instead of a preset.")
    config: str | None = Field(None, description="Name of a ConfigMap with inference_config.yaml (vllm: engine arguments).")
    adapters: list[AdapterSpec] | None = Field(None, description=f"LoRA adapters served beside the base model (at most {MAX_ADAPTERS}).")

    @model_validator(mode="after")
    def _check(self) -> "InferenceSpec":
        if self.preset is None and self.template is None:
            raise ValueError("set inference.preset (a model to serve) or inference.template (a custom pod)")
        if self.preset is not None and self.template is not None:
            raise ValueError("set only one of inference.preset and inference.template")
        adapters = self.adapters or []
        if len(adapters) > MAX_ADAPTERS:
            raise ValueError(f"{len(adapters)} adapters given; at most {MAX_ADAPTERS} are allowed")
        names = [a.source.name for a in adapters]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"adapter names must be unique; repeated: {', '.join(dupes)}")
        return self


class VolumeSource(Model):
    """A Kubernetes volume source (persistentVolumeClaim, hostPath, emptyDir, ...), kept as given."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")


class DataSource(Model):
    name: str | None = Field(None, description="Optional name of the data source.")
    urls: list[str] | None = Field(None, description="http(s) URLs of dataset files (parquet, jsonl, json, csv, arrow).")
    image: str | None = Field(None, description="OCI image whose /data holds the dataset files.")
    image_pull_secrets: list[str] | None = Field(None, description="Secrets to pull the dataset image.")
    volume_source: VolumeSource | None = Field(None, description="A volume holding the dataset (e.g. persistentVolumeClaim; on the local platform, hostPath.path).")

    @model_validator(mode="after")
    def _exactly_one(self) -> "DataSource":
        given = [k for k in ("urls", "image", "volume_source") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                "set exactly one of tuning.input.urls, tuning.input.image, tuning.input.volumeSource"
                + (f" (found: {', '.join(to_camel(g) for g in given)})" if given else " (none given)")
            )
        for url in self.urls or []:
            if not re.match(r"^(https?://|hf://datasets/)", url):
                raise ValueError(f"'{url}' is not an http(s):// or hf://datasets/ URL")
        return self


class DataDestination(Model):
    image: str | None = Field(None, description="OCI image reference the tuned adapter is pushed to, e.g. myacr.azurecr.io/adapters/phi-3:0.0.1.")
    image_push_secret: str | None = Field(
        None, description="Secret with registry credentials for the push. Optional in kaiflow: without it the platform's default credentials are used."
    )
    volume_source: VolumeSource | None = Field(None, description="A volume the adapter is written to instead of an image.")

    @model_validator(mode="after")
    def _exactly_one(self) -> "DataDestination":
        given = [k for k in ("image", "volume_source") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("set exactly one of tuning.output.image and tuning.output.volumeSource")
        return self


class TuningSpec(Model):
    preset: PresetSpec = Field(description="The base model to tune.")
    method: Literal["lora", "qlora"] = Field("lora", description="lora (16-bit base) or qlora (4-bit quantized base).")
    config: str | None = Field(None, description="Name of a ConfigMap with training_config.yaml (Kaito's tuning parameters).")
    input: DataSource = Field(description="The training data.")
    output: DataDestination = Field(description="Where the tuned adapter goes.")

    @field_validator("method", mode="before")
    @classmethod
    def _method_any_case(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) and v.lower() in ("lora", "qlora") else v  # Kaito compares lowercased


class Condition(Model):
    type: str = Field(description="ResourceReady, JobStarted, InferenceReady, WorkspaceReady or WorkspaceSucceeded.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str | None = Field(None, description="One CamelCase word.")
    message: str | None = Field(None, description="What happened, and what to do about it.")
    last_transition_time: str | None = Field(None, description="RFC 3339 time of the last status change.")
    observed_generation: int | None = Field(None, description="Spec generation the condition was computed for.")


class WorkspaceStatus(Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")
    conditions: list[Condition] | None = Field(None, description="Workspace conditions.")
    worker_nodes: list[str] | None = Field(None, description="Nodes the workspace runs on.")


class Workspace(Model):
    """A Kaito Workspace: a model, the GPUs it needs, and a tuning job and/or an inference service."""

    api_version: Literal["kaito.sh/v1alpha1", "kaito.sh/v1beta1"] = Field(
        "kaito.sh/v1beta1", description="kaito.sh/v1alpha1 or kaito.sh/v1beta1."
    )
    kind: Literal["Workspace"] = Field("Workspace", description="Always Workspace.")
    metadata: ObjectMeta = Field(description="Name, namespace, labels and annotations.")
    resource: ResourceSpec | None = Field(None, description="The GPU nodes the workspace needs.")
    inference: InferenceSpec | None = Field(None, description="The inference service (a preset model, optional adapters).")
    tuning: TuningSpec | None = Field(None, description="The tuning job (a preset, a method, input data, an output image).")
    status: SkipJsonSchema[WorkspaceStatus | None] = Field(None, description="Reported by kaiflow; ignored on apply.")

    @model_validator(mode="after")
    def _check(self) -> "Workspace":
        if self.inference is None and self.tuning is None:
            raise ValueError("a workspace needs inference, tuning, or both")
        return self

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def instance_type(self) -> str | None:
        return self.resource.instance_type if self.resource else None

    @property
    def runtime(self) -> str:
        """The inference runtime the ``kaito.sh/runtime`` annotation picks: ``transformers`` when it says so,
        else ``vllm`` (Kaito's default; ``kaiflow validate`` refuses other values)."""
        value = (self.metadata.annotations or {}).get("kaito.sh/runtime")
        return "transformers" if value == "transformers" else "vllm"

    def effective_adapters(self) -> list[AdapterSpec]:
        """Adapters to serve. With tuning and inference together, the fresh adapter is served too."""
        adapters = list(self.inference.adapters or []) if self.inference else []
        if self.tuning and self.inference and self.tuning.output.image:
            if not any(a.source.image == self.tuning.output.image for a in adapters):
                adapters.append(AdapterSpec(source=AdapterSource(name=self.name[:63].strip(".-").replace(".", "-"), image=self.tuning.output.image)))
        return adapters


AdapterSource.model_rebuild()
