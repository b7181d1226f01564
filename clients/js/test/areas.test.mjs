// Unit tests of the clients' area subscriptions against a scripted fake
// WebSocket (no gateway): what is sent, when, and what the client keeps.
//
//   node --test clients/js/test/areas.test.mjs   (or: npm --prefix clients/js test)
//
// The same API against a real gateway runs in crates/gateway/tests/process.rs
// (Node, through driver.mjs) and browser.rs (Chromium, WebTransport).

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { VentaWebSocketClient } from '../src/websocket.js';

/** A WebSocket the test drives: it opens, delivers and drops on request. */
function fakeWebSocket() {
  const sockets = [];
  class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      sockets.push(this);
    }
    send(text) {
      this.sent.push(JSON.parse(text));
    }
    close(code = 1000) {
      this.#end(code);
    }
    open() {
      this.readyState = 1;
      this.onopen?.();
    }
    deliver(message) {
      this.onmessage?.({ data: JSON.stringify(message) });
    }
    drop() {
      this.#end(1006);
    }
    #end(code) {
      if (this.readyState === 3) return;
      this.readyState = 3;
      this.onclose?.({ code, reason: '', wasClean: code !== 1006 });
    }
  }
  return { FakeWebSocket, sockets };
}

/** Resolves once `condition()` holds; fails after 5 s. */
async function until(what, condition) {
  const deadline = Date.now() + 5000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

function client(extra = {}) {
  const { FakeWebSocket, sockets } = fakeWebSocket();
  const c = new VentaWebSocketClient('ws://gateway.test/ws/location', {
    WebSocket: FakeWebSocket,
    logger: null,
    reconnectBaseDelayMs: 1,
    maxReconnectAttempts: 50,
    ...extra,
  });
  return { c, sockets };
}

const BOX = { bbox: { south: 40.4, west: -3.72, north: 40.43, east: -3.68 } };
const CIRCLE = { circle: { center: { lat: 40.4168, long: -3.7038 }, radiusM: 800 } };
const V1 = { vendorId: 'v1', location: { lat: 40.41, long: -3.7 }, timestamp: '2026-01-01T00:00:00Z' };
const V2 = { vendorId: 'v2', location: { lat: 40.42, long: -3.71 }, timestamp: '2026-01-01T00:00:01Z' };

const areaRequests = (socket) => socket.sent.filter((m) => m.type === 'subscribe_area');
const ack = (socket, request) =>
  socket.deliver({ type: 'subscribed', data: { channel: 'area', areaId: request.data.areaId }, id: request.id });

test('an area asked for before the open is sent on open, without delivery over WebSocket', () => {
  const { c, sockets } = client();
  c.subscribeArea('map', BOX, { userId: 'u1', delivery: 'datagram' });
  assert.equal(sockets[0].sent.length, 0);
  sockets[0].open();
  const [req] = areaRequests(sockets[0]);
  assert.deepEqual(req.data, { areaId: 'map', userId: 'u1', ...BOX });
  assert.match(req.id, /^area:map:\d+$/);
  c.close();
});

test('a circle is sent as given, and the caller mutating its object changes nothing', () => {
  const { c, sockets } = client();
  sockets[0].open();
  const shape = structuredClone(CIRCLE);
  c.subscribeArea('near', shape, { userId: 'u1' });
  shape.circle.radiusM = 1e9;
  shape.circle.center.lat = 0;
  sockets[0].drop();
  return until('reconnect', () => sockets.length === 2).then(() => {
    sockets[1].open();
    assert.deepEqual(areaRequests(sockets[0])[0].data.circle, CIRCLE.circle);
    assert.deepEqual(areaRequests(sockets[1])[0].data.circle, CIRCLE.circle);
    c.close();
  });
});

test('snapshot, entered, moved and left keep areaVendors and reach their hooks', () => {
  const { c, sockets } = client();
  const seen = [];
  c.onAreaSnapshot = (d) => seen.push(['snapshot', d.areaId, d.vendors.length, d.truncated]);
  c.onVendorEntered = (d) => seen.push(['entered', d.vendorId]);
  c.onAreaLocationUpdate = (d) => seen.push(['moved', d.vendorId, d.location.lat]);
  c.onVendorLeft = (d) => seen.push(['left', d.vendorId, d.reason]);
  c.onLocationUpdate = (d) => seen.push(['location', d.vendorId]);
  c.onSubscribed = (d) => seen.push(['subscribed', d.channel, d.areaId]);
  sockets[0].open();
  assert.equal(c.areaVendors('map'), undefined);
  c.subscribeArea('map', BOX, { userId: 'u1' });
  assert.equal(c.areaVendors('map').size, 0, 'empty until the snapshot');
  const ws = sockets[0];
  ack(ws, areaRequests(ws)[0]);
  ws.deliver({ type: 'area_snapshot', data: { areaId: 'map', vendors: [V1], truncated: false } });
  assert.deepEqual([...c.areaVendors('map').values()], [V1]);
  ws.deliver({ type: 'vendor_entered', data: { areaId: 'map', ...V2 } });
  const moved = { ...V1, location: { lat: 40.415, long: -3.7 }, timestamp: '2026-01-01T00:00:02Z' };
  ws.deliver({ type: 'location_updated', data: { ...moved, areaId: 'map' } });
  // The per-vendor message still goes to onLocationUpdate, and does not touch the area.
  ws.deliver({ type: 'location_updated', data: { ...V2, location: { lat: 1, long: 1 } } });
  assert.deepEqual(c.areaVendors('map').get('v1'), moved);
  assert.deepEqual(c.areaVendors('map').get('v2'), V2);
  ws.deliver({ type: 'vendor_left', data: { areaId: 'map', vendorId: 'v1', reason: 'moved' } });
  assert.deepEqual([...c.areaVendors('map').keys()], ['v2']);
  // areaVendors is a copy.
  c.areaVendors('map').clear();
  assert.equal(c.areaVendors('map').size, 1);
  assert.deepEqual(seen, [
    ['subscribed', 'area', 'map'],
    ['snapshot', 'map', 1, false],
    ['entered', 'v2'],
    ['moved', 'v1', 40.415],
    ['location', 'v2'],
    ['left', 'v1', 'moved'],
  ]);
  c.close();
});

test('after unsubscribeArea no event of the area reaches a hook', () => {
  const { c, sockets } = client();
  const seen = [];
  for (const hook of ['onAreaSnapshot', 'onVendorEntered', 'onAreaLocationUpdate', 'onVendorLeft']) {
    c[hook] = (d) => seen.push([hook, d.areaId]);
  }
  sockets[0].open();
  c.subscribeArea('map', BOX, { userId: 'u1' });
  c.unsubscribeArea('map');
  const ws = sockets[0];
  assert.deepEqual(ws.sent.at(-1), { type: 'unsubscribe_area', data: { areaId: 'map' }, id: 'unarea:map' });
  ws.deliver({ type: 'area_snapshot', data: { areaId: 'map', vendors: [V1], truncated: false } });
  ws.deliver({ type: 'vendor_entered', data: { areaId: 'map', ...V2 } });
  ws.deliver({ type: 'location_updated', data: { ...V1, areaId: 'map' } });
  ws.deliver({ type: 'vendor_left', data: { areaId: 'map', vendorId: 'v1', reason: 'moved' } });
  // Nor of an area never asked for.
  ws.deliver({ type: 'vendor_entered', data: { areaId: 'other', ...V2 } });
  assert.deepEqual(seen, []);
  assert.equal(c.areaVendors('map'), undefined);
  c.close();
});

test('areas are re-sent after a reconnect and the new snapshot replaces the old members', async () => {
  const { c, sockets } = client();
  sockets[0].open();
  c.subscribeArea('map', BOX, { userId: 'u1' });
  c.subscribeArea('near', CIRCLE, { userId: 'u1' });
  sockets[0].deliver({ type: 'area_snapshot', data: { areaId: 'map', vendors: [V1, V2], truncated: false } });
  sockets[0].drop();
  await until('reconnect', () => sockets.length === 2);
  assert.equal(c.areaVendors('map').size, 2, 'the old members stay until the new snapshot');
  sockets[1].open();
  assert.deepEqual(areaRequests(sockets[1]).map((r) => r.data.areaId), ['map', 'near']);
  sockets[1].deliver({ type: 'area_snapshot', data: { areaId: 'map', vendors: [V2], truncated: true } });
  assert.deepEqual([...c.areaVendors('map').keys()], ['v2']);
  c.close();
});

test('a new area refused for good is forgotten and not re-sent', async () => {
  const { c, sockets } = client();
  const errors = [];
  c.onError = (d) => errors.push(d.code);
  sockets[0].open();
  c.subscribeArea('huge', { bbox: { south: 0, west: 0, north: 10, east: 10 } }, { userId: 'u1' });
  const [req] = areaRequests(sockets[0]);
  sockets[0].deliver({
    type: 'error',
    id: req.id,
    data: { code: 'area_too_large', message: 'too large', requestType: 'subscribe_area' },
  });
  assert.deepEqual(errors, ['area_too_large'], 'onError still hears of it');
  assert.equal(c.areaVendors('huge'), undefined);
  sockets[0].drop();
  await until('reconnect', () => sockets.length === 2);
  sockets[1].open();
  assert.deepEqual(areaRequests(sockets[1]), []);
  c.close();
});

test('a move refused for good goes back to the shape the gateway holds', async () => {
  const { c, sockets } = client();
  sockets[0].open();
  c.subscribeArea('map', BOX, { userId: 'u1' });
  const ws = sockets[0];
  ack(ws, areaRequests(ws)[0]);
  ws.deliver({ type: 'area_snapshot', data: { areaId: 'map', vendors: [V1], truncated: false } });
  c.subscribeArea('map', { bbox: { south: 0, west: 0, north: 10, east: 10 } }, { userId: 'u1' });
  const move = areaRequests(ws)[1];
  ws.deliver({ type: 'error', id: move.id, data: { code: 'area_too_large', message: 'too large' } });
  assert.deepEqual([...c.areaVendors('map').keys()], ['v1'], 'the area and its members stay');
  ws.drop();
  await until('reconnect', () => sockets.length === 2);
  sockets[1].open();
  assert.deepEqual(areaRequests(sockets[1]).map((r) => r.data.bbox), [BOX.bbox]);
  c.close();
});

test('only the answer to the latest request decides: an older refusal is ignored', async () => {
  const { c, sockets } = client();
  sockets[0].open();
  const ws = sockets[0];
  c.subscribeArea('map', { bbox: { south: 0, west: 0, north: 10, east: 10 } }, { userId: 'u1' });
  c.subscribeArea('map', BOX, { userId: 'u1' });
  const [first, second] = areaRequests(ws);
  ws.deliver({ type: 'error', id: first.id, data: { code: 'area_too_large', message: 'too large' } });
  assert.ok(c.areaVendors('map'), 'the newer request still stands');
  ack(ws, second);
  // A refusal of a later move now falls back to the acknowledged BOX.
  c.subscribeArea('map', CIRCLE, { userId: 'u1' });
  const third = areaRequests(ws)[2];
  ws.deliver({ type: 'error', id: third.id, data: { code: 'invalid_field', message: 'bad' } });
  ws.drop();
  await until('reconnect', () => sockets.length === 2);
  sockets[1].open();
  assert.deepEqual(areaRequests(sockets[1]).map((r) => r.data.bbox), [BOX.bbox]);
  c.close();
});

test('a rate-limited area is sent again after retryAfterMs', async () => {
  const { c, sockets } = client();
  sockets[0].open();
  c.subscribeArea('map', BOX, { userId: 'u1' });
  const ws = sockets[0];
  const [req] = areaRequests(ws);
  ws.deliver({ type: 'error', id: req.id, data: { code: 'rate_limited', message: 'slow down', retryAfterMs: 20 } });
  await until('the retry', () => areaRequests(ws).length === 2);
  const retry = areaRequests(ws)[1];
  assert.deepEqual(retry.data, req.data);
  assert.notEqual(retry.id, req.id);
  c.close();
});

test('bad arguments throw at once instead of failing on every send', () => {
  const { c } = client();
  assert.throws(() => c.subscribeArea('map', BOX), TypeError, 'no userId');
  assert.throws(() => c.subscribeArea('map', BOX, { userId: 7 }), TypeError);
  assert.throws(() => c.subscribeArea('map', {}, { userId: 'u1' }), TypeError, 'no shape');
  assert.throws(() => c.subscribeArea('map', { ...BOX, ...CIRCLE }, { userId: 'u1' }), TypeError, 'two shapes');
  assert.throws(() => c.subscribeArea('map', { circle: { radiusM: 5 } }, { userId: 'u1' }), TypeError);
  assert.throws(() => c.subscribeArea(5, BOX, { userId: 'u1' }), TypeError);
  assert.equal(c.areaVendors('map'), undefined, 'nothing was kept');
  c.close();
});

test('the per-vendor API is unchanged', () => {
  const { c, sockets } = client();
  c.subscribeToLocation('v1', 'u1');
  sockets[0].open();
  assert.deepEqual(sockets[0].sent, [
    { type: 'subscribe_location', data: { vendorId: 'v1', userId: 'u1' }, id: 'sub:location:v1' },
  ]);
  c.close();
});
