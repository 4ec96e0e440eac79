#!/usr/bin/env bash
# `make image`: builds the container image from the repository's own
# Dockerfile on a machine without a Docker engine.
#
#   infra/image/build.sh            # → localhost/s3-ingest:dev
#   IMAGE=localhost/s3-ingest:x infra/image/build.sh
#
# buildah builds the Dockerfile with `--isolation chroot` (no daemon, no
# user namespaces). The Dockerfile's two base images are build arguments;
# here they are made locally from Debian's packages, since no registry of
# images is reachable:
#   - runtime: a minimal Debian bookworm rootfs from mmdebstrap, imported
#     as localhost/s3-ingest-base:bookworm;
#   - builder: bookworm with build-essential, cmake and pkg-config, plus a
#     copy of this machine's Rust toolchain (the one `rustc` in PATH) and
#     of its CA certificates, as localhost/s3-ingest-builder:<rustc version>.
# Both are made once and reused. The first run installs buildah, podman
# and mmdebstrap from Debian's packages (needs root, as does buildah here).
#
# With Docker or buildx at hand, build the same Dockerfile with its public
# base images instead: `docker build -t s3-ingest .` (see README.md).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
IMAGE="${IMAGE:-localhost/s3-ingest:dev}"
SUITE="${DEBIAN_SUITE:-bookworm}"
RUNTIME_BASE="localhost/s3-ingest-base:$SUITE"
RUSTC_VERSION="$(rustc --version | awk '{print $2}')"
BUILDER="localhost/s3-ingest-builder:$RUSTC_VERSION"
WORK="${XDG_CACHE_HOME:-$HOME/.cache}/s3-ingest/image"
mkdir -p "$WORK"

say() { printf '==> %s\n' "$*" >&2; }

need_tools() {
  local missing=()
  command -v buildah >/dev/null || missing+=(buildah)
  command -v podman >/dev/null || missing+=(podman)
  command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
  if ((${#missing[@]})); then
    say "installing ${missing[*]} from Debian's packages"
    local sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq \
      --no-install-recommends buildah podman mmdebstrap uidmap >/dev/null
  fi
}

have_image() { buildah inspect --type image "$1" >/dev/null 2>&1; }

# A Debian rootfs tarball with the given extra packages, imported as $1.
debian_image() {
  local name="$1" include="$2" tarball="$WORK/$3.tar"
  say "making $name from Debian's packages (mmdebstrap, about 1-3 minutes)"
  mmdebstrap --variant=minbase ${include:+--include="$include"} \
    "$SUITE" "$tarball" >&2
  podman import --quiet \
    --change 'CMD ["/bin/bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "$tarball" "$name" >/dev/null
  rm -f "$tarball"
}

make_runtime_base() {
  have_image "$RUNTIME_BASE" && return
  debian_image "$RUNTIME_BASE" "" runtime-base
}

make_builder() {
  have_image "$BUILDER" && return
  local plain="localhost/s3-ingest-builder-base:$SUITE"
  have_image "$plain" ||
    debian_image "$plain" "build-essential,cmake,pkg-config,ca-certificates,git" builder-base
  say "adding this machine's Rust toolchain ($RUSTC_VERSION) to the builder"
  local sysroot toolchain container
  sysroot="$(rustc --print sysroot)"
  toolchain="$WORK/toolchain"
  rm -rf "$toolchain"
  mkdir -p "$toolchain/bin"
  # -L: rustup's toolchain directory is often a tree of links.
  cp -L "$sysroot/bin/rustc" "$sysroot/bin/cargo" "$toolchain/bin/"
  cp -rL "$sysroot/lib" "$toolchain/lib"
  container="$(buildah from "$plain")"
  buildah copy --quiet "$container" "$toolchain" /usr/local/rust >/dev/null
  # cargo in the build stage reaches crates.io only with this machine's CA
  # certificates (its network may sign with its own CA); the runtime stage
  # keeps Debian's.
  buildah copy --quiet "$container" /etc/ssl/certs/ca-certificates.crt \
    /etc/ssl/certs/ca-certificates.crt >/dev/null
  buildah config \
    --env CARGO_HOME=/usr/local/cargo \
    --env PATH=/usr/local/rust/bin:/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    "$container"
  buildah run --isolation chroot "$container" -- mkdir -p /usr/local/cargo
  buildah run --isolation chroot "$container" -- rustc --version >&2
  buildah commit --quiet "$container" "$BUILDER" >/dev/null
  buildah rm "$container" >/dev/null
  rm -rf "$toolchain"
}

need_tools
make_runtime_base
make_builder

# What `s3-ingest --version` and the image labels name: .git is not in the
# build context.
COMMIT="$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null)" ]]; then
  COMMIT="$COMMIT-modified"
fi
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)"
SOURCE="$(git -C "$ROOT" remote get-url origin 2>/dev/null || true)"

say "building $IMAGE ($VERSION, commit $COMMIT) from $ROOT/Dockerfile"
buildah build --isolation chroot --layers \
  --build-arg "BUILDER_IMAGE=$BUILDER" \
  --build-arg "RUNTIME_IMAGE=$RUNTIME_BASE" \
  --build-arg "S3_INGEST_COMMIT=$COMMIT" \
  --build-arg "S3_INGEST_VERSION=$VERSION" \
  --build-arg "S3_INGEST_SOURCE=$SOURCE" \
  --tag "$IMAGE" \
  "$ROOT" >&2
say "built $IMAGE"
buildah images "$IMAGE"
