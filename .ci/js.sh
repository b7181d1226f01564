#!/usr/bin/env bash
# The JS client (clients/js, npm package @venta/realtime): install from the
# committed lockfile, type-check, build (declarations, browser bundle: the
# Chromium tests in crates/gateway/tests/browser.rs load it), run its tests
# against a real gateway (and the transport fallback, down to Server-Sent
# Events, from Node and in headless Chromium), then pack it and use the tarball from a fresh
# project (Node, and a Vite-built page in headless Chromium).
# Called by .ci/run before `cargo test`. Fails loudly; every step bounded.
set -euo pipefail
cd "$(dirname "$0")/../clients/js"

step() { printf '\n==> JS client: %s\n' "$*"; }
die() { printf 'ci/js: ERROR: %s\n' "$*" >&2; exit 1; }

command -v npm >/dev/null || die "npm not found (apt-get install npm, or Node.js 20+ with npm)"

step "npm ci (package-lock.json)"
timeout 300 npm ci --no-audit --no-fund || die "npm ci failed"

step "build: tsc --checkJs (strict) and the declarations, dist/venta-realtime.browser.js"
timeout 120 npm run --silent build || die "build failed (a type error in src/ fails it too)"

step "unit and real-gateway tests (node --test)"
timeout 300 npm test || die "node --test failed"

step "Server-Sent Events from Node: websocket refused by a proxy -> sse, and back (node --test)"
timeout 180 npm run --silent test:sse || die "the SSE fallback tests failed"

step "transport fallback in Chromium: webtransport; UDP closed -> websocket; upgrades refused too -> sse"
timeout 180 npm run --silent test:browser || die "the browser fallback tests failed"

step "npm pack, install the tarball in a fresh project: Node + Vite page in Chromium"
timeout 180 npm run --silent test:pack || die "the packed package does not work from a fresh project"
