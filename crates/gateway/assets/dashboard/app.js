// venta-gateway dashboard: the stats stream (SSE over fetch) and a live map
// fed by an area subscription over /ws/location. No framework, no network
// beyond the gateway. The page never sees ADMIN_TOKEN: the browser sends
// the credentials it was given for /dashboard with these same-origin requests.
'use strict';

const $ = (id) => document.getElementById(id);
const fmt = (n) => (n === null || n === undefined ? '–' : typeof n === 'number' ? n.toLocaleString('en') : String(n));
const setText = (id, v) => { const el = $(id); if (el) el.textContent = fmt(v); };

// ---------------------------------------------------------------- stats
const history = { in: [], out: [], max: 60 };

function showStats(s) {
  const st = s.status;
  setText('instance', `instance ${st.instanceId} · up ${Math.floor(st.uptimeSeconds)} s`);
  setText('conn-total', st.connections.total);
  setText('conn-websocket', st.connections.byTransport.websocket);
  setText('conn-webtransport', st.connections.byTransport.webtransport);
  setText('conn-location', st.connections.byEndpoint.location);
  setText('conn-vendor', st.connections.byEndpoint.vendor);
  setText('conn-max', s.connectionsMax);
  setText('subscriptions', st.subscriptions);
  setText('topics', st.topics);
  setText('areas', s.areas.subscriptions);
  setText('area-vendors', s.areas.vendors);
  setText('msg-in', st.messages.in);
  setText('msg-out', st.messages.out);
  setText('rate-in', s.rates.in.toFixed(1));
  setText('rate-out', s.rates.out.toFixed(1));
  const ms = (v) => (v === null ? '–' : `${v} ms`);
  setText('lat-p50', ms(s.latencyMs.p50));
  setText('lat-p90', ms(s.latencyMs.p90));
  setText('lat-p99', ms(s.latencyMs.p99));
  setText('lat-n', s.latencyMs.observations);
  setText('slow-closed', s.slowConsumers.closed);
  setText('slow-conflated', s.slowConsumers.conflated);
  const health = $('health');
  health.textContent = `health ${s.health.status}`;
  health.className = `pill ${s.health.status}`;
  const checks = $('checks');
  checks.replaceChildren(...Object.entries(s.health.checks).map(([name, c]) => {
    const li = document.createElement('li');
    const a = document.createElement('span'); a.textContent = name;
    const b = document.createElement('span'); b.textContent = c.status; b.className = c.status;
    if (c.detail) b.title = c.detail;
    li.append(a, b);
    return li;
  }));
  // Vendor ids come from publishers: text only, never markup.
  $('busiest').replaceChildren(...s.busiestVendors.map((v) => {
    const tr = document.createElement('tr');
    const a = document.createElement('td'); a.textContent = v.vendorId;
    const b = document.createElement('td'); b.textContent = fmt(v.updates);
    tr.append(a, b);
    return tr;
  }));
  $('busiest-note').textContent = `updates delivered here; counts halve every ${s.busiestHalfLifeSeconds} s`;
  history.in.push(s.rates.in); history.out.push(s.rates.out);
  if (history.in.length > history.max) { history.in.shift(); history.out.shift(); }
  drawChart();
  window.venta.stats = s;
  window.venta.statsEvents += 1;
}

function drawChart() {
  const c = $('chart'); const g = c.getContext('2d');
  const w = c.width, h = c.height;
  g.clearRect(0, 0, w, h);
  const peak = Math.max(1, ...history.in, ...history.out);
  g.strokeStyle = '#2d333b'; g.fillStyle = '#8a96a3'; g.font = '10px system-ui';
  g.beginPath(); g.moveTo(0, h - 0.5); g.lineTo(w, h - 0.5); g.moveTo(0, 10.5); g.lineTo(w, 10.5); g.stroke();
  g.fillText(`${peak.toFixed(0)}/s`, 2, 9);
  for (const [series, color] of [[history.in, '#58a6ff'], [history.out, '#f0883e']]) {
    g.strokeStyle = color; g.lineWidth = 1.5; g.beginPath();
    series.forEach((v, i) => {
      const x = w - (series.length - 1 - i) * (w / (history.max - 1));
      const y = h - 1 - (v / peak) * (h - 12);
      if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
    });
    g.stroke();
  }
}

function streamState(text, ok) {
  const el = $('stream-state'); el.textContent = text; el.className = `pill ${ok ? 'ok' : 'offline'}`;
}

// SSE read with fetch (not EventSource) so a header could be added, and so
// a 401 is seen as such instead of an endless reconnect.
async function statsLoop() {
  let backoff = 1000;
  for (;;) {
    try {
      const resp = await fetch('/dashboard/stats', { headers: { accept: 'text/event-stream' }, credentials: 'same-origin', cache: 'no-store' });
      if (resp.status === 401) { streamState('unauthorized: reload and enter ADMIN_TOKEN', false); return; }
      if (!resp.ok || !resp.body) throw new Error(`HTTP ${resp.status}`);
      streamState('live', true); backoff = 1000;
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let cut;
        while ((cut = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, cut); buf = buf.slice(cut + 2);
          const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart()).join('\n');
          if (data) showStats(JSON.parse(data));
        }
      }
      throw new Error('stream ended');
    } catch (e) {
      streamState(`offline (${e.message}); retrying`, false);
      await new Promise((r) => setTimeout(r, backoff));
      backoff = Math.min(backoff * 2, 15000);
    }
  }
}

// ---------------------------------------------------------------- map
const FADE_MS = 120000; // a marker fades to its faintest over two minutes
const AREA_ID = 'dashboard';

function fragment() {
  const p = new URLSearchParams(location.hash.slice(1));
  const num = (k, d, lo, hi) => { const v = Number(p.get(k)); return Number.isFinite(v) && p.get(k) !== null ? Math.min(hi, Math.max(lo, v)) : d; };
  return { lat: num('lat', 40.4168, -85, 85), long: num('long', -3.7038, -180, 180), span: num('span', 0.12, 0.001, 60) };
}

const map = {
  canvas: null, view: fragment(), markers: new Map(), ws: null, area: null, limits: { maxAreaKm: 50, geoEnabled: true },
  state: 'starting', resendTimer: null,

  // Equirectangular around the view's centre, longitudes scaled by
  // cos(latitude): distances look right at the scale an area allows.
  scale() { return this.canvas.height / this.view.span; },
  kx() { return Math.cos((this.view.lat * Math.PI) / 180); },
  project(lat, long) {
    const k = this.scale();
    return [this.canvas.width / 2 + (long - this.view.long) * this.kx() * k, this.canvas.height / 2 - (lat - this.view.lat) * k];
  },
  unproject(x, y) {
    const k = this.scale();
    return [this.view.lat - (y - this.canvas.height / 2) / k, this.view.long + (x - this.canvas.width / 2) / (k * this.kx())];
  },
  viewBox() {
    const [north, west] = this.unproject(0, 0);
    const [south, east] = this.unproject(this.canvas.width, this.canvas.height);
    return { south: Math.max(-90, south), west: Math.max(-180, west), north: Math.min(90, north), east: Math.min(180, east) };
  },
  // The subscribed box: the view, shrunk around its centre when its
  // diagonal is over GEO_MAX_AREA_KM (the gateway would refuse it).
  subscriptionBox() {
    const b = this.viewBox();
    const diag = haversineKm(b.south, b.west, b.north, b.east);
    const limit = this.limits.maxAreaKm * 0.98;
    if (diag <= limit) return b;
    const f = limit / diag;
    const hl = ((b.north - b.south) / 2) * f, hw = ((b.east - b.west) / 2) * f;
    return { south: this.view.lat - hl, north: this.view.lat + hl, west: this.view.long - hw, east: this.view.long + hw };
  },

  draw() {
    const c = this.canvas, g = c.getContext('2d'), w = c.width, h = c.height;
    g.fillStyle = '#101820'; g.fillRect(0, 0, w, h);
    // Grid at a round step giving about six lines across the height.
    const step = niceStep(this.view.span / 6);
    const digits = Math.max(0, -Math.floor(Math.log10(step)));
    const b = this.viewBox();
    g.strokeStyle = '#24313d'; g.lineWidth = 1; g.fillStyle = '#6e7f8f'; g.font = '11px system-ui';
    for (let lat = Math.ceil(b.south / step) * step; lat <= b.north; lat += step) {
      const y = Math.round(this.project(lat, this.view.long)[1]) + 0.5;
      g.beginPath(); g.moveTo(0, y); g.lineTo(w, y); g.stroke();
      g.fillText(`${lat.toFixed(digits)}°`, 3, y - 3);
    }
    for (let long = Math.ceil(b.west / step) * step; long <= b.east; long += step) {
      const x = Math.round(this.project(this.view.lat, long)[0]) + 0.5;
      g.beginPath(); g.moveTo(x, 0); g.lineTo(x, h); g.stroke();
      g.fillText(`${long.toFixed(digits)}°`, x + 3, h - 4);
    }
    if (this.area) {
      const [x1, y1] = this.project(this.area.north, this.area.west);
      const [x2, y2] = this.project(this.area.south, this.area.east);
      g.setLineDash([6, 4]); g.strokeStyle = '#3d6f99'; g.strokeRect(x1, y1, x2 - x1, y2 - y1); g.setLineDash([]);
    }
    const now = Date.now();
    for (const [id, m] of this.markers) {
      const [x, y] = this.project(m.lat, m.long);
      if (x < -20 || y < -20 || x > w + 20 || y > h + 20) continue;
      const alpha = Math.max(0.25, 1 - (now - m.seen) / FADE_MS);
      g.globalAlpha = alpha;
      g.fillStyle = '#ff5a36'; g.beginPath(); g.arc(x, y, 7, 0, 2 * Math.PI); g.fill();
      g.strokeStyle = '#ffffff'; g.lineWidth = 1.5; g.stroke();
      g.fillStyle = '#e6e6e6'; g.font = '11px system-ui'; g.fillText(id, x + 10, y + 4);
      g.globalAlpha = 1;
    }
    g.fillStyle = '#8a96a3'; g.font = '11px system-ui';
    g.fillText(`${this.view.lat.toFixed(4)}, ${this.view.long.toFixed(4)} · ${this.markers.size} vendors`, w - 230, 14);
    window.venta.frames += 1;
  },

  setState(s) { this.state = s; $('map-state').textContent = s; },

  async connect() {
    let info = { token: null };
    try {
      const r = await fetch('/dashboard/map-token', { credentials: 'same-origin', cache: 'no-store' });
      if (r.ok) info = await r.json();
      this.limits = { maxAreaKm: info.maxAreaKm ?? 50, geoEnabled: info.geoEnabled !== false };
    } catch (_) { /* retried below */ }
    if (!this.limits.geoEnabled) { this.setState('area subscriptions are off (GEO_ENABLED=false)'); return; }
    if (info.authRequired && !info.token) { this.setState(info.note || 'no map token'); return; }
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    // A client JWT (not ADMIN_TOKEN) may ride in the query: browsers cannot
    // set headers on a WebSocket, and it is short-lived.
    const q = info.token ? `?token=${encodeURIComponent(info.token)}` : '';
    const ws = new WebSocket(`${proto}//${location.host}/ws/location${q}`);
    this.ws = ws;
    this.userId = info.userId || 'dashboard';
    ws.onopen = () => { this.setState('connected'); this.subscribe(); };
    ws.onmessage = (e) => this.onMessage(e.data);
    ws.onclose = (e) => {
      this.setState(`closed (${e.code}); reconnecting`);
      this.ws = null;
      setTimeout(() => this.connect(), 2000);
    };
  },

  subscribe() {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    const bbox = this.subscriptionBox();
    this.pending = bbox;
    this.ws.send(JSON.stringify({ type: 'subscribe_area', id: `area-${Date.now()}`, data: { areaId: AREA_ID, userId: this.userId, bbox } }));
  },

  // Pan and zoom: the same areaId again moves the area (§2.9).
  resubscribeSoon() {
    clearTimeout(this.resendTimer);
    this.resendTimer = setTimeout(() => this.subscribe(), 150);
  },

  onMessage(text) {
    let msg;
    try { msg = JSON.parse(text); } catch (_) { return; }
    const d = msg.data || {};
    switch (msg.type) {
      case 'ping': this.ws.send(JSON.stringify({ type: 'pong' })); break;
      case 'subscribed': if (d.channel === 'area') { this.area = this.pending; this.setState('live'); window.venta.areaAcks += 1; } break;
      case 'area_snapshot':
        for (const v of d.vendors) this.put(v.vendorId, v.location);
        window.venta.snapshots += 1;
        break;
      case 'vendor_entered': this.put(d.vendorId, d.location); break;
      case 'location_updated': if (d.areaId === AREA_ID) this.put(d.vendorId, d.location); break;
      case 'vendor_left': this.markers.delete(d.vendorId); break;
      case 'error': this.setState(`error: ${d.code} ${d.message || ''}`); break;
      default: break;
    }
  },

  put(id, loc) {
    this.markers.set(id, { lat: loc.lat, long: loc.long, seen: Date.now() });
    window.venta.moves += 1;
  },

  start() {
    this.canvas = $('map');
    let drag = null;
    this.canvas.addEventListener('pointerdown', (e) => { drag = { x: e.clientX, y: e.clientY }; this.canvas.setPointerCapture(e.pointerId); });
    this.canvas.addEventListener('pointermove', (e) => {
      if (!drag) return;
      const k = this.scale();
      this.view.lat = Math.min(85, Math.max(-85, this.view.lat + (e.clientY - drag.y) / k));
      this.view.long = Math.min(180, Math.max(-180, this.view.long - (e.clientX - drag.x) / (k * this.kx())));
      drag = { x: e.clientX, y: e.clientY };
      this.resubscribeSoon();
    });
    this.canvas.addEventListener('pointerup', () => { drag = null; });
    this.canvas.addEventListener('wheel', (e) => {
      e.preventDefault();
      this.view.span = Math.min(60, Math.max(0.001, this.view.span * (e.deltaY > 0 ? 1.25 : 0.8)));
      this.resubscribeSoon();
    }, { passive: false });
    const frame = () => { this.draw(); requestAnimationFrame(frame); };
    requestAnimationFrame(frame);
    this.connect();
  },
};

function niceStep(raw) {
  const p = 10 ** Math.floor(Math.log10(raw));
  const m = raw / p;
  return (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * p;
}

function haversineKm(lat1, lon1, lat2, lon2) {
  const r = Math.PI / 180;
  const a = Math.sin(((lat2 - lat1) * r) / 2) ** 2 + Math.cos(lat1 * r) * Math.cos(lat2 * r) * Math.sin(((lon2 - lon1) * r) / 2) ** 2;
  return 2 * 6371.0088 * Math.asin(Math.min(1, Math.sqrt(a)));
}

// What tests (and the curious) can read from the console.
window.venta = { map, stats: null, statsEvents: 0, frames: 0, moves: 0, snapshots: 0, areaAcks: 0 };
window.addEventListener('DOMContentLoaded', () => { map.start(); statsLoop(); });
