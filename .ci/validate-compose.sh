#!/usr/bin/env bash
# Validates docker-compose.yml with docker-compose (v1, Debian's package).
# Only `config` is checked: no Docker engine is needed or used.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

if ! command -v docker-compose >/dev/null 2>&1; then
    echo "validate-compose: docker-compose not found; installing Debian's docker-compose package" >&2
    if [ "$(id -u)" -ne 0 ]; then
        echo "validate-compose: ERROR: installing docker-compose needs root (apt-get); run as root or install it first" >&2
        exit 1
    fi
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null; }; then
        echo "validate-compose: ERROR: apt-get could not install docker-compose" >&2
        exit 1
    fi
    if ! command -v docker-compose >/dev/null 2>&1; then
        echo "validate-compose: ERROR: docker-compose still not on PATH after installing it" >&2
        exit 1
    fi
fi

echo "validate-compose: $(docker-compose version --short 2>/dev/null || docker-compose --version)"
docker-compose -f docker-compose.yml config -q
echo "validate-compose: docker-compose.yml OK"
