// WebTransport (HTTP/3; MessagePack frames on one bidirectional stream,
// location updates as datagrams on request) for the venta-gateway client,
// with WebSocket as the fallback where WebTransport is missing or fails:
// `import { WebTransportClient } from '@venta/realtime/webtransport'`.

import { decode, encode } from '@msgpack/msgpack';
import { BaseClient, SeedClient, swapEndpoint } from './core.js';
import { webSocketTransport } from './websocket.js';
import { sseTransport } from './sse.js';

export * from './websocket.js';

// Largest WebTransport frame the client accepts from the gateway. Server
// frames are small (a vendor update is at most 64 KiB of JSON); anything
// bigger means the stream is out of step.
const MAX_SERVER_FRAME = 1 << 20;

const noop = () => {};

/**
 * `[{algorithm, value: Uint8Array}]` for `serverCertificateHashes`.
 * @param {Record<string, any>} options
 * @returns {Promise<{algorithm: string, value: BufferSource}[]>}
 */
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
      value: Uint8Array.from(/** @type {string[]} */ (h.value.match(/../g)), (byte) => parseInt(byte, 16)),
    }));
}

/**
 * A frame: 4-byte big-endian length, then one MessagePack value.
 * @param {import('./core.js').Message} message
 */
function frameOf(message) {
  const payload = encode(message);
  const out = new Uint8Array(4 + payload.length);
  new DataView(out.buffer).setUint32(0, payload.length);
  out.set(payload, 4);
  return out;
}

/**
 * @param {Uint8Array} bytes
 * @param {import('./core.js').Logger} log
 * @returns {import('./core.js').Message | null}
 */
function decodeMessage(bytes, log) {
  let message;
  try {
    message = decode(bytes);
  } catch (err) {
    log.warn('Ignoring undecodable MessagePack from the gateway:', err);
    return null;
  }
  return message && typeof message === 'object' && !Array.isArray(message) ? /** @type {any} */ (message) : null;
}

/**
 * Reads length-prefixed MessagePack frames until the stream ends.
 * @param {ReadableStream<Uint8Array>} readable
 * @param {import('./core.js').Logger} log
 * @param {(m: import('./core.js').Message) => void} onMessage
 */
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

/**
 * Reads datagrams (one MessagePack value each) until the session ends.
 * @param {ReadableStream<Uint8Array>} readable
 * @param {import('./core.js').Logger} log
 * @param {(m: import('./core.js').Message) => void} onMessage
 */
async function readDatagrams(readable, log, onMessage) {
  const reader = readable.getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    const message = decodeMessage(value, log);
    if (message) onMessage(message);
  }
}

/**
 * The WebTransport transport. Uses `options.WebTransport` or the global
 * one; the gateway's self-signed dev certificate is pinned by the hash from
 * `options.certificateHashUrl` (or `options.serverCertificateHashes`).
 * @type {import('./core.js').Transport}
 */
export const webTransportTransport = {
  name: 'webtransport',
  available: (options) => typeof (options.WebTransport ?? /** @type {any} */ (globalThis).WebTransport) === 'function',
  endpoint: (url) => {
    // QUIC always encrypts: https: whatever the caller's scheme.
    const out = swapEndpoint(url, 'wt', 'http');
    out.protocol = 'https:';
    return out;
  },
  open({ url, log, options }, on) {
    const WebTransportImpl = options.WebTransport ?? /** @type {any} */ (globalThis).WebTransport;
    /** @type {any} */
    let wt = null;
    /** @type {WritableStreamDefaultWriter<Uint8Array> | null} */
    let writer = null;
    let opened = false;
    let ended = false;
    /** @type {{code: number, reason: string} | null} */
    let closeRequest = null;
    // Set by close(), which TypeScript's flow analysis does not see in the task below.
    const closing = () => /** @type {{code: number, reason: string} | null} */ (closeRequest);
    /** @param {import('./core.js').EndInfo} info */
    const end = (info) => {
      if (ended) return;
      ended = true;
      if (wt && !closeRequest) {
        try {
          wt.close();
        } catch {
          // Already closed.
        }
      }
      on.onEnd(info);
    };
    /** @param {any} err */
    const failed = (err) => {
      if (!ended) log.error('WebTransport error:', err);
      end({ code: 1006, reason: String(err?.message ?? err), wasClean: false });
    };
    (async () => {
      const hashes = await certificateHashes(options);
      const early = closing();
      if (early) {
        end({ ...early, wasClean: true });
        return;
      }
      wt = hashes.length ? new WebTransportImpl(url, { serverCertificateHashes: hashes }) : new WebTransportImpl(url);
      // A gateway that vanishes without finishing the stream ends up here as a
      // rejection (1006).
      wt.closed.then(
        /** @param {any} info */
        (info) => end({ code: info?.closeCode ?? 1000, reason: info?.reason ?? '', wasClean: true }),
        failed,
      );
      await wt.ready;
      const stream = await wt.createBidirectionalStream();
      const w = stream.writable.getWriter();
      writer = w;
      // The gateway learns of the stream from its first bytes: announce it
      // with a `pong`, which is free (not rate-limited) and never answered.
      w.write(frameOf({ type: 'pong' })).catch(noop);
      const late = closing();
      if (late) {
        wt.close({ closeCode: late.code, reason: late.reason });
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
        // Not open yet: the attempt ends when its setup sees closeRequest,
        // or by the caller's connect timeout.
      },
    };
  },
};

/**
 * @typedef {import('./websocket.js').WebSocketClientOptions & {
 *   WebTransport?: any,
 *   certificateHashUrl?: string,
 *   serverCertificateHashes?: {algorithm: string, value: BufferSource}[],
 *   fetch?: typeof fetch,
 *   webSocketUrl?: string,
 * }} WebTransportClientOptions
 */

/**
 * @param {WebTransportClientOptions} options
 * @returns {WebTransportClientOptions}
 */
function withFallbackUrl(options) {
  if (!options.webSocketUrl) return options;
  return { ...options, urls: { ...options.urls, websocket: options.webSocketUrl } };
}

/**
 * The client over WebTransport (`https://host:port/wt/location`), falling
 * back to WebSocket (`ws://host:port/ws/location`) where WebTransport is
 * missing (Node, older browsers) or fails before opening (UDP blocked);
 * every reconnect tries WebTransport first again. `transports` defaults
 * to `['webtransport', 'websocket']`.
 */
export class WebTransportClient extends BaseClient {
  /**
   * Connects at once.
   * @param {string | URL} url e.g. `https://localhost:5006/wt/location`
   * @param {WebTransportClientOptions} [options] besides the WebSocket client's:
   *   `certificateHashUrl` (the gateway's `/wt/cert-hash`, fetched before each attempt, for its
   *   self-signed dev certificate), `serverCertificateHashes` (fixed instead), `WebTransport`
   *   (an implementation), `webSocketUrl` (the fallback endpoint, same as `urls.websocket`)
   */
  constructor(url, options = {}) {
    super(url, withFallbackUrl(options), [webTransportTransport, webSocketTransport, sseTransport], ['webtransport', 'websocket']);
  }
}

/**
 * The earlier `VentaWebTransportClient`: {@link WebTransportClient} with
 * the seed's hooks (see `VentaWebSocketClient`). `webTransportAttempts` is
 * accepted and ignored: every reconnect now tries WebTransport first.
 */
export class VentaWebTransportClient extends SeedClient {
  /**
   * @param {string | URL} url
   * @param {WebTransportClientOptions & {webTransportAttempts?: number}} [options]
   */
  constructor(url, options = {}) {
    super(url, withFallbackUrl(options), [webTransportTransport, webSocketTransport], ['webtransport', 'websocket']);
  }
}
