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


def _worker(port: int):
    """A child process holding a worker's membership connection to 127.0.0.1:port + 1 (rank 1)."""
    import subprocess
    import sys

    code = f"from serving import multinode as m; m.hold_membership(m.Group(2, 1, '127.0.0.1', {port}))"
    return subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)


def test_the_leader_learns_at_once_that_a_worker_left() -> None:
    """vLLM alone does not notice a lost stage (the leader stayed healthy and a request hung): the
    membership connection makes the leader exit, so the whole group restarts."""
    import threading

    from infra import local_process

    port = local_process.free_port()
    lost: list[str] = []
    left = threading.Event()
    membership = multinode.Membership(multinode.Group(2, 0, "127.0.0.1", port - 1), "127.0.0.1",
                                      lambda reason: (lost.append(reason), left.set()))
    worker = _worker(port - 1)
    try:
        deadline = 60.0
        while not membership.members and deadline > 0:
            left.wait(0.1)
            deadline -= 0.1
        assert membership.members == {1}
        worker.kill()
        assert left.wait(30) and lost == ["node rank 1 left the group; the leader exits so the whole group restarts"]
    finally:
        worker.kill()
        worker.wait()
        membership.close()


def test_a_worker_exits_once_the_leader_is_gone() -> None:
    """The other way: the leader's side of the connection ends, the worker exits (code 3) so its
    pod restarts and joins the leader's next group."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    worker = _worker(port - 1)
    try:
        conn, _ = listener.accept()
        assert conn.makefile("r").readline() == "rank 1\n"
        conn.close()  # the leader goes
        assert worker.wait(timeout=30) == 3
        assert "the leader 127.0.0.1 is gone" in worker.stderr.read()
    finally:
        listener.close()
        if worker.poll() is None:
            worker.kill()
            worker.wait()
