// The client against a real gateway (test/gateway.mjs starts the debug
// binary): ack promises, refusals as rejections and `error` events,
// location / vendor / area events, reconnect with automatic resubscribe,
// the seed's compatibility class, and silence by default.
//
//   npm --prefix clients/js test      (node --test; needs NATS at 127.0.0.1:4222)

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { RealtimeClient, VentaError, WebTransportClient } from '../src/index.js';
import { VentaWebSocketClient, WebSocketClient } from '../src/websocket.js';
import { Gateway, nextEvent, uniq, until } from './gateway.mjs';

/** @type {Gateway} */
let gw;
const clients = [];

before(async () => {
  gw = await Gateway.start();
});

after(async () => {
  for (const c of clients) c.close();
  await gw?.dispose();
});

/** A WebSocket client on the shared gateway, closed after the tests. */
function wsClient(options = {}) {
  const c = new WebSocketClient(gw.url('/ws/location'), { reconnectBaseDelayMs: 50, ...options });
  clients.push(c);
  return c;
}

test('subscribeToLocation resolves on subscribed, then location events arrive', async () => {
  const vendor = uniq('loc');
  const c = wsClient();
  const opened = nextEvent(c, 'open');
  const acked = c.subscribeToLocation(vendor, 'u1');
  assert.ok(acked instanceof Promise);
  assert.equal((await opened).transport, 'websocket');
  assert.equal(await acked, undefined);
  assert.equal(c.connected, true);
  const got = nextEvent(c, 'location', (e) => e.data.vendorId === vendor);
  await gw.publish('location', { vendorId: vendor, location: { lat: 1.25, long: 2.5 } });
  const e = await got;
  assert.deepEqual(e.data.location, { lat: 1.25, long: 2.5 });
  assert.equal(e.message.type, 'location_updated');
  assert.equal(typeof e.data.timestamp, 'string');
});

test('a subscription made while connected resolves too, and unsubscribe resolves on unsubscribed', async () => {
  const vendor = uniq('unsub');
  const c = wsClient();
  await nextEvent(c, 'open');
  await c.subscribeToVendor(vendor, 'u1');
  const ack = nextEvent(c, 'unsubscribed');
  await c.unsubscribeFromVendor(vendor);
  assert.deepEqual((await ack).data, { channel: 'vendor', vendorId: vendor });
});

test('a refused subscription rejects with the stable code and fires an error event', async () => {
  const c = wsClient();
  const errorEvent = nextEvent(c, 'error');
  await assert.rejects(c.subscribeToLocation('not a valid id!', 'u1'), (err) => {
    assert.ok(err instanceof VentaError);
    assert.equal(err.code, 'invalid_field');
    assert.equal(err.requestType, 'subscribe_location');
    return true;
  });
  const e = await errorEvent;
  assert.equal(e.code, 'invalid_field');
  assert.equal(e.data.code, 'invalid_field');
});

test('vendor events carry the published profile', async () => {
  const vendor = uniq('ven');
  const c = wsClient();
  await c.subscribeToVendor(vendor, 'u1');
  const got = nextEvent(c, 'vendor', (e) => e.data.vendorId === vendor);
  await gw.publish('vendor', { vendorId: vendor, vendor: { name: 'Crêpes', open: true } });
  assert.deepEqual((await got).data.vendor, { name: 'Crêpes', open: true });
});

test('area events: snapshot, entered, moved inside, left', async () => {
  // A corner of the map of its own per run (the shared NATS keeps positions).
  const lat = -40 - Math.random() * 20;
  const long = -140 - Math.random() * 20;
  const bbox = { south: lat - 0.01, west: long - 0.01, north: lat + 0.01, east: long + 0.01 };
  const before = uniq('ab');
  const mover = uniq('am');
  await gw.publish('location', { vendorId: before, location: { lat, long } });
  const c = wsClient();
  const events = [];
  c.addEventListener('area', (e) => {
    if (e.data.vendorId === mover || e.kind === 'area_snapshot') events.push(e);
  });
  // The snapshot is built from what the gateway's geo index holds by now.
  await until('the first vendor in the geo index', async () => {
    const probe = new WebSocketClient(gw.url('/ws/location'));
    try {
      const snap = nextEvent(probe, 'area', (e) => e.kind === 'area_snapshot');
      await probe.subscribeArea('probe', { bbox }, { userId: 'u1' });
      return (await snap).data.vendors.some((v) => v.vendorId === before);
    } finally {
      probe.close();
    }
  });
  await c.subscribeArea('map', { bbox }, { userId: 'u1' });
  await until('the snapshot', () => events.length >= 1);
  const snap = events[0];
  assert.equal(snap.kind, 'area_snapshot');
  assert.equal(snap.areaId, 'map');
  assert.ok(snap.data.vendors.some((v) => v.vendorId === before), JSON.stringify(snap.data));
  assert.ok(c.areaVendors('map').has(before));

  await gw.publish('location', { vendorId: mover, location: { lat, long: long + 0.001 } });
  await until('vendor_entered', () => events.some((e) => e.kind === 'vendor_entered'));
  await gw.publish('location', { vendorId: mover, location: { lat, long: long + 0.002 } });
  await until('location_updated in the area', () => events.some((e) => e.kind === 'location_updated'));
  assert.deepEqual(c.areaVendors('map').get(mover).location, { lat, long: long + 0.002 });
  await gw.publish('location', { vendorId: mover, location: { lat: lat + 1, long } });
  await until('vendor_left', () => events.some((e) => e.kind === 'vendor_left'));
  const left = events.find((e) => e.kind === 'vendor_left');
  assert.equal(left.data.reason, 'moved');
  assert.equal(left.areaId, 'map');
  assert.equal(c.areaVendors('map').has(mover), false);
  assert.deepEqual(events.filter((e) => e.data.vendorId === mover).map((e) => e.kind), [
    'vendor_entered',
    'location_updated',
    'vendor_left',
  ]);
});

test('a refused area rejects with area_too_large', async () => {
  const c = wsClient();
  const huge = { bbox: { south: -60, west: -170, north: 60, east: 170 } };
  await assert.rejects(c.subscribeArea('huge', huge, { userId: 'u1' }), { code: 'area_too_large' });
  assert.equal(c.areaVendors('huge'), undefined, 'a new area refused for good is forgotten');
});

test('after a gateway restart the client reconnects and resubscribes by itself', async () => {
  const own = await Gateway.start();
  try {
    const vendor = uniq('re');
    const c = new RealtimeClient(own.url('/ws/location'), { reconnectBaseDelayMs: 100, maxReconnectAttempts: 50 });
    clients.push(c);
    await c.subscribeToLocation(vendor, 'u1');
    const closed = nextEvent(c, 'close');
    const reopened = nextEvent(c, 'open', () => true, 40_000);
    const resubscribed = nextEvent(c, 'subscribed', (e) => e.data.vendorId === vendor, 40_000);
    await own.restart();
    assert.equal((await closed).code, 1001, 'the gateway says going away on shutdown');
    await reopened;
    await resubscribed;
    const got = nextEvent(c, 'location', (e) => e.data.vendorId === vendor);
    await own.publish('location', { vendorId: vendor, location: { lat: -3.5, long: 4.5 } });
    assert.deepEqual((await got).data.location, { lat: -3.5, long: 4.5 });
    c.close();
  } finally {
    await own.dispose();
  }
});

test('pending promises reject with closed on close(), and close fires with the code', async () => {
  const c = wsClient();
  await nextEvent(c, 'open');
  const closed = nextEvent(c, 'close');
  c.close(1000, 'bye');
  assert.equal((await closed).code, 1000);
  await assert.rejects(c.subscribeToLocation('v1', 'u1'), { code: 'closed' });
});

test('in Node (no WebTransport) the WebTransport client uses WebSocket', async () => {
  const vendor = uniq('wtws');
  const c = new WebTransportClient(`https://127.0.0.1:${gw.port}/wt/location`);
  clients.push(c);
  await c.subscribeToLocation(vendor, 'u1', { delivery: 'datagram' });
  assert.equal(c.transport, 'websocket');
  const got = nextEvent(c, 'location', (e) => e.data.vendorId === vendor);
  await gw.publish('location', { vendorId: vendor, location: { lat: 5, long: 6 } });
  assert.deepEqual((await got).data.location, { lat: 5, long: 6 });
});

test('nothing is logged by default', async () => {
  const calls = [];
  const saved = {};
  for (const name of ['log', 'info', 'warn', 'error', 'debug']) {
    saved[name] = console[name];
    console[name] = (...args) => calls.push([name, ...args]);
  }
  try {
    const c = wsClient();
    const vendor = uniq('quiet');
    await c.subscribeToLocation(vendor, 'u1');
    const got = nextEvent(c, 'location');
    await gw.publish('location', { vendorId: vendor, location: { lat: 1, long: 1 } });
    await got;
    await c.subscribeToLocation('bad id!', 'u1').catch(() => {});
    c.close();
  } finally {
    Object.assign(console, saved);
  }
  assert.deepEqual(calls, []);
});

test("the seed's VentaWebSocketClient works unchanged: hooks, default logging", async () => {
  const vendor = uniq('seed');
  const lines = [];
  const logger = { log: (...a) => lines.push(['log', ...a]), warn: (...a) => lines.push(['warn', ...a]), error: () => {} };
  const seen = [];
  class Tracker extends VentaWebSocketClient {
    onLocationUpdate(data) {
      seen.push(['location', data.vendorId]);
    }
  }
  const t = new Tracker(gw.url('/ws/location'), { logger });
  const plain = new VentaWebSocketClient(gw.url('/ws/location'), { logger });
  clients.push(t, plain);
  let acks = 0;
  t.onSubscribed = () => acks++;
  plain.onSubscribed = () => acks++;
  // The seed's style: subscribe right after new, no await.
  assert.equal(typeof t.subscribeToLocation(vendor, 'u1').then, 'function');
  plain.subscribeToLocation(vendor, 'u1');
  await until('both acks', () => acks === 2);
  await gw.publish('location', { vendorId: vendor, location: { lat: 7, long: 8 } });
  await until('the subclass hook and the default hook', () =>
    seen.length === 1 && lines.some((l) => l[0] === 'log' && l[1] === 'Location updated:'));
  assert.deepEqual(seen, [['location', vendor]]);
  const logged = lines.find((l) => l[1] === 'Location updated:');
  assert.equal(logged[2].vendorId, vendor);
  // A hook that throws is logged and the client goes on.
  let errors = 0;
  plain.onError = () => {
    errors++;
    throw new Error('hook failure');
  };
  plain.subscribeToLocation('bad id!', 'u1');
  await until('onError', () => errors === 1);
  assert.equal(plain.connected, true);
});
