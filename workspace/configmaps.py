"""The ConfigMaps a workspace file carries beside the Workspace, as Kaito reads them.

``tuning.config`` names a ConfigMap whose ``training_config.yaml`` is the tuning program's
config; ``inference.config`` one whose ``inference_config.yaml`` configures the server. Both
travel with the flow run as ``config_maps`` (name → data), so every platform reads them the same way.
"""

from __future__ import annotations

import yaml

from workspace import spec
from workspace.errors import SpecError


def training_config(ws: spec.Workspace, config_maps: dict[str, dict[str, str]]) -> dict | None:
    """The ``training_config.yaml`` of the ConfigMap ``tuning.config`` names (None: preset defaults)."""
    name = ws.tuning.config if ws.tuning else None
    if not name:
        return None
    cm = config_maps.get(name)
    if cm is None:
        raise SpecError(
            f"tuning.config: ConfigMap '{name}' was not given; put it in the same file as the workspace "
            "(a ConfigMap whose data has training_config.yaml)"
        )
    text = cm.get("training_config.yaml")
    if text is None:
        raise SpecError(f"tuning.config: ConfigMap '{name}' has no training_config.yaml key (keys: {', '.join(cm)})")
    return yaml.safe_load(text) or {}


def inference_config_text(ws: spec.Workspace, config_maps: dict[str, dict[str, str]]) -> str | None:
    """The ``inference_config.yaml`` text of the ConfigMap ``inference.config`` names, if any."""
    if not ws.inference or not ws.inference.config:
        return None
    return (config_maps.get(ws.inference.config) or {}).get("inference_config.yaml")


def retrain_config_name(name: str) -> str:
    """The ConfigMap holding a retrain candidate's training config (the held-out split written in):
    never the user's own ConfigMap, which ``kaiflow apply`` trains with. A valid object name."""
    return f"{name[:40].rstrip('-.').replace('.', '-')}-retrain-config"
