#!/usr/bin/env bash
# Installs what the integration tests start for themselves, if missing: curl (some tests
# drive nodes with it), PostgreSQL's server (tests/shared_origin.rs initdb's one into a
# temporary directory) and moto's S3-compatible server (from PyPI). Idempotent and quick
# when everything is there. Tests that need these fail loudly without them; they never skip.
set -euo pipefail

apt_packages=()
command -v curl >/dev/null || apt_packages+=(curl)
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || apt_packages+=(postgresql)
if ((${#apt_packages[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_packages[@]}"
fi

python="${OUTPOST_PYTHON:-python3}"
if ! "$python" -c 'import moto.server, flask' 2>/dev/null; then
  "$python" -m pip install --quiet --disable-pip-version-check 'moto[server]==5.2.1'
fi
