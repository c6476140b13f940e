# Sourced by build.sh and push.sh (and read by tests/support/fakekube/podman.py): point podman,
# buildah and skopeo at kaiflow's containers.conf and at an image store under the cache folder, so
# the machine's /etc/containers and /var/lib/containers stay untouched and a CI cache of
# ~/.cache/kaiflow/images keeps the built images (an unchanged tree then builds nothing).
KAIFLOW_IMAGE_CACHE=${KAIFLOW_IMAGE_CACHE:-$HOME/.cache/kaiflow/images}
mkdir -p "$KAIFLOW_IMAGE_CACHE/storage"
_kaiflow_images_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cat > "$KAIFLOW_IMAGE_CACHE/storage.conf.$$" <<CONF
[storage]
driver = "overlay"
graphroot = "$KAIFLOW_IMAGE_CACHE/storage"
runroot = "/tmp/kaiflow-containers-$(id -u)"
CONF
mv -f "$KAIFLOW_IMAGE_CACHE/storage.conf.$$" "$KAIFLOW_IMAGE_CACHE/storage.conf"
export KAIFLOW_IMAGE_CACHE
export CONTAINERS_CONF="$_kaiflow_images_dir/containers.conf"
export CONTAINERS_STORAGE_CONF="$KAIFLOW_IMAGE_CACHE/storage.conf"
