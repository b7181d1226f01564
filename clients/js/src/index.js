// @venta/realtime: the venta-gateway client with every transport.
// `RealtimeClient` tries them in the order of `options.transports`
// (WebTransport, WebSocket, then Server-Sent Events by default) and falls back when one is
// missing or fails before opening. For a smaller app import a subpath:
// `@venta/realtime/websocket` (no MessagePack) or `@venta/realtime/webtransport`.

import { BaseClient } from './core.js';
import { webSocketTransport } from './websocket.js';
import { webTransportTransport } from './webtransport.js';
import { sseTransport } from './sse.js';

export * from './webtransport.js';

/**
 * The client over any of the transports, an `EventTarget`: see
 * {@link BaseClient} for its methods and events.
 */
export class RealtimeClient extends BaseClient {
  /**
   * Connects at once.
   * @param {string | URL} url the gateway endpoint, e.g. `https://localhost:5006/wt/location` or
   *   `ws://localhost:5006/ws/location`; each transport's own URL is derived from it (or `options.urls`)
   * @param {import('./webtransport.js').WebTransportClientOptions} [options]
   */
  constructor(url, options = {}) {
    const urls = options.webSocketUrl ? { ...options.urls, websocket: options.webSocketUrl } : options.urls;
    super(url, { ...options, urls }, [webTransportTransport, webSocketTransport, sseTransport], ['webtransport', 'websocket', 'sse']);
  }
}
