//! Container health probe: `GET` one of the gateway's health routes over
//! loopback and exit 0 on `200`, 1 otherwise.
//!
//! The runtime image has no curl or wget, and a probe written in shell
//! needs a shell in the image and breaks on quoting; this one is a static
//! piece of the standard library (no crate dependencies), so the Dockerfile
//! compiles it with plain `rustc` in seconds and runs it in exec form.
//!
//! ```sh
//! venta-healthcheck                       # GET /health/live on 127.0.0.1:$WEBSOCKET_GATEWAY_PORT (5006)
//! venta-healthcheck /health/ready         # readiness instead
//! venta-healthcheck /health/ready --addr 127.0.0.1:5006
//! cargo run --example healthcheck -- /health/ready
//! ```
//!
//! Every step is bounded (connect 2 s, write and read 3 s, at most 1 KiB of
//! response read), so the probe finishes inside Docker's 5 s timeout even
//! when the gateway accepts and then says nothing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const IO_TIMEOUT: Duration = Duration::from_secs(3);
/// Enough for the status line; the body is not needed.
const MAX_RESPONSE: usize = 1024;
const DEFAULT_PORT: u16 = 5006;

struct Probe {
    addr: String,
    path: String,
}

fn parse_args() -> Result<Probe, String> {
    let port = match std::env::var("WEBSOCKET_GATEWAY_PORT") {
        Ok(p) => p.parse::<u16>().map_err(|_| format!("WEBSOCKET_GATEWAY_PORT={p:?} is not a port"))?,
        Err(_) => DEFAULT_PORT,
    };
    let mut probe = Probe { addr: format!("127.0.0.1:{port}"), path: "/health/live".to_owned() };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => probe.addr = args.next().ok_or("--addr needs HOST:PORT")?,
            "-h" | "--help" => {
                return Err("usage: venta-healthcheck [PATH (/health/live)] [--addr HOST:PORT]".to_owned());
            }
            p if p.starts_with('/') => probe.path = p.to_owned(),
            other => return Err(format!("unexpected argument {other:?} (a path starts with /)")),
        }
    }
    if probe.path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err("the path must not contain spaces or control characters".to_owned());
    }
    Ok(probe)
}

/// The HTTP status code the gateway answered with.
fn status_of(probe: &Probe) -> Result<u16, String> {
    let addrs: Vec<SocketAddr> = probe.addr.to_socket_addrs().map_err(|e| format!("{}: {e}", probe.addr))?.collect();
    let mut last = format!("{}: no address", probe.addr);
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("connect {addr}: {e}"),
        }
    }
    let mut stream = stream.ok_or(last)?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
    let request = format!("GET {} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", probe.path);
    stream.write_all(request.as_bytes()).map_err(|e| format!("write: {e}"))?;
    let mut buf = [0u8; MAX_RESPONSE];
    let mut len = 0;
    // Read until the status line is complete, the peer closes, or the
    // buffer is full.
    while len < buf.len() && !buf[..len].contains(&b'\n') {
        match stream.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next().and_then(|c| c.parse::<u16>().ok())) {
        (Some(version), Some(code)) if version.starts_with("HTTP/") => Ok(code),
        _ => Err(format!("not an HTTP status line: {line:?}")),
    }
}

fn main() -> ExitCode {
    let probe = match parse_args() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("venta-healthcheck: {e}");
            return ExitCode::FAILURE;
        }
    };
    match status_of(&probe) {
        Ok(200) => ExitCode::SUCCESS,
        Ok(code) => {
            eprintln!("venta-healthcheck: {} {} answered {code}", probe.addr, probe.path);
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("venta-healthcheck: {} {}: {e}", probe.addr, probe.path);
            ExitCode::FAILURE
        }
    }
}
