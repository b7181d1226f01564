// The SSE transport's bookkeeping against a scripted event-stream server
// (no gateway): which URLs it opens, when it reopens, how the stream's acks
// settle the promises, how a refused reopen is answered, and `event: close`.
// The same against a real gateway is test/sse.test.mjs.

import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { after, before, test } from 'node:test';
import { EventSource } from 'eventsource';
import { WebSocketClient } from '../src/websocket.js';
import { nextEvent, until } from './gateway.mjs';

/** Streams open now, with what their URL asked for. */
const streams = new Set();
const requests = [];
let server;
let port;

before(async () => {
  server = createServer((req, res) => {
    const u = new URL(req.url, 'http://x');
    requests.push(`${u.pathname}?${u.searchParams}`);
    const kind = u.pathname.split('/').pop();
    const ids = (u.searchParams.get('vendorId') ?? '').split(',').filter(Boolean);
    if (ids.includes('bad')) {
      res.writeHead(400, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: { code: 'invalid_field', message: 'vendorId: bad' } }));
      return;
    }
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    const send = (type, message) => res.write(`event: ${type}\ndata: ${JSON.stringify(message)}\n\n`);
    const areaId = u.searchParams.get('areaId');
    for (const id of ids) send('subscribed', { type: 'subscribed', data: { channel: kind, vendorId: id } });
    if (areaId) send('subscribed', { type: 'subscribed', data: { channel: 'area', areaId } });
    const s = { kind, ids, areaId, send, res, query: u.searchParams };
    streams.add(s);
    req.on('close', () => streams.delete(s));
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  port = server.address().port;
});

after(() => {
  server.closeAllConnections();
  server.close();
});

function client() {
  return new WebSocketClient(`ws://127.0.0.1:${port}/ws/location?token=t0`, {
    transports: ['sse'],
    EventSource,
    ackTimeoutMs: 3000,
    maxReconnectAttempts: 0,
  });
}

const location = (vendorId, lat) => ({ type: 'location_updated', data: { vendorId, location: { lat, long: 0 }, timestamp: 't' } });

test('subscriptions open one stream per kind, reopened with the new list; acks settle the promises', async () => {
  requests.length = 0;
  const c = client();
  await Promise.all([c.subscribeToLocation('v1', 'u1'), c.subscribeToLocation('v2', 'u1'), c.subscribeToVendor('v1', 'u1')]);
  assert.equal(c.transport, 'sse');
  assert.deepEqual(requests.sort(), [
    '/sse/location?token=t0&userId=u1&vendorId=v1%2Cv2',
    '/sse/vendor?token=t0&userId=u1&vendorId=v1',
  ]);
  const got = nextEvent(c, 'location', (e) => e.data.vendorId === 'v2');
  for (const s of streams) if (s.kind === 'location') s.send('location_updated', location('v2', 1));
  assert.equal((await got).data.location.lat, 1);

  requests.length = 0;
  await c.subscribeToLocation('v3', 'u1');
  assert.deepEqual(requests, ['/sse/location?token=t0&userId=u1&vendorId=v1%2Cv2%2Cv3']);
  await until('the old stream closed', () => [...streams].filter((s) => s.kind === 'location').length === 1);

  // The unsubscribe resolves once the stream without v2 is the live one.
  requests.length = 0;
  await c.unsubscribeFromLocation('v2');
  assert.deepEqual(requests, ['/sse/location?token=t0&userId=u1&vendorId=v1%2Cv3']);
  const seen = [];
  c.addEventListener('location', (e) => seen.push(e.data.vendorId));
  const live = [...streams].filter((s) => s.kind === 'location' && !s.ids.includes('v2'));
  assert.equal(live.length, 1);
  const v3 = nextEvent(c, 'location', (e) => e.data.vendorId === 'v3');
  live[0].send('location_updated', location('v3', 2));
  await v3;

  // Subscribing again to what the stream already has answers at once.
  requests.length = 0;
  await c.subscribeToLocation('v1', 'u1');
  assert.deepEqual(requests, []);
  c.close();
  await until('every stream closed', () => streams.size === 0);
});

test('a reopen the server refuses rejects with its code and keeps the stream', async () => {
  const c = client();
  await c.subscribeToLocation('v1', 'u1');
  const errorEvent = nextEvent(c, 'error');
  await assert.rejects(c.subscribeToLocation('bad', 'u1'), { code: 'invalid_field', requestType: 'subscribe_location' });
  assert.equal((await errorEvent).code, 'invalid_field');
  assert.equal(c.connected, true);
  const got = nextEvent(c, 'location', (e) => e.data.vendorId === 'v1');
  for (const s of streams) s.send('location_updated', location('v1', 3));
  assert.equal((await got).data.location.lat, 3);
  // The next change builds on the list without the refused id.
  requests.length = 0;
  await c.subscribeToLocation('v4', 'u1');
  assert.deepEqual(requests, ['/sse/location?token=t0&userId=u1&vendorId=v1%2Cv4']);
  c.close();
  await until('every stream closed', () => streams.size === 0);
});

test('an area is a stream of its own; a move reopens it; event: close ends the connection with its code', async () => {
  const c = client();
  requests.length = 0;
  await c.subscribeArea('map', { bbox: { south: 1, west: 2, north: 3, east: 4 } }, { userId: 'u1' });
  assert.deepEqual(requests, ['/sse/area?token=t0&userId=u1&areaId=map&bbox=1%2C2%2C3%2C4']);
  await c.subscribeArea('map', { circle: { center: { lat: 1, long: 2 }, radiusM: 500 } }, { userId: 'u1' });
  assert.deepEqual(requests.at(-1), '/sse/area?token=t0&userId=u1&areaId=map&lat=1&long=2&radiusM=500');
  const area = nextEvent(c, 'area');
  const live = () => [...streams].find((s) => s.query.get('radiusM') === '500');
  await until('the moved stream', () => live());
  live().send('vendor_entered', { type: 'vendor_entered', data: { areaId: 'map', vendorId: 'v9', location: { lat: 1, long: 2 }, timestamp: 't' } });
  assert.equal((await area).kind, 'vendor_entered');
  assert.ok(c.areaVendors('map').has('v9'));
  await c.unsubscribeArea('map');
  await until('the area stream closed', () => streams.size === 0);

  await c.subscribeToLocation('v1', 'u1');
  const closed = nextEvent(c, 'close');
  for (const s of streams) s.send('close', { type: 'close', code: 1001, reason: 'server shutting down' });
  const e = await closed;
  assert.equal(e.code, 1001);
  assert.equal(e.reason, 'server shutting down');
  await until('the client closed its streams', () => streams.size === 0);
  c.close();
});
