#!/usr/bin/env bash
# Start a Podman service that serves the Docker Engine API on a unix socket
# and build the local test image the container component tests run, all
# offline (no registry is needed); with VERGE_BIN set, also an image that
# runs that verge binary. Idempotent. Prints the variables the
# tests read, for `eval "$(bash tests/containers/engine.sh)"`; the
# service's PID is in $VERGE_PODMAN_DIR/service.pid (stop it with
# `kill "$(cat /run/verge-podman/service.pid)"`).
#
# Needs root and the Debian packages podman, runc and busybox-static.
set -euo pipefail
dir="${VERGE_PODMAN_DIR:-/run/verge-podman}"
sock="unix://$dir/podman.sock"
image="localhost/verge-test-busybox:1"
mkdir -p "$dir"

# crun and systemd cgroups do not work on these machines; runc with
# cgroupfs does, and the default ulimits cannot be raised in a container.
cat > "$dir/containers.conf" <<'CONF'
[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
CONF
export CONTAINERS_CONF="$dir/containers.conf"

running=false
if [ -f "$dir/service.pid" ] && kill -0 "$(cat "$dir/service.pid")" 2>/dev/null; then
  running=true
fi
if ! $running; then
  rm -f "$dir/podman.sock"
  podman system service --time 0 "$sock" >"$dir/service.log" 2>&1 &
  echo $! >"$dir/service.pid"
fi
for _ in $(seq 1 50); do
  [ -S "$dir/podman.sock" ] && break
  sleep 0.2
done
[ -S "$dir/podman.sock" ] || { echo "podman service did not start; see $dir/service.log" >&2; exit 1; }

# A test image from a static busybox: sh, sleep, echo, nc, httpd.
if ! podman image exists "$image"; then
  root=$(mktemp -d)
  mkdir -p "$root/bin" "$root/tmp" "$root/www"
  cp /bin/busybox "$root/bin/busybox"
  for applet in sh echo sleep cat nc httpd true false kill env ls; do
    ln -s busybox "$root/bin/$applet"
  done
  echo ok >"$root/www/index.html"
  tar -C "$root" -cf "$dir/rootfs.tar" .
  rm -rf "$root"
  podman import --change 'CMD ["/bin/sh", "-c", "echo verge test image; sleep 3600"]' \
    "$dir/rootfs.tar" "$image" >/dev/null 2>&1
  rm -f "$dir/rootfs.tar"
fi

# With VERGE_BIN: an image holding that verge binary, the shared
# libraries it links (ldd) and busybox's sh, so a container can run
# `verge device simulate` against a node's broker with the credentials in
# its environment; tagged by the binary's digest and this layout's number.
if [ -n "${VERGE_BIN:-}" ]; then
  tag=$(sha256sum "$VERGE_BIN" | cut -c1-12)-2
  verge_image="localhost/verge-test-verge:$tag"
  if ! podman image exists "$verge_image"; then
    # Images of earlier builds go first.
    podman images --filter reference=localhost/verge-test-verge --format '{{.ID}}' |
      xargs -r podman rmi -f >/dev/null 2>&1 || true
    root=$(mktemp -d)
    mkdir -p "$root/bin" "$root/tmp"
    cp "$VERGE_BIN" "$root/bin/verge"
    cp /bin/busybox "$root/bin/busybox"
    ln -s busybox "$root/bin/sh"
    for lib in $(ldd "$VERGE_BIN" | grep -o '/[^ ]*'); do
      mkdir -p "$root$(dirname "$lib")"
      cp -L "$lib" "$root$lib"
    done
    tar -C "$root" -cf "$dir/verge-rootfs.tar" .
    rm -rf "$root"
    podman import --change 'CMD ["/bin/verge", "--help"]' \
      "$dir/verge-rootfs.tar" "$verge_image" >/dev/null 2>&1
    rm -f "$dir/verge-rootfs.tar"
  fi
  echo "export VERGE_TEST_VERGE_IMAGE=$verge_image"
fi

echo "export VERGE_TEST_ENGINE=$sock"
echo "export VERGE_TEST_IMAGE=$image"
echo "export CONTAINERS_CONF=$CONTAINERS_CONF"
