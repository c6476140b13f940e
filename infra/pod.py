"""The third program kaiflow ships (beside tuning/ and serving/): the transfer steps a cluster
platform's pods run. No Prefect, no Kubernetes client, no workspace record inside a pod
(.importlinter: pod-program).

    python -m infra.pod pull-data --source JSON --dest DIR [--allow-private-urls] [--docker-config PATH]...
    python -m infra.pod push-adapter --dir DIR --model PRESET (--image REF | --volume-dir DIR) [--docker-config PATH]
    python -m infra.pod pull-adapters --dest DIR --adapter NAME=IMAGE... [--docker-config PATH]...

They reuse ``infra.datasets`` and ``infra.registry`` exactly as the local platform does, so a pod
pulls, verifies and pushes the same way the flow does on one machine. ``push-adapter`` writes
``{"reference": "<image>@sha256:...", "digest": ...}`` to the termination message file
(``/dev/termination-log``, or ``KAIFLOW_TERMINATION_LOG``): the flow reads the pushed digest from
the pod's status, with no shared volume. Registry credentials come from mounted docker-config
secrets (``imagePushSecret``/``imagePullSecrets``), the first one with an entry for the image's
registry winning. Exit codes and the ``error:`` line as the tuning program's (``tuning.protocol``):
0 done, 2 bad input or a failed transfer.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from infra import datasets, registry
from tuning import protocol
from workspace import errors, settings


def _credentials(reference: str, docker_configs: list[str]) -> registry.Credentials | None:
    host = registry.parse_reference(reference).registry
    for path in docker_configs:
        if Path(path).is_file():
            found = registry.credentials_from_docker_config(Path(path), host)
            if found:
                return found
    return None


def pull_data(args: argparse.Namespace) -> dict:
    source = json.loads(args.source)
    creds = _credentials(source["image"], args.docker_config) if source.get("image") else None
    fp = datasets.pull(datasets.Source.parse(source, credentials=creds), Path(args.dest),
                       allow_private=True if args.allow_private_urls else None)
    return {"digest": fp.digest, "files": [f.name for f in fp.files]}


def push_adapter(args: argparse.Namespace) -> dict:
    adapter = Path(args.dir)
    if args.volume_dir:
        dest = Path(args.volume_dir)
        dest.mkdir(parents=True, exist_ok=True)
        for f in adapter.iterdir():
            if f.is_file():
                shutil.copy2(f, dest / f.name)
        result = {"volume": str(dest), "files": sorted(f.name for f in adapter.iterdir() if f.is_file())}
    else:
        pinned = registry.push_adapter(adapter, args.image, model_name=args.model,
                                       credentials=_credentials(args.image, args.docker_config))
        result = {"reference": pinned, "digest": pinned.rsplit("@", 1)[1]}
    settings.load().termination_log.write_text(json.dumps(result))
    return result


def pull_adapters(args: argparse.Namespace) -> dict:
    out = {}
    for item in args.adapter:
        name, sep, image = item.partition("=")
        if not sep or not name or not image:
            raise errors.SpecError(f"--adapter {item!r}: write NAME=IMAGE")
        got = registry.pull(image, Path(args.dest) / name, credentials=_credentials(image, args.docker_config))
        out[name] = got.digest
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m infra.pod", description="kaiflow's in-pod steps")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("pull-data", help="pull the tuning data into a folder")
    d.add_argument("--source", required=True, help='JSON: {"urls": [...]} | {"image": REF} | {"volume": PATH}')
    d.add_argument("--dest", required=True)
    d.add_argument("--allow-private-urls", action="store_true",
                   help="the flow admitted data on loopback/private addresses (KAIFLOW_ALLOW_PRIVATE_URLS where it ran)")
    u = sub.add_parser("push-adapter", help="push the tuned adapter; its pinned reference goes to the termination log")
    u.add_argument("--dir", required=True)
    u.add_argument("--model", required=True)
    dest = u.add_mutually_exclusive_group(required=True)
    dest.add_argument("--image")
    dest.add_argument("--volume-dir")
    a = sub.add_parser("pull-adapters", help="pull adapter images into DEST/NAME folders")
    a.add_argument("--dest", required=True)
    a.add_argument("--adapter", action="append", default=[], metavar="NAME=IMAGE")
    for sp in (d, u, a):
        sp.add_argument("--docker-config", action="append", default=[], help="mounted docker config.json (repeatable)")
    return p


COMMANDS = {"pull-data": pull_data, "push-adapter": push_adapter, "pull-adapters": pull_adapters}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        result = COMMANDS[args.command](args)
    except errors.KaiflowError as exc:
        print(protocol.error_line(str(exc)), file=sys.stderr, flush=True)
        return protocol.EXIT_BAD_INPUT
    print(json.dumps(result), flush=True)
    return protocol.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
