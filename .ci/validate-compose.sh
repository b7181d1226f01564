#!/usr/bin/env bash
# Validates docker-compose.yml with docker-compose (v1, Debian's package).
# Only `config` is checked: no Docker engine is needed or used.
#
# The compose file takes POSTGRES_PASSWORD (and the gateway's secrets) from
# .env; here the committed example, .env.example, stands in for it, so the
# check does not depend on a developer's own .env. A second run without any
# env file must fail, naming POSTGRES_PASSWORD: the file has no password of
# its own.
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
[ -f .env.example ] || { echo "validate-compose: ERROR: .env.example is missing" >&2; exit 1; }
docker-compose --env-file .env.example -f docker-compose.yml config -q
echo "validate-compose: docker-compose.yml OK with .env.example"

empty_env="$(mktemp)"
trap 'rm -f "$empty_env"' EXIT
if out="$(env -u POSTGRES_PASSWORD docker-compose --env-file "$empty_env" -f docker-compose.yml config -q 2>&1)"; then
    echo "validate-compose: ERROR: docker-compose.yml validates without POSTGRES_PASSWORD (a password is written in it?)" >&2
    exit 1
fi
if ! grep -q POSTGRES_PASSWORD <<<"$out"; then
    echo "validate-compose: ERROR: without POSTGRES_PASSWORD the error does not name it:" >&2
    echo "$out" >&2
    exit 1
fi
echo "validate-compose: without POSTGRES_PASSWORD it fails as it should: $(tail -n 1 <<<"$out")"
