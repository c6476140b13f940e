"""`kaiflow server --database-url postgresql+asyncpg://...`: the whole stack on Debian's PostgreSQL.

The set-up starts a throwaway PostgreSQL cluster itself (initdb + pg_ctl as the ``postgres`` user,
in a temp dir, on 127.0.0.1 and a free port, password auth), creates a database, and runs the real
``kaiflow server`` on its own KAIFLOW_HOME (not the session's server): healthy, the deployments and
the run land in PostgreSQL's tables, one deployment run of an inference-only tiny workspace
completes, and the password shows up nowhere. Everything started is stopped at the end. Missing
PostgreSQL binaries fail the test (``make system-deps`` installs them); nothing is skipped.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest

from infra import local_process
from tests.deployments.conftest import KAIFLOW, run_deployment, tiny_workspace, wait_run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PASSWORD = "pg-Secret-4711"


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),  # the newest Debian version (15 > 9.6)
                   key=lambda p: [int(x) for x in re.findall(r"\d+", Path(p).parts[-3])])
    if not found:
        pytest.fail("PostgreSQL server binaries are missing (/usr/lib/postgresql/*/bin/initdb): "
                    "run `make system-deps` (Debian package postgresql)")
    return Path(found[-1]).parent


def _as_postgres(*cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """initdb/pg_ctl refuse root: as root run them as the ``postgres`` user, else as ourselves."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    out = subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(cmd)}:\n{out.stdout}{out.stderr}"
    return out


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL cluster of our own: user ``kaiflow`` with a password, database ``prefect``."""
    bin_dir = _bin_dir()
    base = Path(tempfile.mkdtemp(prefix="kaiflow-pg-"))  # under /tmp: the postgres user must reach it
    data, port = base / "data", local_process.free_port()
    (base / "pw").write_text(PASSWORD)
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
        shutil.chown(base / "pw", "postgres", "postgres")
    try:
        _as_postgres(str(bin_dir / "initdb"), "-D", str(data), "-U", "kaiflow", f"--pwfile={base / 'pw'}",
                     "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "--no-sync")
        (base / "pw").unlink()
        _as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(base / "postgres.log"), "-w", "-t", "60",
                     "-o", f"-k {base} -h 127.0.0.1 -p {port}", "start")
        env = {**os.environ, "PGPASSWORD": PASSWORD}
        out = subprocess.run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "kaiflow", "prefect"],
                             env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        yield {"port": port, "bin": bin_dir, "url": f"postgresql+asyncpg://kaiflow:{PASSWORD}@127.0.0.1:{port}/prefect"}
    finally:
        with contextlib.suppress(AssertionError):  # not started: nothing to stop
            _as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop", timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def psql(pg: dict, sql: str) -> str:
    out = subprocess.run([str(pg["bin"] / "psql"), "-h", "127.0.0.1", "-p", str(pg["port"]), "-U", "kaiflow", "-d", "prefect",
                          "-At", "-c", sql], env={**os.environ, "PGPASSWORD": PASSWORD}, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_kaiflow_server_on_postgresql_completes_a_deployment_run(postgres, tiny_model, tmp_path):
    home = tmp_path / "home"
    env = {**os.environ, "KAIFLOW_HOME": str(home), "KAIFLOW_ENGINE": "transformers", "KAIFLOW_WORKER_POLL_S": "1",
           "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(tmp_path / "results")}
    env.pop("PREFECT_API_URL", None)  # its own server, not the session's
    out = subprocess.run([KAIFLOW, "server", "--database-url", postgres["url"]], env=env, capture_output=True, text=True,
                         timeout=240)
    try:
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"(database: postgresql+asyncpg://127.0.0.1:{postgres['port']}/prefect)" in out.stdout  # no credentials
        api = re.search(r"Prefect API: (\S+)", out.stdout).group(1)
        assert httpx.get(f"{api}/health", timeout=10).status_code == 200
        # the server keeps its state in PostgreSQL: the deployments kaiflow registered are rows there
        assert set(psql(postgres, "select name from deployment").split()) == {"workspace", "retrain", "teardown"}

        r = run_deployment(api, "workspace/workspace", {"workspace": tiny_workspace("tiny-pg")})
        assert r.status_code == 201, r.text
        run = wait_run(api, r.json()["id"])
        assert run["state_type"] == "COMPLETED", run["state"]
        assert psql(postgres, f"select state_type from flow_run where id = '{run['id']}'") == "COMPLETED"
        record = json.loads((home / "workspaces" / "tiny-pg" / "record.json").read_text())
        assert httpx.get(f"{record['endpoint']}/health", timeout=10).status_code == 200
    finally:
        subprocess.run([KAIFLOW, "delete", "workspace", "tiny-pg"], env=env, capture_output=True, timeout=60)
        stopped = subprocess.run([KAIFLOW, "server", "--stop"], env=env, capture_output=True, text=True, timeout=60)
    assert stopped.stdout.strip() == "worker stopped; Prefect server stopped", stopped.stdout + stopped.stderr
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{api}/health", timeout=3)
    # the password is in no output, state file or log kaiflow wrote
    assert PASSWORD not in out.stdout + out.stderr
    for f in home.rglob("*"):
        if f.is_file() and f.suffix in (".json", ".log", ".pid"):
            assert PASSWORD not in f.read_text(errors="replace"), f
