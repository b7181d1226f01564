// A real venta-gateway for the client's tests: the debug binary cargo
// builds (VENTA_GATEWAY_BIN, else target/debug/venta-gateway at the
// repository root, built with `cargo build -p venta-gateway` if missing),
// on free loopback ports, against the machine's NATS at 127.0.0.1:4222
// (NATS_URL to change). Every wait is on a condition with a deadline.

import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

/** Resolves once `condition()` is truthy (it may be async); rejects after `ms`. */
export async function until(what, condition, ms = 10_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await condition();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The first event `type` on `target` that passes `filter`; rejects after `ms`. */
export function nextEvent(target, type, filter = () => true, ms = 10_000) {
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => {
      target.removeEventListener(type, on);
      reject(new Error(`no '${type}' event within ${ms} ms`));
    }, ms);
    function on(event) {
      if (!filter(event)) return;
      clearTimeout(timer);
      target.removeEventListener(type, on);
      resolvePromise(event);
    }
    target.addEventListener(type, on);
  });
}

/** A TCP port free on 127.0.0.1 now. */
export function freePort() {
  return new Promise((resolvePromise, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolvePromise(port));
    });
  });
}

/** The gateway binary, built once if missing. */
export function gatewayBinary() {
  const fromEnv = process.env.VENTA_GATEWAY_BIN;
  if (fromEnv) {
    if (!existsSync(fromEnv)) throw new Error(`VENTA_GATEWAY_BIN=${fromEnv} does not exist`);
    return fromEnv;
  }
  const bin = join(ROOT, 'target/debug/venta-gateway');
  if (!existsSync(bin)) {
    process.stderr.write('gateway.mjs: building the gateway (cargo build -p venta-gateway)\n');
    const r = spawnSync('cargo', ['build', '-p', 'venta-gateway'], { cwd: ROOT, stdio: 'inherit' });
    if (r.status !== 0 || !existsSync(bin)) throw new Error('cargo build -p venta-gateway failed');
  }
  return bin;
}

/** A unique id for this run, so tests sharing one NATS do not see each other's vendors. */
export const uniq = (prefix) => `${prefix}${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;

export class Gateway {
  /**
   * @param {{port?: number, env?: Record<string, string>}} [opts]
   */
  static async start(opts = {}) {
    const gw = new Gateway(opts.port ?? (await freePort()), opts.env ?? {});
    await gw.#spawn();
    return gw;
  }

  #child = null;
  #exited = null;
  #dir;

  constructor(port, env) {
    this.port = port;
    this.env = env;
    this.#dir = mkdtempSync(join(tmpdir(), 'venta-js-test-'));
  }

  get http() {
    return `http://127.0.0.1:${this.port}`;
  }

  url(path) {
    return `ws://127.0.0.1:${this.port}${path}`;
  }

  async #spawn() {
    const env = {
      ...process.env,
      WEBSOCKET_GATEWAY_PORT: String(this.port),
      GRPC_PORT: String(await freePort()),
      WT_PORT: this.env.WT_PORT ?? '0',
      BIND_ADDR: '127.0.0.1',
      LOG_LEVEL: 'warn',
      AUDIT_JOURNAL_DIR: join(this.#dir, 'journal'),
      AUDIT_SQLITE_PATH: join(this.#dir, 'audit.db'),
      ...this.env,
    };
    const child = spawn(gatewayBinary(), [], { env, stdio: ['ignore', 'ignore', 'inherit'] });
    this.#child = child;
    this.#exited = new Promise((r) => child.once('exit', (code, signal) => r({ code, signal })));
    let exited = false;
    this.#exited.then(() => {
      exited = true;
    });
    await until(`gateway on port ${this.port} ready`, async () => {
      if (exited) throw new Error(`gateway on port ${this.port} exited during start`);
      try {
        const r = await fetch(`${this.http}/health/ready`);
        return r.status === 200;
      } catch {
        return false;
      }
    }, 30_000);
  }

  /** Publishes over the HTTP ingest API; throws unless accepted. */
  async publish(kind, body) {
    const r = await fetch(`${this.http}/api/v1/publish/${kind}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    if (!r.ok) throw new Error(`publish ${kind}: HTTP ${r.status} ${await r.text()}`);
  }

  /** Stops the process (SIGTERM, then SIGKILL after 10 s) and waits for it. */
  async stop() {
    const child = this.#child;
    if (!child) return;
    this.#child = null;
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const killer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await this.#exited;
      clearTimeout(killer);
    }
  }

  /** Stops, then starts again on the same port. */
  async restart() {
    await this.stop();
    await this.#spawn();
  }

  async dispose() {
    await this.stop();
    rmSync(this.#dir, { recursive: true, force: true });
  }
}
