#!/usr/bin/env bash
# The container images of the deployment (docker-compose.yml), built on this machine: no
# image is pulled. Debian root filesystems made here with debootstrap become the base
# images (`docker import`); the images of Mirador's own binaries are a thin layer over
# them, so that a rebuild after a code change copies the new binaries and nothing else.
#
#   deploy/images.sh base              the base images only (root filesystems, libraries)
#   deploy/images.sh [--profile P]     every image, Mirador's from target/P (release)
#   deploy/images.sh sizes             the size of each image
#   deploy/images.sh prometheus-package  Debian's prometheus unpacked into the cache
#
# Environment: CACHE (~/.cache/mirador), CARGO_TARGET_DIR, MIRADOR_TANSU, TAG (latest).
set -euo pipefail

CACHE=${CACHE:-$HOME/.cache/mirador}
WORK=$CACHE/images
TARGET=${CARGO_TARGET_DIR:-$CACHE/target}
TANSU=${MIRADOR_TANSU:-$CACHE/tansu-0.6.0-sqlite/bin/tansu}
VENV=${VENV:-$CACHE/venv}
TAG=${TAG:-latest}
SUITE=bookworm
SDK=/usr/lib/google-cloud-sdk/platform
HERE=$(cd "$(dirname "$0")" && pwd)
export DOCKER_BUILDKIT=0

log() { echo "images: $*" >&2; }

# The Debian mirror that this machine's apt sources name.
mirror() {
  local uri
  uri=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -1 || true)
  [ -n "$uri" ] || uri=$(grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}' | grep -v security | head -1 || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# root NAME PACKAGES: the image mirador-NAME:bookworm from a minimal Debian root filesystem
# with PACKAGES (comma-separated, may be empty), documentation and apt's lists left out.
root() {
  local name=$1 include=$2 image=mirador-$1:$SUITE dir=$WORK/rootfs-$1
  have_image "$image" && return
  if [ ! -f "$dir/.complete" ]; then
    log "debootstrap $SUITE into $dir${include:+ with $include}"
    rm -rf "$dir" && mkdir -p "$WORK"
    debootstrap --variant=minbase ${include:+--include=$include} "$SUITE" "$dir" "$(mirror)" \
      >"$WORK/debootstrap-$name.log" 2>&1 || {
      log "debootstrap failed: $WORK/debootstrap-$name.log"; tail -5 "$WORK/debootstrap-$name.log" >&2; exit 1; }
    rm -rf "$dir"/usr/share/{doc,man,info,locale} "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*
    touch "$dir/.complete"
  fi
  tar -C "$dir" --exclude=./.complete -c . | docker import - "$image" >/dev/null
  log "imported $image"
}

# build IMAGE DOCKERFILE CONTEXT
build() {
  local image=$1 dockerfile=$2 ctx=$3; shift 3
  docker build -q -t "$image" -f "$HERE/$dockerfile" "$@" "$ctx" >"$WORK/build.log" 2>&1 || {
    log "docker build of $image failed:"; cat "$WORK/build.log" >&2; exit 1; }
  log "built $image ($(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%d MB", $1/1e6}'))"
}

# A build context of its own per image, holding only what its Dockerfile copies.
context() {
  local dir=$WORK/context/$1
  rm -rf "$dir" && mkdir -p "$dir"
  echo "$dir"
}

# torch's CPU libraries that the node binary loads, resolved through the libtorch
# environment. The images run on CPU: CUDA's libraries are left out (2.7 GB) but the two
# that libtorch_cpu itself links (the CUDA runtime and CUPTI, a few MB), and libtorch's
# CUDA half is an empty library, so that libtorch finds no GPU and runs on CPU.
torch_libs() {
  local binary=$1 out=$2
  mkdir -p "$out"
  LD_LIBRARY_PATH=$VENV/torch-lib ldd "$binary" | awk '/=> \// {print $1, $3}' | while read -r name lib; do
    case "$name" in
      libtorch_cuda*|libc10_cuda*|libtorch_nvshmem*) continue ;;
      libcudart.so*|libcupti.so*) ;;
      libcu*|libnv*|libnccl*) continue ;;
    esac
    case "$lib" in /lib/*|/usr/lib/*) continue ;; esac
    cp -L "$lib" "$out/$name"
  done
  echo 'void mirador_cpu_only(void) {}' >"$out/stub.c"
  gcc -shared -fPIC -o "$out/libtorch_cuda.so" "$out/stub.c" && rm "$out/stub.c"
}

# Debian's prometheus package (its server and promtool) unpacked into $CACHE/prometheus:
# nothing installed, no service started. `make test` uses its promtool.
prometheus_package() {
  [ -x "$CACHE/prometheus/usr/bin/prometheus" ] && return
  log "unpacking Debian's prometheus package into $CACHE/prometheus"
  mkdir -p "$CACHE/prometheus"
  (cd "$CACHE/prometheus" && { apt-get download prometheus 2>/dev/null ||
    { apt-get update -qq && apt-get download prometheus; }; } >/dev/null &&
    dpkg -x prometheus_*.deb . && rm -f prometheus_*.deb)
}

base() {
  command -v debootstrap >/dev/null || {
    log "installing debootstrap"
    apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null
  }
  # The three root filesystems at once: each mostly waits on the mirror.
  local pids=()
  root base ca-certificates,libfaketime & pids+=($!)
  root java openjdk-17-jre-headless,ca-certificates & pids+=($!)
  root python python3,ca-certificates & pids+=($!)
  for pid in "${pids[@]}"; do wait "$pid" || exit 1; done
  if ! have_image mirador-emulators:$SUITE; then
    [ -x "$SDK/pubsub-emulator/bin/cloud-pubsub-emulator" ] || { log "missing: google-cloud-cli's Pub/Sub emulator under $SDK"; exit 1; }
    [ -x "$SDK/bigtable-emulator/cbtemulator" ] || { log "missing: google-cloud-cli's Bigtable emulator under $SDK"; exit 1; }
    local ctx; ctx=$(context emulators)
    cp -a "$SDK/pubsub-emulator" "$SDK/bigtable-emulator" "$ctx/"
    build mirador-emulators:$SUITE Dockerfile.emulators "$ctx"
  fi
  if ! have_image mirador-store:$SUITE; then
    [ -x "$VENV/bin/pip" ] || { log "missing: $VENV (make setup)"; exit 1; }
    local ctx; ctx=$(context store)
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --target "$ctx/site" 'moto[server]==5.2.5'
    build mirador-store:$SUITE Dockerfile.store "$ctx"
  fi
  if ! have_image mirador-prometheus:$SUITE; then
    prometheus_package
    local prom=$CACHE/prometheus/usr/bin ctx; ctx=$(context prometheus)
    cp "$prom/prometheus" "$prom/promtool" "$ctx/"
    build mirador-prometheus:$SUITE Dockerfile.prometheus "$ctx"
  fi
  if ! have_image mirador-broker:$SUITE; then
    [ -x "$TANSU" ] || { log "missing: $TANSU (make tansu)"; exit 1; }
    local ctx; ctx=$(context broker)
    cp "$TANSU" "$ctx/tansu"
    build mirador-broker:$SUITE Dockerfile.broker "$ctx"
  fi
}

# The images of Mirador's binaries from target/PROFILE: the torch layer once per libtorch,
# the binaries on top.
mirador() {
  local profile=$1 bin=$TARGET/$1
  for b in mirador mirador-coordinator; do
    [ -x "$bin/$b" ] || { log "missing: $bin/$b (cargo build --$profile)"; exit 1; }
  done
  local torch; torch=$(cd "$VENV" && ls -d .torch-* | head -1)
  local torch_image=mirador-torch:${torch#.torch-}
  if ! have_image "$torch_image"; then
    local ctx; ctx=$(context torch)
    torch_libs "$bin/mirador" "$ctx/lib"
    build "$torch_image" Dockerfile.torch "$ctx"
  fi
  local ctx; ctx=$(context node)
  ln "$bin/mirador" "$ctx/mirador" 2>/dev/null || cp "$bin/mirador" "$ctx/mirador"
  build "mirador-node:$TAG" Dockerfile.node "$ctx" --build-arg TORCH="$torch_image"
  ctx=$(context coordinator)
  ln "$bin/mirador-coordinator" "$ctx/" 2>/dev/null || cp "$bin/mirador-coordinator" "$ctx/"
  build "mirador-coordinator:$TAG" Dockerfile.coordinator "$ctx"
}

sizes() {
  docker image ls --format '{{.Repository}}:{{.Tag}}\t{{.Size}}' | grep '^mirador-' | sort
}

case "${1:-all}" in
  base) base ;;
  sizes) sizes ;;
  prometheus-package) prometheus_package ;;
  all|--profile)
    profile=release
    [ "${1:-}" = --profile ] && profile=${2:?--profile needs debug or release}
    base
    mirador "$profile"
    ;;
  *) echo "usage: $0 [base|sizes|prometheus-package|--profile debug|release]" >&2; exit 2 ;;
esac
