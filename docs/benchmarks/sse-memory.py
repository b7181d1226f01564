"""RSS per idle subscribed connection: SSE vs WebSocket (stdlib only).

    python3 docs/benchmarks/sse-memory.py target/release/venta-gateway [connections=2000]

Starts a fresh gateway per kind (embedded default, its own ports), opens the
connections (SSE: GET /sse/location; WebSocket: upgrade + subscribe_location),
waits for every ack, and prints RSS delta / connections. Raise `ulimit -n`
above the count first.
"""
import os, socket, struct, subprocess, sys, time, json, tempfile, base64

N = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
BIN = sys.argv[1]

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

def wait_for(sock, needle, buf=b""):
    sock.settimeout(20)
    while needle not in buf:
        d = sock.recv(65536)
        if not d:
            raise RuntimeError("closed")
        buf += d
    return buf

def sse(port, i):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"GET /sse/location?vendorId=v{i % 100}&userId=u{i} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    return s

def ws(port, i):
    s = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(f"GET /ws/location HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-key: {key}\r\nsec-websocket-version: 13\r\n\r\n".encode())
    return s

def ws_subscribe(s, i):
    payload = json.dumps({"type": "subscribe_location", "data": {"vendorId": f"v{i % 100}", "userId": f"u{i}"}}).encode()
    mask = os.urandom(4)
    head = bytes([0x81, 0x80 | len(payload)]) + mask
    s.sendall(head + bytes(b ^ mask[j % 4] for j, b in enumerate(payload)))

def run(kind):
    port = free_port()
    d = tempfile.mkdtemp()
    env = dict(os.environ, WEBSOCKET_GATEWAY_PORT=str(port), GRPC_PORT=str(free_port()), WT_PORT=str(free_port()),
               WS_MAX_CONNECTIONS="20000", HTTP_MAX_CONNECTIONS="20000", AUDIT_SQLITE_PATH=f"{d}/a.db",
               AUDIT_JOURNAL_DIR=f"{d}/j", RUST_LOG="warn", BIND_ADDR="127.0.0.1")
    p = subprocess.Popen([BIN], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port)).close(); break
            except OSError:
                time.sleep(0.05)
        # Warm-up: a few of the same kind, then baseline.
        warm = [sse(port, i) if kind == "sse" else ws(port, i) for i in range(50)]
        for i, s in enumerate(warm):
            if kind == "ws":
                wait_for(s, b"\r\n\r\n"); ws_subscribe(s, i)
            wait_for(s, b"subscribed")
        time.sleep(1)
        base = rss_kib(p.pid)
        socks = []
        t0 = time.time()
        for i in range(N):
            socks.append(sse(port, i) if kind == "sse" else ws(port, i))
        for i, s in enumerate(socks):
            if kind == "ws":
                wait_for(s, b"\r\n\r\n"); ws_subscribe(s, i)
            wait_for(s, b"subscribed")
        took = time.time() - t0
        time.sleep(2)
        after = rss_kib(p.pid)
        print(f"{kind}: {N} idle subscribed connections: RSS {base} -> {after} KiB, "
              f"{(after - base) / N:.2f} KiB per connection; opened+acked in {took:.2f} s")
        for s in socks + warm:
            s.close()
    finally:
        p.terminate(); p.wait(timeout=20)

import resource
h = resource.getrlimit(resource.RLIMIT_NOFILE)[1]; resource.setrlimit(resource.RLIMIT_NOFILE, (h, h))
for kind in sys.argv[3:] or ["sse", "ws"]:
    run(kind)
