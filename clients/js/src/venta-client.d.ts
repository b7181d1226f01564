// Types for venta-client.js: the gateway's client protocol (WebSocket JSON,
// WebTransport MessagePack with the same messages) and the client classes.

// ------------------------------------------------------------------ messages

export type Channel = 'location' | 'vendor';

export interface LatLong {
  /** In [-90, 90]. */
  lat: number;
  /** In [-180, 180]. */
  long: number;
}

export interface LocationUpdate {
  vendorId: string;
  location: LatLong;
  /** RFC 3339. */
  timestamp: string;
  /** True when this is the last known location sent on subscribe rather than a live update. */
  snapshot?: boolean;
  /** Present when this is a move inside one of the client's areas (delivered to `onAreaLocationUpdate`). */
  areaId?: string;
}

export interface Vendor {
  name: string;
  description?: string;
  /** Extra vendor fields pass through the gateway untouched. */
  [field: string]: unknown;
}

export interface VendorUpdate {
  vendorId: string;
  vendor: Vendor;
  /** RFC 3339. */
  timestamp: string;
}

export interface VendorSubscriptionAck {
  channel: Channel;
  vendorId: string;
}

export interface AreaSubscriptionAck {
  channel: 'area';
  areaId: string;
}

/** `subscribed` / `unsubscribed`: a vendor's channel, or one of the client's areas. */
export type SubscriptionAck = VendorSubscriptionAck | AreaSubscriptionAck;

/** A latitude/longitude box, edges included; `west > east` crosses the antimeridian. `south <= north`. */
export interface BBox {
  south: number;
  west: number;
  north: number;
  east: number;
}

/** Every point within `radiusM` metres (great-circle) of `center`. */
export interface Circle {
  center: LatLong;
  /** Metres, > 0. */
  radiusM: number;
}

/**
 * Exactly one of the two. At most the gateway's GEO_MAX_AREA_KM across (50 km by
 * default: a box's diagonal, a circle's diameter), else `area_too_large`.
 */
export type AreaShape = { bbox: BBox; circle?: undefined } | { circle: Circle; bbox?: undefined };

/** A vendor inside an area. */
export interface AreaVendor {
  vendorId: string;
  location: LatLong;
  /** RFC 3339, UTC (`Z`). */
  timestamp: string;
}

export interface AreaSnapshot {
  areaId: string;
  /** At most GEO_SNAPSHOT_MAX (500 by default). */
  vendors: AreaVendor[];
  /** More vendors were inside than listed. */
  truncated: boolean;
}

export interface VendorEntered extends AreaVendor {
  areaId: string;
}

/** `location_updated` with `areaId`: a move inside the area. */
export interface AreaLocationUpdate extends AreaVendor {
  areaId: string;
}

/** `moved`: its new position is outside; `expired`: silent for GEO_VENDOR_TTL; `area_changed`: the area moved away. */
export type LeftReason = 'moved' | 'expired' | 'area_changed';

export interface VendorLeft {
  areaId: string;
  vendorId: string;
  reason: LeftReason;
}

export type GatewayErrorCode =
  | 'invalid_json'
  | 'unknown_type'
  | 'invalid_field'
  | 'unauthorized'
  | 'forbidden'
  | 'rate_limited'
  | 'too_many_subscriptions'
  | 'message_too_large'
  | 'invalid_frame'
  | 'area_too_large'
  | 'unavailable'
  | 'internal'
  // Forward compatibility: unknown codes are still strings.
  | (string & {});

export interface GatewayError {
  code: GatewayErrorCode;
  message: string;
  /** The `type` of the refused request, when the server could read it. */
  requestType?: string;
  /** With `rate_limited`: in (0, 60000]. */
  retryAfterMs?: number;
}

/** `vendorId`, `userId` and `areaId` must match `^[A-Za-z0-9_-]{1,64}$`. */
export type ClientMessage =
  | { type: 'subscribe_location'; data: { vendorId: string; userId: string }; id?: string }
  | { type: 'unsubscribe_location'; data: { vendorId: string }; id?: string }
  | { type: 'subscribe_vendor'; data: { vendorId: string; userId: string }; id?: string }
  | { type: 'unsubscribe_vendor'; data: { vendorId: string }; id?: string }
  | {
      type: 'subscribe_area';
      data: { areaId: string; userId: string; delivery?: Delivery } & AreaShape;
      id?: string;
    }
  | { type: 'unsubscribe_area'; data: { areaId: string }; id?: string }
  | { type: 'ping'; data?: Record<string, never>; id?: string }
  | { type: 'pong'; data?: Record<string, never>; id?: string };

export type ServerMessage =
  | { type: 'location_updated'; data: LocationUpdate }
  | { type: 'vendor_updated'; data: VendorUpdate }
  | { type: 'area_snapshot'; data: AreaSnapshot }
  | { type: 'vendor_entered'; data: VendorEntered }
  | { type: 'vendor_left'; data: VendorLeft }
  | { type: 'subscribed'; data: SubscriptionAck; id?: string }
  | { type: 'unsubscribed'; data: SubscriptionAck; id?: string }
  | { type: 'error'; data: GatewayError; id?: string }
  | { type: 'ping'; data?: unknown }
  | { type: 'pong'; data?: unknown; id?: string };

export type MessageOf<T extends ServerMessage['type']> = Extract<ServerMessage, { type: T }>;

// -------------------------------------------------------------------- client

export interface Logger {
  log?: (...args: unknown[]) => void;
  warn?: (...args: unknown[]) => void;
  error?: (...args: unknown[]) => void;
}

/** The part of a WebSocket `CloseEvent` the client relies on (no DOM lib needed). */
export interface CloseEventLike {
  code: number;
  reason: string;
  wasClean: boolean;
}

export interface VentaClientOptions {
  /** Reconnect attempts after a drop before giving up; reset by every successful open. Default 5. */
  maxReconnectAttempts?: number;
  /** Delay before the first reconnect attempt, doubled on each further one (with jitter). Default 1000. */
  reconnectBaseDelayMs?: number;
  /** Cap on a single reconnect delay. Default 30000. */
  reconnectMaxDelayMs?: number;
  /** Messages kept while disconnected; the oldest are dropped beyond this. Default 100. */
  maxQueuedMessages?: number;
  /** Where to log; `null` or `false` silences the client. Default `console`. */
  logger?: Logger | null | false;
  /** WebSocket implementation; defaults to `globalThis.WebSocket`. */
  WebSocket?: new (url: string, protocols?: string | string[]) => unknown;
  /** WebSocket sub-protocols. */
  protocols?: string | string[];
  /**
   * Returns a JWT. Asked before every connect (it replaces the URL's `token`)
   * and `refreshLeadMs` before the current token expires: the client then
   * sends `refresh` and the connection lives on instead of closing with 4001.
   */
  getToken?: () => string | Promise<string>;
  /** How long before a token's `exp` to refresh it. Default 60000. */
  refreshLeadMs?: number;
}

export interface ReconnectInfo {
  /** Counts from 1 since the last successful open. */
  attempt: number;
  delayMs: number;
}

export type Delivery = 'stream' | 'datagram';

export interface AreaSubscriptionOptions {
  /** Required: who is asking (the token's `sub` when auth is on). */
  userId: string;
  /** `datagram`: over WebTransport, moves inside the area come as datagrams (latest wins); ignored over WebSocket. */
  delivery?: Delivery;
}

export interface LocationSubscriptionOptions {
  /** `datagram`: over WebTransport, location updates come as datagrams (latest wins); ignored over WebSocket. */
  delivery?: Delivery;
}

/** What both clients share; use `VentaWebSocketClient` or `VentaWebTransportClient`. */
export class VentaClient {
  #private;

  protected constructor(url: string, options: VentaClientOptions, transport: never);

  /** True while the connection is open. */
  readonly connected: boolean;
  /** The transport of the current (or last) connection. */
  readonly transport: 'websocket' | 'webtransport' | null;

  /** Subscribes to location updates; queued until open and re-sent after every reconnect. */
  subscribeToLocation(vendorId: string, userId: string, options?: LocationSubscriptionOptions): void;
  /** Subscribes to vendor profile updates; queued until open and re-sent after every reconnect. */
  subscribeToVendor(vendorId: string, userId: string): void;
  /** Forgets the subscription; tells the server only when connected. */
  unsubscribeFromLocation(vendorId: string): void;
  /** Forgets the subscription; tells the server only when connected. */
  unsubscribeFromVendor(vendorId: string): void;
  /**
   * Follows every vendor inside an area; again with the same `areaId`, moves it (no new
   * snapshot, only entered/left for the difference). Queued until open and re-sent after
   * every reconnect. Throws a TypeError without `options.userId` or unless exactly one
   * of `bbox` and `circle` is given.
   */
  subscribeArea(areaId: string, shape: AreaShape, options: AreaSubscriptionOptions): void;
  /** Forgets the area and its vendors (no event of it reaches the hooks after this); tells the server only when connected. */
  unsubscribeArea(areaId: string): void;
  /** The vendors inside an area as last reported (a copy), or `undefined` for an area not subscribed. */
  areaVendors(areaId: string): Map<string, AreaVendor> | undefined;
  /** Sends a `ping` (queued when disconnected); returns its id, echoed in the `pong`. */
  ping(): string;
  /** Closes for good: no further reconnects. */
  close(code?: number, reason?: string): void;

  // Overridable hooks. The second argument is the whole message (for the echoed `id`).
  onLocationUpdate(data: LocationUpdate, message: MessageOf<'location_updated'>): void;
  onVendorUpdate(data: VendorUpdate, message: MessageOf<'vendor_updated'>): void;
  /** Once per new area, after its `subscribed` and before any other event of it. */
  onAreaSnapshot(data: AreaSnapshot, message: MessageOf<'area_snapshot'>): void;
  onVendorEntered(data: VendorEntered, message: MessageOf<'vendor_entered'>): void;
  /** `location_updated` with `areaId` (not passed to `onLocationUpdate`). */
  onAreaLocationUpdate(data: AreaLocationUpdate, message: { type: 'location_updated'; data: AreaLocationUpdate }): void;
  onVendorLeft(data: VendorLeft, message: MessageOf<'vendor_left'>): void;
  onSubscribed(data: SubscriptionAck, message: MessageOf<'subscribed'>): void;
  onUnsubscribed(data: SubscriptionAck, message: MessageOf<'unsubscribed'>): void;
  onError(data: GatewayError, message: MessageOf<'error'>): void;
  onPong(data: unknown, message: MessageOf<'pong'>): void;
  /** Called after the client has answered the server's heartbeat with `pong`. */
  onPing(message: MessageOf<'ping'>): void;
  onOpen(): void;
  /** Only for connections that had opened; failed attempts go to `onReconnecting`. */
  onClose(event: CloseEventLike): void;
  onReconnecting(info: ReconnectInfo): void;
  onGiveUp(): void;
  onUnknownMessage(message: { type?: unknown; [field: string]: unknown }): void;
  /** The gateway accepted a refreshed token; `expiresAt` is its new expiry (RFC 3339). */
  onRefreshed(data: { expiresAt?: string }, message: { type: 'refreshed'; data: { expiresAt?: string }; id?: string }): void;
}

export class VentaWebSocketClient extends VentaClient {
  /** Opens the connection at once. Throws if no WebSocket implementation is available. */
  constructor(url: string, options?: VentaClientOptions);
}

export interface CertificateHash {
  algorithm: string;
  value: BufferSource;
}

export interface VentaWebTransportClientOptions extends VentaClientOptions {
  /** Fetched before each attempt (e.g. `http://localhost:5006/wt/cert-hash`); both `value` and `next` are trusted. */
  certificateHashUrl?: string;
  /** Fixed hashes instead of `certificateHashUrl`. */
  serverCertificateHashes?: CertificateHash[];
  /** Fallback endpoint. Default: same host, port and query, `/ws/…` (`ws:` on an http page or in Node, `wss:` otherwise). */
  webSocketUrl?: string;
  /** Failed WebTransport attempts, before any succeeded, after which the client uses WebSocket for good. Default 2. */
  webTransportAttempts?: number;
  /** WebTransport implementation; defaults to `globalThis.WebTransport`. */
  WebTransport?: new (url: string, options?: unknown) => unknown;
}

export class VentaWebTransportClient extends VentaClient {
  /**
   * Opens the session at once (`https://host:WT_PORT/wt/location`). Falls back to WebSocket when
   * WebTransport is missing or keeps failing; throws if neither is available.
   */
  constructor(url: string, options?: VentaWebTransportClientOptions);
}

export default VentaWebSocketClient;
