// WebSocket (JSON text frames) for the venta-gateway client, without
// MessagePack: `import { WebSocketClient } from '@venta/realtime/websocket'`.

import { BaseClient, SeedClient, parseMessage, swapEndpoint } from './core.js';
import { sseTransport } from './sse.js';

export { sseTransport } from './sse.js';

export { BaseClient, SeedClient };
export {
  VentaError,
  VentaMessageEvent,
  VentaAreaEvent,
  VentaCloseEvent,
  VentaErrorEvent,
  VentaOpenEvent,
  VentaReconnectingEvent,
  VentaFallbackEvent,
} from './core.js';

// WebSocket.readyState OPEN, fixed by the standard; not read from the
// implementation, so an injected one without the static constants works too.
const OPEN = 1;

/**
 * The WebSocket transport. Uses `options.WebSocket` or the global one (any
 * browser, Node 22+, Node 20 with `--experimental-websocket`).
 * @type {import('./core.js').Transport}
 */
export const webSocketTransport = {
  name: 'websocket',
  available: (options) => typeof (options.WebSocket ?? globalThis.WebSocket) === 'function',
  endpoint: (url) => swapEndpoint(url, 'ws', 'ws'),
  open({ url, log, options }, on) {
    const WebSocketImpl = options.WebSocket ?? globalThis.WebSocket;
    const socket = options.protocols === undefined ? new WebSocketImpl(url) : new WebSocketImpl(url, options.protocols);
    let opened = false;
    let ended = false;
    /** @param {import('./core.js').EndInfo} info */
    const end = (info) => {
      if (ended) return;
      ended = true;
      on.onEnd(info);
    };
    socket.onopen = () => {
      opened = true;
      on.onOpen();
    };
    /** @param {MessageEvent} event */
    socket.onmessage = (event) => {
      if (typeof event.data !== 'string') {
        log.warn('Ignoring a binary WebSocket frame');
        return;
      }
      const message = parseMessage(event.data, log, 'a frame');
      if (message) on.onMessage(message);
    };
    /** @param {CloseEvent} event */
    socket.onclose = (event) => end({ code: event.code, reason: event.reason ?? '', wasClean: event.wasClean ?? false });
    /** @param {Event} error */
    socket.onerror = (error) => {
      log.error('WebSocket error:', error);
      // Browsers follow a failed attempt's `error` with `close`, but the
      // WebSocket in Node 20 (undici before nodejs/undici#3546 was fixed)
      // fires only `error` and stays CONNECTING for ever; without this the
      // client would silently stop reconnecting there.
      if (!opened) end({ code: 1006, reason: 'WebSocket error', wasClean: false });
    };
    return {
      kind: 'websocket',
      get open() {
        return !ended && socket.readyState === OPEN;
      },
      send(message) {
        socket.send(JSON.stringify(message));
      },
      close(code, reason) {
        // A socket still connecting can be closed too; it then reports close.
        if (socket.readyState <= OPEN) socket.close(code, reason);
      },
    };
  },
};

/**
 * @typedef {import('./core.js').ClientOptions & {
 *   WebSocket?: any,
 *   protocols?: string | string[],
 *   EventSource?: any,
 * }} WebSocketClientOptions
 */

/**
 * The client over WebSocket (`/ws/location`, `/ws/vendor`), an
 * `EventTarget`; see {@link BaseClient} for its methods and events.
 * `transports: ['websocket', 'sse']` adds Server-Sent Events as the
 * fallback (no codec either).
 */
export class WebSocketClient extends BaseClient {
  /**
   * Connects at once.
   * @param {string | URL} url e.g. `ws://localhost:5006/ws/location` (`?token=JWT` when auth is on)
   * @param {WebSocketClientOptions} [options] `WebSocket`: an implementation instead of the global one
   *   (e.g. the `ws` package); `protocols`: WebSocket sub-protocols; `EventSource`: for `sse`
   */
  constructor(url, options = {}) {
    super(url, options, [webSocketTransport, sseTransport], ['websocket']);
  }
}

/**
 * The seed's client: same constructor, `subscribeToLocation(vendorId,
 * userId)`, overridable `onLocationUpdate` / `onVendorUpdate` hooks that
 * log by default, answers the gateway's `ping`, reconnects a bounded
 * number of times. Kept so the seed's users change nothing; new code
 * should use {@link WebSocketClient} and events.
 */
export class VentaWebSocketClient extends SeedClient {
  /**
   * @param {string | URL} url
   * @param {WebSocketClientOptions} [options] `logger` defaults to `console` here, as in the seed
   */
  constructor(url, options = {}) {
    if (typeof (options.WebSocket ?? globalThis.WebSocket) !== 'function') {
      throw new TypeError(
        'VentaWebSocketClient: no WebSocket implementation. In Node 20 run with ' +
          '--experimental-websocket, or pass options.WebSocket.',
      );
    }
    super(url, { ...options, transports: ['websocket'] }, [webSocketTransport], ['websocket']);
  }
}

export default VentaWebSocketClient;
