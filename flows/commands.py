"""The CLI commands that act on workspaces: apply, get, describe, delete, logs, chat."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone

from flows import inferenceset as inferenceset_flow
from infra import platforms, records
from workspace import status
from workspace.errors import KaiflowError, SpecError


def _quiet_prefect() -> None:
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def cmd_apply(args) -> int:
    from workspace import loader, settings

    bundle = loader.load_files(args.filename, require_workspace=False)
    isets = [d for d in bundle.other if d.get("kind") == "InferenceSet"]  # flows.inferenceset
    if not bundle.workspaces and not isets:
        loader.load_files(args.filename)  # says what the files hold instead of a Workspace
    if getattr(args, "dry_run", False):  # the kubernetes objects, no cluster contacted
        from infra import platforms
        from infra.kube import manifests

        s = settings.load()
        shown, children = inferenceset_flow.dry_run(isets, s.namespace or "default") if isets else ([], [])
        text = manifests.render(bundle.workspaces + children, bundle.config_maps, s, args.output,
                                provisioner=platforms.provisioner_for(args.platform, s))
        if shown:
            text = inferenceset_flow.render(shown, text, args.output)
        print(text, end="")
        return 0
    if isets and (getattr(args, "via_server", False) or settings.load().via_server):
        raise SpecError("InferenceSet: --via-server runs Workspaces only; apply an InferenceSet without it, or with "
                        "kubectl apply where `kaiflow controller` runs")
    if isets:
        inferenceset_flow.check_platform(isets, args.platform or settings.load().platform)
    if getattr(args, "via_server", False) or settings.load().via_server:
        from flows import server

        return server.apply_via_server(bundle, args.platform, wait=not args.no_wait)
    platform = args.platform or settings.load().platform
    from flows import prefect_server

    api = prefect_server.ensure()
    _quiet_prefect()
    if args.quiet:
        os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
    from prefect import tags

    from flows.workspace_flow import workspace_flow

    from flows import console

    console.install(debug=args.debug)

    print(f"Prefect API: {api}", file=sys.stderr)
    failed = 0
    for ws in bundle.workspaces:
        try:
            # an in-process run belongs to the `workspace` flow, not to its deployment (Prefect links a
            # run to a deployment only when the deployment creates it: `--via-server`); tags find it
            # on a terminal: one live line per step instead of the log lines (flows.console)
            with tags("kaiflow", f"workspace:{ws.name}", "in-process"), \
                    console.live_steps(console.steps_for(ws), enabled=not (args.quiet or args.debug)):
                result = workspace_flow(workspace=ws, config_maps=bundle.config_maps, platform=platform)
        except KaiflowError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"workspace {ws.name}: ready")
        record = records.load(ws.name)
        for label, value in links(api, record.last_flow_run if record else None,
                                  (result.get("inference") or {}).get("endpoint"), (result.get("image") or {}).get("reference")):
            print(f"  {label:<8} {value}")
    if isets:
        def run_child(ws) -> None:
            with tags("kaiflow", f"workspace:{ws.name}", "in-process"), \
                    console.live_steps(console.steps_for(ws), enabled=not (args.quiet or args.debug)):
                workspace_flow(workspace=ws, config_maps=bundle.config_maps, platform=platform)
            print(f"workspace {ws.name}: ready")

        try:
            failed += inferenceset_flow.apply(isets, bundle.config_maps, platform, run_workspace=run_child)
        except KaiflowError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
    from flows import deployments

    for s in deployments.schedules_from_annotations(bundle.workspaces, bundle.config_maps, args.platform):
        print(f"schedule {s['slug']} on {s['deployment']}: {s['cron']} ({s['timezone']})")
    return 1 if failed else 0


def flow_run_url(api: str | None, run_id: str | None) -> str | None:
    """The flow run's page in the Prefect UI (which lives beside the API), or None without both."""
    if not api or not run_id:
        return None
    from flows import server

    return f"{server.ui_url(api.rstrip('/'))}/runs/flow-run/{run_id}"


def links(api: str | None, run_id: str | None, endpoint: str | None, image: str | None) -> list[tuple[str, str]]:
    """What ``apply`` ends with and ``describe`` shows: the flow run's UI page, the endpoint, and the
    adapter image pinned by digest — each that exists, as something to open or pull."""
    out = []
    if run_id:
        out.append(("flow run", flow_run_url(api, run_id) or f"{run_id} (no Prefect server is running here: "
                                                          "`kaiflow server` starts it, with the UI)"))
    if endpoint:
        out.append(("endpoint", endpoint))
    if image:
        out.append(("image", image))
    return out


def _age(created: str | None) -> str:
    if not created:
        return "-"
    then = datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    secs = int((datetime.now(timezone.utc) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{secs}s"


def _require(name: str) -> records.WorkspaceRecord:
    record = records.load(name)
    if record is None:
        known = records.names()
        raise KaiflowError(f"workspace '{name}' not found" + (f"; known: {', '.join(known)}" if known else "; none applied yet"))
    return record


def cmd_get(args) -> int:
    from flows.cli import _table

    wanted = ([_require(args.name)] if getattr(args, "name", None)
              else [rec for n in records.names() if (rec := records.load(n))])
    rows, views = [], [_view(rec) for rec in wanted]
    for r in views:
        if "error" in r.get("cluster", {}):
            print(f"note: {r['name']}: cluster not reachable, showing the local record: {r['cluster']['error']}",
                  file=sys.stderr)
        c = r.get("conditions", [])
        rows.append([r["name"], r.get("instance") or "-", status.condition_value(c, status.RESOURCE_READY),
                     status.condition_value(c, status.INFERENCE_READY), status.condition_value(c, status.WORKSPACE_READY),
                     _age(r.get("created"))])
        if args.output == "wide":
            rows[-1] += [r.get("endpoint") or "<none>", str((r.get("server") or {}).get("restarts", 0))]
    headers = ["NAME", "INSTANCE", "RESOURCEREADY", "INFERENCEREADY", "WORKSPACEREADY", "AGE"]  # the seed's columns
    if args.output == "json":
        print(json.dumps(views, indent=2))
    elif rows:
        print(_table(rows, headers + (["ENDPOINT", "RESTARTS"] if args.output == "wide" else [])))
    else:
        print("No workspaces found.")
    return 0


def _view(record: records.WorkspaceRecord) -> dict:
    """The record as ``get``/``describe`` show it, refreshed by its platform (a cluster's Workspace
    resource; the local server's liveness)."""
    return platforms.get(record.platform).describe(record)


def cmd_describe(args) -> int:
    r = _view(_require(args.name))
    server = r.get("server") or {}
    print(f"Name:          {r['name']}")
    print(f"Platform:      {r.get('platform', 'local')}")
    if "cluster" in r:
        c = r["cluster"]
        print("Cluster:       " + (f"not reachable ({c['error']}); showing the local record" if "error" in c else
                                   f"Workspace {c['namespace']}/{r['name']}" + ("" if c["found"] else
                                   " not found (deleted outside kaiflow?); showing the local record")))
        if c.get("worker_nodes"):
            print(f"Worker nodes:  {', '.join(c['worker_nodes'])}")
    print(f"Instance:      {r.get('instance', '-')}")
    print(f"Created:       {r.get('created')}")
    running = r.get("server_ready", r.get("server_running"))
    from flows import prefect_server

    run = r.get("last_flow_run")  # its page in the UI, when the Prefect server that ran it is up
    print(f"Flow run:      {links(prefect_server.running_api(), run, None, None)[0][1] if run else '-'}")
    print(f"Endpoint:      {r.get('endpoint') or '-'}"
          + ("" if running is None else (" (running)" if running else " (not running)")))
    if r.get("adapter_image"):
        print(f"Image:         {r['adapter_image']}")
    if server.get("supervisor_pid"):  # local: the supervised server, counted like a pod's RESTARTS
        print(f"Server:        pid {server.get('pid')}, supervisor pid {server['supervisor_pid']}, "
              f"restarts {server.get('restarts', 0)}" + (f", last exit: {server['last_exit']}" if server.get("last_exit") else "")
              + (f", down since {server['down_since']}" if server.get("down_since") else ""))
    for a in server.get("adapters", []):
        print(f"Adapter:       {_adapter_line(a)}")
    print("Conditions:")
    for c in r.get("conditions", []):
        print(f"  {c['type']:<20} {c['status']:<8} {c.get('reason', ''):<24} {c.get('message', '')}")
    print("Events:")
    for e in r.get("events", [])[-15:]:
        print(f"  {e['time']}  {e['type']:<8} {e['reason']:<20} {e['message']}")
    return 0


def _adapter_line(adapter: dict) -> str:
    """One served adapter, its digest said once: ``NAME  IMAGE@DIGEST  strength S``."""
    name, image, digest = adapter["name"], adapter.get("image") or "", adapter.get("digest") or ""
    shown = image if (not digest or digest in image) else f"{image.split('@')[0]}@{digest}" if image else digest
    strength = adapter.get("strength")
    return "  ".join(x for x in (name, shown, "" if strength is None else f"strength {strength}") if x)


def cmd_delete(args) -> int:
    from flows import teardown

    record = _require(args.name)
    r = teardown.delete_workspace(args.name)  # on a cluster: its objects (NodeClaims, AKS pool) first
    if r["cluster"]:
        print(f"deleted on {record.platform}: " + ", ".join(f"{k} {' '.join(v)}" for k, v in r["cluster"].items() if v))
    print(f"workspace {args.name} deleted" + (f" (server pid {r['server_pid']} stopped)" if r["server_stopped"] else ""))
    return 0


def cmd_logs(args) -> int:
    """The log of a workspace's server (or last tuning run): all of it, its last ``--tail`` lines, and
    with ``-f`` what is added after, until Ctrl-C; ``--plot``: the last tuning run's loss curve, drawn. Local: its log files; a cluster: the newest pod's log
    (``-f`` polls it every ``--interval`` seconds and prints what is new)."""
    import time

    record = _require(args.name)
    where, part = platforms.get(record.platform), "tuning" if args.tuning or getattr(args, "plot", False) else "inference"
    text = where.logs(record, part)
    if getattr(args, "plot", False):  # the loss curve, from the tuning log's step lines
        import shutil

        from flows import console

        train, evals = console.losses_from_log(text)
        width = min(max(shutil.get_terminal_size((80, 24)).columns - 16, 20), 100)
        print(console.plot(train, evals, width=width))
        return 0
    shown = text
    if args.tail is not None:
        lines = text.splitlines(keepends=True)
        shown = "".join(lines[-args.tail:]) if args.tail > 0 else ""
    sys.stdout.write(shown)
    sys.stdout.flush()
    try:
        while args.follow:
            time.sleep(args.interval)
            try:
                now = where.logs(_require(args.name), part)
            except KaiflowError:
                continue  # between a server's stop and its successor's first line
            new = now[len(text):] if now.startswith(text) else now  # a new log (restarted server): all of it
            if new:
                sys.stdout.write(new)
                sys.stdout.flush()
            text = now
    except KeyboardInterrupt:
        pass
    return 0


def cmd_chat(args) -> int:
    import httpx

    r = _require(args.name)
    if not r.endpoint:
        raise KaiflowError(f"workspace {args.name} has no endpoint (no inference, or not deployed yet)")
    try:
        resp = httpx.post(f"{r.endpoint}/chat", json={"messages": [{"role": "user", "content": args.prompt}],
                                                       "generate_kwargs": {"max_length": args.max_tokens}}, timeout=120)
    except httpx.HTTPError as exc:
        raise KaiflowError(f"endpoint {r.endpoint} did not answer ({exc}); see `kaiflow describe workspace {args.name}`") from None
    if resp.status_code != 200:
        raise KaiflowError(f"endpoint answered {resp.status_code}: {resp.text[:300]}")
    print(resp.json().get("Result", resp.text))
    return 0
