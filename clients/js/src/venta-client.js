// Venta gateway WebSocket client.
//
// A drop-in successor of the `VentaWebSocketClient` documented by the seed
// (NestJS) gateway: same constructor, same `subscribeToLocation`, same
// overridable `onLocationUpdate` / `onVendorUpdate`, answers the server's
// `ping` with `{"type":"pong"}` and reconnects a bounded number of times.
// Plain ES module, no dependencies: it uses the global `WebSocket` (any
// browser, Node >= 22, or Node 20 run with `--experimental-websocket`).

// WebSocket.readyState OPEN, fixed by the standard; not read from the
// implementation, so an injected one without the static constants works too.
const OPEN = 1;

// Refusals of a subscription that may pass later, so the subscription is
// kept; any other code (invalid_field, forbidden, too_many_subscriptions, ...)
// would fail the same way on every reconnect, so it is forgotten.
const TRANSIENT_ERRORS = new Set(['rate_limited', 'unavailable', 'internal']);

const noop = () => {};

/** Builds a {log, warn, error} triple from `options.logger` (null/false = silent). */
function makeLogger(logger) {
  if (logger === undefined) logger = globalThis.console;
  if (!logger) return { log: noop, warn: noop, error: noop };
  const pick = (name) => (typeof logger[name] === 'function' ? logger[name].bind(logger) : noop);
  return { log: pick('log'), warn: pick('warn'), error: pick('error') };
}

/**
 * Client for the venta-gateway WebSocket endpoints (`/ws/location`, `/ws/vendor`).
 *
 * Subclass it or assign the `on*` hooks on an instance to receive events:
 * the connection is opened in the constructor but no event can fire before
 * the current task ends, so hooks assigned right after `new` see everything.
 */
export class VentaWebSocketClient {
  /** @type {WebSocket | null} */
  #socket = null;
  #url;
  #WebSocket;
  #protocols;
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
  /** Frames sent while not connected, flushed on the next open. */
  #queue = [];
  /**
   * Subscriptions the caller wants, keyed `channel:vendorId`. They are the
   * source of truth: every (re)connect sends all of them, because a new
   * connection starts with none on the server side.
   * @type {Map<string, {channel: 'location'|'vendor', vendorId: string, userId: string}>}
   */
  #subscriptions = new Map();
  #pingCounter = 0;

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
   */
  constructor(url, options = {}) {
    this.#url = url;
    this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#WebSocket !== 'function') {
      throw new TypeError(
        'VentaWebSocketClient: no WebSocket implementation. In Node 20 run with ' +
          '--experimental-websocket, or pass options.WebSocket.',
      );
    }
    this.#protocols = options.protocols;
    this.#maxReconnectAttempts = options.maxReconnectAttempts ?? 5;
    this.#baseDelayMs = options.reconnectBaseDelayMs ?? 1000;
    this.#maxDelayMs = options.reconnectMaxDelayMs ?? 30000;
    this.#maxQueue = options.maxQueuedMessages ?? 100;
    this.#log = makeLogger(options.logger);
    this.#connect();
  }

  // ---------------------------------------------------------------- public API

  /** True while the socket is open. */
  get connected() {
    return this.#socket !== null && this.#socket.readyState === OPEN;
  }

  /**
   * Subscribes to a vendor's location updates (delivered to `onLocationUpdate`).
   * May be called before the connection is open; the subscription is also
   * re-sent automatically after every reconnect.
   * @param {string} vendorId
   * @param {string} userId must equal the token's `sub` when auth is on
   */
  subscribeToLocation(vendorId, userId) {
    this.#subscribe('location', vendorId, userId);
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
   * are dropped. `onClose` still fires if the socket was open.
   * @param {number} [code=1000]
   * @param {string} [reason]
   */
  close(code = 1000, reason = '') {
    this.#closed = true;
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = null;
    for (const timer of this.#retryTimers) clearTimeout(timer);
    this.#retryTimers.clear();
    this.#queue = [];
    // A socket still connecting can be closed too; it then reports close.
    if (this.#socket && this.#socket.readyState <= OPEN) this.#socket.close(code, reason);
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

  /** The server acknowledged a subscription; updates published from now on arrive. */
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

  // --------------------------------------------------------------- internals

  #connect() {
    let socket;
    try {
      socket = this.#protocols === undefined
        ? new this.#WebSocket(this.#url)
        : new this.#WebSocket(this.#url, this.#protocols);
    } catch (err) {
      // A malformed URL throws synchronously; retrying cannot fix it.
      this.#log.error('WebSocket error:', err);
      throw err;
    }
    this.#socket = socket;
    let opened = false;

    socket.onopen = () => {
      opened = true;
      this.#log.log('Connected to WebSocket');
      this.#reconnectAttempts = 0;
      // A new connection starts with no subscriptions on the server: send them
      // all, before queued messages, so updates flow again as soon as possible.
      for (const sub of this.#subscriptions.values()) this.#sendSubscribe(sub);
      const queued = this.#queue;
      this.#queue = [];
      for (const frame of queued) socket.send(frame);
      this.#emit('onOpen');
    };

    socket.onmessage = (event) => {
      if (typeof event.data !== 'string') {
        this.#log.warn('Ignoring a binary WebSocket frame');
        return;
      }
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        this.#log.warn('Ignoring a frame that is not JSON:', event.data);
        return;
      }
      if (message && typeof message === 'object') this.#handleMessage(message, socket);
    };

    // Runs once per socket, whichever of `close` / `error` reports the end.
    const ended = (event) => {
      if (this.#socket !== socket) return;
      this.#socket = null;
      this.#log.log('WebSocket connection closed');
      if (opened) this.#emit('onClose', event);
      this.#handleReconnect();
    };

    socket.onclose = ended;

    socket.onerror = (error) => {
      this.#log.error('WebSocket error:', error);
      // Browsers follow a failed attempt's `error` with `close`, but the
      // WebSocket in Node 20 (undici before nodejs/undici#3546 was fixed)
      // fires only `error` and stays CONNECTING for ever; without this the
      // client would silently stop reconnecting there.
      if (!opened) ended({ code: 1006, reason: '', wasClean: false });
    };
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

  #handleMessage(message, socket) {
    const data = message.data ?? {};
    switch (message.type) {
      case 'location_updated':
        this.#emit('onLocationUpdate', data, message);
        break;
      case 'vendor_updated':
        this.#emit('onVendorUpdate', data, message);
        break;
      case 'ping':
        // Answer exactly as the seed did; the gateway closes silent clients (4000).
        if (socket.readyState === OPEN) socket.send(JSON.stringify({ type: 'pong' }));
        this.#emit('onPing', message);
        break;
      case 'pong':
        this.#emit('onPong', data, message);
        break;
      case 'subscribed':
        this.#emit('onSubscribed', data, message);
        break;
      case 'unsubscribed':
        this.#emit('onUnsubscribed', data, message);
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

  #subscribe(channel, vendorId, userId) {
    const sub = { channel, vendorId, userId };
    this.#subscriptions.set(`${channel}:${vendorId}`, sub);
    // When not connected, the open handler sends every remembered subscription.
    if (this.connected) this.#sendSubscribe(sub);
  }

  #unsubscribe(channel, vendorId) {
    this.#subscriptions.delete(`${channel}:${vendorId}`);
    // A new connection starts with no subscriptions, so there is nothing to
    // undo on the server unless we are connected now.
    if (this.connected) {
      this.#socket.send(JSON.stringify({
        type: `unsubscribe_${channel}`,
        data: { vendorId },
        id: `unsub:${channel}:${vendorId}`,
      }));
    }
  }

  #sendSubscribe({ channel, vendorId, userId }) {
    this.#socket.send(JSON.stringify({
      type: `subscribe_${channel}`,
      data: { vendorId, userId },
      id: `sub:${channel}:${vendorId}`,
    }));
  }

  /** Sends now if open, else queues for the next open (bounded, oldest dropped). */
  #send(message) {
    const frame = JSON.stringify(message);
    if (this.connected) {
      this.#socket.send(frame);
      return;
    }
    if (this.#closed) return;
    this.#queue.push(frame);
    if (this.#queue.length > this.#maxQueue) this.#queue.shift();
  }

  #emit(hook, ...args) {
    try {
      this[hook](...args);
    } catch (err) {
      this.#log.error(`VentaWebSocketClient: ${hook} threw:`, err);
    }
  }
}

export default VentaWebSocketClient;
