#!/usr/bin/env bash
# Build kaiflow's CPU image, or reuse it when nothing it is made of changed; the last line printed
# is its reference, localhost/kaiflow:cpu-<content hash>.   (`make images` runs this.)
#
#   deployments/images/build.sh                 build or reuse
#   deployments/images/build.sh --push REPO     ... then copy it to REPO:cpu-<hash> (skopeo), e.g.
#                                               registry.example.com/team/kaiflow
#
# 1. base: a Debian 12 minbase root filesystem from debootstrap (python3, python3-venv,
#    ca-certificates), imported as localhost/kaiflow-base:bookworm (no public registry is needed);
# 2. wheelhouse: `pip download` of requirements.txt's runtime part (its lines above "# tests",
#    minus the test-only kubernetes-validate and oras) and torch==2.13.0, the CPU wheel pip's
#    find-links hold on these machines; the build installs from it with --no-index;
# 3. context: the source folders the image runs (git's tracked and untracked-not-ignored files);
#    the tag is the sha256 of Dockerfile + requirements + those files;
# 4. buildah bud --isolation chroot --layers (an unchanged requirements list reuses the venv layer).
# Settings: KAIFLOW_IMAGE_CACHE (default ~/.cache/kaiflow/images: image store, wheelhouse),
# DEBIAN_MIRROR (default http://deb.debian.org/debian), PY (the pip to download with).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
# shellcheck source=env.sh
. "$HERE/env.sh"
CACHE=$KAIFLOW_IMAGE_CACHE
PY=${PY:-$ROOT/.venv/bin/python}
BASE=localhost/kaiflow-base:bookworm
SOURCES=(presets workspace infra tasks flows tuning serving deployments pyproject.toml)
PUSH=""
if [ "${1:-}" = "--push" ]; then PUSH=${2:?--push needs a repository, e.g. registry.example.com/team/kaiflow}; fi
say() { echo "images: $*" >&2; }

for tool in podman buildah skopeo debootstrap runc; do
  command -v "$tool" >/dev/null || { say "$tool is missing: run make system-deps"; exit 1; }
done
# one build at a time per cache: a second caller (the test session's early background build, then the
# fixture) waits here and then finds the image made
mkdir -p "$CACHE"
exec 9>"$CACHE/build.lock"
flock 9

# 1. base image
if ! podman image exists "$BASE"; then
  t0=$SECONDS
  rootfs=$CACHE/rootfs.$$
  rm -rf "$rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" \
    "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$CACHE/debootstrap.log" 2>&1 \
    || { say "debootstrap failed; see $CACHE/debootstrap.log"; exit 1; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc \
         "$rootfs"/usr/share/man "$rootfs"/usr/share/info
  tar -C "$rootfs" -c . | podman import --quiet --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
  rm -rf "$rootfs"
  say "base $BASE made in $((SECONDS - t0)) s"
fi

# 2. context and content hash
ctx=$CACHE/context.$$
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/app"
sed '/^# tests/,$d' "$ROOT/requirements.txt" | sed 's/ *#.*//' | grep -v -e '^$' -e '^kubernetes-validate' -e '^oras' \
  > "$ctx/requirements-image.txt"
cp "$HERE/Dockerfile.cpu" "$ctx/Dockerfile"
(cd "$ROOT" && git ls-files -z -co --exclude-standard -- "${SOURCES[@]}" | grep -zv -e '__pycache__' -e '\.pyc$' \
  | xargs -0 -r sh -c 'for f; do [ -f "$f" ] && printf "%s\0" "$f"; done' sh \
  | tar --null -T - -cf - | tar -C "$ctx/app" -xf -)
tag=$(cd "$ctx" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
IMAGE=localhost/kaiflow:cpu-$tag

# 3. wheelhouse (once per requirements list)
wheels=$CACHE/wheels
req_hash=$(sha256sum "$ctx/requirements-image.txt" | cut -c1-16)
if ! podman image exists "$IMAGE" && [ ! -f "$wheels/.complete-$req_hash" ]; then
  t0=$SECONDS
  mkdir -p "$wheels"
  # pip evaluates markers with the host's Python (3.11.x), the image has Debian 12's 3.11.2: redis
  # wants async-timeout only below 3.11.3, so it is named here (the build fails if one is missing)
  "$PY" -m pip download -q --disable-pip-version-check --only-binary=:all: \
    -d "$wheels" torch==2.13.0 "async-timeout>=4.0.3" -r "$ctx/requirements-image.txt" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  ls "$wheels"/torch-2.13.0+cpu-*.whl >/dev/null 2>&1 || { say "no CPU torch wheel in $wheels (pip find-links?)"; exit 1; }
  touch "$wheels/.complete-$req_hash"
  say "wheelhouse ready in $((SECONDS - t0)) s ($(du -sh "$wheels" | cut -f1))"
fi

# 4. build
if podman image exists "$IMAGE"; then
  say "$IMAGE is up to date (nothing it is made of changed)"
else
  t0=$SECONDS
  buildah bud --quiet --layers --isolation chroot --build-arg "BASE=$BASE" --volume "$wheels:/wheels:ro" \
    -t "$IMAGE" -f "$ctx/Dockerfile" "$ctx" >"$CACHE/build.$$.log" 2>&1 \
    || { tail -30 "$CACHE/build.$$.log" >&2; say "build failed; see $CACHE/build.$$.log"; exit 1; }
  mv -f "$CACHE/build.$$.log" "$CACHE/build.log"
  say "built $IMAGE in $((SECONDS - t0)) s"
  # older builds go (an image a container still runs stays), so the cache holds one venv, not one per change
  podman images --format '{{.Repository}}:{{.Tag}}' localhost/kaiflow | grep ':cpu-' | grep -vx "$IMAGE" \
    | xargs -r podman rmi >/dev/null 2>&1 || true
  podman image prune -f >/dev/null 2>&1 || true
fi
podman tag "$IMAGE" localhost/kaiflow:cpu
say "size $(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"

if [ -n "$PUSH" ]; then
  tls=true
  case "$PUSH" in 127.0.0.1:*|localhost:*) tls=false ;; esac
  skopeo copy --quiet --dest-tls-verify=$tls ${REGISTRY_AUTH_FILE:+--dest-authfile "$REGISTRY_AUTH_FILE"} \
    "containers-storage:$IMAGE" "docker://$PUSH:cpu-$tag"
  say "pushed $PUSH:cpu-$tag"
  echo "$PUSH:cpu-$tag"
else
  echo "$IMAGE"
fi
