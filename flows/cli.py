"""The ``kaiflow`` command line.

Imports stay inside the commands so ``kaiflow --help`` starts fast: Prefect, torch and the cloud
SDKs load only for the commands that need them. Errors kaiflow raises on purpose print one line
(``error: ...``) and exit 1; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys

from infra import platforms


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kaiflow",
        description="Fine-tune and serve open LLMs as Prefect workflows, from Kaito workspace files.",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    v = sub.add_parser("validate", help="check workspace files and say what to fix")
    v.add_argument("-f", "--filename", action="append", required=True, help="workspace YAML (repeatable)")

    pl = sub.add_parser("plan", help="size each workspace: nodes, GPUs, memory, runtime arguments")
    pl.add_argument("-f", "--filename", action="append", required=True)
    pl.add_argument("--on-host", action="store_true", help="size against this machine instead of resource.instanceType")
    pl.add_argument("-o", "--output", choices=["table", "json"], default="table")

    pr = sub.add_parser("presets", help="list preset models")
    pr.add_argument("-o", "--output", choices=["table", "json"], default="table")
    sk = sub.add_parser("skus", help="list GPU instance types")
    sk.add_argument("--cloud", choices=["azure", "aws"])
    sk.add_argument("-o", "--output", choices=["table", "json"], default="table")

    ap = sub.add_parser("apply", help="run the workspace flow for each workspace in the files")
    ap.add_argument("-f", "--filename", action="append", required=True)
    ap.add_argument("--platform", choices=platforms.NAMES, help="default: $KAIFLOW_PLATFORM or local")
    ap.add_argument("--quiet", action="store_true", help="no progress output")
    ap.add_argument("--via-server", action="store_true",
                    help="run the `workspace` deployment on the Prefect server (a worker runs it) instead of in-process; "
                         "also KAIFLOW_VIA_SERVER=true")
    ap.add_argument("--no-wait", action="store_true", help="with --via-server: print the run's URL and return")
    ap.add_argument("--dry-run", action="store_true",
                    help="print every Kubernetes object the flow would create, contacting no cluster")
    ap.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml", help="with --dry-run: the format")

    g = sub.add_parser("get", help="list workspaces")
    g.add_argument("what", choices=["workspaces", "workspace", "ws"])
    g.add_argument("name", nargs="?", help="only this workspace (as `kubectl get workspace NAME`)")
    g.add_argument("-o", "--output", choices=["table", "wide", "json"], default="table",
                   help="wide: also the endpoint and the server's restarts")
    d = sub.add_parser("describe", help="conditions, endpoint, adapters and last flow run of a workspace")
    d.add_argument("what", choices=["workspace", "ws"])
    d.add_argument("name")
    de = sub.add_parser("delete", help="stop a workspace's server and forget it")
    de.add_argument("what", choices=["workspace", "ws"])
    de.add_argument("name")
    lg = sub.add_parser("logs", help="logs of a workspace's inference server and last tuning run")
    lg.add_argument("name")
    lg.add_argument("--tuning", action="store_true", help="the tuning log instead of the server's")
    lg.add_argument("--tail", type=int, metavar="N", help="only the last N lines")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing what is added, until Ctrl-C")
    lg.add_argument("--plot", action="store_true", help="draw the last tuning run's loss curve (with --tuning) instead")
    lg.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    ch = sub.add_parser("chat", help="ask a workspace's endpoint (POST /chat)")
    ch.add_argument("name")
    ch.add_argument("prompt")
    ch.add_argument("--max-tokens", type=int, default=64)
    pa = sub.add_parser("params", help="a workspace file as the `workspace` deployment's run parameters (JSON), "
                        "for `prefect deployment run workspace/workspace --params`")
    pa.add_argument("-f", "--filename", action="append", required=True)
    pa.add_argument("--platform", choices=platforms.NAMES, help="add the platform parameter")
    sub.add_parser("demo", help="the demo: serve a dataset, tune tiny-phi-3 on it, serve it, ask it")
    dp = sub.add_parser("deploy", help="register the workspace, retrain and teardown deployments and their work pool")
    dp.add_argument("--pool-type", choices=["process", "kubernetes"], default="process",
                    help="process (this machine; default) or kubernetes (flow runs as Jobs, GPU/node selector/tolerations/image variables)")
    dp.add_argument("--pool", help="work pool name (default: $KAIFLOW_WORK_POOL or kaiflow-process; kaiflow-kubernetes for kubernetes)")
    dp.add_argument("-f", "--filename", action="append", help="workspace YAML whose kaiflow.io/retrain-schedule annotations to register")
    sv = sub.add_parser("server", help="start the Prefect server, register the deployments, start a worker; print the UI address")
    sv.add_argument("--stop", action="store_true", help="stop the worker and the server")
    sv.add_argument("--database-url", help="postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DB (default: $KAIFLOW_DATABASE_URL, else "
                    "SQLite); prefer the variable: command-line arguments are visible to other users in `ps`")
    sv.add_argument("--pool", help="process work pool name (default: $KAIFLOW_WORK_POOL or kaiflow-process)")
    sc = sub.add_parser("schedule", help="retrain a workspace on a cron schedule (a schedule on the retrain deployment)")
    sc.add_argument("name", help="workspace name")
    sc.add_argument("--cron", required=True, help='five cron fields, e.g. "0 3 * * 0" (Sundays 03:00)')
    sc.add_argument("--timezone", help="IANA timezone, e.g. Europe/Berlin (default UTC)")
    sc.add_argument("-f", "--filename", action="append", help="workspace YAML (default: the spec kaiflow apply recorded)")
    sc.add_argument("--platform", choices=platforms.NAMES, help="default: the worker's $KAIFLOW_PLATFORM")
    from flows import controller

    controller.add_parser(sub)
    for command in sub.choices.values():  # `kaiflow apply --debug` as well as `kaiflow --debug apply`
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return p


def main(argv: list[str] | None = None) -> int:
    # `apply` imports ~1,600 modules (Prefect, pydantic, pyarrow): millions of objects that live as
    # long as the process. CPython's cycle collector walks them again and again while they load
    # (gen-0 every 700 allocations: ~0.3 s of a 3 s import on the 2-core box), and once more at exit,
    # when the interpreter tears the modules down (~1 s there between `main` returning and the
    # process ending). A larger first threshold and freezing what is alive at the end cut both;
    # reference cycles are still collected while a command runs. Only for the `kaiflow` process
    # itself (no argv given): a caller that imports `main` (the tests) keeps its own settings.
    if argv is not None:
        return _main(argv)
    gc.set_threshold(10_000, 10, 10)
    try:
        return _main(None)
    finally:
        gc.freeze()  # the exit's collection skips them: they are freed with the process


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    if not args.command:
        _parser().print_help()
        return 2
    from workspace.errors import KaiflowError

    try:
        return COMMANDS[args.command](args) or 0
    except KaiflowError as exc:
        if args.debug:
            raise
        print("\n".join(f"error: {line}" for line in str(exc).splitlines()), file=sys.stderr)  # one problem a line
        return 1
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    lines = ["   ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [headers, *rows]]
    return "\n".join(lines)


def cmd_validate(args) -> int:
    """Each file: every problem on a line of its own (``error: FILE: FIELD: what to change``), Kaito's
    admission rules included; then notes (placeholders to replace, ConfigMaps the cluster must hold)."""
    from workspace import admission, loader
    from workspace.errors import SpecError

    failed = 0
    for f in args.filename:
        try:
            b = loader.load_file(f, require_workspace=False)
        except SpecError as exc:
            failed += 1
            for line in str(exc).splitlines():
                print(f"error: {line}", file=sys.stderr)
            continue
        parts = [f"{len(b.workspaces)} workspace(s)" + (f" ({', '.join(w.name for w in b.workspaces)})" if b.workspaces else "")]
        if b.config_maps:
            parts.append(f"ConfigMap(s) {', '.join(b.config_maps)}")
        if b.secrets:
            parts.append(f"Secret(s) {', '.join(b.secrets)}")
        for w in b.workspaces:
            for note in admission.notes(w):
                print(f"{f}: note: {w.name}: {note.path}: {note.message}")
            for field, ref in (("inference.config", w.inference and w.inference.config), ("tuning.config", w.tuning and w.tuning.config)):
                if ref and ref not in b.config_maps:
                    print(f"{f}: note: {w.name}: {field} names ConfigMap '{ref}', not in this file; "
                          "on the local platform add it to the file (kubernetes reads it from the cluster)")
        print(f"{f}: valid: " + "; ".join(parts))
    return 1 if failed else 0


def _group_layout(ws, p) -> list[str]:
    """A multi-node plan's leader/worker layout and ports (infra.kube.manifests.group_layout)."""
    from infra.kube import manifests
    from workspace import settings

    return manifests.group_layout(ws, p, ws.metadata.namespace or settings.load().namespace or "default")


def cmd_plan(args) -> int:
    from workspace import loader, plan

    bundle = loader.load_files(args.filename)
    plans = [plan.plan_workspace(w, "kubernetes", on_host=args.on_host, config_maps=bundle.config_maps)
             for w in bundle.workspaces]
    if args.output == "json":
        print(json.dumps([{"name": p.name, "instanceType": p.instance_type, "fits": p.fits,
                           "parts": [vars(x) for x in p.parts]} for p in plans], indent=2, default=str))
    else:
        for p in plans:
            print(f"{p.name}  ({p.instance_type})")
            for part in p.parts:
                mark = {True: "fits", False: "DOES NOT FIT", None: "not sized"}[part.fits]
                print(f"  {part.part:<10} {part.model:<32} {mark}")
                print(f"             {part.summary}")
                for line in part.arithmetic:
                    print(f"             {line}")
                for note in part.notes:
                    print(f"             note: {note}")
                if part.reason:
                    print(f"             {part.reason}")
            for line in _group_layout(bundle.workspaces[plans.index(p)], p):
                print(f"             {line}")
    from infra import datasets  # tuning data that answers 404 or an HTML page: said now, not after provisioning
    from workspace import settings

    s = settings.load()
    private = s.allow_private_urls
    found = [f for w in bundle.workspaces if w.tuning for u in w.tuning.input.urls or [] if (f := datasets.probe(u, private))]
    from infra import platforms

    if platforms.get(s.platform, s).runs_in_image:  # the image every pod would run, resolved as apply resolves it
        from infra import images
        from workspace.errors import SpecError

        try:
            print(images.resolve(s.image).line(), file=sys.stdout if args.output != "json" else sys.stderr)
        except SpecError as exc:
            found.append(("error", str(exc)))
    for level, message in found:
        print(f"{level}: {message}", file=sys.stderr)
    return 0 if all(p.fits for p in plans) and all(level != "error" for level, _ in found) else 1


def cmd_presets(args) -> int:
    import presets
    from presets import sizing

    rows = []
    for m in presets.models():
        min_gpu = m.weights_gib * sizing.WEIGHT_EXPANSION + sizing.GPU_OVERHEAD_GIB
        rows.append([m.name, m.hf_id, f"{m.weights_gb:.3g} GB", f"{min_gpu:.0f} GiB", "yes" if m.tuning_supported else "no",
                     "yes" if m.gated else "no"])
    if args.output == "json":
        print(json.dumps([vars(m) for m in presets.models()], indent=2, default=str))
    else:
        print(_table(rows, ["NAME", "MODEL ID", "WEIGHTS", "MIN GPU MEMORY", "TUNING", "GATED"]))
    return 0


def cmd_skus(args) -> int:
    import presets

    items = [s for s in presets.skus() if not args.cloud or s.cloud == args.cloud]
    if args.output == "json":
        print(json.dumps([vars(s) for s in items], indent=2))
    else:
        rows = [[s.name, s.cloud, str(s.gpu_count), s.gpu_model, f"{s.gpu_memory_gib:g} GiB", s.compute_capability,
                 "yes" if s.supports_bf16 else "no"] for s in items]
        print(_table(rows, ["NAME", "CLOUD", "GPUS", "GPU", "MEMORY/GPU", "CC", "BF16"]))
    return 0


def cmd_params(args) -> int:
    """Print ``{"workspace": ..., "config_maps": ...}`` for one workspace (what ``apply --via-server`` sends)."""
    from flows import deployments
    from workspace import loader

    bundle = loader.load_files(args.filename)
    if len(bundle.workspaces) != 1:
        from workspace.errors import SpecError

        raise SpecError(f"params: the files hold {len(bundle.workspaces)} workspaces; a run takes one: pass one file "
                        "with one Workspace")
    print(json.dumps(deployments.retrain_parameters(bundle.workspaces[0], bundle.config_maps, args.platform)))
    return 0


def _lazy(module: str, name: str):
    def run(args):
        import importlib

        return getattr(importlib.import_module(module), name)(args)

    return run


COMMANDS = {
    "validate": cmd_validate,
    "plan": cmd_plan,
    "presets": cmd_presets,
    "skus": cmd_skus,
    "params": cmd_params,
    "apply": _lazy("flows.commands", "cmd_apply"),
    "get": _lazy("flows.commands", "cmd_get"),
    "describe": _lazy("flows.commands", "cmd_describe"),
    "delete": _lazy("flows.commands", "cmd_delete"),
    "logs": _lazy("flows.commands", "cmd_logs"),
    "chat": _lazy("flows.commands", "cmd_chat"),
    "demo": _lazy("flows.demo", "cmd_demo"),
    "deploy": _lazy("flows.deployments", "cmd_deploy"),
    "server": _lazy("flows.server", "cmd_server"),
    "schedule": _lazy("flows.deployments", "cmd_schedule"),
    "controller": _lazy("flows.controller", "cmd_controller"),
}

if __name__ == "__main__":
    sys.exit(main())
