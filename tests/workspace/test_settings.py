"""One home per setting: every ``KAIFLOW_*`` variable is a field of ``workspace.settings.Settings``,
read nowhere else from the environment, and listed in the README's settings table."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from infra import datasets
from presets import tiny
from workspace import settings

REPO = Path(__file__).resolve().parents[2]
SKIP_DIRS = {"tests", "bench", ".venv", "node_modules", "build", "dist"}
SETTINGS_MODULE = REPO / "workspace" / "settings.py"


def _sources() -> list[Path]:
    out = []
    for path in sorted(REPO.rglob("*.py")):
        rel = path.relative_to(REPO)
        if rel.parts[0] in SKIP_DIRS or any(p.startswith(".") for p in rel.parts) or path == SETTINGS_MODULE:
            continue
        out.append(path)
    return out


def _kaiflow_name(node: ast.AST | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("KAIFLOW_"):
        return node.value
    return None


def _is_environ(node: ast.AST) -> bool:
    """``os.environ`` or a bare ``environ``."""
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (isinstance(node, ast.Name) and node.id == "environ")


def _env_reads(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, variable) of every read of a ``KAIFLOW_*`` variable: ``os.environ.get(...)``,
    ``os.getenv(...)``, ``os.environ[...]`` (not as an assignment target), ``... in os.environ``,
    and ``.get("KAIFLOW_...")`` on any mapping (``env = os.environ; env.get(...)``)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and (name := _kaiflow_name(node.args[0])):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in ("get", "getenv"):
                found.append((node.lineno, name))
            elif isinstance(func, ast.Name) and func.id == "getenv":
                found.append((node.lineno, name))
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and _is_environ(node.value):
            if name := _kaiflow_name(node.slice):
                found.append((node.lineno, name))
        elif isinstance(node, ast.Compare) and (name := _kaiflow_name(node.left)):
            if any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops) and any(_is_environ(c) for c in node.comparators):
                found.append((node.lineno, name))
    return found


def test_no_module_but_the_settings_reads_a_kaiflow_variable_from_the_environment():
    offenders = [f"{path.relative_to(REPO)}:{line}: {name}"
                 for path in _sources() for line, name in _env_reads(ast.parse(path.read_text(), str(path)))]
    assert not offenders, ("read these through workspace.settings (a field of Settings) instead of the "
                           "environment:\n" + "\n".join(offenders))


def test_the_guard_sees_the_ways_a_variable_can_be_read():
    code = ('import os\nfrom os import environ, getenv\nenv = os.environ\n'
            'a = os.environ.get("KAIFLOW_A")\nb = os.getenv("KAIFLOW_B", "1")\nc = os.environ["KAIFLOW_C"]\n'
            'd = "KAIFLOW_D" in os.environ\ne = env.get("KAIFLOW_E")\nf = getenv("KAIFLOW_F")\ng = environ["KAIFLOW_G"]\n'
            'os.environ["KAIFLOW_WRITE"] = "1"\nos.environ.get("HOME")\n')
    assert sorted(name for _, name in _env_reads(ast.parse(code))) == [f"KAIFLOW_{c}" for c in "ABCDEFG"]


def _readme_settings_table() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("### Settings", 1)[1].split("\n#", 1)[0]
    return "\n".join(line for line in section.splitlines() if line.startswith("|"))


def _env_name(name: str, field) -> str:
    return (field.alias or f"KAIFLOW_{name}").upper()


def test_every_setting_is_in_the_readme_table():
    table = set(re.findall(r"KAIFLOW_[A-Z0-9_]+", _readme_settings_table()))
    missing = sorted(_env_name(n, f) for n, f in settings.Settings.model_fields.items() if _env_name(n, f) not in table)
    assert not missing, f"add these to the README's settings table (variable, meaning, default): {missing}"


def test_the_readme_table_names_no_variable_the_code_does_not_know():
    table = set(re.findall(r"KAIFLOW_[A-Z0-9_]+", _readme_settings_table()))
    fields = {_env_name(n, f) for n, f in settings.Settings.model_fields.items()}
    readers = _sources() + [SETTINGS_MODULE] + sorted((REPO / "tests").rglob("*.py")) + [REPO / "Makefile"]
    code = "\n".join(p.read_text() for p in readers if p.is_file())
    stale = sorted(v for v in table - fields if v not in code)
    assert not stale, f"the README's settings table names variables nothing reads: {stale}"


def test_load_reads_the_environment_on_every_call(monkeypatch, tmp_path):
    monkeypatch.setenv("KAIFLOW_DATASET_ATTEMPTS", "7")
    monkeypatch.setenv("KAIFLOW_DATASET_BACKOFF_S", "0.25")
    monkeypatch.setenv("KAIFLOW_KUBE_REQUEST_TIMEOUT_S", "3")
    monkeypatch.setenv("KAIFLOW_TERMINATION_LOG", str(tmp_path / "termination-log"))
    s = settings.load()
    assert (s.dataset_attempts, s.dataset_backoff_s, s.kube_request_timeout_s) == (7, 0.25, 3.0)
    assert s.termination_log == tmp_path / "termination-log"
    assert datasets.RetryPolicy.from_settings() == datasets.RetryPolicy(attempts=7, backoff_s=0.25)
    monkeypatch.setenv("KAIFLOW_DATASET_ATTEMPTS", "2")
    assert settings.load().dataset_attempts == 2


def test_kaiflow_home_reaches_the_tiny_models_cache_below_the_settings_layer(monkeypatch, tmp_path):
    monkeypatch.setenv("KAIFLOW_HOME", str(tmp_path / "home"))
    assert settings.load().home_dir == tmp_path / "home"
    assert tiny.default_path().parent == tmp_path / "home" / "models"
    assert tiny.default_path(tmp_path / "elsewhere").parent == tmp_path / "elsewhere" / "models"
