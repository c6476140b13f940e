"""The multi-node arguments of `python -m serving`: ranks, the leader's address, the engine layout."""

from __future__ import annotations

import pytest

from serving import config, errors, multinode


def test_node_rank_auto_reads_pod_index_then_the_host_ordinal() -> None:
    assert multinode.node_rank("auto", hostname="ws-0", environ={"POD_INDEX": "2"}) == 2
    assert multinode.node_rank("auto", hostname="phi-3-medium-1.phi-3-medium-headless.default.svc", environ={}) == 1
    assert multinode.node_rank("3", environ={}) == 3


def test_node_rank_auto_without_an_ordinal_says_what_to_give() -> None:
    with pytest.raises(errors.ConfigError, match="--node-rank N"):
        multinode.node_rank("auto", hostname="laptop", environ={})
    with pytest.raises(errors.ConfigError, match="give a number"):
        multinode.node_rank("leader", environ={})


def test_one_node_is_no_group_and_a_group_needs_the_leader_address() -> None:
    assert multinode.group_from(1, "0", None, 29500) is None
    with pytest.raises(errors.ConfigError, match="--master-addr"):
        multinode.group_from(2, "0", None, 29500)
    with pytest.raises(errors.ConfigError, match="not below --nnodes 2"):
        multinode.group_from(2, "2", "10.0.0.1", 29500)


def test_group_layout_is_pipeline_parallel_over_nodes_without_ray() -> None:
    group = multinode.Group(nnodes=2, node_rank=1, master_addr="leader", master_port=29511)
    args = multinode.layout_args(group, {"tensor-parallel-size": 4, "distributed-executor-backend": "ray"})
    assert args["pipeline-parallel-size"] == 2 and args["tensor-parallel-size"] == 4
    assert args["distributed-executor-backend"] == "mp"
    assert (args["nnodes"], args["node_rank"], args["master_addr"], args["master_port"]) == (2, 1, "leader", 29511)
    assert multinode.layout_args(group, {"pipeline-parallel-size": 1})["pipeline-parallel-size"] == 1


def test_serving_cli_builds_the_group_from_its_flags() -> None:
    cfg = config.from_args(["--model", "tiny-phi-3", "--port", "5000", "--nnodes", "2", "--node-rank", "1",
                            "--master-addr", "127.0.0.1", "--master-port", "29512"])
    assert cfg.group == multinode.Group(2, 1, "127.0.0.1", 29512) and not cfg.group.leader
    assert cfg.vllm_args["pipeline-parallel-size"] == 2 and cfg.vllm_args["worker-extension-cls"] == multinode.STAGE_EXTENSION


def test_a_group_refuses_the_transformers_engine() -> None:
    with pytest.raises(errors.ConfigError, match="needs the vLLM engine"):
        config.from_args(["--model", "tiny-phi-3", "--port", "5000", "--engine", "transformers", "--nnodes", "2",
                          "--master-addr", "127.0.0.1"])


def test_a_worker_exits_once_the_leaders_port_is_gone() -> None:
    """The watch a worker runs beside its stage: after the leader's rendezvous port was seen and then
    refused a few times, the process exits (code 3), so its pod restarts and joins the next group."""
    import socket
    import subprocess
    import sys

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    code = ("import sys; from serving import multinode as m; m.WATCH_EVERY_S = 0.2; "
            f"m._watch_leader(m.Group(2, 1, '127.0.0.1', {port})); sys.exit(0)")
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=1.5)  # the leader is there: the worker stays
    finally:
        listener.close()  # the leader goes
    assert proc.wait(timeout=30) == 3
    assert "the leader 127.0.0.1" in proc.stderr.read()
