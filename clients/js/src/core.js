// The transport-independent part of the venta-gateway client: what the
// caller wants (subscriptions, areas), acks as promises, events, reconnects
// and the choice of transport. It imports no codec, so an app that only
// uses WebSocket (`@venta/realtime/websocket`) never loads MessagePack.
//
// A transport is a small object (see `Transport` below) whose connections
// report open / message / end; this file knows nothing else of them.

/**
 * @typedef {{lat: number, long: number}} Location
 * @typedef {{vendorId: string, location: Location, timestamp: string}} AreaVendor
 * @typedef {{bbox: {south: number, west: number, north: number, east: number}}} BoxShape
 * @typedef {{circle: {center: Location, radiusM: number}}} CircleShape
 * @typedef {BoxShape | CircleShape} AreaShape
 * @typedef {'stream' | 'datagram'} Delivery
 * @typedef {{type: string, data?: any, id?: string}} Message
 * @typedef {{code: number, reason: string, wasClean: boolean}} EndInfo
 * @typedef {{log: (...args: any[]) => void, warn: (...args: any[]) => void, error: (...args: any[]) => void}} Logger
 */

/**
 * One connection attempt of a transport.
 * @typedef {object} Connection
 * @property {string} kind the transport's name (`websocket`, `webtransport`, `sse`)
 * @property {boolean} open whether messages can be sent now
 * @property {(message: Message) => void} send
 * @property {(code: number, reason: string) => void} close
 */

/**
 * Callbacks a connection drives: `onOpen` once, `onMessage` per decoded
 * server message, `onEnd` exactly once, whether or not it had opened.
 * @typedef {object} ConnectionEvents
 * @property {() => void} onOpen
 * @property {(message: Message) => void} onMessage
 * @property {(info: EndInfo) => void} onEnd
 */

/**
 * What a transport's `open` gets besides the callbacks.
 * @typedef {object} ConnectContext
 * @property {string} url the endpoint for this transport, token included
 * @property {Logger} log
 * @property {Record<string, any>} options the client's options
 * @property {() => Subscription[]} subscriptions what the caller follows now (SSE puts it in its URL)
 * @property {() => {areaId: string, userId: string, shape: AreaShape}[]} areas the areas the caller follows now
 */

/**
 * A transport the client can use.
 * @typedef {object} Transport
 * @property {string} name
 * @property {(options: Record<string, any>) => boolean} available false where its platform API is missing
 * @property {(url: URL) => URL} endpoint this transport's URL for the caller's URL (scheme and path changed)
 * @property {(ctx: ConnectContext, on: ConnectionEvents) => Connection} open
 */

/**
 * @typedef {{userId: string, shape: AreaShape, delivery?: Delivery}} AreaRequest
 * @typedef {AreaRequest & {areaId: string, seq: number, pending: (AreaRequest & {seq: number})[],
 *   acked: AreaRequest | null}} AreaRecord
 */

/**
 * @typedef {object} Subscription
 * @property {'location' | 'vendor'} channel
 * @property {string} vendorId
 * @property {string} userId
 * @property {Delivery} [delivery]
 */

// Refusals of a subscription that may pass later, so the subscription is
// kept; any other code (invalid_field, forbidden, too_many_subscriptions, ...)
// would fail the same way on every reconnect, so it is forgotten.
const TRANSIENT_ERRORS = new Set(['rate_limited', 'unavailable', 'internal']);

const noop = () => {};

/** @type {Logger} */
const SILENT = { log: noop, warn: noop, error: noop };

/**
 * A `{log, warn, error}` triple from `options.logger`; silent unless one is
 * given (a library has no business writing to the console by itself).
 * @param {any} logger
 * @param {Logger} fallback
 * @returns {Logger}
 */
export function makeLogger(logger, fallback = SILENT) {
  if (logger === undefined) return fallback;
  if (!logger) return SILENT;
  /** @param {'log' | 'warn' | 'error'} name */
  const pick = (name) => (typeof logger[name] === 'function' ? logger[name].bind(logger) : noop);
  return { log: pick('log'), warn: pick('warn'), error: pick('error') };
}

/**
 * A copy of an area shape holding only the fields the gateway reads, so a
 * caller mutating its object later cannot change what a reconnect re-sends.
 * Throws a TypeError unless exactly one of `bbox` and `circle` is given:
 * that mistake is the caller's, and would fail the same way on every send.
 * The numbers themselves are the gateway's to judge (`invalid_field`,
 * `area_too_large`), so its rules live in one place.
 * @param {any} shape
 * @returns {AreaShape}
 */
function areaShape(shape) {
  /** @type {(v: any) => boolean} */
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

/**
 * An area member as the client keeps it.
 * @param {any} data
 * @returns {AreaVendor}
 */
function areaVendor({ vendorId, location, timestamp }) {
  return { vendorId, location, timestamp };
}

/**
 * `url` with its `token` query parameter set to `token` (others kept).
 * @param {string} url
 * @param {string | null} token
 */
function withToken(url, token) {
  if (token === undefined || token === null) return url;
  const u = new URL(url);
  u.searchParams.set('token', token);
  return u.toString();
}

/**
 * A JWT's `exp` in milliseconds since the epoch, or null if it has none.
 * @param {string} token
 */
function tokenExpiryMs(token) {
  try {
    const part = token.split('.')[1];
    const json = JSON.parse(atob(part.replace(/-/g, '+').replace(/_/g, '/')));
    return typeof json.exp === 'number' ? json.exp * 1000 : null;
  } catch {
    return null;
  }
}

// -------------------------------------------------------------------- events

/**
 * A refusal from the gateway (its stable `code`: `invalid_field`,
 * `forbidden`, `rate_limited`, ...) or from the client itself (`timeout`:
 * no answer within `ackTimeoutMs`; `cancelled`: unsubscribed before the
 * answer; `closed`: `close()` was called or the client gave up).
 */
export class VentaError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {{requestType?: string, retryAfterMs?: number, requestId?: string}} [extra]
   */
  constructor(code, message, extra = {}) {
    super(message);
    this.name = 'VentaError';
    /** @type {string} */
    this.code = code;
    /** @type {string | undefined} the refused request's type (`subscribe_location`, ...) */
    this.requestType = extra.requestType;
    /** @type {number | undefined} for `rate_limited`: when the budget is back */
    this.retryAfterMs = extra.retryAfterMs;
    /** @type {string | undefined} the refused request's id */
    this.requestId = extra.requestId;
  }
}

/**
 * A server message: `data` is the message's `data`, `message` the whole
 * message (with the echoed `id`). Used for `location`, `vendor`,
 * `subscribed`, `unsubscribed`, `pong`, `ping`, `refreshed` and `unknown`.
 */
export class VentaMessageEvent extends Event {
  /**
   * @param {string} type
   * @param {any} data
   * @param {Message} message
   */
  constructor(type, data, message) {
    super(type);
    /** @type {any} */
    this.data = data;
    /** @type {Message} */
    this.message = message;
  }
}

/**
 * An `area` event: `kind` is the message type (`area_snapshot`,
 * `vendor_entered`, `location_updated`, `vendor_left`), `areaId` its area.
 */
export class VentaAreaEvent extends VentaMessageEvent {
  /**
   * @param {any} data
   * @param {Message} message
   */
  constructor(data, message) {
    super('area', data, message);
    /** @type {'area_snapshot' | 'vendor_entered' | 'location_updated' | 'vendor_left'} */
    this.kind = /** @type {any} */ (message.type);
    /** @type {string} */
    this.areaId = data.areaId;
  }
}

/** `close`: a connection that had opened closed. */
export class VentaCloseEvent extends Event {
  /** @param {EndInfo} info */
  constructor({ code, reason, wasClean }) {
    super('close');
    /** @type {number} 1000 normal, 1001 going away, 1006 dropped, 1008 policy, 1013 try later, 4000 heartbeat, 4001 token expired */
    this.code = code;
    /** @type {string} */
    this.reason = reason;
    /** @type {boolean} */
    this.wasClean = wasClean;
  }
}

/** `error`: the gateway refused a message; `code` is its stable code. */
export class VentaErrorEvent extends Event {
  /**
   * @param {any} data `{code, message, requestType?, retryAfterMs?}`
   * @param {Message} message
   */
  constructor(data, message) {
    super('error');
    /** @type {string} */
    this.code = data.code;
    /** @type {any} */
    this.data = data;
    /** @type {Message} */
    this.message = message;
  }
}

/** `open`: a connection opened (`transport` names it); subscriptions are being re-sent. */
export class VentaOpenEvent extends Event {
  /** @param {string} transport */
  constructor(transport) {
    super('open');
    /** @type {string} */
    this.transport = transport;
  }
}

/** `reconnecting`: an attempt is scheduled after `delayMs` (`attempt` counts from 1). */
export class VentaReconnectingEvent extends Event {
  /**
   * @param {number} attempt
   * @param {number} delayMs
   */
  constructor(attempt, delayMs) {
    super('reconnecting');
    this.attempt = attempt;
    this.delayMs = delayMs;
  }
}

/** `fallback`: `transport` failed before opening (or is missing); `next` is tried now. */
export class VentaFallbackEvent extends Event {
  /**
   * @param {string} transport
   * @param {string} next
   * @param {string} reason
   */
  constructor(transport, next, reason) {
    super('fallback');
    this.transport = transport;
    this.next = next;
    this.reason = reason;
  }
}

// -------------------------------------------------------------------- client

/**
 * @typedef {object} ClientOptions
 * @property {string[]} [transports] preference order; the first available one that opens is used,
 *   and every reconnect starts again from the first
 * @property {Partial<Record<string, string>>} [urls] an endpoint per transport, instead of the one derived from `url`
 * @property {number} [maxReconnectAttempts=5] failed rounds in a row before giving up; an open resets the count
 * @property {number} [reconnectBaseDelayMs=1000] round *n* waits a random time in [d/2, d], d = min(max, base·2^(n−1))
 * @property {number} [reconnectMaxDelayMs=30000] cap on d
 * @property {number} [connectTimeoutMs=10000] an attempt not open by then fails (and the next transport is tried)
 * @property {number} [ackTimeoutMs=10000] a subscribe/unsubscribe promise not answered by then rejects with `timeout`
 * @property {number} [maxQueuedMessages=100] messages kept while disconnected (oldest dropped)
 * @property {any} [logger] `{log, warn, error}`; none by default
 * @property {() => string | Promise<string>} [getToken] a JWT, asked before every connect and before expiry
 * @property {number} [refreshLeadMs=60000] how long before the token's `exp` to refresh it
 */

/**
 * The venta-gateway client: an `EventTarget` that keeps subscriptions and
 * areas across reconnects, answers the gateway's heartbeat and falls back
 * along a list of transports. Import it with its transports from
 * `@venta/realtime` (all), `@venta/realtime/websocket` or
 * `@venta/realtime/webtransport`.
 *
 * Events: `open`, `close`, `error`, `location`, `vendor`, `area`,
 * `subscribed`, `unsubscribed`, `ping`, `pong`, `refreshed`, `reconnecting`,
 * `fallback`, `giveup`, `unknown`. The connection is opened in the
 * constructor, but no event fires before the current task ends, so
 * listeners added right after `new` see everything.
 */
export class BaseClient extends EventTarget {
  /** The current connection attempt, or null between attempts. */
  /** @type {Connection | null} */
  #conn = null;
  /** @type {Transport[]} the usable transports, in preference order */
  #transports;
  /** Index into #transports of the current (or next) attempt. */
  #transportIndex = 0;
  /** @type {URL} */
  #baseUrl;
  /** @type {Partial<Record<string, string>>} */
  #urls;
  /** @type {Record<string, any>} */
  #options;
  /** @type {Logger} */
  #log;
  /** Rounds (walks down the transport list) failed since the last open. */
  #reconnectAttempts = 0;
  #maxReconnectAttempts;
  #baseDelayMs;
  #maxDelayMs;
  #connectTimeoutMs;
  #ackTimeoutMs;
  #maxQueue;
  /** @type {ReturnType<typeof setTimeout> | null} */
  #reconnectTimer = null;
  /** @type {Set<ReturnType<typeof setTimeout>>} rate-limit retries, cleared by close() so they do not keep Node alive */
  #retryTimers = new Set();
  /** Set by close() or on giving up: from then on nothing reconnects. */
  #closed = false;
  /** @type {Message[]} sent while not connected, flushed on the next open */
  #queue = [];
  /**
   * Subscriptions the caller wants, keyed `channel:vendorId`. They are the
   * source of truth: every (re)connect sends all of them, because a new
   * connection starts with none on the server side.
   * @type {Map<string, Subscription>}
   */
  #subscriptions = new Map();
  /**
   * Areas the caller wants, by areaId; like `#subscriptions`, re-sent on
   * every (re)connect. `seq` numbers the latest request, `pending` holds the
   * requests of this connection not answered yet (the gateway answers in
   * order), `acked` the request the gateway holds now (null before the
   * first ack of a connection): a move refused for good falls back to it,
   * since the gateway keeps the old area then.
   * @type {Map<string, AreaRecord>}
   */
  #areas = new Map();
  /** @type {Map<string, Map<string, AreaVendor>>} the vendors inside each wanted area */
  #areaVendors = new Map();
  #areaSeq = 0;
  #pingCounter = 0;
  /**
   * Promises of subscribe / unsubscribe calls not settled yet, by the key of
   * what they wait for (`sub:location:v1`, `area:map`, `unsub:vendor:v1`,
   * `unarea:map`). An area waiter settles on the answer to any request of
   * that area numbered `minSeq` or later (a request made after the call).
   * @type {Map<string, Set<{resolve: (v: any) => void, reject: (e: VentaError) => void,
   *   timer: ReturnType<typeof setTimeout>, minSeq: number}>>}
   */
  #waiters = new Map();
  /** @type {(() => string | Promise<string>) | null} asked for a token before every connect and before expiry */
  #getToken = null;
  /** @type {string | null} the latest token from `getToken`, put in the URL of every connect */
  #token = null;
  #refreshLeadMs;
  /** @type {ReturnType<typeof setTimeout> | null} */
  #refreshTimer = null;
  #refreshCounter = 0;

  /**
   * @param {string | URL} url the gateway endpoint for any of the transports, e.g.
   *   `https://host:5006/wt/location`, `ws://host:5006/ws/location`; the others are derived
   *   (same host, port and query; `/wt/`, `/ws/`, `/sse/` path; matching scheme) unless `options.urls` names them
   * @param {ClientOptions & Record<string, any>} options
   * @param {Transport[]} transports the transports this entry point offers
   * @param {string[]} defaultOrder
   * @param {Logger} [defaultLogger]
   */
  constructor(url, options, transports, defaultOrder, defaultLogger) {
    super();
    this.#options = options;
    this.#baseUrl = new URL(String(url));
    this.#urls = options.urls ?? {};
    this.#log = makeLogger(options.logger, defaultLogger);
    const order = options.transports ?? defaultOrder;
    if (!Array.isArray(order) || order.length === 0) throw new TypeError('transports must be a non-empty array');
    const byName = new Map(transports.map((t) => [t.name, t]));
    for (const name of order) {
      if (!byName.has(name)) {
        throw new TypeError(`unknown transport ${JSON.stringify(name)}; this entry point has ${[...byName.keys()].join(', ')}`);
      }
    }
    this.#transports = order.map((name) => /** @type {Transport} */ (byName.get(name))).filter((t) => {
      const ok = t.available(options);
      if (!ok) this.#log.warn(`${t.name} is not available here`);
      return ok;
    });
    if (this.#transports.length === 0) {
      throw new TypeError(`none of the transports ${order.join(', ')} is available here (Node 20: run with --experimental-websocket, or pass options.WebSocket)`);
    }
    this.#maxReconnectAttempts = options.maxReconnectAttempts ?? 5;
    this.#baseDelayMs = options.reconnectBaseDelayMs ?? 1000;
    this.#maxDelayMs = options.reconnectMaxDelayMs ?? 30000;
    this.#connectTimeoutMs = options.connectTimeoutMs ?? 10000;
    this.#ackTimeoutMs = options.ackTimeoutMs ?? 10000;
    this.#maxQueue = options.maxQueuedMessages ?? 100;
    this.#getToken = typeof options.getToken === 'function' ? options.getToken : null;
    this.#refreshLeadMs = options.refreshLeadMs ?? 60000;
    this.#connect();
  }

  // ---------------------------------------------------------------- public API

  /** True while the connection is open. */
  get connected() {
    return this.#conn !== null && this.#conn.open;
  }

  /** @returns {string | null} the transport of the current (or last) connection: `webtransport`, `websocket` or `sse` */
  get transport() {
    return this.#conn?.kind ?? this.#lastKind;
  }

  /** @type {string | null} */
  #lastKind = null;

  /**
   * Follows a vendor's location (`location` events). May be called before
   * the connection opens; re-sent after every reconnect.
   * @param {string} vendorId
   * @param {string} userId must equal the token's `sub` when auth is on
   * @param {{delivery?: Delivery}} [options] `datagram`: over WebTransport, updates come as
   *   unreliable datagrams (latest position wins); ignored by the other transports
   * @returns {Promise<void>} resolves on the gateway's `subscribed`; rejects with a {@link VentaError}
   *   (`code` from the gateway's `error`, or `timeout`, `cancelled`, `closed`). A rejection nobody
   *   awaits is not reported as unhandled: the `error` event has it too.
   */
  subscribeToLocation(vendorId, userId, options = {}) {
    return this.#subscribe('location', vendorId, userId, options?.delivery);
  }

  /**
   * Follows a vendor's profile (`vendor` events). Same rules as `subscribeToLocation`.
   * @param {string} vendorId
   * @param {string} userId
   * @returns {Promise<void>}
   */
  subscribeToVendor(vendorId, userId) {
    return this.#subscribe('vendor', vendorId, userId, undefined);
  }

  /**
   * Stops location updates for a vendor.
   * @param {string} vendorId
   * @returns {Promise<void>} resolves on `unsubscribed`, or at once while disconnected (a new
   *   connection starts without subscriptions anyway)
   */
  unsubscribeFromLocation(vendorId) {
    return this.#unsubscribe('location', vendorId);
  }

  /**
   * Stops vendor updates for a vendor. Same rules as `unsubscribeFromLocation`.
   * @param {string} vendorId
   * @returns {Promise<void>}
   */
  unsubscribeFromVendor(vendorId) {
    return this.#unsubscribe('vendor', vendorId);
  }

  /**
   * Follows every vendor inside an area of the map: `area` events with
   * `kind` `area_snapshot` (once per new area and per reconnect), then
   * `vendor_entered`, `location_updated` (a move inside) and `vendor_left`;
   * `areaVendors(areaId)` holds the result.
   *
   * Called again with the same `areaId` it moves the area (a map that
   * pans): no new snapshot, only entered/left (`reason: 'area_changed'`) for
   * the difference. A refusal for good (`invalid_field`, `area_too_large`,
   * `too_many_subscriptions`, `forbidden`) forgets a new area and takes a
   * moved one back to the shape the gateway still holds; `rate_limited`
   * retries after `retryAfterMs`.
   *
   * @param {string} areaId the caller's name for the area, unique per client (`^[A-Za-z0-9_-]{1,64}$`)
   * @param {AreaShape} shape a box (edges included; `west > east` crosses the antimeridian) or a
   *   circle (radius in metres); at most the gateway's GEO_MAX_AREA_KM across
   * @param {{userId: string, delivery?: Delivery}} options `userId` is required (the token's `sub`
   *   when auth is on); `delivery: 'datagram'`: over WebTransport, moves inside come as datagrams
   * @returns {Promise<void>} resolves on the gateway's `subscribed`, rejects like `subscribeToLocation`
   * @throws {TypeError} without a `userId` string, or unless exactly one of `bbox` and `circle` is given
   */
  subscribeArea(areaId, shape, options) {
    if (typeof areaId !== 'string') throw new TypeError('subscribeArea: areaId must be a string');
    const { userId, delivery } = options ?? {};
    if (typeof userId !== 'string') throw new TypeError('subscribeArea: options.userId must be a string');
    const wanted = { userId, shape: areaShape(shape), delivery };
    // A move keeps the area's record: answers to its earlier requests are still to come.
    const area = this.#areas.get(areaId) ?? { areaId, seq: 0, pending: [], acked: null, ...wanted };
    Object.assign(area, wanted);
    this.#areas.set(areaId, area);
    if (!this.#areaVendors.has(areaId)) this.#areaVendors.set(areaId, new Map());
    const promise = this.#wait(`area:${areaId}`, this.#areaSeq + 1);
    // When not connected, the open handler sends every remembered area.
    if (this.connected) this.#sendArea(area);
    return promise;
  }

  /**
   * Stops following an area and forgets its vendors; from now on no event
   * of it fires.
   * @param {string} areaId
   * @returns {Promise<void>} resolves on `unsubscribed`, or at once while disconnected
   */
  unsubscribeArea(areaId) {
    this.#areas.delete(areaId);
    this.#areaVendors.delete(areaId);
    this.#settle(`area:${areaId}`, Infinity, new VentaError('cancelled', `unsubscribed from area ${areaId}`));
    if (!this.connected) return Promise.resolve();
    const conn = /** @type {Connection} */ (this.#conn);
    const promise = this.#wait(`unarea:${areaId}`, 0);
    conn.send({ type: 'unsubscribe_area', data: { areaId }, id: `unarea:${areaId}` });
    return promise;
  }

  /**
   * The vendors inside an area as last reported: a new Map of vendorId to
   * `{vendorId, location, timestamp}`, empty until the snapshot arrives;
   * `undefined` for an area not subscribed. After a reconnect it shows the
   * old state until the new snapshot replaces it.
   * @param {string} areaId
   * @returns {Map<string, AreaVendor> | undefined}
   */
  areaVendors(areaId) {
    const vendors = this.#areaVendors.get(areaId);
    return vendors === undefined ? undefined : new Map(vendors);
  }

  /**
   * Sends an application-level `ping` (queued while disconnected); the
   * gateway answers with a `pong` event carrying the same id.
   * @returns {string} the request id
   */
  ping() {
    const id = `ping:${++this.#pingCounter}`;
    this.#send({ type: 'ping', id });
    return id;
  }

  /**
   * Closes for good: no reconnect follows, queued messages are dropped and
   * pending promises reject with `closed`. `close` still fires if the
   * connection was open.
   * @param {number} [code=1000]
   * @param {string} [reason]
   */
  close(code = 1000, reason = '') {
    this.#shutdown();
    if (this.#conn) this.#conn.close(code, reason);
  }

  // --------------------------------------------------------------- internals

  /** Stops every timer and rejects every pending promise: nothing more will happen. */
  #shutdown() {
    this.#closed = true;
    clearTimeout(this.#refreshTimer ?? undefined);
    this.#refreshTimer = null;
    clearTimeout(this.#reconnectTimer ?? undefined);
    this.#reconnectTimer = null;
    for (const timer of this.#retryTimers) clearTimeout(timer);
    this.#retryTimers.clear();
    this.#queue = [];
    for (const key of [...this.#waiters.keys()]) this.#settle(key, Infinity, new VentaError('closed', 'the client is closed'));
  }

  /**
   * A promise settled by `#settle(key, …)`, or by the ack timeout.
   * @param {string} key
   * @param {number} minSeq
   * @returns {Promise<void>}
   */
  #wait(key, minSeq) {
    if (this.#closed) {
      const p = Promise.reject(new VentaError('closed', 'the client is closed'));
      p.catch(noop);
      return p;
    }
    /** @type {Promise<void>} */
    const promise = new Promise((resolve, reject) => {
      const set = this.#waiters.get(key) ?? new Set();
      this.#waiters.set(key, set);
      const waiter = {
        resolve,
        reject,
        minSeq,
        timer: setTimeout(() => {
          set.delete(waiter);
          if (set.size === 0 && this.#waiters.get(key) === set) this.#waiters.delete(key);
          reject(new VentaError('timeout', `no answer from the gateway within ${this.#ackTimeoutMs} ms`));
        }, this.#ackTimeoutMs),
      };
      set.add(waiter);
    });
    // The `error` event reports every refusal too, so a caller that does not
    // await (the seed's style) must not get an unhandled rejection.
    promise.catch(noop);
    return promise;
  }

  /**
   * Settles the waiters of `key` whose `minSeq` is at most `seq`:
   * resolved when `error` is null, else rejected with it.
   * @param {string} key
   * @param {number} seq
   * @param {VentaError | null} error
   */
  #settle(key, seq, error) {
    const set = this.#waiters.get(key);
    if (!set) return;
    for (const waiter of [...set]) {
      if (waiter.minSeq > seq) continue;
      set.delete(waiter);
      clearTimeout(waiter.timer);
      if (error) waiter.reject(error);
      else waiter.resolve(undefined);
    }
    if (set.size === 0) this.#waiters.delete(key);
  }

  /**
   * @param {string} type
   * @param {Event} event
   */
  #dispatch(type, event) {
    try {
      this.dispatchEvent(event);
    } catch (err) {
      // EventTarget reports listener exceptions itself; this is for a
      // subclass's dispatchEvent override.
      this.#log.error(`${type} listener threw:`, err);
    }
  }

  /**
   * With `getToken`, asks it for a token first (every connect: the last one
   * may have expired while disconnected); a failure counts as a failed round.
   */
  #connect() {
    if (!this.#getToken) {
      this.#openConnection();
      return;
    }
    const getToken = this.#getToken;
    Promise.resolve()
      .then(() => getToken())
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

  /** The URL for a transport: `options.urls[name]`, or derived from the caller's URL. */
  /** @param {Transport} transport */
  #urlFor(transport) {
    const explicit = this.#urls[transport.name];
    const url = explicit ? explicit : transport.endpoint(new URL(this.#baseUrl)).toString();
    return withToken(url, this.#token);
  }

  /** Subscriptions as the caller wants them now (for transports that put them in the URL). */
  #currentSubscriptions() {
    return [...this.#subscriptions.values()];
  }

  #openConnection() {
    const transport = this.#transports[this.#transportIndex];
    let opened = false;
    /** @type {Connection | null} */
    let conn = null;
    /** @type {ReturnType<typeof setTimeout> | null} */
    let openTimer = null;
    /** @type {ConnectionEvents} */
    const on = {
      onOpen: () => {
        if (this.#conn !== conn || conn === null) return;
        clearTimeout(openTimer ?? undefined);
        opened = true;
        this.#log.log(`Connected over ${conn.kind}`);
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
        this.#dispatch('open', new VentaOpenEvent(conn.kind));
      },
      onMessage: (message) => {
        if (this.#conn === conn && conn !== null) this.#handleMessage(message, conn);
      },
      // Runs once per connection, whatever reported the end.
      onEnd: (info) => {
        clearTimeout(openTimer ?? undefined);
        if (this.#conn !== conn || conn === null) return;
        this.#conn = null;
        this.#lastKind = conn.kind;
        clearTimeout(this.#refreshTimer ?? undefined);
        this.#refreshTimer = null;
        this.#log.log(`${conn.kind} connection closed (${info.code})`);
        if (opened) {
          // A later reconnect starts again with the preferred transport.
          this.#transportIndex = 0;
          this.#dispatch('close', new VentaCloseEvent(info));
          this.#handleReconnect();
          return;
        }
        this.#attemptFailed(transport, info.reason || `code ${info.code}`);
      },
    };
    const ctx = {
      url: this.#urlFor(transport),
      log: this.#log,
      options: this.#options,
      subscriptions: () => this.#currentSubscriptions(),
      areas: () => [...this.#areas.values()].map(({ areaId, userId, shape }) => ({ areaId, userId, shape })),
    };
    try {
      conn = transport.open(ctx, on);
    } catch (err) {
      // A malformed URL throws synchronously; retrying cannot fix it.
      this.#log.error(`${transport.name} error:`, err);
      throw err;
    }
    this.#conn = conn;
    this.#lastKind = conn.kind;
    const attempt = conn;
    openTimer = setTimeout(() => {
      if (this.#conn !== attempt || opened) return;
      this.#log.warn(`${transport.name} did not open within ${this.#connectTimeoutMs} ms`);
      attempt.close(1000, 'connect timeout');
      // The close is reported asynchronously (or never, by a stuck
      // implementation): end the attempt here.
      on.onEnd({ code: 1006, reason: 'connect timeout', wasClean: false });
    }, this.#connectTimeoutMs);
  }

  /**
   * An attempt ended before opening: the next transport in the list is
   * tried at once; when every one failed, the round counts as one failed
   * reconnect attempt and the next round (from the first) waits its back-off.
   * @param {Transport} transport
   * @param {string} reason
   */
  #attemptFailed(transport, reason) {
    if (this.#closed) return;
    if (this.#transportIndex + 1 < this.#transports.length) {
      this.#transportIndex++;
      const next = this.#transports[this.#transportIndex];
      this.#log.warn(`${transport.name} failed (${reason}); trying ${next.name}`);
      this.#dispatch('fallback', new VentaFallbackEvent(transport.name, next.name, reason));
      this.#connect();
      return;
    }
    this.#transportIndex = 0;
    this.#handleReconnect();
  }

  /** Sends `refresh` with a new token `refreshLeadMs` before the current one expires. */
  #scheduleRefresh() {
    clearTimeout(this.#refreshTimer ?? undefined);
    this.#refreshTimer = null;
    if (!this.#getToken || this.#token === null) return;
    const expiry = tokenExpiryMs(this.#token);
    if (expiry === null) return;
    const delay = Math.max(0, expiry - Date.now() - this.#refreshLeadMs);
    this.#refreshTimer = setTimeout(() => this.#refresh(), delay);
  }

  #refresh() {
    this.#refreshTimer = null;
    const getToken = this.#getToken;
    if (!getToken) return;
    Promise.resolve()
      .then(() => getToken())
      .then(
        (token) => {
          if (this.#closed || !this.connected || !this.#conn) return;
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
      this.#shutdown();
      this.#dispatch('giveup', new Event('giveup'));
      return;
    }
    this.#reconnectAttempts++;
    const delayMs = this.#backoffDelay(this.#reconnectAttempts);
    this.#dispatch('reconnecting', new VentaReconnectingEvent(this.#reconnectAttempts, delayMs));
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
   * @param {number} attempt
   */
  #backoffDelay(attempt) {
    const d = Math.min(this.#maxDelayMs, this.#baseDelayMs * 2 ** (attempt - 1));
    return Math.round(d / 2 + Math.random() * (d / 2));
  }

  /**
   * @param {Message} message
   * @param {Connection} conn
   */
  #handleMessage(message, conn) {
    const data = message.data ?? {};
    switch (message.type) {
      case 'location_updated':
        if (typeof data.areaId === 'string') {
          const vendors = this.#areaVendors.get(data.areaId);
          if (!vendors) break;
          vendors.set(data.vendorId, areaVendor(data));
          this.#dispatch('area', new VentaAreaEvent(data, message));
        } else {
          this.#dispatch('location', new VentaMessageEvent('location', data, message));
        }
        break;
      case 'area_snapshot': {
        // Events of an area given up (unsubscribed before the gateway had
        // the request) are dropped, so none follows unsubscribeArea.
        if (!this.#areaVendors.has(data.areaId)) break;
        const vendors = new Map();
        for (const v of Array.isArray(data.vendors) ? data.vendors : []) vendors.set(v.vendorId, areaVendor(v));
        this.#areaVendors.set(data.areaId, vendors);
        this.#dispatch('area', new VentaAreaEvent(data, message));
        break;
      }
      case 'vendor_entered': {
        const vendors = this.#areaVendors.get(data.areaId);
        if (!vendors) break;
        vendors.set(data.vendorId, areaVendor(data));
        this.#dispatch('area', new VentaAreaEvent(data, message));
        break;
      }
      case 'vendor_left': {
        const vendors = this.#areaVendors.get(data.areaId);
        if (!vendors) break;
        vendors.delete(data.vendorId);
        this.#dispatch('area', new VentaAreaEvent(data, message));
        break;
      }
      case 'vendor_updated':
        this.#dispatch('vendor', new VentaMessageEvent('vendor', data, message));
        break;
      case 'ping':
        // The gateway closes silent clients (4000).
        if (conn.open) conn.send({ type: 'pong' });
        this.#dispatch('ping', new VentaMessageEvent('ping', data, message));
        break;
      case 'pong':
        this.#dispatch('pong', new VentaMessageEvent('pong', data, message));
        break;
      case 'subscribed':
        if (data.channel === 'area') this.#areaAnswered(message.id, null);
        else if (typeof message.id === 'string' && message.id.startsWith('sub:')) this.#settle(message.id, Infinity, null);
        this.#dispatch('subscribed', new VentaMessageEvent('subscribed', data, message));
        break;
      case 'unsubscribed':
        if (typeof message.id === 'string') this.#settle(message.id, Infinity, null);
        this.#dispatch('unsubscribed', new VentaMessageEvent('unsubscribed', data, message));
        break;
      case 'refreshed':
        this.#scheduleRefresh();
        this.#dispatch('refreshed', new VentaMessageEvent('refreshed', data, message));
        break;
      case 'error':
        this.#handleError(data, message.id);
        this.#dispatch('error', new VentaErrorEvent(data, message));
        break;
      default:
        this.#dispatch('unknown', new VentaMessageEvent('unknown', data, message));
    }
  }

  /**
   * Requests carry ids that name what they ask for (`sub:<channel>:<vendorId>`,
   * `area:<areaId>:<seq>`, `unsub:…`, `unarea:…`), so a refusal can be traced
   * back. A permanent refusal of a subscription forgets it, or every
   * reconnect would repeat it; a rate limit retries once the server says
   * the budget is back (its promise stays pending until then).
   * @param {any} data
   * @param {string | undefined} id
   */
  #handleError(data, id) {
    if (typeof id !== 'string') return;
    const error = new VentaError(String(data.code), String(data.message ?? data.code), {
      requestType: data.requestType,
      retryAfterMs: data.retryAfterMs,
      requestId: id,
    });
    if (id.startsWith('area:')) {
      this.#areaAnswered(id, error);
      return;
    }
    if (id.startsWith('unsub:') || id.startsWith('unarea:')) {
      this.#settle(id, Infinity, error);
      return;
    }
    if (!id.startsWith('sub:')) return;
    const key = id.slice(4);
    const sub = this.#subscriptions.get(key);
    if (!sub) return;
    if (error.code === 'rate_limited') {
      const retryAfterMs = Number(data.retryAfterMs) > 0 ? Number(data.retryAfterMs) : 1000;
      const timer = setTimeout(() => {
        this.#retryTimers.delete(timer);
        // Only if still wanted and still the same request.
        if (this.#subscriptions.get(key) === sub && this.connected) this.#sendSubscribe(sub);
      }, retryAfterMs);
      this.#retryTimers.add(timer);
      return;
    }
    if (!TRANSIENT_ERRORS.has(error.code)) this.#subscriptions.delete(key);
    this.#settle(id, Infinity, error);
  }

  /**
   * The answer (`subscribed` when `error` is null) to the subscribe_area
   * whose id is `id`. An areaId has no ':'; the gateway answers in order,
   * so an answer settles the oldest pending request, and only the answer to
   * the latest one may change what the caller wants:
   * - an ack: the gateway holds that request's shape now;
   * - a rate limit: the latest request is sent again after `retryAfterMs`;
   * - a refusal for good: a new area is forgotten, a moved one goes back to
   *   the shape the gateway still holds (it keeps the old area then);
   * - a transient failure: kept, sent again on the next reconnect.
   * @param {string | undefined} id
   * @param {VentaError | null} error
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
      this.#settle(`area:${areaId}`, seq, null);
      return;
    }
    if (seq !== area.seq) {
      this.#settle(`area:${areaId}`, seq, error);
      return;
    }
    if (error.code === 'rate_limited') {
      const retryAfterMs = Number(error.retryAfterMs) > 0 ? Number(error.retryAfterMs) : 1000;
      const timer = setTimeout(() => {
        this.#retryTimers.delete(timer);
        // Only if still wanted, unchanged, and on a connection (a reconnect re-sends it anyway).
        if (this.#areas.get(areaId) === area && area.seq === seq && this.connected) this.#sendArea(area);
      }, retryAfterMs);
      this.#retryTimers.add(timer);
      return;
    }
    if (!TRANSIENT_ERRORS.has(error.code)) {
      if (area.acked) {
        const { userId, shape, delivery } = area.acked;
        Object.assign(area, { userId, shape, delivery });
      } else {
        this.#areas.delete(areaId);
        this.#areaVendors.delete(areaId);
      }
    }
    this.#settle(`area:${areaId}`, seq, error);
  }

  /** @param {AreaRecord} area */
  #sendArea(area) {
    const conn = /** @type {Connection} */ (this.#conn);
    area.seq = ++this.#areaSeq;
    area.pending.push({ seq: area.seq, userId: area.userId, shape: area.shape, delivery: area.delivery });
    /** @type {Record<string, any>} */
    const data = { areaId: area.areaId, userId: area.userId, ...area.shape };
    if (area.delivery !== undefined && conn.kind === 'webtransport') data.delivery = area.delivery;
    conn.send({ type: 'subscribe_area', data, id: `area:${area.areaId}:${area.seq}` });
  }

  /**
   * @param {'location' | 'vendor'} channel
   * @param {string} vendorId
   * @param {string} userId
   * @param {Delivery | undefined} delivery
   * @returns {Promise<void>}
   */
  #subscribe(channel, vendorId, userId, delivery) {
    /** @type {Subscription} */
    const sub = { channel, vendorId, userId, delivery };
    this.#subscriptions.set(`${channel}:${vendorId}`, sub);
    const promise = this.#wait(`sub:${channel}:${vendorId}`, 0);
    // When not connected, the open handler sends every remembered subscription.
    if (this.connected) this.#sendSubscribe(sub);
    return promise;
  }

  /**
   * @param {'location' | 'vendor'} channel
   * @param {string} vendorId
   * @returns {Promise<void>}
   */
  #unsubscribe(channel, vendorId) {
    this.#subscriptions.delete(`${channel}:${vendorId}`);
    this.#settle(`sub:${channel}:${vendorId}`, Infinity, new VentaError('cancelled', `unsubscribed from ${channel} ${vendorId}`));
    // A new connection starts with no subscriptions, so there is nothing to
    // undo on the server unless we are connected now.
    if (!this.connected) return Promise.resolve();
    const conn = /** @type {Connection} */ (this.#conn);
    const id = `unsub:${channel}:${vendorId}`;
    const promise = this.#wait(id, 0);
    conn.send({ type: `unsubscribe_${channel}`, data: { vendorId }, id });
    return promise;
  }

  /** @param {Subscription} sub */
  #sendSubscribe({ channel, vendorId, userId, delivery }) {
    const conn = /** @type {Connection} */ (this.#conn);
    /** @type {Record<string, any>} */
    const data = { vendorId, userId };
    // Only WebTransport has datagrams; the WebSocket message stays the seed's.
    if (delivery !== undefined && conn.kind === 'webtransport') data.delivery = delivery;
    conn.send({ type: `subscribe_${channel}`, data, id: `sub:${channel}:${vendorId}` });
  }

  /**
   * Sends now if open, else queues for the next open (bounded, oldest dropped).
   * @param {Message} message
   */
  #send(message) {
    if (this.connected && this.#conn) {
      this.#conn.send(message);
      return;
    }
    if (this.#closed) return;
    this.#queue.push(message);
    if (this.#queue.length > this.#maxQueue) this.#queue.shift();
  }
}

/**
 * The seed's surface on top of the events: hooks `onLocationUpdate(data,
 * message)`, `onVendorUpdate`, `onError`, … called for the matching
 * events, to override in a subclass or assign on the instance (a hook that
 * throws is logged and disturbs nothing). As in the seed, `onLocationUpdate`
 * and `onVendorUpdate` log and `onError` warns by default, and the logger
 * is `console` unless `options.logger` says otherwise. Base of the
 * compatibility classes `VentaWebSocketClient` and `VentaWebTransportClient`.
 */
export class SeedClient extends BaseClient {
  /** @type {Logger} */
  #hookLog;

  /**
   * @param {string | URL} url
   * @param {ClientOptions & Record<string, any>} options
   * @param {Transport[]} transports
   * @param {string[]} defaultOrder
   */
  constructor(url, options, transports, defaultOrder) {
    super(url, options, transports, defaultOrder, globalThis.console);
    this.#hookLog = makeLogger(options.logger, globalThis.console);
    /** @type {Record<string, any>} */
    const self = this;
    /**
     * @param {string} type
     * @param {(e: any) => string} name
     * @param {(e: any) => any[]} args
     */
    const hook = (type, name, args) => {
      this.addEventListener(type, (event) => {
        const hookName = name(event);
        try {
          const fn = self[hookName];
          if (typeof fn === 'function') fn.apply(this, args(event));
        } catch (err) {
          this.#hookLog.error(`${this.constructor.name}: ${hookName} threw:`, err);
        }
      });
    };
    /** @param {any} e */
    const dm = (e) => [e.data, e.message];
    /** @type {Record<string, string>} */
    const areaHooks = {
      area_snapshot: 'onAreaSnapshot',
      vendor_entered: 'onVendorEntered',
      location_updated: 'onAreaLocationUpdate',
      vendor_left: 'onVendorLeft',
    };
    hook('location', () => 'onLocationUpdate', dm);
    hook('vendor', () => 'onVendorUpdate', dm);
    hook('area', (e) => areaHooks[e.kind], dm);
    hook('subscribed', () => 'onSubscribed', dm);
    hook('unsubscribed', () => 'onUnsubscribed', dm);
    hook('error', () => 'onError', dm);
    hook('pong', () => 'onPong', dm);
    hook('ping', () => 'onPing', (e) => [e.message]);
    hook('refreshed', () => 'onRefreshed', dm);
    hook('unknown', () => 'onUnknownMessage', (e) => [e.message]);
    hook('open', () => 'onOpen', () => []);
    hook('close', () => 'onClose', (e) => [{ code: e.code, reason: e.reason, wasClean: e.wasClean }]);
    hook('reconnecting', () => 'onReconnecting', (e) => [{ attempt: e.attempt, delayMs: e.delayMs }]);
    hook('giveup', () => 'onGiveUp', () => []);
  }

  /**
   * `location_updated` (per-vendor). Default: logs it, as the seed did.
   * @param {any} data `{vendorId, location: {lat, long}, timestamp, snapshot?}`
   * @param {Message} [message]
   */
  onLocationUpdate(data, message) {
    this.#hookLog.log('Location updated:', data);
  }

  /**
   * `vendor_updated`. Default: logs it, as the seed did.
   * @param {any} data `{vendorId, vendor, timestamp}`
   * @param {Message} [message]
   */
  onVendorUpdate(data, message) {
    this.#hookLog.log('Vendor updated:', data);
  }

  /**
   * The gateway refused a message. Default: warns.
   * @param {any} data `{code, message, requestType?, retryAfterMs?}`
   * @param {Message} [message]
   */
  onError(data, message) {
    this.#hookLog.warn('Gateway error:', data);
  }

  /** @param {any} data @param {Message} [message] */
  onSubscribed(data, message) {}

  /** @param {any} data @param {Message} [message] */
  onUnsubscribed(data, message) {}

  /** @param {any} data @param {Message} [message] */
  onPong(data, message) {}

  /** The gateway's heartbeat, already answered. @param {Message} message */
  onPing(message) {}

  /** @param {any} data `{expiresAt}` @param {Message} [message] */
  onRefreshed(data, message) {}

  /** @param {Message} message */
  onUnknownMessage(message) {}

  onOpen() {}

  /** @param {EndInfo} event */
  onClose(event) {}

  /** @param {{attempt: number, delayMs: number}} info */
  onReconnecting(info) {}

  onGiveUp() {}

  /** @param {any} data `{areaId, vendors, truncated}` @param {Message} [message] */
  onAreaSnapshot(data, message) {}

  /** @param {any} data `{areaId, vendorId, location, timestamp}` @param {Message} [message] */
  onVendorEntered(data, message) {}

  /** @param {any} data `{areaId, vendorId, location, timestamp}` @param {Message} [message] */
  onAreaLocationUpdate(data, message) {}

  /** @param {any} data `{areaId, vendorId, reason}` @param {Message} [message] */
  onVendorLeft(data, message) {}
}

/**
 * `url` with its scheme and its first path segment (`/ws/`, `/wt/`,
 * `/sse/`) swapped for another transport's: same host, port and query.
 * Secure (wss:, https:) when the caller's URL is, except that a WebTransport
 * URL is always https: (QUIC always encrypts) even when the gateway's TCP
 * side is plain, so from one the others follow the page (plain on an http
 * page and in Node).
 * @param {URL} url
 * @param {string} segment `ws`, `wt`, `sse`
 * @param {string} scheme `ws`, `http`
 */
export function swapEndpoint(url, segment, scheme) {
  const fromWt = url.pathname.startsWith('/wt/');
  const secure = fromWt ? globalThis.location?.protocol === 'https:' : url.protocol === 'https:' || url.protocol === 'wss:';
  const out = new URL(url);
  out.protocol = secure ? `${scheme}s:` : `${scheme}:`;
  out.pathname = url.pathname.replace(/^\/(ws|wt|sse)\//, `/${segment}/`);
  return out;
}

/**
 * One server message from a text frame or event: a JSON object, or
 * `undefined` (logged as `what` when it is not JSON; arrays and scalars are
 * dropped silently). Both text transports parse alike through this.
 * @param {string} text
 * @param {{warn: (msg: string) => void}} log
 * @param {string} what
 * @returns {any} a plain object, or undefined
 */
export function parseMessage(text, log, what) {
  let message;
  try {
    message = JSON.parse(text);
  } catch {
    log.warn(`Ignoring ${what} that is not JSON`);
    return undefined;
  }
  return message && typeof message === 'object' && !Array.isArray(message) ? message : undefined;
}
