//! What a new user gets with a clone: documentation whose links work, and
//! container files that are safe by default.
//!
//! Every relative link in the README and under `docs/` must name a file (and
//! heading) inside this repository, because a link into a team folder next
//! to the checkout, or into one machine's filesystem, is dead for everyone
//! else. The contract lives in `docs/protocol.md`; nothing may send readers
//! to a copy outside.
//!
//! The compose file and the Dockerfile pin their images, publish nothing on
//! all interfaces by default, hold no password, pass the secrets through,
//! and probe health with `venta-gateway healthcheck`, which is run here
//! against a real gateway. (`docker-compose config` itself is checked by
//! `.ci/validate-compose.sh`: it needs the docker-compose tool.)

mod common;

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    // The repository root: this crate lives in crates/gateway.
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// The markdown files whose links are checked: README.md, docs/**/*.md, the
/// benchmark harness's pages (bench/*.md, not its build output) and the JS
/// client's README when present.
fn documents() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        let mut entries: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    let root = root();
    let mut docs = vec![root.join("README.md")];
    walk(&root.join("docs"), &mut docs);
    for page in ["bench/README.md", "bench/results-peers.md"] {
        docs.push(root.join(page));
    }
    let js = root.join("clients/js/README.md");
    if js.is_file() {
        docs.push(js);
    }
    docs
}

/// The text with fenced code blocks and inline code spans blanked out
/// (lengths kept, so line numbers stay right): a `[a](b)` inside code is an
/// example, not a link.
fn strip_code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut fence: Option<String> = None;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let marker: String = trimmed.chars().take_while(|&c| c == '`' || c == '~').collect();
        if let Some(open) = &fence {
            if marker.len() >= open.len() && marker.starts_with(&open[..1]) && trimmed[marker.len()..].trim().is_empty()
            {
                fence = None;
            }
            out.extend(line.chars().map(|c| if c == '\n' { '\n' } else { ' ' }));
            continue;
        }
        if marker.len() >= 3 && (marker.chars().all(|c| c == '`') || marker.chars().all(|c| c == '~')) {
            fence = Some(marker);
            out.extend(line.chars().map(|c| if c == '\n' { '\n' } else { ' ' }));
            continue;
        }
        // Inline code: a run of N backticks up to the next run of exactly N.
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            if chars[i] == '`' {
                let n = chars[i..].iter().take_while(|&&c| c == '`').count();
                let mut j = i + n;
                let mut close = None;
                while j < chars.len() {
                    if chars[j] == '`' {
                        let m = chars[j..].iter().take_while(|&&c| c == '`').count();
                        if m == n {
                            close = Some(j);
                            break;
                        }
                        j += m;
                    } else {
                        j += 1;
                    }
                }
                if let Some(j) = close {
                    out.extend(std::iter::repeat_n(' ', j + n - i));
                    i = j + n;
                    continue;
                }
                out.extend(std::iter::repeat_n('`', n));
                i += n;
                continue;
            }
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// Every link target in a document, with its line: inline links and images
/// `[text](target "title")`, reference definitions `[id]: target`, and
/// HTML `href="…"` / `src="…"`.
fn links(text: &str) -> Vec<(usize, String)> {
    let text = strip_code(text);
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line_no = n + 1;
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let (target, tail) = match after.strip_prefix('<') {
                Some(inner) => match inner.find('>') {
                    Some(end) => (&inner[..end], &inner[end..]),
                    None => (inner, ""),
                },
                None => {
                    // Balanced parentheses, as CommonMark allows in a bare target.
                    let mut depth = 0usize;
                    let mut end = after.len();
                    for (i, c) in after.char_indices() {
                        match c {
                            '(' => depth += 1,
                            ')' if depth == 0 => {
                                end = i;
                                break;
                            }
                            ')' => depth -= 1,
                            ' ' => {
                                end = i;
                                break;
                            }
                            _ => {}
                        }
                    }
                    (&after[..end], &after[end..])
                }
            };
            found.push((line_no, target.to_owned()));
            rest = tail;
        }
        let trimmed = line.trim_start();
        if trimmed.starts_with('[')
            && let Some(close) = trimmed.find("]:")
            && !trimmed[1..close].contains(']')
            && let Some(target) = trimmed[close + 2..].split_whitespace().next()
        {
            found.push((line_no, target.trim_matches(['<', '>']).to_owned()));
        }
        for attr in ["href=\"", "src=\""] {
            let mut rest = line;
            while let Some(at) = rest.find(attr) {
                let after = &rest[at + attr.len()..];
                let end = after.find('"').unwrap_or(after.len());
                found.push((line_no, after[..end].to_owned()));
                rest = &after[end..];
            }
        }
    }
    found
}

/// A URL with a scheme (`https:`, `mailto:`) points outside on purpose.
fn has_scheme(target: &str) -> bool {
    let Some(colon) = target.find(':') else { return false };
    let scheme = &target[..colon];
    !scheme.is_empty()
        && scheme.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// GitHub's anchor for a heading: lower case, punctuation other than `-`
/// and `_` dropped, spaces to `-`; repeats get `-1`, `-2`, ….
fn anchors(text: &str) -> HashSet<String> {
    let stripped = strip_code(text);
    let original: Vec<&str> = text.lines().collect();
    let mut seen = std::collections::HashMap::<String, usize>::new();
    let mut out = HashSet::new();
    for (n, line) in stripped.lines().enumerate() {
        let trimmed = line.trim_start();
        let hashes = trimmed.chars().take_while(|&c| c == '#').count();
        if hashes == 0 || hashes > 6 || !trimmed[hashes..].starts_with(' ') {
            continue;
        }
        // Take the heading from the original line: code spans count.
        let heading = original[n].trim_start()[hashes..].trim().trim_end_matches('#').trim();
        let mut slug = String::new();
        for c in heading.chars() {
            if c.is_alphanumeric() || c == '-' || c == '_' {
                slug.extend(c.to_lowercase());
            } else if c == ' ' {
                slug.push('-');
            }
        }
        let count = seen.entry(slug.clone()).or_insert(0);
        let anchor = if *count == 0 { slug.clone() } else { format!("{slug}-{count}") };
        *count += 1;
        out.insert(anchor);
    }
    // Explicit anchors: <a id="…"> / <a name="…">.
    for attr in ["id=\"", "name=\""] {
        let mut rest = text;
        while let Some(at) = rest.find(attr) {
            let after = &rest[at + attr.len()..];
            let end = after.find('"').unwrap_or(after.len());
            out.insert(after[..end].to_owned());
            rest = &after[end..];
        }
    }
    out
}

/// Resolves `target` against the document's folder without touching the
/// filesystem, so a `..` that climbs out of the repository is caught even
/// when something happens to exist there.
fn resolve_inside(root: &Path, doc: &Path, target: &str) -> Result<PathBuf, String> {
    if target.starts_with('/') {
        return Err("absolute path: use a path relative to the document".into());
    }
    let dir = doc.parent().ok_or("document has no folder")?;
    let rel_dir = dir.strip_prefix(root).map_err(|_| "document outside the repository")?;
    let mut parts: Vec<String> = rel_dir.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    for comp in Path::new(target).components() {
        match comp {
            Component::CurDir => {}
            Component::ParentDir => {
                if parts.pop().is_none() {
                    return Err("leaves the repository".into());
                }
            }
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::RootDir | Component::Prefix(_) => return Err("absolute path".into()),
        }
    }
    Ok(parts.iter().fold(root.to_path_buf(), |p, part| p.join(part)))
}

/// Percent-decodes a link path (`%20` → space).
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// Every problem with one document's links, as `path:line: target: why`.
fn problems_in(root: &Path, doc: &Path) -> Vec<String> {
    let text = match std::fs::read_to_string(doc) {
        Ok(t) => t,
        Err(e) => return vec![format!("{}: {e}", doc.display())],
    };
    let shown = doc.strip_prefix(root).unwrap_or(doc).display().to_string();
    let mut problems = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.contains("shared/DESIGN.md") {
            problems.push(format!(
                "{shown}:{}: mentions shared/DESIGN.md, a file outside the repository; the contract is docs/protocol.md",
                n + 1
            ));
        }
    }
    for (line, target) in links(&text) {
        let at = format!("{shown}:{line}: {target}");
        if target.is_empty() {
            problems.push(format!("{at}: empty link"));
            continue;
        }
        if target.starts_with("file:") {
            problems.push(format!("{at}: file: URL points into one machine's filesystem"));
            continue;
        }
        if has_scheme(&target) || target.starts_with("//") {
            continue;
        }
        let (path, fragment) = match target.split_once('#') {
            Some((p, f)) => (p, Some(f)),
            None => (target.as_str(), None),
        };
        let path = percent_decode(path.split('?').next().unwrap_or(path));
        let file = if path.is_empty() {
            doc.to_path_buf()
        } else {
            match resolve_inside(root, doc, &path) {
                Ok(p) => p,
                Err(why) => {
                    problems.push(format!("{at}: {why}"));
                    continue;
                }
            }
        };
        if !file.exists() {
            problems.push(format!("{at}: no such file in the repository"));
            continue;
        }
        if let Some(fragment) = fragment
            && !fragment.is_empty()
            && file.extension().is_some_and(|e| e == "md")
        {
            let target_text = std::fs::read_to_string(&file).unwrap_or_default();
            if !anchors(&target_text).contains(&percent_decode(fragment).to_lowercase()) {
                problems.push(format!("{at}: no heading with anchor #{fragment}"));
            }
        }
    }
    problems
}

#[test]
fn every_documentation_link_resolves_inside_the_repository() {
    let root = root();
    let docs = documents();
    let mut problems: Vec<String> = docs.iter().flat_map(|d| problems_in(&root, d)).collect();
    if !docs.iter().any(|d| d.ends_with("docs/protocol.md")) {
        problems.push("docs/protocol.md (the contract) is missing".into());
    }
    assert!(problems.is_empty(), "broken documentation links:\n{}", problems.join("\n"));
}

#[test]
fn the_readme_points_to_the_contract_in_the_repository() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap_or_default();
    assert!(
        links(&readme).iter().any(|(_, t)| t.split('#').next() == Some("docs/protocol.md")),
        "README.md must link to docs/protocol.md"
    );
}

/// The checker itself: each kind of bad link is caught, good ones pass.
#[test]
fn the_checker_catches_what_it_should() {
    let tmp = std::env::temp_dir().join(format!("venta-docs-check-{}", std::process::id()));
    let docs_dir = tmp.join("docs");
    std::fs::create_dir_all(&docs_dir).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(docs_dir.join("other.md"), "# Other page\n\n## Close codes\n").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(tmp.join("file.txt"), "x").unwrap_or_else(|e| panic!("{e}"));
    let doc = docs_dir.join("page.md");
    let text = "\
# Page

good: [a](other.md) [b](../file.txt) [c](other.md#close-codes) [d](#page) [e](https://example.com/x)
[ref]: other.md
`[code](../../nowhere)` is an example

```
[also code](../../nowhere)
```

bad: [f](../../outside.md) [g](/work/shared/x.md) [h](missing.md) [i](other.md#nope) [j](../shared/DESIGN.md)
[k]: ../../up
<img src=\"gone.png\">
[l](file:///etc/passwd)
";
    std::fs::write(&doc, text).unwrap_or_else(|e| panic!("{e}"));
    let problems = problems_in(&tmp, &doc);
    let _ = std::fs::remove_dir_all(&tmp);
    let joined = problems.join("\n");
    for bad in [
        "../../outside.md",
        "/work/shared/x.md",
        "missing.md",
        "#nope",
        "mentions shared/DESIGN.md",
        "../../up",
        "gone.png",
        "file:",
    ] {
        assert!(joined.contains(bad), "not caught: {bad}\n{joined}");
    }
    for good in [": other.md:", "../file.txt", "#close-codes", "#page", "example.com", "nowhere"] {
        assert!(!joined.contains(good), "wrongly flagged: {good}\n{joined}");
    }
    // f, g, h, i, j (link and mention), k, img, l.
    assert_eq!(problems.len(), 9, "{joined}");
}

// ---------------------------------------------------------------------------
// Container files

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `true` for a tag that names one release: `2.12.11-alpine`, `16.14-alpine`,
/// `13.6-slim`; never `latest`, `16-alpine` or `2.10-alpine` (for projects
/// whose releases have three numbers).
fn exact_tag(image: &str, tag: &str) -> bool {
    let version = tag.split('-').next().unwrap_or_default();
    let parts: Vec<&str> = version.split('.').collect();
    let numeric = parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    // PostgreSQL and Debian number their releases MAJOR.MINOR.
    let needed = if matches!(image, "postgres" | "debian") { 2 } else { 3 };
    numeric && parts.len() == needed
}

/// The value after `key:` on a compose line, without quotes.
fn yaml_value<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = line.trim_start().strip_prefix(key)?.strip_prefix(':')?;
    Some(rest.trim().trim_matches('"'))
}

#[test]
fn compose_images_are_pinned_to_exact_versions() {
    let compose = read("docker-compose.yml");
    let images: Vec<&str> = compose.lines().filter_map(|l| yaml_value(l, "image")).collect();
    assert!(images.len() >= 4, "expected nats, postgres, redis and the gateway: {images:?}");
    for image in images {
        if image == "venta-gateway:local" {
            continue; // built from this checkout
        }
        let Some((name, tag)) = image.split_once(':') else { panic!("{image}: no tag (means latest)") };
        assert!(exact_tag(name, tag), "{image}: pin an exact release, not a moving tag");
    }
}

#[test]
fn dockerfile_base_images_are_pinned_and_the_healthcheck_is_resolved() {
    let dockerfile = read("Dockerfile");
    let arg = |name: &str| {
        dockerfile
            .lines()
            .find_map(|l| l.strip_prefix(&format!("ARG {name}=")))
            .unwrap_or_else(|| panic!("Dockerfile: no default for ARG {name}"))
            .trim()
            .to_owned()
    };
    let rust = arg("RUST_VERSION");
    let debian = arg("DEBIAN_VERSION");
    assert!(exact_tag("rust", &rust), "RUST_VERSION={rust}: pin an exact release");
    assert!(exact_tag("debian", &debian), "DEBIAN_VERSION={debian}: pin an exact point release");
    for from in dockerfile.lines().filter(|l| l.starts_with("FROM ")) {
        let image = from.split_whitespace().nth(1).unwrap_or_default();
        let pinned = image.starts_with("rust:${RUST_VERSION}-")
            || image.starts_with("debian:${DEBIAN_VERSION}-")
            || image == "base";
        assert!(pinned, "{from}: base images come from the pinned ARGs");
    }
    assert!(!dockerfile.contains("TODO"), "Dockerfile still has a TODO");
    let probe = dockerfile
        .lines()
        .skip_while(|l| !l.starts_with("HEALTHCHECK"))
        .nth(1)
        .unwrap_or_else(|| panic!("Dockerfile: no HEALTHCHECK"));
    assert!(
        probe.trim() == r#"CMD ["/usr/local/bin/venta-gateway", "healthcheck"]"#,
        "HEALTHCHECK: the gateway's own subcommand, exec form, no shell: {probe}"
    );
    assert!(
        !dockerfile.contains("venta-healthcheck") && !dockerfile.contains("rustc "),
        "the probe is a subcommand of the gateway binary: no second binary is built or shipped"
    );
    let compose = read("docker-compose.yml");
    let test = compose.lines().map(str::trim).find(|l| l.starts_with("test:") && l.contains("venta-gateway"));
    assert_eq!(
        test,
        Some(r#"test: ["CMD", "/usr/local/bin/venta-gateway", "healthcheck", "/health/ready"]"#),
        "docker-compose.yml probes readiness with the gateway's subcommand, exec form"
    );
}

#[test]
fn compose_publishes_on_loopback_and_holds_no_secret() {
    let compose = read("docker-compose.yml");
    let mut in_ports = false;
    let mut mappings = Vec::new();
    for line in compose.lines() {
        let trimmed = line.trim();
        if trimmed == "ports:" {
            in_ports = true;
            continue;
        }
        if in_ports {
            match trimmed.strip_prefix("- ") {
                Some(m) => mappings.push(m.trim_matches('"').to_owned()),
                None if trimmed.starts_with('#') => {}
                None => in_ports = false,
            }
        }
    }
    assert!(mappings.len() >= 7, "expected the services' port mappings: {mappings:?}");
    for m in &mappings {
        // HOST_IP:HOST_PORT:CONTAINER_PORT, the host IP 127.0.0.1 or a
        // variable defaulting to it.
        let loopback = m.starts_with("127.0.0.1:") || (m.starts_with("${") && m.contains(":-127.0.0.1}:"));
        assert!(loopback, "port {m} is published on every interface by default");
    }
    for line in compose.lines() {
        if let Some(v) = yaml_value(line, "POSTGRES_PASSWORD") {
            assert!(v.starts_with("${POSTGRES_PASSWORD:?"), "POSTGRES_PASSWORD must come from .env: {v}");
        }
        if let Some(url) = yaml_value(line, "DATABASE_URL") {
            assert!(url.contains("${POSTGRES_PASSWORD:?"), "DATABASE_URL must take the password from .env: {url}");
        }
    }
    for secret in ["JWT_SECRET", "JWT_PUBLIC_KEY", "JWT_ISSUER", "JWT_AUDIENCE", "INGEST_TOKEN", "ADMIN_TOKEN"] {
        assert!(
            compose.lines().any(|l| l.trim() == format!("{secret}:")),
            "{secret} must be passed through from the environment (a key without a value)"
        );
    }
    let example = read(".env.example");
    assert!(example.lines().any(|l| l.starts_with("POSTGRES_PASSWORD=")), ".env.example must show POSTGRES_PASSWORD");
    let gitignore = read(".gitignore");
    assert!(gitignore.lines().any(|l| l.trim() == ".env"), ".env (with the real secrets) must be git-ignored");
}

// ---------------------------------------------------------------------------
// The container's health probe, against a real gateway

/// Runs `venta-gateway healthcheck` with `args`, WEBSOCKET_GATEWAY_PORT set
/// to `port` (unset for `None`) and `env`; its exit code and how long it took.
async fn probe_with(args: &[&str], port: Option<&str>, env: &[(&str, &str)]) -> (Option<i32>, Duration) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_venta-gateway"));
    cmd.arg("healthcheck").args(args).stdout(Stdio::null()).stderr(Stdio::null()).env_remove("WEBSOCKET_GATEWAY_PORT");
    if let Some(p) = port {
        cmd.env("WEBSOCKET_GATEWAY_PORT", p);
    }
    cmd.envs(env.iter().copied());
    let started = Instant::now();
    let child = cmd.spawn().unwrap_or_else(|e| panic!("venta-gateway healthcheck: {e}"));
    let status =
        tokio::time::timeout(Duration::from_secs(20), tokio::task::spawn_blocking(move || child.wait_with_output()))
            .await
            .unwrap_or_else(|_| panic!("the probe ran for 20 s"))
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"));
    (status.status.code(), started.elapsed())
}

async fn probe(args: &[&str], port: Option<u16>) -> (Option<i32>, Duration) {
    probe_with(args, port.map(|p| p.to_string()).as_deref(), &[]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_health_probe_tells_live_from_ready() {
    // A ready gateway: both probes pass; the port comes from
    // WEBSOCKET_GATEWAY_PORT as in the image, or from --addr.
    let gw = common::TestGateway::start().await;
    common::wait_until("gateway ready", async || gw.is_ready().await).await;
    let port = gw.addr.port();
    assert_eq!(probe(&[], Some(port)).await.0, Some(0), "/health/live of a running gateway");
    assert_eq!(probe(&["/health/ready"], Some(port)).await.0, Some(0), "/health/ready of a ready gateway");
    let addr = gw.addr.to_string();
    assert_eq!(probe(&["/health/ready", "--addr", &addr], None).await.0, Some(0), "--addr");
    // The container's environment is the gateway's: a setting that would
    // stop the gateway (exit 2) does not touch the probe.
    let broken = [("LOG_LEVEL", "verbose"), ("DATABASE_URL", "mysql://nowhere"), ("WS_MAX_CONNECTIONS", "lots")];
    let port_text = port.to_string();
    assert_eq!(probe_with(&["/health/ready"], Some(&port_text), &broken).await.0, Some(0), "gateway settings");
    assert_eq!(probe(&["/no/such/route"], Some(port)).await.0, Some(1), "a 404 is not healthy");
    gw.shutdown().await;

    // Alive but not ready: NATS configured and unreachable.
    let dead_nats = common::free_port();
    let mut config = common::test_config();
    config.nats.url = Some(format!("nats://127.0.0.1:{dead_nats}"));
    let gw = common::TestGateway::start_with(config).await;
    let port = gw.addr.port();
    common::wait_until("liveness while NATS is down", async || probe(&[], Some(port)).await.0 == Some(0)).await;
    assert_eq!(probe(&["/health/ready"], Some(port)).await.0, Some(1), "not ready without NATS");
    gw.shutdown().await;

    // Nothing listening: unhealthy, at once.
    let closed = common::free_port();
    assert_eq!(probe(&[], Some(closed)).await.0, Some(1), "nothing listening");

    // A peer that accepts and never answers: the probe gives up within its
    // own bounds (3 s read timeout), inside Docker's 5 s.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let silent_port = silent.local_addr().map(|a| a.port()).unwrap_or_else(|e| panic!("{e}"));
    let (code, took) = probe(&[], Some(silent_port)).await;
    assert_eq!(code, Some(1), "a silent peer is unhealthy");
    assert!(took < Duration::from_secs(5), "the probe took {took:?} against a silent peer");
    drop(silent);

    // A bad WEBSOCKET_GATEWAY_PORT or argument is an error, not a hang,
    // and exits 1 (Docker reserves 2).
    assert_eq!(probe(&["bogus"], Some(port)).await.0, Some(1), "bad argument");
    assert_eq!(probe_with(&[], Some("70000"), &[]).await.0, Some(1), "bad WEBSOCKET_GATEWAY_PORT");
    assert_eq!(probe(&["--help"], None).await.0, Some(0), "--help");
}
