#!/usr/bin/env bash
# Builds the container image `localhost/customer-worker:latest` with podman, on a machine without any image registry:
#   1. installs podman, buildah, runc and mmdebstrap from Debian if missing (needs root, as on a CI machine);
#   2. builds the base `debian:trixie-slim` from Debian packages with mmdebstrap (once), with this host's extra CA
#      certificates (a TLS-intercepting proxy) added to the base only, never to the project's Dockerfile;
#   3. builds the project's Dockerfile and prints the image's size and the build time.
# Environment: IMAGE (default localhost/customer-worker:latest), CW_CONTAINERS_DIR (state, default
# /var/tmp/customer-worker-containers). Source scripts/containers-env.sh to use the same podman settings.
set -euo pipefail
cd "$(dirname "$0")/.."
image="${IMAGE:-localhost/customer-worker:latest}"
# shellcheck source=scripts/containers-env.sh
source scripts/containers-env.sh

if ! command -v podman >/dev/null || ! command -v mmdebstrap >/dev/null; then
  echo "== installing podman and mmdebstrap (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    podman buildah runc uidmap slirp4netns fuse-overlayfs mmdebstrap containers-storage >/dev/null
fi

base=docker.io/library/debian:trixie-slim
if ! podman image exists "$base"; then
  echo "== building $base from Debian packages (mmdebstrap)"
  mirror="$(cat /etc/apt/sources.list.d/* /etc/apt/sources.list 2>/dev/null \
    | sed -n 's/^URIs: *//p; s/^deb \(http[^ ]*\) .*/\1/p' | grep -v security | head -n1 || true)"
  mirror="${mirror:-http://deb.debian.org/debian}"
  rootfs="$CW_CONTAINERS_DIR/trixie-rootfs.tar"
  mmdebstrap --quiet --variant=minbase --include=ca-certificates \
    --customize-hook='for f in /usr/local/share/ca-certificates/*.crt; do [ -e "$f" ] && cp "$f" "$1/usr/local/share/ca-certificates/"; done; chroot "$1" update-ca-certificates >/dev/null' \
    trixie "$rootfs" "$mirror"
  podman import --quiet "$rootfs" localhost/debian:trixie-slim >/dev/null
  podman tag localhost/debian:trixie-slim "$base"
  rm -f "$rootfs"
fi

echo "== building $image"
started=$(date +%s.%N)
podman build --quiet --network host --tag "$image" . >/dev/null
elapsed=$(echo "$(date +%s.%N) - $started" | bc 2>/dev/null || python3 -c "print(round($(date +%s.%N) - $started, 1))")
size=$(podman image inspect --format '{{.Size}}' "$image")
echo "image $image: size $((size / 1024 / 1024)) MiB ($size bytes), build time ${elapsed} s"
