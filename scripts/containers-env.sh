# Sourced by scripts/image.sh and the tests: podman settings this kind of sandbox needs (see docs/operations.md).
# Root cannot raise the open-files limit here and podman asks for more than it: cap it at the hard limit; crun
# refuses the hybrid cgroup layout, runc works.
CW_CONTAINERS_DIR="${CW_CONTAINERS_DIR:-/var/tmp/customer-worker-containers}"
mkdir -p "$CW_CONTAINERS_DIR"
nofile="$(ulimit -Hn)"
if [ "$nofile" = unlimited ]; then nofile=1048576; fi
cat >"$CW_CONTAINERS_DIR/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=32768:32768"]
[engine]
runtime = "runc"
CONF
export CONTAINERS_CONF="$CW_CONTAINERS_DIR/containers.conf"
export CW_CONTAINERS_DIR
