"""Orchestration overhead of the workspace flow on the local platform.

Runs the tune-and-serve workspace twice through the real CLI path (background Prefect server,
real tuning and serving): prints (1) the first apply's flow wall time against the sum of its task
run times as reported by the Prefect API — the overhead ratio — and (2) the wall time of the
unchanged re-apply (a no-op: no tuning, same image, the running server kept).

    .venv/bin/python bench/orchestration.py

``--smoke`` (the test suite's quick run: it must still print the ratio): two tuning steps instead of
the example's, and the Prefect server PREFECT_API_URL names when it is set.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


SMOKE_CONFIG = """apiVersion: v1
kind: ConfigMap
metadata: {name: bench-smoke-config}
data:
  training_config.yaml: |
    training_config:
      TrainingArguments: {max_steps: 2, logging_steps: 1, save_steps: 2}
---
"""


def main() -> None:
    smoke = "--smoke" in sys.argv[1:]
    home = Path(tempfile.mkdtemp(prefix="kaiflow-bench-"))
    os.environ.update(KAIFLOW_HOME=str(home), KAIFLOW_ALLOW_PRIVATE_URLS="true", KAIFLOW_ENGINE="transformers")
    if not smoke:
        os.environ.pop("PREFECT_API_URL", None)
    from flows import cli, demo, prefect_server
    from infra import records

    demo.serve_data()
    prefect_server.ensure()
    ws = str(REPO / "examples" / "local" / "tune-and-serve.yaml")
    if smoke:
        example = Path(ws).read_text().replace("  method: qlora\n", "  method: qlora\n  config: bench-smoke-config\n")
        ws = str(home / "smoke.yaml")
        Path(ws).write_text(SMOKE_CONFIG + example)
    try:
        t0 = time.perf_counter()
        assert cli.main(["apply", "--quiet", "-f", ws]) == 0
        first = time.perf_counter() - t0
        run_id = records.load("tiny-tune-and-serve").last_flow_run
        task_sum, flow_time = asyncio.run(_times(run_id))
        t0 = time.perf_counter()
        assert cli.main(["apply", "--quiet", "-f", ws]) == 0
        again = time.perf_counter() - t0
        print(json.dumps({"first_apply_s": round(first, 2), "flow_run_s": round(flow_time, 2),
                          "sum_of_task_runs_s": round(task_sum, 2),
                          "overhead_ratio": round(flow_time / task_sum, 3) if task_sum else None,
                          "unchanged_reapply_s": round(again, 2)}, indent=2))
    finally:
        cli.main(["delete", "workspace", "tiny-tune-and-serve"])
        prefect_server.stop()
        demo.stop_data_server()


async def _times(run_id: str) -> tuple[float, float]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        fr = await client.read_flow_run(run_id)
        trs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[fr.id])))
        return sum(tr.total_run_time.total_seconds() for tr in trs), fr.total_run_time.total_seconds()


if __name__ == "__main__":
    main()
