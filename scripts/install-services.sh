#!/usr/bin/env bash
# Install the servers the integration tests start on loopback: PostgreSQL and Redis.
# The tests start and stop their own instances; this only makes the binaries available.
set -euo pipefail

need=()
[[ -x "$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | head -1)" ]] || need+=(postgresql)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)

if ((${#need[@]} == 0)); then
  echo "services: PostgreSQL and Redis binaries present"
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  SUDO=sudo
else
  SUDO=
fi
echo "services: installing ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# The Debian packages start system instances; the tests use their own, so stop these.
$SUDO service redis-server stop >/dev/null 2>&1 || true
$SUDO service postgresql stop >/dev/null 2>&1 || true
