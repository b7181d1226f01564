// Headless Chromium for the client's tests (Debian's chromium; CHROMIUM to
// change): serves a page and its files on loopback, opens it, and waits for
// the page's report. The page tells the test `/subscribed` (the test then
// publishes) and POSTs its result to `/report`. Bounded: 30 s per page.

import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { extname, join, normalize } from 'node:path';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.map': 'application/json' };

/**
 * @param {object} o
 * @param {string} [o.root] a directory to serve
 * @param {Record<string, string>} [o.files] extra files by URL path (`/index.html`), served before `root`
 * @param {string} o.page the path to open, e.g. `/index.html`
 * @param {Record<string, string>} o.params the page's query
 * @param {() => Promise<void>} o.onSubscribed called once when the page says it subscribed
 * @param {number} [o.timeoutMs=30000]
 * @returns {Promise<any>} the page's report
 */
export async function browse({ root, files = {}, page, params, onSubscribed, timeoutMs = 30_000 }) {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} not found: apt-get install -y chromium (Debian's package)`);
  let settle;
  const reported = new Promise((r) => {
    settle = r;
  });
  const logs = [];
  const server = createServer((req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    if (path === '/subscribed') {
      onSubscribed().catch((err) => settle({ ok: false, error: `publish: ${err.message}` }));
      res.writeHead(204).end();
      return;
    }
    if (path === '/report' || path === '/log') {
      let body = '';
      req.on('data', (c) => {
        if (body.length < 65536) body += c;
      });
      req.on('end', () => {
        res.writeHead(204).end();
        if (path === '/log') {
          logs.push(body);
          return;
        }
        try {
          settle(JSON.parse(body));
        } catch {
          settle({ ok: false, error: `bad report ${body}` });
        }
      });
      return;
    }
    let body = files[path];
    if (body === undefined && root) {
      const file = normalize(join(root, path));
      if (file.startsWith(root) && existsSync(file)) body = readFileSync(file);
    }
    if (body === undefined) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': TYPES[extname(path)] ?? 'application/octet-stream', 'cache-control': 'no-store' });
    res.end(body);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${server.address().port}${page}?${new URLSearchParams(params)}`;
  const profile = mkdtempSync(join(tmpdir(), 'venta-chromium-'));
  const chromium = spawn(CHROMIUM, [
    '--headless', '--no-sandbox', '--no-first-run', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--disable-gpu', `--user-data-dir=${profile}`, url,
  ], { stdio: 'ignore' });
  let timer;
  const timeout = new Promise((r) => {
    timer = setTimeout(() => r({ ok: false, error: `${page}: no report within ${timeoutMs} ms` }), timeoutMs);
  });
  const exited = new Promise((r) => chromium.once('exit', (code) => r({ ok: false, error: `chromium exited (${code}) before reporting` })));
  try {
    const result = await Promise.race([reported, timeout, exited]);
    if (!result.ok) result.pageLog = logs;
    return result;
  } finally {
    clearTimeout(timer);
    const gone = new Promise((r) => (chromium.exitCode !== null || chromium.signalCode !== null ? r() : chromium.once('exit', r)));
    chromium.kill();
    await Promise.race([gone, new Promise((r) => setTimeout(r, 5000))]);
    server.close();
    server.closeAllConnections?.();
    // Chromium's helper processes may still be writing the profile for a
    // moment after the main one exited; a leftover temp dir is no failure.
    try {
      rmSync(profile, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
    } catch (err) {
      process.stderr.write(`browser.mjs: could not remove ${profile}: ${err.message}\n`);
    }
  }
}
