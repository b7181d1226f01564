// A tiny HTTP proxy in front of a gateway, as a locked-down corporate proxy
// behaves: plain requests (and so Server-Sent Events) pass, streamed; a
// WebSocket upgrade is answered 403 while `refuseUpgrades` is set, else
// passed through. `dropAll()` cuts every proxied connection (a network
// blip), so a client has to reconnect.

import { request } from 'node:http';
import { connect } from 'node:net';
import { createServer as createHttpServer } from 'node:http';

export class RefusingProxy {
  /** @param {number} upstreamPort the gateway's HTTP port on 127.0.0.1 */
  static async start(upstreamPort) {
    const p = new RefusingProxy(upstreamPort);
    await new Promise((r) => p.server.listen(0, '127.0.0.1', r));
    p.port = p.server.address().port;
    return p;
  }

  refuseUpgrades = true;
  upgradesRefused = 0;
  /** @type {Set<import('node:net').Socket>} */
  #sockets = new Set();

  constructor(upstreamPort) {
    this.upstreamPort = upstreamPort;
    this.server = createHttpServer((req, res) => {
      const up = request(
        { host: '127.0.0.1', port: upstreamPort, method: req.method, path: req.url, headers: req.headers },
        (upRes) => {
          res.writeHead(upRes.statusCode ?? 502, upRes.headers);
          res.flushHeaders();
          upRes.pipe(res);
        },
      );
      up.on('error', () => res.destroy());
      res.on('close', () => up.destroy());
      req.pipe(up);
    });
    this.server.on('connection', (s) => {
      this.#sockets.add(s);
      s.on('close', () => this.#sockets.delete(s));
    });
    this.server.on('upgrade', (req, socket, head) => {
      if (this.refuseUpgrades) {
        this.upgradesRefused++;
        socket.end('HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: 24\r\nconnection: close\r\n\r\nupgrades are not allowed');
        return;
      }
      const up = connect(upstreamPort, '127.0.0.1', () => {
        const lines = [`${req.method} ${req.url} HTTP/1.1`];
        for (let i = 0; i < req.rawHeaders.length; i += 2) lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
        up.write(`${lines.join('\r\n')}\r\n\r\n`);
        if (head.length) up.write(head);
        up.pipe(socket);
        socket.pipe(up);
      });
      this.#sockets.add(up);
      up.on('close', () => this.#sockets.delete(up));
      up.on('error', () => socket.destroy());
      socket.on('error', () => up.destroy());
    });
  }

  get http() {
    return `http://127.0.0.1:${this.port}`;
  }

  url(path) {
    return `ws://127.0.0.1:${this.port}${path}`;
  }

  dropAll() {
    for (const s of this.#sockets) s.destroy();
  }

  close() {
    this.dropAll();
    this.server.close();
  }
}
