"""Server settings from the command line and from Kaito's `inference_config.yaml`.

Kaito mounts an `inference_config.yaml` whose `vllm:` section holds vLLM engine arguments in their
command-line spelling (`max-model-len: 4096`); those pass through unchanged as engine arguments
(checked against vLLM's `AsyncEngineArgs` when the vLLM engine starts, so a typo is named).
Kaito's other top-level keys (`max_probe_steps`) are accepted and ignored; `chat-template` (a
file, an argument of vLLM's OpenAI server) replaces the model's chat template on both engines; engine
arguments that current vLLM removed (`swap-space`, which Kaito's default file sets) are dropped
with a warning. A preset's own
`vllm_args` (from `presets/`) apply first, the file's `vllm:` keys override them.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving import adapters, errors, multinode

log = logging.getLogger(__name__)

ENGINES = ("auto", "vllm", "transformers")
KAITO_IGNORED_KEYS = {"max_probe_steps", "model_name", "transformers"}
DEFAULT_MAX_TOKENS = 512
MAX_REQUEST_BYTES = 4 * 1024 * 1024


@dataclass
class ServerConfig:
    model: str
    model_path: str
    served_model_name: str
    port: int
    host: str = "127.0.0.1"
    engine: str = "auto"
    adapters: list[adapters.AdapterSpec] = field(default_factory=list)
    vllm_args: dict[str, Any] = field(default_factory=dict)
    chat_template: Path | None = None
    max_queue_depth: int = 256
    default_max_tokens: int = DEFAULT_MAX_TOKENS
    max_request_bytes: int = MAX_REQUEST_BYTES
    enable_lora: bool = True
    log_level: str = "info"
    group: multinode.Group | None = None  # several nodes serve one model (`serving.multinode`)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m serving", description="kaiflow inference server: Kaito /chat and the OpenAI API")
    p.add_argument("--model", required=True, help="preset name, Hugging Face id or local model directory")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR[:STRENGTH]",
                   help="LoRA adapter to serve (repeatable); strength scales its update, default 1.0")
    p.add_argument("--engine", choices=ENGINES, default="auto", help="auto picks vLLM where installed and supported")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--config", type=Path, action="append", default=[],
                   help="Kaito inference_config.yaml; its vllm: keys are engine arguments (repeatable: a later "
                        "file's keys override an earlier one's, so kaiflow's plan goes first and the user's file last)")
    p.add_argument("--served-model-name", help="name of the base model in the API (default: --model as given)")
    p.add_argument("--max-queue-depth", type=int, default=256,
                   help="requests allowed to wait beyond what the engine runs at once; more get 429")
    p.add_argument("--default-max-tokens", type=int, default=DEFAULT_MAX_TOKENS, metavar="N",
                   help="/v1/chat/completions (and /v1/completions with max_tokens null): tokens to generate when the "
                        f"request gives no max_tokens (default {DEFAULT_MAX_TOKENS}, capped by the context; 0: the "
                        "rest of the context)")
    p.add_argument("--max-request-bytes", type=int, default=MAX_REQUEST_BYTES, metavar="BYTES",
                   help=f"largest request body accepted; larger ones get 413 (default {MAX_REQUEST_BYTES}, 4 MiB)")
    p.add_argument("--no-lora", dest="enable_lora", action="store_false",
                   help="vLLM: start without LoRA support (slightly faster; adapters cannot be loaded later)")
    g = p.add_argument_group("multi-node", "one model over several nodes: node rank 0 serves the API, the others run "
                             "pipeline stages (see serving.multinode); every node gets the same command line")
    g.add_argument("--nnodes", type=int, default=1, help="nodes in the group (default 1: no group)")
    g.add_argument("--node-rank", default="0", metavar="N|auto",
                   help="this node's rank; auto: $POD_INDEX, else the host name's -<ordinal> (a StatefulSet pod)")
    g.add_argument("--master-addr", metavar="HOST", help="the leader's address (node rank 0)")
    g.add_argument("--master-port", type=int, default=multinode.DEFAULT_MASTER_PORT, metavar="PORT",
                   help=f"the leader's rendezvous port (default {multinode.DEFAULT_MASTER_PORT})")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def from_args(argv: list[str] | None = None) -> ServerConfig:
    ns = build_parser().parse_args(argv)
    if not (0 < ns.port < 65536):
        raise errors.ConfigError(f"--port {ns.port} is not a TCP port; use 1-65535")
    if ns.max_queue_depth < 0:
        raise errors.ConfigError("--max-queue-depth must be 0 or more")
    if ns.default_max_tokens < 0:
        raise errors.ConfigError("--default-max-tokens must be 0 (the rest of the context) or more")
    if ns.max_request_bytes < 1024:
        raise errors.ConfigError(f"--max-request-bytes {ns.max_request_bytes} is too small to hold a request; use 1024 or more")
    vllm_args = preset_vllm_args(ns.model)
    for path in ns.config:
        vllm_args.update(load_vllm_args(path))
    group = multinode.group_from(ns.nnodes, ns.node_rank, ns.master_addr, ns.master_port)
    if group is not None:
        if ns.engine == "transformers":
            raise errors.ConfigError("--nnodes > 1 needs the vLLM engine; the transformers engine serves on one node")
        vllm_args = multinode.layout_args(group, vllm_args)
    template = vllm_args.get("chat-template", vllm_args.get("chat_template"))
    if template is not None and not Path(str(template)).is_file():
        raise errors.ConfigError(f"--config {', '.join(map(str, ns.config))}: vllm: chat-template {template} is not a file")
    specs = [adapters.parse_spec(text) for text in ns.adapter]
    duplicates = {s.name for s in specs if sum(t.name == s.name for t in specs) > 1}
    if duplicates:
        raise errors.ConfigError(f"--adapter names must be unique; repeated: {', '.join(sorted(duplicates))}")
    if specs and not ns.enable_lora:
        raise errors.ConfigError("--no-lora cannot be combined with --adapter")
    return ServerConfig(
        model=ns.model,
        model_path=resolve_model(ns.model),
        served_model_name=ns.served_model_name or ns.model,
        port=ns.port,
        host=ns.host,
        engine=ns.engine,
        adapters=specs,
        vllm_args=vllm_args,
        chat_template=Path(str(template)) if template is not None else None,
        max_queue_depth=ns.max_queue_depth,
        default_max_tokens=ns.default_max_tokens,
        max_request_bytes=ns.max_request_bytes,
        enable_lora=ns.enable_lora,
        log_level=ns.log_level,
        group=group,
    )


def resolve_model(model: str) -> str:
    import presets

    return presets.resolve_model_source(model)


def preset_vllm_args(model: str) -> dict[str, Any]:
    import presets

    return dict(presets.get_model(model).vllm_args) if presets.is_preset(model) else {}


def load_vllm_args(path: Path | None) -> dict[str, Any]:
    """The `vllm:` section of a Kaito inference_config.yaml (empty without a file)."""
    if path is None:
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise errors.ConfigError(f"--config {path}: cannot read it ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise errors.ConfigError(f"--config {path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise errors.ConfigError(f"--config {path}: expected a mapping with a 'vllm:' section")
    unknown = set(data) - {"vllm"} - KAITO_IGNORED_KEYS
    if unknown:
        raise errors.ConfigError(f"--config {path}: unknown top-level keys {sorted(unknown)}; engine arguments go under 'vllm:'")
    section = data.get("vllm") or {}
    if not isinstance(section, dict):
        raise errors.ConfigError(f"--config {path}: 'vllm:' must be a mapping of engine arguments")
    return {str(k): v for k, v in section.items()}
