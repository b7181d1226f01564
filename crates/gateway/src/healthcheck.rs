//! `venta-gateway healthcheck`: the container's health probe. `GET` one of
//! the gateway's health routes over loopback and exit 0 on `200`, 1
//! otherwise.
//!
//! The runtime image has no curl or wget, and a probe written in shell
//! needs a shell in the image and breaks on quoting; this one is part of
//! the server binary (no second binary to build and ship) and runs in exec
//! form. It uses the standard library only, before anything of the gateway
//! starts: no runtime, no logging, no configuration parsed, so a gateway
//! setting that is bad for serving cannot fail the probe, and it exits only
//! with 0 or 1 (Docker reserves 2).
//!
//! ```sh
//! venta-gateway healthcheck                       # GET /health/live on 127.0.0.1:$WEBSOCKET_GATEWAY_PORT (5006)
//! venta-gateway healthcheck /health/ready         # readiness instead
//! venta-gateway healthcheck /health/ready --addr 127.0.0.1:5006
//! ```
//!
//! Every step is bounded (connect 2 s, write and read 3 s, at most 1 KiB of
//! response read), so the probe finishes inside Docker's 5 s timeout even
//! when the gateway accepts and then says nothing.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const IO_TIMEOUT: Duration = Duration::from_secs(3);
/// Enough for the status line; the body is not needed.
const MAX_RESPONSE: usize = 1024;
/// The gateway's default WEBSOCKET_GATEWAY_PORT.
const DEFAULT_PORT: u16 = 5006;
const USAGE: &str = "usage: venta-gateway healthcheck [PATH (/health/live)] [--addr HOST:PORT]\n\
    GETs PATH on 127.0.0.1:$WEBSOCKET_GATEWAY_PORT (5006) or --addr; exits 0 on 200, 1 otherwise.";

#[derive(Debug, PartialEq, Eq)]
struct Probe {
    addr: String,
    path: String,
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Probe(Probe),
    Help,
}

/// `port` is WEBSOCKET_GATEWAY_PORT (`None` when unset), read only when
/// `--addr` is not given.
fn parse_args(args: impl IntoIterator<Item = OsString>, port: Option<OsString>) -> Result<Request, String> {
    let mut addr = None;
    let mut path = "/health/live".to_owned();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let arg = arg.into_string().map_err(|a| format!("argument {a:?} is not UTF-8"))?;
        match arg.as_str() {
            "--addr" => {
                let a = args.next().ok_or("--addr needs HOST:PORT")?;
                addr = Some(a.into_string().map_err(|a| format!("--addr {a:?} is not UTF-8"))?);
            }
            "-h" | "--help" => return Ok(Request::Help),
            p if p.starts_with('/') => p.clone_into(&mut path),
            other => return Err(format!("unexpected argument {other:?} (a path starts with /)")),
        }
    }
    if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err("the path must not contain spaces or control characters".to_owned());
    }
    let addr = match (addr, port) {
        (Some(a), _) => a,
        (None, Some(p)) => {
            let text = p.to_str().ok_or("WEBSOCKET_GATEWAY_PORT is not UTF-8")?;
            let port = text.parse::<u16>().map_err(|_| format!("WEBSOCKET_GATEWAY_PORT={text:?} is not a port"))?;
            format!("127.0.0.1:{port}")
        }
        (None, None) => format!("127.0.0.1:{DEFAULT_PORT}"),
    };
    Ok(Request::Probe(Probe { addr, path }))
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
    status_in(&buf[..len])
}

/// The code of an HTTP status line at the start of `head`.
fn status_in(head: &[u8]) -> Result<u16, String> {
    let head = String::from_utf8_lossy(head);
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next().and_then(|c| c.parse::<u16>().ok())) {
        (Some(version), Some(code)) if version.starts_with("HTTP/") => Ok(code),
        _ => Err(format!("not an HTTP status line: {line:?}")),
    }
}

/// Runs the probe with the arguments after `healthcheck`.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let probe = match parse_args(args, std::env::var_os("WEBSOCKET_GATEWAY_PORT")) {
        Ok(Request::Probe(p)) => p,
        Ok(Request::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("venta-gateway healthcheck: {e}\n{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    match status_of(&probe) {
        Ok(200) => ExitCode::SUCCESS,
        Ok(code) => {
            eprintln!("venta-gateway healthcheck: {} {} answered {code}", probe.addr, probe.path);
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("venta-gateway healthcheck: {} {}: {e}", probe.addr, probe.path);
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str], port: Option<&str>) -> Result<Request, String> {
        parse_args(args.iter().map(OsString::from), port.map(OsString::from))
    }

    fn probe(addr: &str, path: &str) -> Result<Request, String> {
        Ok(Request::Probe(Probe { addr: addr.into(), path: path.into() }))
    }

    #[test]
    fn arguments_and_the_port_variable() {
        assert_eq!(parse(&[], None), probe("127.0.0.1:5006", "/health/live"));
        assert_eq!(parse(&["/health/ready"], Some("6000")), probe("127.0.0.1:6000", "/health/ready"));
        assert_eq!(parse(&["/health/ready", "--addr", "[::1]:7"], Some("6000")), probe("[::1]:7", "/health/ready"));
        assert_eq!(parse(&["--addr", "h:1"], Some("not a port")), probe("h:1", "/health/live"));
        assert_eq!(parse(&["--help"], Some("not a port")), Ok(Request::Help));
        assert_eq!(parse(&[], Some("70000")), Err("WEBSOCKET_GATEWAY_PORT=\"70000\" is not a port".into()));
        for bad in [&["bogus"][..], &["--addr"], &["/a b"], &["/a\r\nX: y"]] {
            assert!(parse(bad, None).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_in(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n"), Ok(200));
        assert_eq!(status_in(b"HTTP/1.1 503 Service Unavailable\r\n"), Ok(503));
        assert!(status_in(b"").is_err());
        assert!(status_in(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(status_in(b"HTTP/1.1 abc\r\n").is_err());
    }
}
