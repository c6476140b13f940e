"""One model over several nodes: the leader serves, the other nodes run vLLM's pipeline stages.

Kaito v0.12 runs a multi-node preset as a Ray cluster (pod 0: a Ray head, then ``vllm serve``
with ``--distributed-executor-backend ray``; other pods: ``ray start --block``). kaiflow runs the
same layout with vLLM's own multi-node launcher instead of Ray, for two reasons measured on this
project: vLLM's CPU build refuses the Ray backend ("current platform cpu does not support ray"),
and the launcher needs no second process tree to keep alive. The group is torch.distributed's:

- **node rank 0, the leader**: this server with vLLM started as ``nnodes N, node_rank 0,
  master_addr, master_port`` and ``pipeline-parallel-size`` = N (unless the config sets a layout);
  it serves the API. vLLM's engine waits in the rendezvous at ``master_addr:master_port`` until
  every rank has joined, so the leader never starts serving before the group is complete: its
  ``/health`` answers 503 meanwhile.
- **node rank > 0, a worker**: vLLM's headless multiproc executor (what ``vllm serve --headless``
  runs), with the same engine arguments (the same command line on every node: the role comes from
  the rank). It serves no API.

A group is only as alive as its members, and vLLM alone does not notice a lost worker: the leader
kept answering ``/health`` and a request hung in the stage that could not reach the next one. So
every worker keeps a TCP connection to the leader's membership port (``master_port + 1``) from the
moment it joins: when a worker's connection drops, the leader exits non-zero (its pod restarts,
and with it the group); when the leader's side drops, the worker exits (code 3) and its pod
restarts to join the leader's next group. Stage processes die with the node process that started
them (`serving.engines.lifeline`).
The node rank is a number, or ``auto``: ``POD_INDEX`` (the StatefulSet's pod-index label via
the downward API, as Kaito sets it), else the ordinal at the end of the host name (``name-1``).
"""

from __future__ import annotations

import http.server
import json
import logging
import os
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping

from serving import errors

log = logging.getLogger(__name__)

STAGE_EXTENSION = "serving.multinode.PipelineStage"
DEFAULT_MASTER_PORT = 29500  # the port Kaito's Services name torchrun
RETRY_JOIN_S = 1.0


@dataclass(frozen=True)
class Group:
    """This node's place in a multi-node group."""

    nnodes: int
    node_rank: int
    master_addr: str
    master_port: int = DEFAULT_MASTER_PORT

    @property
    def leader(self) -> bool:
        return self.node_rank == 0

    @property
    def membership_port(self) -> int:
        return self.master_port + 1

    def engine_args(self) -> dict[str, object]:
        return {"nnodes": self.nnodes, "node_rank": self.node_rank, "master_addr": self.master_addr,
                "master_port": self.master_port}


def node_rank(value: str, hostname: str | None = None, environ: Mapping[str, str] | None = None) -> int:
    """``--node-rank``: a number, or ``auto`` (``POD_INDEX``, else the host name's ordinal suffix)."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    if value != "auto":
        if not value.isdigit():
            raise errors.ConfigError(f"--node-rank {value!r}: give a number (0 for the leader) or auto")
        return int(value)
    if env.get("POD_INDEX", "").isdigit():
        return int(env["POD_INDEX"])
    host = hostname or socket.gethostname()
    match = re.search(r"-(\d+)$", host.split(".")[0])
    if not match:
        raise errors.ConfigError(f"--node-rank auto: POD_INDEX is not set and the host name {host!r} does not end "
                                 "in -<ordinal> (as a StatefulSet's pods do); give --node-rank N")
    return int(match.group(1))


def group_from(nnodes: int, rank_text: str, master_addr: str | None, master_port: int) -> Group | None:
    """The group of ``--nnodes`` > 1 (None for one node), checked."""
    if nnodes < 1:
        raise errors.ConfigError(f"--nnodes {nnodes}: must be 1 or more")
    if nnodes == 1:
        return None
    rank = node_rank(rank_text)
    if rank >= nnodes:
        raise errors.ConfigError(f"--node-rank {rank} is not below --nnodes {nnodes}; ranks are 0..{nnodes - 1}")
    if not master_addr:
        raise errors.ConfigError("--nnodes > 1 needs --master-addr: the leader's (node rank 0) address, "
                                 "on Kubernetes its stable name through the headless Service")
    if not (0 < master_port < 65536):
        raise errors.ConfigError(f"--master-port {master_port} is not a TCP port; use 1-65535")
    return Group(nnodes, rank, master_addr, master_port)


def layout_args(group: Group, vllm_args: dict[str, object]) -> dict[str, object]:
    """Engine arguments for ``group``: pipeline-parallel = nodes unless the config chose a layout, and
    vLLM's multiprocessing backend across nodes (Kaito's ``ray`` is replaced: see the module doc)."""
    out = dict(vllm_args)
    backend = out.pop("distributed-executor-backend", out.pop("distributed_executor_backend", None))
    if backend not in (None, "mp"):
        log.warning("distributed-executor-backend %r replaced by 'mp': kaiflow groups nodes with vLLM's own "
                    "multi-node launcher, not Ray", backend)
    pp_keys = ("pipeline-parallel-size", "pipeline_parallel_size")
    if not any(k in out for k in pp_keys):
        out["pipeline-parallel-size"] = group.nnodes
    out["distributed-executor-backend"] = "mp"
    out["worker-extension-cls"] = STAGE_EXTENSION
    out.update(group.engine_args())
    return out


class PipelineStage:
    """Methods vLLM adds to its workers (``worker_extension_cls``), called through ``collective_rpc``.

    vLLM's CPU build runs eager (no compilation) whenever LoRA is on, and in eager mode its CPU
    runner skips the warm-up pass that allocates the buffer a later pipeline stage receives the
    previous stage's activations in: the first request then fails on every stage but the first
    (``assert self.intermediate_tensors is not None``). `kaiflow_prepare_stage` allocates it as
    that warm-up would (`GPUModelRunner._dummy_run`); on a stage that has it, it does nothing.
    """

    def kaiflow_prepare_stage(self) -> bool:
        from vllm.distributed.parallel_state import get_pp_group

        runner = self.model_runner  # type: ignore[attr-defined]
        if get_pp_group().is_first_rank or runner.intermediate_tensors is not None:
            return False
        runner.intermediate_tensors = runner.model.make_empty_intermediate_tensors(
            batch_size=runner.max_num_tokens, dtype=runner.model_config.dtype, device=runner.device)
        return True


async def prepare_stages(llm: object) -> None:
    """Run `PipelineStage.kaiflow_prepare_stage` on every stage of the group (leader side, once loaded)."""
    prepared = await llm.collective_rpc("kaiflow_prepare_stage")  # type: ignore[attr-defined]
    log.info("pipeline stages prepared: %d of %d needed their activation buffer", sum(map(bool, prepared)),
             len(prepared))


def run_worker(engine: object, group: Group, host: str, port: int) -> int:
    """Run this node's pipeline stage(s) until the group ends: vLLM's headless multiproc executor,
    built from the same engine arguments as the leader's (``engine`` is a `VllmEngine`). ``GET
    /health`` on ``host:port`` answers 200 while this process lives, so the pod template's probes
    fit a worker too and its readiness never waits on the leader."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.executor.multiproc_executor import MultiprocExecutor

    from serving.engines import lifeline

    lifeline.install()  # the stage processes die with this one, however it dies
    args = engine.engine_args()  # type: ignore[attr-defined]
    vllm_config = args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER, headless=True)
    log.info("worker: node rank %d of %d joining the group at %s:%d", group.node_rank, group.nnodes,
             group.master_addr, group.master_port)
    threading.Thread(target=hold_membership, args=(group,), daemon=True, name="membership").start()
    health = _health_server(group, host, port)
    threading.Thread(target=health.serve_forever, daemon=True, name="worker-health").start()
    executor = MultiprocExecutor(vllm_config, monitor_workers=False)
    log.info("worker: node rank %d joined; serving its pipeline stage", group.node_rank)
    try:
        executor.start_worker_monitor(inline=True)  # returns when a local stage process dies
    finally:
        health.shutdown()
        executor.shutdown()
    log.error("worker: a pipeline stage on this node exited; leaving the group so the pod restarts")
    return 1


def _health_server(group: Group, host: str, port: int) -> http.server.ThreadingHTTPServer:
    body = json.dumps({"status": "ok", "role": "worker", "node_rank": group.node_rank, "nnodes": group.nnodes}).encode()
    elsewhere = json.dumps({"object": "error", "error": {
        "message": f"node rank {group.node_rank} runs a pipeline stage; the API is served by the leader "
                   f"(node rank 0, {group.master_addr})", "type": "NotFoundError", "param": None, "code": 404}}).encode()

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's spelling
            ok = self.path in ("/health", "/healthz")
            self.send_response(200 if ok else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body if ok else elsewhere)

        do_POST = do_GET  # noqa: N815

        def log_message(self, format: str, *args: object) -> None:  # probes every few seconds: not logged
            pass

    return http.server.ThreadingHTTPServer((host, port), Health)


def hold_membership(group: Group) -> None:
    """Worker side: connect to the leader's membership port (retrying until it listens), say this
    rank, then wait; once the connection ends (the leader is gone) exit the process (code 3)."""
    while True:
        try:
            conn = socket.create_connection((group.master_addr, group.membership_port), timeout=10)
            break
        except OSError:
            time.sleep(RETRY_JOIN_S)
    conn.settimeout(None)
    conn.sendall(f"rank {group.node_rank}\n".encode())
    try:
        while conn.recv(64):
            pass
    except OSError:
        pass
    log.error("worker: the leader %s is gone; exiting so this node rejoins its next group", group.master_addr)
    sys.stderr.flush()
    os._exit(3)


class Membership:
    """Leader side: accepts each worker's membership connection; ``on_lost(reason)`` is called once,
    when a worker that joined drops its connection (its process died, or its node went)."""

    def __init__(self, group: Group, host: str, on_lost: Callable[[str], None]) -> None:
        self.group, self.on_lost = group, on_lost
        self.members: set[int] = set()
        self._lost = threading.Event()
        self._server = socket.create_server((host, group.membership_port), reuse_port=False)
        threading.Thread(target=self._accept, daemon=True, name="membership").start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._member, args=(conn,), daemon=True, name="member").start()

    def _member(self, conn: socket.socket) -> None:
        with conn:
            hello = conn.makefile("r").readline().split()
            if len(hello) != 2 or hello[0] != "rank" or not hello[1].isdigit():
                return
            rank = int(hello[1])
            self.members.add(rank)
            log.info("group: node rank %d joined (%d of %d workers)", rank, len(self.members), self.group.nnodes - 1)
            try:
                while conn.recv(64):
                    pass
            except OSError:
                pass
            self.members.discard(rank)
        if not self._lost.is_set():
            self._lost.set()
            self.on_lost(f"node rank {rank} left the group; the leader exits so the whole group restarts")

    def close(self) -> None:
        self._server.close()
