#!/usr/bin/env bash
# Build the service image with buildah where no Docker engine and no registry of base images are available
# (docs/DEPLOY.md, "Building without Docker or a registry"). Run it as root from anywhere; --help explains it.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: deploy/build-image.sh [OPTIONS]

Builds the Dockerfile's images with buildah (chroot isolation, no daemon, no registry):

  1. the base image localhost/attention-yolo-base:bookworm, made once from Debian packages
     (debootstrap --variant=minbase + python3, python3-venv, python-is-python3); it stands in for
     python:3.11-slim-bookworm and is skipped when it already exists;
  2. target cpu, tagged NAME:cpu and NAME:latest (the tag docker-compose.yml uses);
  3. with --gpu, target gpu, tagged NAME:gpu (it builds here; running it needs an NVIDIA GPU).

pip inside the build reaches the same package index as pip here: the host's index settings (pip config,
PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_TRUSTED_HOST) and CA bundle (PIP_CERT, pip's cert, REQUESTS_CA_BUNDLE,
SSL_CERT_FILE or /etc/ssl/certs/ca-certificates.crt) go in as build secrets, mounted only while pip runs and
stored in no image. Local (file://) indexes and find-links are left out: the build cannot see them.

Options:
  --gpu             also build the gpu target (several GB of CUDA wheels; minutes)
  --no-cpu          do not build the cpu target (with --gpu: the GPU image alone)
  --base-only       make the base image and stop
  --rebuild-base    make the base image again even if it exists
  --base IMAGE      build on IMAGE instead of the Debian-made base (e.g. docker.io/library/python:3.11-slim-bookworm
                    where that registry is reachable)
  --name NAME       image name (default: attention-yolo-service)
  --mirror URL      Debian mirror for debootstrap (default: $DEBIAN_MIRROR or http://deb.debian.org/debian)
  -h, --help        this text

Environment: STORAGE_DRIVER=vfs if buildah's default overlay storage does not work on this machine;
BUILDAH_ISOLATION overrides the chroot isolation. Prints each step's time and the images' sizes.
Needs root, buildah and (for the base) debootstrap: apt-get install --no-install-recommends buildah debootstrap
EOF
}

die() { echo "error: $*" >&2; exit 2; }

BASE_IMAGE=localhost/attention-yolo-base:bookworm
NAME=attention-yolo-service
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE=""
BUILD_CPU=1 BUILD_GPU=0 BASE_ONLY=0 REBUILD_BASE=0
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --gpu) BUILD_GPU=1 ;;
    --no-cpu) BUILD_CPU=0 ;;
    --base-only) BASE_ONLY=1 ;;
    --rebuild-base) REBUILD_BASE=1 ;;
    --base) [ $# -ge 2 ] || die "--base needs an image"; BASE=$2; shift ;;
    --name) [ $# -ge 2 ] || die "--name needs a name"; NAME=$2; shift ;;
    --mirror) [ $# -ge 2 ] || die "--mirror needs a URL"; MIRROR=$2; shift ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done

REPO=$(cd "$(dirname "$0")/.." && pwd)
ISOLATION=${BUILDAH_ISOLATION:-chroot}
[ "$(id -u)" = 0 ] || die "run as root: buildah's chroot isolation and debootstrap need it"
command -v buildah >/dev/null || die "buildah is not installed (apt-get install --no-install-recommends buildah)"
command -v python3 >/dev/null || die "python3 is not installed (it reads the host's pip settings)"
buildah info >/dev/null 2>&1 || die "buildah cannot use its storage; try STORAGE_DRIVER=vfs $0 $*"

WORK=$(mktemp -d)
CONTAINER=""
cleanup() {
  if [ -n "$CONTAINER" ]; then
    mountpoint=$(buildah mount "$CONTAINER" 2>/dev/null || true)
    for fs in proc sys dev/pts dev; do
      [ -n "$mountpoint" ] && umount -l "$mountpoint/$fs" 2>/dev/null || true
    done
    buildah rm "$CONTAINER" >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

image_exists() { buildah inspect --type image "$1" >/dev/null 2>&1; }

# Uncompressed size of an image's layers (what `docker images` shows), as buildah prints it: "412 MB".
image_size() { buildah images --format '{{.Size}}' "$1" | head -1; }

make_base() {
  command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install --no-install-recommends debootstrap)"
  local start=$SECONDS mnt
  buildah rm attention-yolo-base-work >/dev/null 2>&1 || true
  CONTAINER=$(buildah from --name attention-yolo-base-work scratch)
  mnt=$(buildah mount "$CONTAINER")
  echo "base: debootstrap bookworm from $MIRROR (one to four minutes)" >&2
  debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3 \
      bookworm "$mnt" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
  # What Debian's slim images (python:3.11-slim's base) leave out: package caches and lists, logs, docs, man
  # pages, translations; and the host's resolver and hostname (buildah and Docker provide their own).
  rm -rf "$mnt"/var/cache/apt/archives/*.deb "$mnt"/var/cache/apt/*.bin "$mnt"/var/lib/apt/lists/* \
         "$mnt"/var/log/*.log "$mnt"/var/log/apt/* "$mnt"/tmp/* "$mnt"/usr/share/doc/* "$mnt"/usr/share/man/* \
         "$mnt"/usr/share/info/* "$mnt"/usr/share/groff/* "$mnt"/usr/share/lintian/* \
         "$mnt"/etc/resolv.conf "$mnt"/etc/hostname
  find "$mnt"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
  # As the official python images do: no bytecode and no test suites in the standard library.
  find "$mnt"/usr/lib/python3* -depth \( \( -type d \( -name test -o -name tests -o -name idle_test \) \) \
      -o \( -type f -name '*.py[co]' \) \) -exec rm -rf {} +
  find "$mnt"/usr/lib/python3* -type d -name __pycache__ -empty -delete
  buildah umount "$CONTAINER" >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
      --cmd '["python3"]' --label org.opencontainers.image.description="Debian bookworm minbase + python3" \
      "$CONTAINER"
  buildah commit --rm -q "$CONTAINER" "$BASE_IMAGE" >/dev/null
  CONTAINER=""
  echo "base: $BASE_IMAGE made in $((SECONDS - start)) s, $(image_size "$BASE_IMAGE")" >&2
}

# The host's pip settings as a pip.conf for the build (index URLs that the build can reach, the CA bundle as
# the second secret, mounted at /run/secrets/pip-ca); writes $WORK/pip.conf and, if any, $WORK/pip-ca.
write_pip_settings() {
  python3 - "$WORK" <<'EOF'
import os, shutil, subprocess, sys
work = sys.argv[1]
config = {}
try:
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                            timeout=60).stdout
except (OSError, subprocess.SubprocessError):
    listed = ""
for line in listed.splitlines():
    key, _, value = line.partition("=")
    section, _, name = key.partition(".")
    if section in ("global", "install", "download"):
        config[name] = value.strip().strip("'\"")
for name in ("index-url", "extra-index-url", "trusted-host", "default-timeout", "cert"):
    value = os.environ.get("PIP_" + name.upper().replace("-", "_"))
    if value:
        config[name] = value
if "default-timeout" in config:
    config["timeout"] = config.pop("default-timeout")
lines = ["[global]"]
for name in ("index-url", "extra-index-url"):
    urls = config.get(name, "").split()
    reachable = [u for u in urls if u.startswith(("http://", "https://"))]
    for url in sorted(set(urls) - set(reachable)):
        print(f"pip: leaving out {name} {url} (not reachable from the build)", file=sys.stderr)
    if reachable:
        lines.append(f"{name} = {' '.join(reachable)}")
for name in ("trusted-host", "timeout"):
    if config.get(name):
        lines.append(f"{name} = {config[name]}")
candidates = [config.get("cert"), os.environ.get("REQUESTS_CA_BUNDLE"), os.environ.get("SSL_CERT_FILE"),
              "/etc/ssl/certs/ca-certificates.crt"]
ca = next((c for c in candidates if c and os.path.isfile(c)), None)
if ca:
    shutil.copyfile(ca, os.path.join(work, "pip-ca"))
    lines.append("cert = /run/secrets/pip-ca")
with open(os.path.join(work, "pip.conf"), "w") as f:
    f.write("\n".join(lines) + "\n")
print("pip settings for the build: " + "; ".join(lines[1:]) + (f" (CA bundle {ca})" if ca else ""), file=sys.stderr)
EOF
}

build_target() {  # target, tag...
  local target=$1 start=$SECONDS tags=() tag secrets=(--secret "id=pip.conf,src=$WORK/pip.conf")
  shift
  for tag in "$@"; do tags+=(-t "$tag"); done
  [ -f "$WORK/pip-ca" ] && secrets+=(--secret "id=pip-ca,src=$WORK/pip-ca")
  echo "$target: building $* on $BASE" >&2
  # Docker format: OCI image configs have no HEALTHCHECK, and buildah would drop the Dockerfile's.
  buildah bud --isolation "$ISOLATION" --format docker --layers --pull=never --target "$target" \
      --build-arg "PYTHON_IMAGE=$BASE" "${secrets[@]}" "${tags[@]}" -f "$REPO/Dockerfile" "$REPO" >&2 \
    || die "the $target image did not build (output above)"
  echo "$target: built $1 in $((SECONDS - start)) s, $(image_size "$1")" >&2
}

if [ -z "$BASE" ]; then
  BASE=$BASE_IMAGE
  if [ "$REBUILD_BASE" = 1 ] || ! image_exists "$BASE_IMAGE"; then
    make_base
  else
    echo "base: $BASE_IMAGE exists ($(image_size "$BASE_IMAGE")); --rebuild-base makes it again" >&2
  fi
fi
[ "$BASE_ONLY" = 1 ] && exit 0

write_pip_settings
[ "$BUILD_CPU" = 1 ] && build_target cpu "localhost/$NAME:cpu" "localhost/$NAME:latest"
[ "$BUILD_GPU" = 1 ] && build_target gpu "localhost/$NAME:gpu"
exit 0
