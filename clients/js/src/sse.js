// Server-Sent Events for the venta-gateway client, the last resort behind
// proxies that pass neither UDP nor WebSocket upgrades. No codec: the
// events carry the same JSON a WebSocket client gets.
//
// An EventSource only listens, and what it follows is fixed by its URL
// (`/sse/location?vendorId=a,b&userId=u`, `/sse/vendor?…`,
// `/sse/area?areaId=x&bbox=s,w,n,e`): so one "connection" here is a set of
// EventSources, one per kind and user (one per area), and a subscription
// change reopens the affected one with the new list (the new stream is
// opened before the old one is closed, so nothing is missed; it starts with
// fresh snapshots). The gateway's acks on each stream (`subscribed`, which
// carry no request id) are given the ids the client's requests had, so the
// promises settle as on the other transports; a reopen the gateway refuses
// (HTTP 400 before the stream starts) is read back with one `fetch` and
// reported as an `error` for the requests that caused it.

import { parseMessage, swapEndpoint } from './core.js';

/** Server message types an EventSource must listen for by name. */
const EVENT_TYPES = [
  'location_updated',
  'vendor_updated',
  'area_snapshot',
  'vendor_entered',
  'vendor_left',
  'subscribed',
  'unsubscribed',
  'error',
  'close',
  'refreshed',
];

/**
 * @typedef {import('./core.js').Message} Message
 * @typedef {{kind: 'location' | 'vendor', userId: string, ids: string[]} |
 *   {kind: 'area', areaId: string, userId: string, shape: import('./core.js').AreaShape}} StreamSpec
 */

/**
 * One stream's URL: `base` (the client's SSE URL, token and other query kept)
 * with the path and parameters of `spec`.
 * @param {string} base
 * @param {StreamSpec} spec
 */
function streamUrl(base, spec) {
  const u = new URL(base);
  u.pathname = u.pathname.replace(/\/[^/]*$/, `/${spec.kind}`);
  for (const k of ['vendorId', 'userId', 'areaId', 'bbox', 'lat', 'long', 'radiusM']) u.searchParams.delete(k);
  u.searchParams.set('userId', spec.userId);
  if (spec.kind === 'area') {
    u.searchParams.set('areaId', spec.areaId);
    const shape = /** @type {any} */ (spec.shape);
    if (shape.bbox) {
      const { south, west, north, east } = shape.bbox;
      u.searchParams.set('bbox', [south, west, north, east].join(','));
    } else {
      u.searchParams.set('lat', String(shape.circle.center.lat));
      u.searchParams.set('long', String(shape.circle.center.long));
      u.searchParams.set('radiusM', String(shape.circle.radiusM));
    }
  } else {
    u.searchParams.set('vendorId', spec.ids.join(','));
  }
  return u.toString();
}

/**
 * The SSE transport. Uses `options.EventSource` or the global one (every
 * browser; in Node the `eventsource` package).
 * @type {import('./core.js').Transport}
 */
export const sseTransport = {
  name: 'sse',
  available: (options) => typeof (options.EventSource ?? globalThis.EventSource) === 'function',
  endpoint: (url) => swapEndpoint(url, 'sse', 'http'),
  open(ctx, on) {
    return openSse(ctx, on);
  },
};

/**
 * @param {import('./core.js').ConnectContext} ctx
 * @param {import('./core.js').ConnectionEvents} on
 * @returns {import('./core.js').Connection}
 */
function openSse({ url, log, options, subscriptions, areas }, on) {
  const EventSourceImpl = options.EventSource ?? globalThis.EventSource;
  const fetchImpl = options.fetch ?? globalThis.fetch;
  let opened = false;
  let ended = false;

  /**
   * A stream as wanted and as open now. `live` is the EventSource whose
   * events count, `spec` what it follows; `next` a reopen in progress and
   * `nextSpec` what it will follow; `changes` the request ids that made the
   * reopen (answered with `error` if the gateway refuses it).
   * @typedef {{key: string, spec: StreamSpec | null, live: any, nextSpec: StreamSpec | null, next: any,
   *   changes: {id: string, type: string}[], scheduled: boolean, areaRequestId?: string,
   *   acked: Set<string>, acks: Message[]}} Stream
   * `acks`: unsubscribe answers held until the stream without those ids is
   * live (until then the old one still delivers them).
   */
  /** @type {Map<string, Stream>} */
  const streams = new Map();

  /** @param {import('./core.js').EndInfo} info */
  const end = (info) => {
    if (ended) return;
    ended = true;
    for (const s of streams.values()) {
      s.live?.close();
      s.next?.close();
    }
    on.onEnd(info);
  };

  /**
   * A message to the client, as if the gateway had sent it (acks with the
   * request's id, errors for a refused reopen).
   * @param {Message} message
   */
  const deliver = (message) => {
    if (!ended) on.onMessage(message);
  };

  /** @param {string} key */
  const streamFor = (key) => {
    let s = streams.get(key);
    if (!s) {
      s = { key, spec: null, live: null, nextSpec: null, next: null, changes: [], scheduled: false, acked: new Set(), acks: [] };
      streams.set(key, s);
    }
    return s;
  };

  /**
   * The spec the stream should follow now: its pending one, else its live one.
   * @param {Stream} s
   */
  const wanted = (s) => (s.scheduled || s.next ? s.nextSpec : s.spec);

  /**
   * An EventSource for `spec`, reporting to `onOpen` / `onFail` until it
   * opened, then its events (while it is the stream's live one).
   * @param {Stream} s
   * @param {StreamSpec} spec
   * @param {() => void} onOpen
   * @param {(reason: string) => void} onFail
   */
  const connect = (s, spec, onOpen, onFail) => {
    const target = streamUrl(url, spec);
    const es = new EventSourceImpl(target);
    let esOpened = false;
    es.onopen = () => {
      esOpened = true;
      onOpen();
    };
    /** @param {any} event */
    es.onerror = (event) => {
      // A server `event: error` is a MessageEvent with data; this is the
      // EventSource's own error (refused, or the stream broke).
      if (event && typeof event.data === 'string') return;
      es.close();
      if (!esOpened) {
        onFail(`GET ${new URL(target).pathname} failed`);
      } else if (s.live === es) {
        // The client's own reconnect (preferred transport first, then
        // snapshots) replaces EventSource's, which would never go back.
        end({ code: 1006, reason: 'the event stream broke', wasClean: false });
      }
    };
    for (const type of EVENT_TYPES) {
      es.addEventListener(type, (/** @type {any} */ event) => {
        if (s.live !== es || typeof event.data !== 'string') return;
        const message = parseMessage(event.data, log, 'an SSE event');
        if (!message) return;
        onEvent(s, message);
      });
    }
    return es;
  };

  /**
   * @param {Stream} s
   * @param {any} message
   */
  const onEvent = (s, message) => {
    const data = message.data ?? {};
    switch (message.type) {
      case 'close':
        // The gateway's last event: its close code, then the stream ends.
        end({ code: Number(message.code ?? data.code) || 1000, reason: String(message.reason ?? data.reason ?? ''), wasClean: true });
        return;
      case 'subscribed':
      case 'unsubscribed':
        if (data.channel === 'area') {
          if (message.type === 'subscribed' && s.areaRequestId) deliver({ ...message, id: s.areaRequestId });
          return;
        }
        if (message.type === 'subscribed') s.acked.add(String(data.vendorId));
        // The ids the client's requests carry (see core.js).
        deliver({ ...message, id: `${message.type === 'subscribed' ? 'sub' : 'unsub'}:${data.channel}:${data.vendorId}` });
        return;
      default:
        deliver(message);
    }
  };

  /**
   * After the client changed what a stream should follow: reopen it (once
   * per task however many requests came), or close it when it follows
   * nothing any more.
   * @param {Stream} s
   */
  const schedule = (s) => {
    if (s.scheduled || !opened) return;
    s.scheduled = true;
    queueMicrotask(() => {
      s.scheduled = false;
      if (ended) return;
      reopen(s);
    });
  };

  /** @param {Stream} s */
  const reopen = (s) => {
    const spec = s.nextSpec;
    s.next?.close();
    s.next = null;
    const acks = s.acks;
    s.acks = [];
    if (spec === null) {
      s.live?.close();
      s.live = null;
      s.spec = null;
      s.changes = [];
      streams.delete(s.key);
      for (const ack of acks) deliver(ack);
      return;
    }
    const changes = s.changes;
    s.changes = [];
    const es = connect(
      s,
      spec,
      () => {
        if (s.next !== es) return;
        s.live?.close();
        s.live = es;
        s.spec = spec;
        s.next = null;
        s.acked = new Set();
        for (const ack of acks) deliver(ack);
      },
      (reason) => {
        if (s.next !== es) return;
        s.next = null;
        refused(s, spec, changes, acks, reason);
      },
    );
    s.next = es;
  };

  /**
   * The gateway refused a reopen: ask it why (the refusal comes before any
   * stream, so one GET reads it), answer the requests that caused it with
   * that error, and go back to what the stream followed before.
   * @param {Stream} s
   * @param {StreamSpec} spec
   * @param {{id: string, type: string}[]} changes
   * @param {Message[]} acks unsubscribe answers held for this reopen
   * @param {string} reason
   */
  const refused = async (s, spec, changes, acks, reason) => {
    /** @type {any} */
    let body = null;
    const abort = new AbortController();
    try {
      const res = await fetchImpl(streamUrl(url, spec), { signal: abort.signal, headers: { accept: 'text/event-stream' } });
      if (!res.ok) body = await res.json().catch(() => null);
    } catch {
      // Unreachable: handled below as a broken connection.
    } finally {
      abort.abort();
    }
    if (ended) return;
    const error = body && typeof body.error === 'object' ? body.error : null;
    if (!error || typeof error.code !== 'string') {
      end({ code: 1006, reason, wasClean: false });
      return;
    }
    for (const ack of acks) deliver(ack);
    for (const { id, type } of changes) {
      deliver({ type: 'error', data: { code: error.code, message: String(error.message ?? error.code), requestType: type }, id });
    }
    // The client forgets what was refused for good and tells us by sending
    // again (unsubscribe, or the old area); until then the old stream stays.
    s.nextSpec = s.spec;
    if (s.spec === null) streams.delete(s.key);
  };

  /** @param {string} kind @param {string} userId */
  const listKey = (kind, userId) => `${kind}:${userId}`;

  /**
   * Adds or removes one vendor id in a list stream's wanted spec.
   * @param {'location' | 'vendor'} kind
   * @param {string} userId
   * @param {string} vendorId
   * @param {boolean} add
   */
  const changeList = (kind, userId, vendorId, add) => {
    const s = streamFor(listKey(kind, userId));
    const current = /** @type {{ids: string[]} | null} */ (wanted(s));
    const ids = new Set(current ? current.ids : []);
    if (add === ids.has(vendorId)) return false;
    if (add) ids.add(vendorId);
    else ids.delete(vendorId);
    s.nextSpec = ids.size ? { kind, userId, ids: [...ids] } : null;
    return s;
  };

  // What a stream of a vendor list follows for a given user: unsubscribe
  // carries no userId, so it is looked up.
  /** @param {'location' | 'vendor'} kind @param {string} vendorId */
  const userOf = (kind, vendorId) => {
    for (const s of streams.values()) {
      const spec = /** @type {any} */ (wanted(s));
      if (spec && spec.kind === kind && spec.ids.includes(vendorId)) return spec.userId;
    }
    return null;
  };

  /** @param {any} message */
  const send = (message) => {
    if (ended) return;
    const data = message.data ?? {};
    switch (message.type) {
      case 'subscribe_location':
      case 'subscribe_vendor': {
        const kind = message.type === 'subscribe_location' ? 'location' : 'vendor';
        const s = changeList(kind, String(data.userId), String(data.vendorId), true);
        if (s) {
          s.changes.push({ id: message.id, type: message.type });
          schedule(s);
        } else if (opened) {
          // Already followed on an open stream: answer now if the stream's
          // own ack has come already (else that ack answers it).
          const stream = streams.get(listKey(kind, String(data.userId)));
          if (stream && !stream.next && !stream.scheduled && stream.acked.has(String(data.vendorId))) {
            deliver({ type: 'subscribed', data: { channel: kind, vendorId: data.vendorId }, id: message.id });
          }
        }
        return;
      }
      case 'unsubscribe_location':
      case 'unsubscribe_vendor': {
        const kind = message.type === 'unsubscribe_location' ? 'location' : 'vendor';
        const user = userOf(kind, String(data.vendorId));
        const ack = { type: 'unsubscribed', data: { channel: kind, vendorId: data.vendorId }, id: message.id };
        const s = user === null ? false : changeList(kind, user, String(data.vendorId), false);
        if (s) {
          s.acks.push(ack);
          schedule(s);
        } else {
          deliver(ack);
        }
        return;
      }
      case 'subscribe_area': {
        const s = streamFor(`area:${data.areaId}`);
        const { areaId, userId, bbox, circle } = data;
        s.nextSpec = { kind: 'area', areaId, userId, shape: bbox ? { bbox } : { circle } };
        s.areaRequestId = message.id;
        s.changes = [{ id: message.id, type: message.type }];
        if (opened && s.spec && JSON.stringify(s.spec) === JSON.stringify(s.nextSpec) && !s.next) {
          // The stream already follows this shape (the resubscribe after open).
          return;
        }
        schedule(s);
        return;
      }
      case 'unsubscribe_area': {
        const s = streams.get(`area:${data.areaId}`);
        const ack = { type: 'unsubscribed', data: { channel: 'area', areaId: data.areaId }, id: message.id };
        if (s) {
          s.nextSpec = null;
          s.areaRequestId = undefined;
          s.acks.push(ack);
          schedule(s);
        } else {
          deliver(ack);
        }
        return;
      }
      case 'ping':
        // Nothing to send it on: the stream itself is the proof of life.
        deliver({ type: 'pong', id: message.id });
        return;
      default:
        // pong (the stream's heartbeat needs no answer) and refresh (an
        // EventSource cannot send: at expiry the gateway closes with 4001
        // and the reconnect asks getToken for a new token).
        return;
    }
  };

  // The first streams: everything the client follows now. The connection
  // is open once all of them are (or at once when it follows nothing); any
  // of them failing fails the attempt, so the client can fall back.
  for (const sub of subscriptions()) changeList(sub.channel, sub.userId, sub.vendorId, true);
  for (const area of areas()) {
    streamFor(`area:${area.areaId}`).nextSpec = { kind: 'area', areaId: area.areaId, userId: area.userId, shape: area.shape };
  }
  const first = [...streams.values()];
  let waiting = first.length;
  const opening = () => {
    if (ended || opened) return;
    opened = true;
    on.onOpen();
  };
  for (const s of first) {
    const spec = /** @type {StreamSpec} */ (s.nextSpec);
    s.live = connect(
      s,
      spec,
      () => {
        s.spec = spec;
        if (--waiting === 0) opening();
      },
      (reason) => end({ code: 1006, reason, wasClean: false }),
    );
  }
  if (waiting === 0) queueMicrotask(opening);

  return {
    kind: 'sse',
    get open() {
      return opened && !ended;
    },
    send,
    close(code, reason) {
      // EventSource.close() fires nothing: report the end ourselves.
      queueMicrotask(() => end({ code, reason, wasClean: true }));
      for (const s of streams.values()) {
        s.live?.close();
        s.next?.close();
      }
    },
  };
}
