"""`python -m serving --model MODEL [--adapter NAME=DIR[:STRENGTH] ...] [--engine ...] --port N`.

Checks what can be checked at once (arguments, config file, adapter directories) and exits 2 with
the reason; then starts uvicorn, which answers `/health` with 503 while the engine loads and exits
non-zero if loading fails, so a pod restarts or the local launcher sees the failure.
"""

from __future__ import annotations

import logging
import sys

from serving import adapters, config, errors, multinode

log = logging.getLogger("serving")


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = config.from_args(argv)
        _check_adapter_dirs(cfg)
    except errors.ServingError as exc:
        print(f"serving: error: {exc.message}", file=sys.stderr)
        return 2
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(cfg)
    except errors.ServingError as exc:
        log.error("%s", exc.message)
        return 2


def _check_adapter_dirs(cfg: config.ServerConfig) -> None:
    for spec in cfg.adapters:
        try:
            adapters.read_config(adapters.adapter_dir(spec.path))
        except errors.ServingError as exc:
            raise errors.ConfigError(f"--adapter {spec.name}: {exc.message}") from exc


def build_engine(cfg: config.ServerConfig):  # -> base.Engine (lazy import keeps --help fast)
    from serving import engines

    ranks = [adapters.max_rank(adapters.read_config(adapters.adapter_dir(s.path))) for s in cfg.adapters]
    engine_name = "vllm" if cfg.group is not None else cfg.engine  # a group is vLLM's
    engine = engines.select(engine_name, cfg.model_path, engine_args=cfg.vllm_args, enable_lora=cfg.enable_lora,
                            adapter_ranks=ranks, adapters_at_start=len(cfg.adapters))
    if engine.name == "vllm":
        engine.engine_args()  # refuse an unknown vllm: key now, not after the model loads
    return engine


def run(cfg: config.ServerConfig) -> int:
    import uvicorn

    from serving import app as app_module

    engine = build_engine(cfg)
    if cfg.group is not None and not cfg.group.leader:
        return multinode.run_worker(engine, cfg.group, cfg.host, cfg.port)  # a pipeline stage: no API on this node
    app = app_module.create_app(cfg, engine)
    server = uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level,
                                           access_log=False, timeout_graceful_shutdown=10))

    def fatal(reason: str) -> None:
        log.error("exiting: %s", reason)
        server.should_exit = True

    app.state.server.on_fatal = fatal
    if cfg.group is not None:  # the leader: a worker that leaves ends the group (serving.multinode)
        def group_lost(reason: str) -> None:
            app.state.server.failure = reason
            fatal(reason)

        multinode.Membership(cfg.group, cfg.host, group_lost)
    server.run()
    return 1 if app.state.server.failure else 0
