#!/usr/bin/env bash
# Build the server image from the Dockerfile and check it as a user would run it (`make image-test`).
#
#   bash scripts/image-test.sh            # IMAGE=churnops:test BASE_IMAGE=python:3.11-slim PORT=8099
#
# Needs a Docker engine. If none answers and dockerd is installed (Debian: docker.io), one is
# started (as root, with no bridge network: builds and the checks use the host's network).
# When the official base image cannot be pulled (no route to a registry), a base with the same
# Python is made from Debian's packages with debootstrap and the machine's CA bundle, and passed
# as BASE_IMAGE. Checks: the image runs as uid 10001, `churnops --help` works, `churnops serve`
# on an empty workspace is live but not ready (no model), and SIGTERM stops it with status 0.
set -euo pipefail

IMAGE=${IMAGE:-churnops:test}
BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim}
LOCAL_BASE=churnops-base:bookworm
PORT=${PORT:-8099}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

say() { printf '\n== %s\n' "$*"; }
fail() { printf 'image-test: %s\n' "$*" >&2; exit 1; }

command -v docker >/dev/null || fail "no docker client (Debian: apt-get install docker.io)"
if ! docker info >/dev/null 2>&1; then
  command -v dockerd >/dev/null || fail "no Docker engine answers and dockerd is not installed (Debian: docker.io)"
  [ "$(id -u)" = 0 ] || fail "no Docker engine answers; starting dockerd needs root"
  say "starting dockerd (log: /tmp/churnops-dockerd.log)"
  dockerd --iptables=false --ip6tables=false --bridge=none >/tmp/churnops-dockerd.log 2>&1 &
  for _ in $(seq 1 30); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || fail "dockerd did not start; see /tmp/churnops-dockerd.log"
fi

if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 && ! timeout 60 docker pull -q "$BASE_IMAGE" >/dev/null 2>&1; then
  say "$BASE_IMAGE cannot be pulled; using a local base from Debian's packages ($LOCAL_BASE)"
  if ! docker image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || fail "debootstrap is needed for the local base (Debian: debootstrap)"
    rootfs=$(mktemp -d /tmp/churnops-rootfs.XXXXXX)
    debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates \
      bookworm "$rootfs" http://deb.debian.org/debian >/tmp/churnops-debootstrap.log 2>&1 \
      || fail "debootstrap failed; see /tmp/churnops-debootstrap.log"
    rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED  # an image's Python is the image's own
    ln -sf python3 "$rootfs/usr/bin/python"
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"  # this machine's CAs
    rm -rf "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import -c 'ENV LANG=C.UTF-8' \
      -c 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' -c 'CMD ["python3"]' - "$LOCAL_BASE" >/dev/null
    rm -rf "$rootfs"
  fi
  BASE_IMAGE=$LOCAL_BASE
fi

say "docker build -t $IMAGE (base $BASE_IMAGE)"
started=$(date +%s)
DOCKER_BUILDKIT=0 docker build --quiet --network host --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$IMAGE" "$ROOT" >/dev/null
echo "built in $(( $(date +%s) - started )) s, $(docker image inspect "$IMAGE" --format '{{.Size}}' | awk '{printf "%.2f GB", $1/1e9}')"

say "checks"
user=$(docker run --rm --entrypoint id "$IMAGE" -u)
[ "$user" = 10001 ] || fail "the image runs as uid $user, not 10001"
echo "runs as uid $user"
usage=$(docker run --rm "$IMAGE" --help)
[[ "$usage" == *"Usage: churnops"* ]] || fail "churnops --help did not print its usage"
echo "churnops --help works"

name=churnops-image-test-$$
workspace=$(mktemp -d /tmp/churnops-image-ws.XXXXXX)
chmod 777 "$workspace"
cleanup() { docker rm -f "$name" >/dev/null 2>&1 || true; rm -rf "$workspace"; }
trap cleanup EXIT
docker run -d --name "$name" --network host -v "$workspace:/data" "$IMAGE" serve --host 127.0.0.1 --port "$PORT" >/dev/null
live=""
for _ in $(seq 1 90); do
  live=$(curl -sf "http://127.0.0.1:$PORT/v2/health/live" || true)
  [ -n "$live" ] && break
  sleep 1
done
[ "$live" = '{"live":true}' ] || { docker logs "$name" | tail -20; fail "the server never answered /v2/health/live"; }
ready=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/v2/health/ready")
[ "$ready" = 503 ] || fail "an empty workspace's server says ready ($ready), with no model to serve"
echo "serve: live, and not ready without a model (503)"
docker stop --time 30 "$name" >/dev/null
code=$(docker inspect "$name" --format '{{.State.ExitCode}}')
[ "$code" = 0 ] || fail "SIGTERM ended the server with status $code"
echo "SIGTERM: drained and exited 0"
say "image-test passed ($IMAGE)"
