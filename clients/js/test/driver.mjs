// Scripted driver for the gateway's integration test: runs the real JS client
// and reports what it sees as JSON lines on stdout.
//
//   node --experimental-websocket clients/js/test/driver.mjs <url> <vendorId> <userId> [reconnectBaseMs] [maxReconnectAttempts]
//
// <url> is ws:// or wss:// for VentaWebSocketClient, https:// (a /wt/ session
// URL) for VentaWebTransportClient, which in Node (no WebTransport) falls
// back to the matching WebSocket endpoint. <vendorId> `-` subscribes to no
// vendor's location (for scripts that only follow areas).
//
// stdout, one JSON object per line:
//   {"event":"open","transport":T}       a connection opened (first or after a reconnect); T websocket|webtransport
//   {"event":"close","code":N}           a connection that had opened closed
//   {"event":"subscribed","data":{...}}  ack; after a reconnect it comes from the automatic resubscribe
//   {"event":"unsubscribed","data":{...}}
//   {"event":"location","data":{...}}    location_updated's data
//   {"event":"vendor","data":{...}}      vendor_updated's data
//   {"event":"error","data":{...}}       a gateway error message's data
//   {"event":"ping"}                     the server pinged and the client answered pong
//   {"event":"gave_up"}                  reconnect attempts exhausted (the test is failing by then)
//   {"event":"refreshed","data":{...}}   the gateway accepted a token from getToken
//   {"event":"area_snapshot","data":{...}}   area_snapshot's data
//   {"event":"vendor_entered","data":{...}}
//   {"event":"area_location","data":{...}}   location_updated with areaId (onAreaLocationUpdate)
//   {"event":"vendor_left","data":{...}}
//   {"event":"pong","data":{...},"id":ID}    the answer to a "ping" command
//   {"event":"area_vendors","areaId":A,"vendors":[...]|null}  answer to "areaVendors", sorted by vendorId
//   {"event":"command_failed","error":E}     a command line the client refused (e.g. a TypeError)
//
// stdin takes commands, one JSON object per line, run in order:
//   {"cmd":"subscribeArea","areaId":A,"shape":{"bbox":{...}}|{"circle":{...}},"delivery"?:D}
//       (userId is <userId>)
//   {"cmd":"unsubscribeArea","areaId":A}
//   {"cmd":"areaVendors","areaId":A}
//   {"cmd":"ping"}
//
// With VENTA_DRIVER_JWT_SECRET set, the client gets `getToken`: each call
// signs a fresh HS256 token for <userId> valid VENTA_DRIVER_TOKEN_TTL seconds
// (default 3), refreshed VENTA_DRIVER_REFRESH_LEAD_MS before expiry (default 2000).
// Failed reconnect attempts print nothing on stdout (a line on stderr), so a
// restart reads exactly: close, open, subscribed.
//
// Runs until stdin closes (keep it piped, not /dev/null) or 60 s pass, then
// closes the client (a last {"event":"close","code":1000} if it was open) and
// exits 0. Bad arguments: usage on stderr, exit 2. Diagnostics go to stderr.

import { createHmac } from 'node:crypto';
import { VentaWebSocketClient } from '../src/websocket.js';

const RUN_FOR_MS = 60_000;

const [url, vendorId, userId, baseArg, maxArg] = process.argv.slice(2);
const isCount = (arg) => arg === undefined || (Number.isInteger(Number(arg)) && Number(arg) >= 0);
if (!url || !vendorId || !userId || !isCount(baseArg) || !isCount(maxArg)) {
  process.stderr.write(
    'usage: node --experimental-websocket driver.mjs <url> <vendorId> <userId> [reconnectBaseMs] [maxReconnectAttempts]\n',
  );
  process.exit(2);
}

// stdout to a pipe is synchronous on Linux, so each line is out before the next event.
const emit = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);
const note = (text) => process.stderr.write(`driver: ${text}\n`);

const options = { logger: null };
if (baseArg !== undefined) options.reconnectBaseDelayMs = Number(baseArg);
if (maxArg !== undefined) options.maxReconnectAttempts = Number(maxArg);
const secret = process.env.VENTA_DRIVER_JWT_SECRET;
if (secret) {
  const ttl = Number(process.env.VENTA_DRIVER_TOKEN_TTL ?? 3);
  const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
  options.getToken = () => {
    const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub: userId, exp: Math.floor(Date.now() / 1000) + ttl })}`;
    return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`;
  };
  options.refreshLeadMs = Number(process.env.VENTA_DRIVER_REFRESH_LEAD_MS ?? 2000);
}

// The WebTransport module (and with it MessagePack, from node_modules:
// `npm ci` in clients/js first) only for a /wt/ URL.
const Client = url.startsWith('https:')
  ? (await import('../src/webtransport.js')).VentaWebTransportClient
  : VentaWebSocketClient;
const client = new Client(url, options);
client.onOpen = () => emit({ event: 'open', transport: client.transport });
client.onClose = (ev) => emit({ event: 'close', code: ev.code });
client.onSubscribed = (data) => emit({ event: 'subscribed', data });
client.onUnsubscribed = (data) => emit({ event: 'unsubscribed', data });
client.onLocationUpdate = (data) => emit({ event: 'location', data });
client.onVendorUpdate = (data) => emit({ event: 'vendor', data });
client.onError = (data) => emit({ event: 'error', data });
client.onPing = () => emit({ event: 'ping' });
client.onGiveUp = () => emit({ event: 'gave_up' });
client.onRefreshed = (data) => emit({ event: 'refreshed', data });
client.onReconnecting = ({ attempt, delayMs }) => note(`reconnect attempt ${attempt} in ${delayMs} ms`);

client.onAreaSnapshot = (data) => emit({ event: 'area_snapshot', data });
client.onVendorEntered = (data) => emit({ event: 'vendor_entered', data });
client.onAreaLocationUpdate = (data) => emit({ event: 'area_location', data });
client.onVendorLeft = (data) => emit({ event: 'vendor_left', data });
client.onPong = (data, message) => emit({ event: 'pong', data, id: message.id });

// Sent on open, and again by the client after every reconnect.
if (vendorId !== '-') client.subscribeToLocation(vendorId, userId);

function command(line) {
  if (!line.trim()) return;
  try {
    const c = JSON.parse(line);
    switch (c.cmd) {
      case 'subscribeArea':
        client.subscribeArea(c.areaId, c.shape, { userId, delivery: c.delivery });
        break;
      case 'unsubscribeArea':
        client.unsubscribeArea(c.areaId);
        break;
      case 'areaVendors': {
        const vendors = client.areaVendors(c.areaId);
        const list = vendors === undefined
          ? null
          : [...vendors.values()].sort((a, b) => (a.vendorId < b.vendorId ? -1 : 1));
        emit({ event: 'area_vendors', areaId: c.areaId, vendors: list });
        break;
      }
      case 'ping':
        client.ping();
        break;
      default:
        throw new Error(`unknown command ${JSON.stringify(c.cmd)}`);
    }
  } catch (err) {
    emit({ event: 'command_failed', error: String(err?.message ?? err) });
  }
}

let finished = false;
function finish() {
  if (finished) return;
  finished = true;
  client.close();
  // Give the close frame a moment to leave; nothing after this matters.
  setTimeout(() => process.exit(0), 100);
}

setTimeout(finish, RUN_FOR_MS);
process.stdin.on('end', finish);
process.stdin.on('close', finish);
process.stdin.on('error', finish);
let pending = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => {
  pending += chunk;
  let nl;
  while ((nl = pending.indexOf('\n')) >= 0) {
    command(pending.slice(0, nl));
    pending = pending.slice(nl + 1);
  }
});
process.stdin.resume();
