// The package as a user gets it: `npm pack`, then install the tarball into
// a fresh project in a temporary directory and
//  (0) type-check a TypeScript file there against the generated .d.ts;
//  (a) run a Node script there that imports '@venta/realtime/websocket' and
//      receives an update published to a real gateway;
//  (b) build two pages there with Vite (7, from this package's
//      devDependencies): one with '@venta/realtime/webtransport', one with
//      '@venta/realtime/websocket', check the WebSocket-only bundle holds no
//      MessagePack, and open both in headless Chromium, each receiving a
//      published update (over WebTransport and WebSocket respectively).
//
//   npm --prefix clients/js run test:pack
//
// Needs network access to the npm registry (the tarball's dependency),
// Chromium (CHROMIUM, default /usr/bin/chromium), NATS at 127.0.0.1:4222.
// Every wait is bounded; any failure exits 1 with the reason.

import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { browse } from '../test/browser.mjs';
import { Gateway, freePort, uniq } from '../test/gateway.mjs';

const pkgDir = dirname(dirname(fileURLToPath(import.meta.url)));
const work = mkdtempSync(join(tmpdir(), 'venta-pack-test-'));
// The string only MessagePack's decoder contains (its error for a bad type byte).
const MSGPACK_MARKER = 'Unrecognized type byte';
const step = (text) => process.stdout.write(`pack-test: ${text}\n`);
const run = (cmd, args, cwd) => {
  try {
    return execFileSync(cmd, args, { cwd, stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8', timeout: 120_000 });
  } catch (err) {
    // The command's stdout (tsc prints its errors there) goes with the failure.
    throw new Error(`${cmd} ${args.join(' ')} failed:\n${err.stdout ?? ''}`);
  }
};

let gw = null;
const children = [];

async function main() {
  step(`npm pack into ${work}`);
  const out = run('npm', ['pack', '--json', '--pack-destination', work], pkgDir);
  // prepack's npm run lines come first on stdout.
  const packed = JSON.parse(out.slice(out.indexOf('\n[') + 1));
  const { filename, files } = packed[0];
  const names = new Set(files.map((f) => f.path));
  for (const must of ['LICENSE', 'README.md', 'package.json', 'src/index.js', 'src/websocket.js', 'src/webtransport.js',
    'types/index.d.ts', 'types/websocket.d.ts', 'types/webtransport.d.ts', 'dist/venta-realtime.browser.js']) {
    if (!names.has(must)) throw new Error(`the tarball lacks ${must}: ${[...names].join(', ')}`);
  }
  for (const name of names) {
    if (name.startsWith('test/') || name.startsWith('node_modules/') || name.startsWith('vendor/')) {
      throw new Error(`the tarball carries ${name}`);
    }
  }
  const tarball = join(work, filename);

  const app = join(work, 'app');
  step('fresh project: npm install the tarball');
  execFileSync('mkdir', ['-p', app]);
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }, null, 2));
  run('npm', ['install', '--no-audit', '--no-fund', '--loglevel=error', tarball], app);
  const installed = JSON.parse(readFileSync(join(app, 'node_modules/@venta/realtime/package.json'), 'utf8'));
  if (installed.license !== 'MIT' || installed.private) throw new Error('installed package is not MIT / is private');
  if (!existsSync(join(app, 'node_modules/@msgpack/msgpack'))) throw new Error('@msgpack/msgpack was not installed');

  step('TypeScript in the fresh project type-checks against the generated declarations');
  writeFileSync(join(app, 'check.ts'), `
import { RealtimeClient, VentaError, type VentaAreaEvent } from '@venta/realtime';
import { WebSocketClient, VentaWebSocketClient } from '@venta/realtime/websocket';
import { WebTransportClient } from '@venta/realtime/webtransport';
const c = new RealtimeClient('ws://localhost:5006/ws/location', { transports: ['websocket', 'sse'], ackTimeoutMs: 5000 });
c.addEventListener('open', () => {});
const p: Promise<void> = c.subscribeToLocation('v1', 'u1', { delivery: 'datagram' });
p.catch((e: unknown) => { if (e instanceof VentaError) { const code: string = e.code; void code; } });
const a: Promise<void> = c.subscribeArea('map', { bbox: { south: 1, west: 2, north: 3, east: 4 } }, { userId: 'u1' });
void a;
const vendors = c.areaVendors('map');
if (vendors) for (const v of vendors.values()) { const lat: number = v.location.lat; void lat; }
const t: string | null = c.transport;
void t;
const ws = new WebSocketClient('ws://localhost:5006/ws/location');
ws.close(1000, 'bye');
class Tracker extends VentaWebSocketClient {
  onLocationUpdate(data: any) { void data; }
}
new Tracker('ws://localhost:5006/ws/location').subscribeToVendor('v1', 'u1');
new WebTransportClient('https://localhost:5006/wt/location', { certificateHashUrl: 'http://localhost:5006/wt/cert-hash' });
const e = null as unknown as VentaAreaEvent;
const kind: 'area_snapshot' | 'vendor_entered' | 'location_updated' | 'vendor_left' = e?.kind;
void kind;
// @ts-expect-error: subscribeArea needs the options with userId
c.subscribeArea('map', { bbox: { south: 1, west: 2, north: 3, east: 4 } });
`);
  writeFileSync(join(app, 'tsconfig.json'), JSON.stringify({
    compilerOptions: { strict: true, noEmit: true, module: 'nodenext', moduleResolution: 'nodenext', target: 'es2022', lib: ['es2022', 'dom'], types: [] },
    files: ['check.ts'],
  }));
  run(process.execPath, [join(pkgDir, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.json'], app);

  const port = await freePort();
  // WebTransport on the HTTP port's number (UDP), as in production.
  gw = await Gateway.start({ port, env: { WT_PORT: String(port) } });

  // (a) Node.
  step('(a) Node script in the fresh project');
  const vendorA = uniq('packnode');
  writeFileSync(join(app, 'node-app.mjs'), `
import { WebSocketClient } from '@venta/realtime/websocket';
import { RealtimeClient } from '@venta/realtime';
const [url, vendor] = process.argv.slice(2);
if (typeof RealtimeClient !== 'function') throw new Error('no RealtimeClient at the root');
const client = new WebSocketClient(url);
client.addEventListener('location', (e) => {
  if (e.data.vendorId !== vendor) return;
  console.log(JSON.stringify({ event: 'location', data: e.data }));
  client.close();
  process.exit(0);
});
await client.subscribeToLocation(vendor, 'u1');
console.log(JSON.stringify({ event: 'subscribed' }));
setTimeout(() => { console.error('node-app: no update within 15 s'); process.exit(1); }, 15000);
`);
  const nodeLines = await runUntil(
    'node',
    ['--experimental-websocket', 'node-app.mjs', gw.url('/ws/location'), vendorA],
    app,
    async (line) => {
      if (line.includes('"subscribed"')) await gw.publish('location', { vendorId: vendorA, location: { lat: 10.5, long: 20.25 } });
      return line.includes('"location"');
    },
  );
  const got = JSON.parse(nodeLines.at(-1));
  if (got.data.location.lat !== 10.5 || got.data.location.long !== 20.25) throw new Error(`node app got ${nodeLines.at(-1)}`);

  // (b) Vite + Chromium.
  step('(b) Vite build of two pages in the fresh project');
  const page = (entry) => `<!doctype html><html><head><meta charset="utf-8"><title>venta</title></head>
<body><pre id="out">PENDING</pre><script type="module" src="./${entry}"></script></body></html>`;
  const script = (importLine, make) => `${importLine}
const q = new URLSearchParams(location.search);
const report = (r) => fetch('/report', { method: 'POST', body: JSON.stringify(r) });
window.addEventListener('unhandledrejection', (e) => report({ ok: false, error: String(e.reason) }));
const client = ${make};
client.addEventListener('location', (e) => {
  if (e.data.vendorId !== q.get('vendor')) return;
  report({ ok: true, transport: client.transport, data: e.data });
});
client.subscribeToLocation(q.get('vendor'), 'u1').then(
  () => fetch('/subscribed'),
  (err) => report({ ok: false, error: 'subscribe: ' + err.code }),
);
setTimeout(() => report({ ok: false, error: 'timeout', transport: client.transport }), 20000);
`;
  writeFileSync(join(app, 'wt.html'), page('wt.js'));
  writeFileSync(join(app, 'wt.js'), script(
    "import { WebTransportClient } from '@venta/realtime/webtransport';",
    "new WebTransportClient(q.get('wt'), { certificateHashUrl: q.get('hash'), transports: ['webtransport'], maxReconnectAttempts: 0 })",
  ));
  writeFileSync(join(app, 'ws.html'), page('ws.js'));
  writeFileSync(join(app, 'ws.js'), script(
    "import { WebSocketClient } from '@venta/realtime/websocket';",
    "new WebSocketClient(q.get('ws'), { maxReconnectAttempts: 0 })",
  ));
  // A plain object: the fresh project has no vite package to import from.
  writeFileSync(join(app, 'vite.config.mjs'), `export default {
  logLevel: 'warn',
  build: { outDir: 'dist', emptyOutDir: true, rollupOptions: { input: { wt: 'wt.html', ws: 'ws.html' } } },
};
`);
  run(process.execPath, [join(pkgDir, 'node_modules/vite/bin/vite.js'), 'build', '--config', 'vite.config.mjs'], app);
  const assets = join(app, 'dist/assets');
  const chunks = readdirSync(assets).filter((f) => f.endsWith('.js'));
  const bundleOf = (html) => {
    const src = readFileSync(join(app, 'dist', html), 'utf8').match(/src="\/assets\/([^"]+\.js)"/)?.[1];
    if (!src) throw new Error(`no script in dist/${html}`);
    return src;
  };
  const textOf = (chunk) => {
    // The entry and whatever it imports statically (Vite may split shared code).
    const seen = new Set();
    const walk = (c) => {
      if (seen.has(c)) return '';
      seen.add(c);
      const text = readFileSync(join(assets, c), 'utf8');
      const deps = [...text.matchAll(/from\s*"\.\/([^"]+\.js)"/g)].map((m) => m[1]);
      return text + deps.map(walk).join('');
    };
    return walk(chunk);
  };
  const wtText = textOf(bundleOf('wt.html'));
  const wsText = textOf(bundleOf('ws.html'));
  if (!wtText.includes(MSGPACK_MARKER)) throw new Error(`the WebTransport page lacks MessagePack (chunks ${chunks})`);
  if (wsText.includes(MSGPACK_MARKER)) throw new Error('the WebSocket-only page bundles MessagePack');
  step(`WebTransport page ${wtText.length} bytes of JS, WebSocket-only page ${wsText.length} (no MessagePack)`);

  for (const [html, expected] of [['wt.html', 'webtransport'], ['ws.html', 'websocket']]) {
    const vendor = uniq('packweb');
    step(`Chromium opens the Vite-built ${html}`);
    const result = await browse({
      root: join(app, 'dist'),
      page: `/${html}`,
      params: { wt: `https://127.0.0.1:${port}/wt/location`, hash: `${gw.http}/wt/cert-hash`, ws: gw.url('/ws/location'), vendor },
      onSubscribed: () => gw.publish('location', { vendorId: vendor, location: { lat: 48.8584, long: 2.2945 } }),
    });
    if (!result.ok) throw new Error(`${html}: ${JSON.stringify(result)}`);
    if (result.transport !== expected) throw new Error(`${html} used ${result.transport}, not ${expected}`);
    if (result.data.location.lat !== 48.8584) throw new Error(`${html} got ${JSON.stringify(result.data)}`);
  }
  step('ok');
}

/** Runs a child until `onLine` returns true for a stdout line (30 s at most); returns the lines. */
function runUntil(cmd, args, cwd, onLine) {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(cmd, args, { cwd, stdio: ['ignore', 'pipe', 'inherit'] });
    children.push(child);
    const lines = [];
    let buf = '';
    let done = false;
    const timer = setTimeout(() => finish(new Error(`${cmd} ${args.join(' ')}: no result within 30 s (${lines})`)), 30_000);
    const finish = (err) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      child.kill();
      if (err) reject(err);
      else resolvePromise(lines);
    };
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', async (chunk) => {
      buf += chunk;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        lines.push(line);
        try {
          if (await onLine(line)) finish();
        } catch (err) {
          finish(err);
        }
      }
    });
    child.on('exit', (code) => finish(code === 0 ? undefined : new Error(`${cmd} exited ${code}: ${lines.join('\n')}`)));
  });
}

let failed = false;
try {
  await main();
} catch (err) {
  failed = true;
  process.stderr.write(`pack-test: FAILED: ${err?.stack ?? err}\n`);
} finally {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill();
  await gw?.dispose();
  rmSync(work, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
