// Venta gateway clients: WebSocket (JSON) and WebTransport (MessagePack).
//
// `VentaWebSocketClient` is a drop-in successor of the client documented by
// the seed (NestJS) gateway: same constructor, same `subscribeToLocation`,
// same overridable `onLocationUpdate` / `onVendorUpdate`, answers the
// server's `ping` with `{"type":"pong"}` and reconnects a bounded number of
// times. It uses the global `WebSocket` (any browser, Node >= 22, or Node 20
// run with `--experimental-websocket`).
//
// Both also follow areas of the map ("vendors near me"): `subscribeArea`
// with a box or a circle gives a snapshot of the vendors inside, then
// entered / moved / left events; the client keeps each area's vendors.
//
// `VentaWebTransportClient` has the same API over WebTransport (HTTP/3):
// MessagePack frames on one bidirectional stream, location updates as
// datagrams on request, the gateway's dev certificate pinned by the hash it
// publishes. Where WebTransport is unavailable (no API, or UDP blocked) it
// falls back to the WebSocket endpoint.
//
// Plain ES modules; MessagePack comes from a vendored copy of
// @msgpack/msgpack (see ../vendor/msgpack/VENDORED.md), so a browser loads
// this file as it is, without a bundler.

import { decode, encode } from '../vendor/msgpack/index.mjs';

// WebSocket.readyState OPEN, fixed by the standard; not read from the
// implementation, so an injected one without the static constants works too.
const OPEN = 1;

// Refusals of a subscription that may pass later, so the subscription is
// kept; any other code (invalid_field, forbidden, too_many_subscriptions, ...)
// would fail the same way on every reconnect, so it is forgotten.
const TRANSIENT_ERRORS = new Set(['rate_limited', 'unavailable', 'internal']);

// Largest WebTransport frame the client accepts from the gateway. Server
// frames are small (a vendor update is at most 64 KiB of JSON); anything
// bigger means the stream is out of step.
const MAX_SERVER_FRAME = 1 << 20;

const noop = () => {};

/**
 * A copy of an area shape holding only the fields the gateway reads, so a
 * caller mutating its object later cannot change what a reconnect re-sends.
 * Throws a TypeError unless exactly one of `bbox` and `circle` is given:
 * that mistake is the caller's, and would fail the same way on every send.
 * The numbers themselves are the gateway's to judge (`invalid_field`,
 * `area_too_large`), so its rules live in one place.
 */
function areaShape(shape) {
  const isObject = (v) => v !== null && typeof v === 'object';
  const hasBox = isObject(shape) && shape.bbox !== undefined && shape.bbox !== null;
  const hasCircle = isObject(shape) && shape.circle !== undefined && shape.circle !== null;
  if (hasBox === hasCircle) {
    throw new TypeError('subscribeArea: give exactly one of {bbox: {south, west, north, east}} and {circle: {center: {lat, long}, radiusM}}');
  }
  if (hasBox) {
    if (!isObject(shape.bbox)) throw new TypeError('subscribeArea: bbox must be an object');
    const { south, west, north, east } = shape.bbox;
    return { bbox: { south, west, north, east } };
  }
  const { center, radiusM } = shape.circle;
  if (!isObject(center)) throw new TypeError('subscribeArea: circle.center must be {lat, long}');
  return { circle: { center: { lat: center.lat, long: center.long }, radiusM } };
}

/** An area member as the client keeps it: `{vendorId, location, timestamp}`. */
function areaVendor({ vendorId, location, timestamp }) {
  return { vendorId, location, timestamp };
}

/** Builds a {log, warn, error} triple from `options.logger` (null/false = silent). */
function makeLogger(logger) {
  if (logger === undefined) logger = globalThis.console;
  if (!logger) return { log: noop, warn: noop, error: noop };
  const pick = (name) => (typeof logger[name] === 'function' ? logger[name].bind(logger) : noop);
  return { log: pick('log'), warn: pick('warn'), error: pick('error') };
}

// ---------------------------------------------------------------- transports
//
// A connection attempt is an object {kind, open, send(message), close(code,
// reason)} driving three callbacks: onOpen(), onMessage(message) with a
// decoded message object, and onEnd(event) exactly once, with
// {code, reason, wasClean}. The client above knows nothing else of them.

/** One WebSocket connection: JSON text frames. */
function openWebSocket(WebSocketImpl, url, protocols, log, on) {
  const socket = protocols === undefined ? new WebSocketImpl(url) : new WebSocketImpl(url, protocols);
  let opened = false;
  let ended = false;
  const end = (event) => {
    if (ended) return;
    ended = true;
    on.onEnd(event);
  };
  socket.onopen = () => {
    opened = true;
    on.onOpen();
  };
  socket.onmessage = (event) => {
    if (typeof event.data !== 'string') {
      log.warn('Ignoring a binary WebSocket frame');
      return;
    }
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      log.warn('Ignoring a frame that is not JSON:', event.data);
      return;
    }
    if (message && typeof message === 'object') on.onMessage(message);
  };
  socket.onclose = end;
  socket.onerror = (error) => {
    log.error('WebSocket error:', error);
    // Browsers follow a failed attempt's `error` with `close`, but the
    // WebSocket in Node 20 (undici before nodejs/undici#3546 was fixed)
    // fires only `error` and stays CONNECTING for ever; without this the
    // client would silently stop reconnecting there.
    if (!opened) end({ code: 1006, reason: '', wasClean: false });
  };
  return {
    kind: 'websocket',
    get open() {
      return socket.readyState === OPEN;
    },
    send(message) {
      socket.send(JSON.stringify(message));
    },
    close(code, reason) {
      // A socket still connecting can be closed too; it then reports close.
      if (socket.readyState <= OPEN) socket.close(code, reason);
    },
  };
}

/** `[{algorithm, value: Uint8Array}]` for `serverCertificateHashes`. */
async function certificateHashes(options) {
  if (options.serverCertificateHashes) return options.serverCertificateHashes;
  if (!options.certificateHashUrl) return [];
  const fetchImpl = options.fetch ?? globalThis.fetch;
  const res = await fetchImpl(options.certificateHashUrl, { cache: 'no-store' });
  if (!res.ok) throw new Error(`${options.certificateHashUrl}: HTTP ${res.status}`);
  const body = await res.json();
  // During a rotation the gateway publishes the coming certificate as
  // `next`: trusting both keeps this connection working across the switch.
  return [body, body.next]
    .filter((h) => h && typeof h.value === 'string' && /^[0-9a-f]{64}$/i.test(h.value))
    .map((h) => ({
      algorithm: h.algorithm,
      value: Uint8Array.from(h.value.match(/../g), (byte) => parseInt(byte, 16)),
    }));
}

/** A frame: 4-byte big-endian length, then one MessagePack value. */
function frameOf(message) {
  const payload = encode(message);
  const out = new Uint8Array(4 + payload.length);
  new DataView(out.buffer).setUint32(0, payload.length);
  out.set(payload, 4);
  return out;
}

function decodeMessage(bytes, log) {
  let message;
  try {
    message = decode(bytes);
  } catch (err) {
    log.warn('Ignoring undecodable MessagePack from the gateway:', err);
    return null;
  }
  return message && typeof message === 'object' && !Array.isArray(message) ? message : null;
}

/** Reads length-prefixed MessagePack frames until the stream ends. */
async function readFrames(readable, log, onMessage) {
  const reader = readable.getReader();
  let buf = new Uint8Array(0);
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    const joined = new Uint8Array(buf.length + value.length);
    joined.set(buf);
    joined.set(value, buf.length);
    buf = joined;
    while (buf.length >= 4) {
      const len = new DataView(buf.buffer, buf.byteOffset, 4).getUint32(0);
      if (len > MAX_SERVER_FRAME) throw new Error(`frame of ${len} bytes from the gateway`);
      if (buf.length < 4 + len) break;
      const message = decodeMessage(buf.subarray(4, 4 + len), log);
      buf = buf.subarray(4 + len);
      if (message) onMessage(message);
    }
  }
}

/** Reads datagrams (one MessagePack value each) until the session ends. */
async function readDatagrams(readable, log, onMessage) {
  const reader = readable.getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    const message = decodeMessage(value, log);
    if (message) onMessage(message);
  }
}

/** One WebTransport session: MessagePack frames on one bidirectional stream. */
function openWebTransport(WebTransportImpl, url, options, log, on) {
  let wt = null;
  let writer = null;
  let opened = false;
  let ended = false;
  let closeRequest = null;
  const end = (event) => {
    if (ended) return;
    ended = true;
    if (wt && !closeRequest) {
      try {
        wt.close();
      } catch {
        // Already closed.
      }
    }
    on.onEnd(event);
  };
  const failed = (err) => {
    if (!ended) log.error('WebTransport error:', err);
    end({ code: 1006, reason: String(err?.message ?? err), wasClean: false });
  };
  (async () => {
    const hashes = await certificateHashes(options);
    if (closeRequest) {
      end({ ...closeRequest, wasClean: true });
      return;
    }
    wt = hashes.length
      ? new WebTransportImpl(url, { serverCertificateHashes: hashes })
      : new WebTransportImpl(url);
    // A gateway that vanishes without finishing the stream ends up here as a
    // rejection (1006).
    wt.closed.then(
      (info) => end({ code: info?.closeCode ?? 1000, reason: info?.reason ?? '', wasClean: true }),
      failed,
    );
    await wt.ready;
    const stream = await wt.createBidirectionalStream();
    writer = stream.writable.getWriter();
    // The gateway learns of the stream from its first bytes: announce it
    // with a `pong`, which is free (not rate-limited) and never answered.
    writer.write(frameOf({ type: 'pong' })).catch(noop);
    if (closeRequest) {
      wt.close({ closeCode: closeRequest.code, reason: closeRequest.reason });
      return;
    }
    opened = true;
    on.onOpen();
    readDatagrams(wt.datagrams.readable, log, on.onMessage).catch(noop);
    await readFrames(stream.readable, log, on.onMessage);
    // The gateway finished its stream: it is closing the session. Its close
    // code (1001, 1013, 4000, ...) does not reach browsers (it closes QUIC,
    // not the WebTransport session), so report 1005, "no status received".
    end({ code: 1005, reason: 'the gateway ended the session', wasClean: true });
  })().catch(failed);
  return {
    kind: 'webtransport',
    get open() {
      return opened && !ended;
    },
    send(message) {
      if (writer && !ended) writer.write(frameOf(message)).catch(noop);
    },
    close(code, reason) {
      closeRequest = { code, reason };
      if (wt && opened) {
        try {
          wt.close({ closeCode: code, reason });
        } catch {
          // Already closed.
        }
      }
    },
  };
}

/** The WebSocket endpoint matching a WebTransport URL: same host, port and query; /wt/x → /ws/x. */
function webSocketUrlFor(webTransportUrl) {
  const u = new URL(webTransportUrl);
  u.protocol = globalThis.location?.protocol === 'https:' ? 'wss:' : 'ws:';
  u.pathname = u.pathname.replace(/^\/wt\//, '/ws/');
  return u.toString();
}

// -------------------------------------------------------------------- tokens

/** `url` with its `token` query parameter set to `token` (others kept). */
function withToken(url, token) {
  if (token === undefined || token === null) return url;
  const u = new URL(url);
  u.searchParams.set('token', token);
  return u.toString();
}

/** A JWT's `exp` in milliseconds since the epoch, or null if it has none. */
function tokenExpiryMs(token) {
  try {
    const part = token.split('.')[1];
    const json = JSON.parse(atob(part.replace(/-/g, '+').replace(/_/g, '/')));
    return typeof json.exp === 'number' ? json.exp * 1000 : null;
  } catch {
    return null;
  }
}

// -------------------------------------------------------------------- client

/**
 * What the two clients share: subscriptions, queueing, reconnects, hooks.
 * Use {@link VentaWebSocketClient} or {@link VentaWebTransportClient}.
 *
 * Subclass it or assign the `on*` hooks on an instance to receive events:
 * the connection is opened in the constructor but no event can fire before
 * the current task ends, so hooks assigned right after `new` see everything.
 */
export class VentaClient {
  /** The current connection attempt, or null between attempts. */
  #conn = null;
  /** @type {(on: object, log: object) => object} opens a connection of the active transport */
  #open;
  /** Names the transport of a connection, for logs. */
  #name;
  /** Told how each attempt ended (the WebTransport client's fallback). */
  #attemptEnded;
  #log;
  /** Attempts made since the last successful open (the seed's counter). */
  #reconnectAttempts = 0;
  #maxReconnectAttempts;
  #baseDelayMs;
  #maxDelayMs;
  #maxQueue;
  #reconnectTimer = null;
  /** Rate-limit retry timers, cleared by close() so they do not keep Node alive. */
  #retryTimers = new Set();
  /** Set by close(): from then on nothing reconnects. */
  #closed = false;
  /** Messages sent while not connected, flushed on the next open. */
  #queue = [];
  /**
   * Subscriptions the caller wants, keyed `channel:vendorId`. They are the
   * source of truth: every (re)connect sends all of them, because a new
   * connection starts with none on the server side.
   * @type {Map<string, {channel: 'location'|'vendor', vendorId: string, userId: string, delivery?: string}>}
   */
  #subscriptions = new Map();
  /**
   * Areas the caller wants, by areaId; like `#subscriptions`, re-sent on
   * every (re)connect. `seq` numbers the latest request, `pending` holds the
   * requests of this connection not answered yet (the gateway answers in
   * order), `acked` the request the gateway holds now (null before the
   * first ack of a connection): a move refused for good falls back to it,
   * since the gateway keeps the old area then.
   * @type {Map<string, {areaId: string, userId: string, shape: object, delivery?: string,
   *   seq: number, pending: object[], acked: object|null}>}
   */
  #areas = new Map();
  /** The vendors inside each wanted area, as the snapshot and events since describe them. */
  #areaVendors = new Map();
  #areaSeq = 0;
  #pingCounter = 0;
  /** `options.getToken`: asked for a token before every connect and before expiry. */
  #getToken = null;
  /** The latest token from `getToken`, put in the URL of every connect. */
  #token = null;
  #refreshLeadMs;
  #refreshTimer = null;
  #refreshCounter = 0;

  /**
   * @param {string} url
   * @param {object} options see the subclasses
   * @param {{name: Function, open: Function, attemptEnded?: Function}} transport
   */
  constructor(url, options, transport) {
    this.#name = transport.name;
    this.#open = transport.open;
    this.#attemptEnded = transport.attemptEnded ?? noop;
    this.#maxReconnectAttempts = options.maxReconnectAttempts ?? 5;
    this.#baseDelayMs = options.reconnectBaseDelayMs ?? 1000;
    this.#maxDelayMs = options.reconnectMaxDelayMs ?? 30000;
    this.#maxQueue = options.maxQueuedMessages ?? 100;
    this.#log = makeLogger(options.logger);
    this.#getToken = typeof options.getToken === 'function' ? options.getToken : null;
    this.#refreshLeadMs = options.refreshLeadMs ?? 60000;
    this.#connect();
  }

  // ---------------------------------------------------------------- public API

  /** True while the connection is open. */
  get connected() {
    return this.#conn !== null && this.#conn.open;
  }

  /** `'websocket'` or `'webtransport'`: the transport of the current (or last) connection. */
  get transport() {
    return this.#conn?.kind ?? null;
  }

  /**
   * Subscribes to a vendor's location updates (delivered to `onLocationUpdate`).
   * May be called before the connection is open; the subscription is also
   * re-sent automatically after every reconnect.
   * @param {string} vendorId
   * @param {string} userId must equal the token's `sub` when auth is on
   * @param {{delivery?: 'stream'|'datagram'}} [options] `datagram`: over
   *   WebTransport, updates come as unreliable datagrams (latest position
   *   wins, no head-of-line blocking); ignored over WebSocket
   */
  subscribeToLocation(vendorId, userId, options = {}) {
    this.#subscribe('location', vendorId, userId, options.delivery);
  }

  /**
   * Subscribes to a vendor's profile updates (delivered to `onVendorUpdate`).
   * Same queuing and resubscribe rules as `subscribeToLocation`.
   * @param {string} vendorId
   * @param {string} userId
   */
  subscribeToVendor(vendorId, userId) {
    this.#subscribe('vendor', vendorId, userId);
  }

  /**
   * Stops location updates for a vendor. While disconnected this only
   * forgets the subscription (the next connection will not make it), so no
   * `unsubscribed` ack follows in that case.
   * @param {string} vendorId
   */
  unsubscribeFromLocation(vendorId) {
    this.#unsubscribe('location', vendorId);
  }

  /**
   * Stops vendor updates for a vendor. Same rules as `unsubscribeFromLocation`.
   * @param {string} vendorId
   */
  unsubscribeFromVendor(vendorId) {
    this.#unsubscribe('vendor', vendorId);
  }

  /**
   * Follows every vendor inside an area of the map. The gateway answers
   * `subscribed` (`{channel: 'area', areaId}`, to `onSubscribed`) and then
   * `area_snapshot` (`onAreaSnapshot`); after that `onVendorEntered`,
   * `onAreaLocationUpdate` (a move inside) and `onVendorLeft` keep it
   * current, and `areaVendors(areaId)` holds the result.
   *
   * Called again with the same `areaId` it moves the area (a map that
   * pans): no new snapshot, only entered/left (`reason: 'area_changed'`) for
   * the difference. Like the other subscriptions it may be called before
   * the connection opens and is re-sent (with a fresh snapshot) after every
   * reconnect. A refusal for good (`invalid_field`, `area_too_large`,
   * `too_many_subscriptions`, `forbidden`) forgets a new area and takes a
   * moved one back to the shape the gateway still holds; `rate_limited`
   * retries after `retryAfterMs`.
   *
   * @param {string} areaId the caller's name for the area, unique per client (`^[A-Za-z0-9_-]{1,64}$`)
   * @param {{bbox: {south: number, west: number, north: number, east: number}} |
   *   {circle: {center: {lat: number, long: number}, radiusM: number}}} shape a box (edges included;
   *   `west > east` crosses the antimeridian) or a circle (radius in metres); at most the gateway's
   *   GEO_MAX_AREA_KM across (50 km by default: box diagonal, circle diameter)
   * @param {{userId: string, delivery?: 'stream'|'datagram'}} options `userId` is required (the
   *   token's `sub` when auth is on); `delivery: 'datagram'`: over WebTransport, moves inside the
   *   area come as datagrams (ignored over WebSocket)
   * @throws {TypeError} without a `userId` string, or unless exactly one of `bbox` and `circle` is given
   */
  subscribeArea(areaId, shape, options = {}) {
    if (typeof areaId !== 'string') throw new TypeError('subscribeArea: areaId must be a string');
    const { userId, delivery } = options ?? {};
    if (typeof userId !== 'string') throw new TypeError('subscribeArea: options.userId must be a string');
    const wanted = { userId, shape: areaShape(shape), delivery };
    // A move keeps the area's record: answers to its earlier requests are still to come.
    const area = this.#areas.get(areaId) ?? { areaId, seq: 0, pending: [], acked: null };
    Object.assign(area, wanted);
    this.#areas.set(areaId, area);
    if (!this.#areaVendors.has(areaId)) this.#areaVendors.set(areaId, new Map());
    // When not connected, the open handler sends every remembered area.
    if (this.connected) this.#sendArea(area);
  }

  /**
   * Stops following an area and forgets its vendors; from now on no event
   * of it reaches the hooks. Tells the gateway (which answers
   * `unsubscribed`) only when connected, as `unsubscribeFromLocation` does.
   * @param {string} areaId
   */
  unsubscribeArea(areaId) {
    this.#areas.delete(areaId);
    this.#areaVendors.delete(areaId);
    if (this.connected) {
      this.#conn.send({ type: 'unsubscribe_area', data: { areaId }, id: `unarea:${areaId}` });
    }
  }

  /**
   * The vendors inside an area as last reported (snapshot, then entered,
   * moved and left): a new Map of vendorId to `{vendorId, location,
   * timestamp}`, empty until the snapshot arrives; `undefined` for an area
   * not subscribed. After a reconnect it shows the old state until the new
   * snapshot replaces it.
   * @param {string} areaId
   * @returns {Map<string, {vendorId: string, location: {lat: number, long: number}, timestamp: string}> | undefined}
   */
  areaVendors(areaId) {
    const vendors = this.#areaVendors.get(areaId);
    return vendors === undefined ? undefined : new Map(vendors);
  }

  /**
   * Sends an application-level `ping`; the server answers `pong` (see `onPong`).
   * Queued when not connected.
   * @returns {string} the request id, echoed in the `pong`
   */
  ping() {
    const id = `ping:${++this.#pingCounter}`;
    this.#send({ type: 'ping', id });
    return id;
  }

  /**
   * Closes the connection for good: no reconnect follows and queued messages
   * are dropped. `onClose` still fires if the connection was open.
   * @param {number} [code=1000]
   * @param {string} [reason]
   */
  close(code = 1000, reason = '') {
    this.#closed = true;
    clearTimeout(this.#refreshTimer);
    this.#refreshTimer = null;
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = null;
    for (const timer of this.#retryTimers) clearTimeout(timer);
    this.#retryTimers.clear();
    this.#queue = [];
    if (this.#conn) this.#conn.close(code, reason);
  }

  // ------------------------------------------------------ overridable hooks
  // Each hook gets the message's `data` and, second, the whole message (for
  // the echoed top-level `id`). Exceptions thrown by a hook are logged and
  // do not disturb the client.

  /** A `location_updated` message arrived. Default: logs it (the seed's behaviour). */
  onLocationUpdate(data, message) {
    this.#log.log('Location updated:', data);
  }

  /** A `vendor_updated` message arrived. Default: logs it (the seed's behaviour). */
  onVendorUpdate(data, message) {
    this.#log.log('Vendor updated:', data);
  }

  /**
   * `location_updated` with `areaId`: a vendor inside one of the areas moved
   * and is still inside (`{vendorId, location, timestamp, areaId}`). Kept
   * apart from `onLocationUpdate`, which has the per-vendor subscriptions.
   */
  onAreaLocationUpdate(data, message) {}

  /**
   * The vendors inside a newly subscribed area (`{areaId, vendors:
   * [{vendorId, location, timestamp}], truncated}`), once after its
   * `subscribed`, before any other event of it; `truncated`: more were
   * inside than the gateway lists (GEO_SNAPSHOT_MAX), zoom in.
   */
  onAreaSnapshot(data, message) {}

  /** A vendor is now inside an area: `{areaId, vendorId, location, timestamp}`. */
  onVendorEntered(data, message) {}

  /**
   * A vendor is no longer inside an area: `{areaId, vendorId, reason}`,
   * reason `moved`, `expired` (silent for GEO_VENDOR_TTL) or `area_changed`
   * (the area was moved away from it).
   */
  onVendorLeft(data, message) {}

  /**
   * The server acknowledged a subscription (`{channel, vendorId}`, or
   * `{channel: 'area', areaId}`); updates published from now on arrive.
   */
  onSubscribed(data, message) {}

  /** The server acknowledged an unsubscribe. */
  onUnsubscribed(data, message) {}

  /** The server refused a message: `data` is `{code, message, requestType?, retryAfterMs?}`. */
  onError(data, message) {
    this.#log.warn('Gateway error:', data);
  }

  /** The server answered our `ping()`. */
  onPong(data, message) {}

  /** The server sent its heartbeat `ping`; the client has already answered `pong`. */
  onPing(message) {}

  /** A connection opened (first time or after a reconnect; subscriptions are being re-sent). */
  onOpen() {}

  /**
   * A connection that had opened closed (`event.code`: 1000 normal, 1001 going
   * away, 1006 dropped, 1008 policy, 1013 try later, 4000 heartbeat timeout).
   * Failed connection attempts do not call it; see `onReconnecting`.
   */
  onClose(event) {}

  /** A reconnect attempt is scheduled: `{attempt, delayMs}` (attempt counts from 1). */
  onReconnecting(info) {}

  /** `maxReconnectAttempts` attempts failed in a row; the client stays closed. */
  onGiveUp() {}

  /** A message of a type this client does not know (forward compatibility). */
  onUnknownMessage(message) {}

  /**
   * The gateway accepted a fresh token from `getToken`: `data.expiresAt` is
   * the new expiry. Without `getToken` the gateway closes the connection with
   * 4001 when its token expires (the client then reconnects with the URL's token).
   */
  onRefreshed(data, message) {}

  // --------------------------------------------------------------- internals

  /**
   * With `getToken`, asks it for a token first (every connect: the last one
   * may have expired while disconnected); a failure counts as a failed attempt.
   */
  #connect() {
    if (!this.#getToken) {
      this.#openConnection();
      return;
    }
    Promise.resolve()
      .then(() => this.#getToken())
      .then(
        (token) => {
          if (this.#closed) return;
          this.#token = token;
          this.#openConnection();
        },
        (err) => {
          this.#log.error('getToken failed:', err);
          if (!this.#closed) this.#handleReconnect();
        },
      );
  }

  #openConnection() {
    let opened = false;
    let conn = null;
    const on = {
      onOpen: () => {
        opened = true;
        this.#log.log(`Connected to ${this.#name(conn)}`);
        this.#reconnectAttempts = 0;
        this.#scheduleRefresh();
        // A new connection starts with no subscriptions on the server: send them
        // all, before queued messages, so updates flow again as soon as possible.
        for (const sub of this.#subscriptions.values()) this.#sendSubscribe(sub);
        for (const area of this.#areas.values()) {
          area.acked = null;
          area.pending = [];
          this.#sendArea(area);
        }
        const queued = this.#queue;
        this.#queue = [];
        for (const message of queued) conn.send(message);
        this.#emit('onOpen');
      },
      onMessage: (message) => {
        if (this.#conn === conn) this.#handleMessage(message, conn);
      },
      // Runs once per connection, whatever reported the end.
      onEnd: (event) => {
        if (this.#conn !== conn) return;
        this.#conn = null;
        clearTimeout(this.#refreshTimer);
        this.#refreshTimer = null;
        this.#log.log(`${this.#name(conn)} connection closed`);
        this.#attemptEnded(conn, opened);
        if (opened) this.#emit('onClose', event);
        this.#handleReconnect();
      },
    };
    try {
      conn = this.#open(on, this.#log, (url) => withToken(url, this.#token));
    } catch (err) {
      // A malformed URL throws synchronously; retrying cannot fix it.
      this.#log.error(`${this.#name(null)} error:`, err);
      throw err;
    }
    this.#conn = conn;
  }

  /** Sends `refresh` with a new token `refreshLeadMs` before the current one expires. */
  #scheduleRefresh() {
    clearTimeout(this.#refreshTimer);
    this.#refreshTimer = null;
    if (!this.#getToken || this.#token === null) return;
    const expiry = tokenExpiryMs(this.#token);
    if (expiry === null) return;
    const delay = Math.max(0, expiry - Date.now() - this.#refreshLeadMs);
    this.#refreshTimer = setTimeout(() => this.#refresh(), delay);
  }

  #refresh() {
    this.#refreshTimer = null;
    Promise.resolve()
      .then(() => this.#getToken())
      .then(
        (token) => {
          if (this.#closed || !this.connected) return;
          this.#token = token;
          this.#conn.send({ type: 'refresh', data: { token }, id: `refresh:${++this.#refreshCounter}` });
        },
        (err) => {
          // Try again shortly; at expiry the gateway closes with 4001 and
          // the reconnect asks getToken again.
          this.#log.error('getToken failed:', err);
          if (!this.#closed) this.#refreshTimer = setTimeout(() => this.#refresh(), 5000);
        },
      );
  }

  #handleReconnect() {
    if (this.#closed) return;
    if (this.#reconnectAttempts >= this.#maxReconnectAttempts) {
      this.#log.warn(`Giving up after ${this.#reconnectAttempts} reconnect attempts`);
      this.#emit('onGiveUp');
      return;
    }
    this.#reconnectAttempts++;
    const delayMs = this.#backoffDelay(this.#reconnectAttempts);
    this.#emit('onReconnecting', { attempt: this.#reconnectAttempts, delayMs });
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = null;
      if (!this.#closed) this.#connect();
    }, delayMs);
  }

  /**
   * Exponential back-off with "equal jitter": the delay for attempt n lies in
   * [d/2, d] with d = min(max, base * 2^(n-1)). The random half spreads out
   * the clients that all lost the same gateway at once; the fixed half keeps
   * a retry from hammering a server that is still starting.
   */
  #backoffDelay(attempt) {
    const d = Math.min(this.#maxDelayMs, this.#baseDelayMs * 2 ** (attempt - 1));
    return Math.round(d / 2 + Math.random() * (d / 2));
  }

  #handleMessage(message, conn) {
    const data = message.data ?? {};
    switch (message.type) {
      case 'location_updated':
        if (typeof data.areaId === 'string') {
          if (!this.#areaVendors.has(data.areaId)) break;
          this.#areaVendors.get(data.areaId).set(data.vendorId, areaVendor(data));
          this.#emit('onAreaLocationUpdate', data, message);
        } else {
          this.#emit('onLocationUpdate', data, message);
        }
        break;
      case 'area_snapshot': {
        // Events of an area given up (unsubscribed before the gateway had
        // the request) are dropped, so none follows unsubscribeArea.
        if (!this.#areaVendors.has(data.areaId)) break;
        const vendors = new Map();
        for (const v of Array.isArray(data.vendors) ? data.vendors : []) vendors.set(v.vendorId, areaVendor(v));
        this.#areaVendors.set(data.areaId, vendors);
        this.#emit('onAreaSnapshot', data, message);
        break;
      }
      case 'vendor_entered':
        if (!this.#areaVendors.has(data.areaId)) break;
        this.#areaVendors.get(data.areaId).set(data.vendorId, areaVendor(data));
        this.#emit('onVendorEntered', data, message);
        break;
      case 'vendor_left':
        if (!this.#areaVendors.has(data.areaId)) break;
        this.#areaVendors.get(data.areaId).delete(data.vendorId);
        this.#emit('onVendorLeft', data, message);
        break;
      case 'vendor_updated':
        this.#emit('onVendorUpdate', data, message);
        break;
      case 'ping':
        // Answer exactly as the seed did; the gateway closes silent clients (4000).
        if (conn.open) conn.send({ type: 'pong' });
        this.#emit('onPing', message);
        break;
      case 'pong':
        this.#emit('onPong', data, message);
        break;
      case 'subscribed':
        if (data.channel === 'area') this.#areaAnswered(message.id, null);
        this.#emit('onSubscribed', data, message);
        break;
      case 'unsubscribed':
        this.#emit('onUnsubscribed', data, message);
        break;
      case 'refreshed':
        this.#scheduleRefresh();
        this.#emit('onRefreshed', data, message);
        break;
      case 'error':
        this.#handleSubscribeError(data, message.id);
        this.#emit('onError', data, message);
        break;
      default:
        this.#emit('onUnknownMessage', message);
    }
  }

  /**
   * Subscribe requests carry the id `sub:<channel>:<vendorId>`, so a refusal
   * can be traced back to the subscription. A permanent refusal (bad id,
   * forbidden, too many) forgets it, or every reconnect would repeat it; a
   * rate limit retries once the server says the budget is back.
   */
  #handleSubscribeError(data, id) {
    if (typeof id === 'string' && id.startsWith('area:')) {
      this.#areaAnswered(id, data);
      return;
    }
    if (typeof id !== 'string' || !id.startsWith('sub:')) return;
    const key = id.slice(4);
    const sub = this.#subscriptions.get(key);
    if (!sub) return;
    if (data.code === 'rate_limited') {
      const retryAfterMs = Number(data.retryAfterMs) > 0 ? Number(data.retryAfterMs) : 1000;
      const timer = setTimeout(() => {
        this.#retryTimers.delete(timer);
        // Only if still wanted and still the same request.
        if (this.#subscriptions.get(key) === sub && this.connected) this.#sendSubscribe(sub);
      }, retryAfterMs);
      this.#retryTimers.add(timer);
    } else if (!TRANSIENT_ERRORS.has(data.code)) {
      this.#subscriptions.delete(key);
    }
  }

  /**
   * The answer (`subscribed` when `error` is null) to the subscribe_area
   * whose id is `id`. Area requests carry the id `area:<areaId>:<seq>` (an
   * areaId has no ':'); the gateway answers them in order, so an answer
   * settles the oldest pending request, and only the answer to the latest
   * one may change what the caller wants:
   * - an ack: the gateway holds that request's shape now;
   * - a rate limit: the latest request is sent again after `retryAfterMs`;
   * - a refusal for good: a new area is forgotten, a moved one goes back to
   *   the shape the gateway still holds (it keeps the old area then);
   * - a transient failure: kept, sent again on the next reconnect.
   */
  #areaAnswered(id, error) {
    if (typeof id !== 'string') return;
    const [prefix, areaId, seqText] = id.split(':');
    const area = prefix === 'area' ? this.#areas.get(areaId) : undefined;
    if (!area) return;
    const seq = Number(seqText);
    const at = area.pending.findIndex((r) => r.seq === seq);
    if (at < 0) return;
    const request = area.pending[at];
    area.pending.splice(0, at + 1);
    if (error === null) {
      area.acked = request;
      return;
    }
    if (seq !== area.seq) return;
    if (error.code === 'rate_limited') {
      const retryAfterMs = Number(error.retryAfterMs) > 0 ? Number(error.retryAfterMs) : 1000;
      const timer = setTimeout(() => {
        this.#retryTimers.delete(timer);
        // Only if still wanted, unchanged, and on a connection (a reconnect re-sends it anyway).
        if (this.#areas.get(areaId) === area && area.seq === seq && this.connected) this.#sendArea(area);
      }, retryAfterMs);
      this.#retryTimers.add(timer);
    } else if (!TRANSIENT_ERRORS.has(error.code)) {
      if (area.acked) {
        const { userId, shape, delivery } = area.acked;
        Object.assign(area, { userId, shape, delivery });
      } else {
        this.#areas.delete(areaId);
        this.#areaVendors.delete(areaId);
      }
    }
  }

  #sendArea(area) {
    area.seq = ++this.#areaSeq;
    area.pending.push({ seq: area.seq, userId: area.userId, shape: area.shape, delivery: area.delivery });
    const data = { areaId: area.areaId, userId: area.userId, ...area.shape };
    if (area.delivery !== undefined && this.#conn.kind === 'webtransport') data.delivery = area.delivery;
    this.#conn.send({ type: 'subscribe_area', data, id: `area:${area.areaId}:${area.seq}` });
  }

  #subscribe(channel, vendorId, userId, delivery) {
    const sub = { channel, vendorId, userId, delivery };
    this.#subscriptions.set(`${channel}:${vendorId}`, sub);
    // When not connected, the open handler sends every remembered subscription.
    if (this.connected) this.#sendSubscribe(sub);
  }

  #unsubscribe(channel, vendorId) {
    this.#subscriptions.delete(`${channel}:${vendorId}`);
    // A new connection starts with no subscriptions, so there is nothing to
    // undo on the server unless we are connected now.
    if (this.connected) {
      this.#conn.send({
        type: `unsubscribe_${channel}`,
        data: { vendorId },
        id: `unsub:${channel}:${vendorId}`,
      });
    }
  }

  #sendSubscribe({ channel, vendorId, userId, delivery }) {
    const data = { vendorId, userId };
    // Only WebTransport has datagrams; the WebSocket message stays the seed's.
    if (delivery !== undefined && this.#conn.kind === 'webtransport') data.delivery = delivery;
    this.#conn.send({ type: `subscribe_${channel}`, data, id: `sub:${channel}:${vendorId}` });
  }

  /** Sends now if open, else queues for the next open (bounded, oldest dropped). */
  #send(message) {
    if (this.connected) {
      this.#conn.send(message);
      return;
    }
    if (this.#closed) return;
    this.#queue.push(message);
    if (this.#queue.length > this.#maxQueue) this.#queue.shift();
  }

  #emit(hook, ...args) {
    try {
      this[hook](...args);
    } catch (err) {
      this.#log.error(`${this.constructor.name}: ${hook} threw:`, err);
    }
  }
}

/**
 * Client for the venta-gateway WebSocket endpoints (`/ws/location`, `/ws/vendor`).
 */
export class VentaWebSocketClient extends VentaClient {
  /**
   * Opens the connection at once (as the seed did).
   *
   * @param {string} url e.g. `ws://localhost:5006/ws/location` (add `?token=JWT` when the gateway requires auth)
   * @param {object} [options]
   * @param {number} [options.maxReconnectAttempts=5] reconnect attempts after a drop before giving up; reset by every successful open
   * @param {number} [options.reconnectBaseDelayMs=1000] delay before the first attempt; doubles on each further attempt
   * @param {number} [options.reconnectMaxDelayMs=30000] cap on any single delay
   * @param {number} [options.maxQueuedMessages=100] messages kept while disconnected; the oldest are dropped beyond this
   * @param {{log?: Function, warn?: Function, error?: Function} | null | false} [options.logger=console] where to log; `null` or `false` silences the client
   * @param {typeof WebSocket} [options.WebSocket] WebSocket implementation (defaults to the global one; e.g. the `ws` package on older Node)
   * @param {string | string[]} [options.protocols] WebSocket sub-protocols
   * @param {() => string | Promise<string>} [options.getToken] returns a JWT; asked before every connect
   *   (it replaces the URL's `token`) and `refreshLeadMs` before the current token expires, so the
   *   connection is refreshed in place instead of being closed with 4001
   * @param {number} [options.refreshLeadMs=60000] how long before expiry to refresh
   */
  constructor(url, options = {}) {
    const WebSocketImpl = options.WebSocket ?? globalThis.WebSocket;
    if (typeof WebSocketImpl !== 'function') {
      throw new TypeError(
        'VentaWebSocketClient: no WebSocket implementation. In Node 20 run with ' +
          '--experimental-websocket, or pass options.WebSocket.',
      );
    }
    super(url, options, {
      name: () => 'WebSocket',
      open: (on, log, tokenUrl) => openWebSocket(WebSocketImpl, tokenUrl(url), options.protocols, log, on),
    });
  }
}

/**
 * Client for the venta-gateway WebTransport endpoints
 * (`https://host:WT_PORT/wt/location`, `/wt/vendor`), with the same API as
 * {@link VentaWebSocketClient}; falls back to WebSocket where WebTransport
 * is unavailable.
 */
export class VentaWebTransportClient extends VentaClient {
  /**
   * Opens the session at once.
   *
   * @param {string} url e.g. `https://localhost:5006/wt/location` (add `?token=JWT` when the gateway requires auth)
   * @param {object} [options] every option of {@link VentaWebSocketClient}, plus:
   * @param {string} [options.certificateHashUrl] where to fetch the gateway's certificate hash before each
   *   attempt, e.g. `http://localhost:5006/wt/cert-hash` (for its self-signed dev certificate; leave unset
   *   with a CA-signed certificate)
   * @param {{algorithm: string, value: BufferSource}[]} [options.serverCertificateHashes] fixed hashes instead
   * @param {string} [options.webSocketUrl] fallback endpoint; default: the same host, port and query
   *   with `/ws/…` (ws: on an http page or in Node, wss: otherwise)
   * @param {number} [options.webTransportAttempts=2] failed WebTransport attempts, before any succeeded,
   *   after which the client falls back to WebSocket for good (UDP blocked, proxies)
   * @param {typeof WebTransport} [options.WebTransport] implementation (defaults to the global one)
   */
  constructor(url, options = {}) {
    const WebTransportImpl = options.WebTransport ?? globalThis.WebTransport;
    const WebSocketImpl = options.WebSocket ?? globalThis.WebSocket;
    const hasWt = typeof WebTransportImpl === 'function';
    const hasWs = typeof WebSocketImpl === 'function';
    if (!hasWt && !hasWs) {
      throw new TypeError('VentaWebTransportClient: neither WebTransport nor WebSocket is available.');
    }
    const fallbackUrl = options.webSocketUrl ?? webSocketUrlFor(url);
    const maxWtFailures = options.webTransportAttempts ?? 2;
    const state = { useWebTransport: hasWt, wtOpened: false, wtFailures: 0 };
    const log = makeLogger(options.logger);
    if (!hasWt) log.warn(`WebTransport is not available here; using WebSocket ${fallbackUrl}`);
    super(url, options, {
      name: (conn) => ((conn?.kind ?? (state.useWebTransport ? 'webtransport' : 'websocket')) === 'webtransport'
        ? 'WebTransport'
        : 'WebSocket'),
      open: (on, connLog, tokenUrl) => (state.useWebTransport
        ? openWebTransport(WebTransportImpl, tokenUrl(url), options, connLog, on)
        : openWebSocket(WebSocketImpl, tokenUrl(fallbackUrl), options.protocols, connLog, on)),
      attemptEnded: (conn, opened) => {
        if (conn.kind !== 'webtransport') return;
        if (opened) {
          state.wtOpened = true;
          return;
        }
        state.wtFailures++;
        if (!state.wtOpened && hasWs && state.wtFailures >= maxWtFailures) {
          state.useWebTransport = false;
          log.warn(`WebTransport failed ${state.wtFailures} times; falling back to WebSocket ${fallbackUrl}`);
        }
      },
    });
  }
}

export default VentaWebSocketClient;
