// Transport fallback in headless Chromium, through the browser bundle
// (dist/venta-realtime.browser.js: `npm run build` first) and a real
// gateway. RealtimeClient with its default order (webtransport, websocket,
// sse), three networks:
//  - everything open: WebTransport;
//  - UDP closed (the WebTransport URL names a UDP port nobody listens on):
//    WebSocket, after a `fallback` event;
//  - UDP closed and WebSocket upgrades refused by a proxy (403 to any
//    `Upgrade`): Server-Sent Events through that proxy.
// Each page receives a location update published after it subscribed.
//
//   npm --prefix clients/js run test:browser

import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { browse } from './browser.mjs';
import { Gateway, ROOT, freePort, uniq } from './gateway.mjs';
import { RefusingProxy } from './proxy.mjs';

const BUNDLE = join(ROOT, 'clients/js/dist/venta-realtime.browser.js');

const PAGE = `<!doctype html><html><head><meta charset="utf-8"><title>fallback</title></head><body>
<script type="module">
import { RealtimeClient } from '/venta.js';
const q = new URLSearchParams(location.search);
const report = (r) => fetch('/report', { method: 'POST', body: JSON.stringify(r) });
const log = (m) => fetch('/log', { method: 'POST', body: m });
window.addEventListener('unhandledrejection', (e) => report({ ok: false, error: String(e.reason) }));
const fallbacks = [];
const client = new RealtimeClient(q.get('ws'), {
  urls: { webtransport: q.get('wt') },
  certificateHashUrl: q.get('hash'),
  connectTimeoutMs: 5000,
  maxReconnectAttempts: 0,
  logger: { log, warn: log, error: log },
});
client.addEventListener('fallback', (e) => fallbacks.push([e.transport, e.next]));
client.addEventListener('location', (e) => {
  if (e.data.vendorId !== q.get('vendor')) return;
  report({ ok: true, transport: client.transport, data: e.data, fallbacks });
});
client.addEventListener('giveup', () => report({ ok: false, error: 'gave up', fallbacks }));
client.subscribeToLocation(q.get('vendor'), 'u1').then(
  () => fetch('/subscribed'),
  (err) => report({ ok: false, error: 'subscribe: ' + err.code, fallbacks }),
);
setTimeout(() => report({ ok: false, error: 'timeout', transport: client.transport, fallbacks }), 25000);
</script></body></html>`;

let gw;
let proxy;
let port;

before(async () => {
  assert.ok(existsSync(BUNDLE), `${BUNDLE} is missing: npm --prefix clients/js run build`);
  port = await freePort();
  gw = await Gateway.start({ port, env: { WT_PORT: String(port) } });
  proxy = await RefusingProxy.start(port);
});

after(async () => {
  proxy?.close();
  await gw?.dispose();
});

/** Opens the page with these endpoints; returns its report after one published update. */
async function run(endpoints) {
  const vendor = uniq('fb');
  return browse({
    files: { '/index.html': PAGE, '/venta.js': readFileSync(BUNDLE) },
    page: '/index.html',
    params: { ...endpoints, hash: `${gw.http}/wt/cert-hash`, vendor },
    onSubscribed: () => gw.publish('location', { vendorId: vendor, location: { lat: 52.52, long: 13.405 } }),
  }).then((r) => ({ ...r, vendor }));
}

function received(r) {
  assert.equal(r.ok, true, JSON.stringify(r));
  assert.equal(r.data.vendorId, r.vendor);
  assert.deepEqual(r.data.location, { lat: 52.52, long: 13.405 });
}

test('everything open: WebTransport', async () => {
  const r = await run({ wt: `https://127.0.0.1:${port}/wt/location`, ws: gw.url('/ws/location') });
  received(r);
  assert.equal(r.transport, 'webtransport');
  assert.deepEqual(r.fallbacks, []);
});

test('UDP closed: WebSocket', async () => {
  const closedUdp = await freePort();
  const r = await run({ wt: `https://127.0.0.1:${closedUdp}/wt/location`, ws: gw.url('/ws/location') });
  received(r);
  assert.equal(r.transport, 'websocket');
  assert.deepEqual(r.fallbacks, [['webtransport', 'websocket']]);
});

test('UDP closed and WebSocket upgrades refused: Server-Sent Events', async () => {
  const closedUdp = await freePort();
  const refusedBefore = proxy.upgradesRefused;
  const r = await run({ wt: `https://127.0.0.1:${closedUdp}/wt/location`, ws: proxy.url('/ws/location') });
  received(r);
  assert.equal(r.transport, 'sse');
  assert.deepEqual(r.fallbacks, [['webtransport', 'websocket'], ['websocket', 'sse']]);
  assert.ok(proxy.upgradesRefused > refusedBefore, 'the proxy refused the WebSocket upgrade');
});
