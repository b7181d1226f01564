// Server-Sent Events from Node against a real gateway, behind a proxy that
// refuses WebSocket upgrades (test/proxy.mjs): the client falls back from
// websocket to sse, its promises and events work the same, a subscription
// change reopens the stream, a refusal rejects with the gateway's code, and
// once upgrades pass again a reconnect goes back to WebSocket. Node has no
// WebTransport and no global EventSource: the `eventsource` package
// (a devDependency) stands in for the browser's.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { EventSource } from 'eventsource';
import { WebSocketClient } from '../src/websocket.js';
import { RealtimeClient } from '../src/index.js';
import { Gateway, nextEvent, uniq, until } from './gateway.mjs';
import { RefusingProxy } from './proxy.mjs';

let gw;
let proxy;
const clients = [];

before(async () => {
  gw = await Gateway.start();
  proxy = await RefusingProxy.start(gw.port);
});

after(async () => {
  for (const c of clients) c.close();
  proxy?.close();
  await gw?.dispose();
});

function sseClient(extra = {}) {
  const c = new WebSocketClient(proxy.url('/ws/location'), {
    transports: ['websocket', 'sse'],
    EventSource,
    reconnectBaseDelayMs: 100,
    maxReconnectAttempts: 20,
    ...extra,
  });
  clients.push(c);
  return c;
}

const publishAt = (vendorId, lat, long) => gw.publish('location', { vendorId, location: { lat, long } });

test('websocket refused: the client falls back to sse and receives updates; a new subscription reopens the stream', async () => {
  proxy.refuseUpgrades = true;
  const v1 = uniq('sse1');
  const v2 = uniq('sse2');
  const c = sseClient();
  const fallback = nextEvent(c, 'fallback');
  const opened = nextEvent(c, 'open');
  await c.subscribeToLocation(v1, 'u1');
  const f = await fallback;
  assert.deepEqual([f.transport, f.next], ['websocket', 'sse']);
  assert.equal((await opened).transport, 'sse');
  assert.equal(c.transport, 'sse');

  let got = nextEvent(c, 'location', (e) => e.data.vendorId === v1 && !e.data.snapshot);
  await publishAt(v1, 1, 2);
  assert.deepEqual((await got).data.location, { lat: 1, long: 2 });

  // Another vendor: the stream is reopened with both ids.
  await c.subscribeToLocation(v2, 'u1');
  got = nextEvent(c, 'location', (e) => e.data.vendorId === v2 && !e.data.snapshot);
  await publishAt(v2, 3, 4);
  assert.deepEqual((await got).data.location, { lat: 3, long: 4 });
  got = nextEvent(c, 'location', (e) => e.data.vendorId === v1 && !e.data.snapshot);
  await publishAt(v1, 5, 6);
  assert.deepEqual((await got).data.location, { lat: 5, long: 6 });

  // Once unsubscribed (the ack comes when the reopened stream is live),
  // v2's updates stop while v1's still come.
  await c.unsubscribeFromLocation(v2);
  const seen = [];
  c.addEventListener('location', (e) => seen.push(e.data.vendorId));
  got = nextEvent(c, 'location', (e) => e.data.vendorId === v1 && e.data.location.lat === 7);
  await publishAt(v2, 7, 8);
  await publishAt(v1, 7, 8);
  await got;
  assert.equal(seen.includes(v2), false, `v2 after its unsubscribe: ${seen}`);
  assert.equal(c.transport, 'sse');
});

test('vendor events and area events over sse', async () => {
  proxy.refuseUpgrades = true;
  const vendor = uniq('ssev');
  const c = sseClient();
  await c.subscribeToVendor(vendor, 'u1');
  assert.equal(c.transport, 'sse');
  const got = nextEvent(c, 'vendor', (e) => e.data.vendorId === vendor);
  await gw.publish('vendor', { vendorId: vendor, vendor: { name: 'Churros' } });
  assert.deepEqual((await got).data.vendor, { name: 'Churros' });

  const lat = 30 + Math.random() * 10;
  const long = 100 + Math.random() * 10;
  const bbox = { south: lat - 0.01, west: long - 0.01, north: lat + 0.01, east: long + 0.01 };
  const mover = uniq('ssea');
  const kinds = [];
  c.addEventListener('area', (e) => {
    if (e.kind === 'area_snapshot' || e.data.vendorId === mover) kinds.push(e.kind);
  });
  await c.subscribeArea('map', { bbox }, { userId: 'u1' });
  await until('the snapshot', () => kinds.includes('area_snapshot'));
  await publishAt(mover, lat, long);
  await until('vendor_entered', () => kinds.includes('vendor_entered'));
  await publishAt(mover, lat + 1, long);
  await until('vendor_left', () => kinds.includes('vendor_left'));
  assert.equal(c.areaVendors('map').has(mover), false);
});

test('a subscription the gateway refuses over sse rejects with its code', async () => {
  proxy.refuseUpgrades = true;
  const c = sseClient();
  await c.subscribeToLocation(uniq('ok'), 'u1');
  assert.equal(c.transport, 'sse');
  const errorEvent = nextEvent(c, 'error');
  await assert.rejects(c.subscribeToLocation('not a valid id!', 'u1'), { code: 'invalid_field' });
  assert.equal((await errorEvent).code, 'invalid_field');
  // The stream it had stays.
  assert.equal(c.connected, true);
});

test('after a drop the client goes back to the preferred transport', async () => {
  proxy.refuseUpgrades = true;
  const vendor = uniq('back');
  const c = sseClient();
  await c.subscribeToLocation(vendor, 'u1');
  assert.equal(c.transport, 'sse');
  proxy.refuseUpgrades = false;
  const closed = nextEvent(c, 'close');
  const reopened = nextEvent(c, 'open', (e) => e.transport === 'websocket', 20_000);
  const resubscribed = nextEvent(c, 'subscribed', (e) => e.data.vendorId === vendor, 20_000);
  proxy.dropAll();
  await closed;
  await reopened;
  await resubscribed;
  assert.equal(c.transport, 'websocket');
  const got = nextEvent(c, 'location', (e) => e.data.vendorId === vendor && !e.data.snapshot);
  await publishAt(vendor, 9, 10);
  assert.deepEqual((await got).data.location, { lat: 9, long: 10 });
});

test('RealtimeClient in Node: webtransport missing, websocket refused, sse', async () => {
  proxy.refuseUpgrades = true;
  const vendor = uniq('rt');
  const c = new RealtimeClient(`https://127.0.0.1:${proxy.port}/wt/location`, { EventSource });
  clients.push(c);
  await c.subscribeToLocation(vendor, 'u1');
  assert.equal(c.transport, 'sse');
  const got = nextEvent(c, 'location', (e) => e.data.vendorId === vendor && !e.data.snapshot);
  await publishAt(vendor, 11, 12);
  assert.deepEqual((await got).data.location, { lat: 11, long: 12 });
});
