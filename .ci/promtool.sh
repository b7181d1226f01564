#!/usr/bin/env bash
# Checks the Prometheus alert rules (deploy/prometheus/alerts.yml) with
# promtool from Debian's `prometheus` package, installed when missing, and
# runs their unit tests (alerts.test.yml: each alert fires on the series
# meant to trigger it). That the metric names exist in a live /metrics is
# checked by crates/gateway/tests/dashboard.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null; then
    as_root=""
    [ "$(id -u)" -eq 0 ] || as_root="sudo"
    command -v apt-get >/dev/null || { echo "promtool not found and no apt-get: install Debian's prometheus package" >&2; exit 1; }
    $as_root apt-get update -qq
    # Only the tool is wanted: no daemon is started in a container without init.
    DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -qq --no-install-recommends prometheus
fi
promtool --version | head -1
promtool check rules deploy/prometheus/alerts.yml
(cd deploy/prometheus && promtool test rules alerts.test.yml)
