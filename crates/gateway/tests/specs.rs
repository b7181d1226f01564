//! The machine-readable specs stay in step with the code and with `schemas/`.
//!
//! `.ci/specs.sh` validates docs/asyncapi.yaml and docs/openapi.yaml with the
//! reference tools and fuzzes the gateway against the OpenAPI document; what
//! those tools cannot know is checked here: a route added to the router
//! without a spec entry, a spec entry for a route that no longer exists, a
//! schema in `schemas/` that neither spec uses, a `$ref` to a file that is
//! gone, and a WebSocket or WebTransport channel missing one of the messages
//! of the protocol.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

fn root() -> PathBuf {
    // The repository root: this crate lives in crates/gateway.
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(rel: &str) -> Value {
    serde_yaml_ng::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The `.rs` files under `dir`, recursively, sorted.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
    out.sort();
}

/// `(path, method)` of every `.route("…", get(…))` / `post(…)` in the
/// gateway's sources. Every file under crates/gateway/src is read, not just
/// server.rs: a module with its own router (the dashboard's) is merged into
/// the main one, and the next such module must not slip past this test.
fn router_routes() -> BTreeSet<(String, String)> {
    let mut files = Vec::new();
    rust_files(&root().join("crates/gateway/src"), &mut files);
    let mut routes = BTreeSet::new();
    for file in files {
        let src = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for part in src.split(".route(\"").skip(1) {
            let Some((path, rest)) = part.split_once('"') else { continue };
            // One route may chain methods: `get(a).post(b)`.
            let call = rest.split(")\n").next().unwrap_or_default();
            for method in ["get", "post", "put", "patch", "delete"] {
                if call.contains(&format!(" {method}(")) || call.contains(&format!(".{method}(")) {
                    routes.insert((path.to_owned(), method.to_owned()));
                }
            }
        }
    }
    routes
}

/// Every string value of a `$ref` key anywhere in `v`.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

/// The `schemas/…` files a spec in docs/ references, as paths under schemas/.
fn schema_refs(doc: &Value) -> BTreeSet<String> {
    let mut all = Vec::new();
    refs(doc, &mut all);
    all.iter()
        .filter_map(|r| r.strip_prefix("../schemas/"))
        .map(|r| r.split('#').next().unwrap_or(r).to_owned())
        .collect()
}

/// The message schemas of `schemas/<dir>`, as paths under schemas/.
/// `server/any.json` is the tests' union of the `server/*.json` files, not a
/// message of its own.
fn schema_files(dir: &str) -> BTreeSet<String> {
    let path = root().join("schemas").join(dir);
    let entries = std::fs::read_dir(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut files: BTreeSet<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .map(|n| format!("{dir}/{n}"))
        .collect();
    files.remove("server/any.json");
    assert!(!files.is_empty(), "no schemas in schemas/{dir}");
    files
}

/// Follows a local `#/…` JSON pointer in `doc`.
fn resolve<'a>(doc: &'a Value, pointer: &str) -> &'a Value {
    let p = pointer.strip_prefix('#').unwrap_or_else(|| panic!("not a local ref: {pointer}"));
    doc.pointer(p).unwrap_or_else(|| panic!("dangling ref {pointer}"))
}

#[test]
fn every_router_route_is_in_openapi_and_back() {
    let spec = yaml("docs/openapi.yaml");
    let routes = router_routes();
    // The parse must have found the router, or this test proves nothing.
    assert!(routes.contains(&("/health".to_owned(), "get".to_owned())), "{routes:?}");
    assert!(routes.contains(&("/api/v1/publish/location".to_owned(), "post".to_owned())), "{routes:?}");
    // ... and the routers of other modules (the dashboard's, merged in).
    assert!(routes.contains(&("/dashboard/stats".to_owned(), "get".to_owned())), "{routes:?}");
    let paths = spec["paths"].as_object().expect("openapi paths");
    let mut documented = BTreeSet::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("path item") {
            if ["get", "post", "put", "patch", "delete", "head", "options"].contains(&method.as_str()) {
                documented.insert((path.clone(), method.clone(), op.get("x-implementation").is_some()));
            }
        }
    }
    for (path, method) in &routes {
        assert!(
            documented.iter().any(|(p, m, _)| p == path && m == method),
            "{} {path} is served (a `.route(` in crates/gateway/src) but not in docs/openapi.yaml",
            method.to_uppercase()
        );
    }
    for (path, method, pending) in &documented {
        let served = routes.contains(&(path.clone(), method.clone()));
        assert!(
            served || *pending,
            "docs/openapi.yaml documents {} {path}, which no router in crates/gateway/src serves (mark a route being added with x-implementation)",
            method.to_uppercase()
        );
        assert!(
            !(served && *pending),
            "{} {path} is served now: drop its x-implementation marker in docs/openapi.yaml (and fuzz it in .ci/specs.sh)",
            method.to_uppercase()
        );
    }
}

#[test]
fn every_schema_is_used_by_a_spec_and_every_ref_exists() {
    let asyncapi = yaml("docs/asyncapi.yaml");
    let openapi = yaml("docs/openapi.yaml");
    let (in_async, in_open) = (schema_refs(&asyncapi), schema_refs(&openapi));
    for rel in in_async.iter().chain(&in_open) {
        assert!(root().join("schemas").join(rel).is_file(), "a spec references schemas/{rel}, which does not exist");
        let text = read(&format!("schemas/{rel}"));
        let schema: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("schemas/{rel}: {e}"));
        assert!(schema.get("$schema").is_some(), "schemas/{rel} is not a JSON Schema");
    }
    for dir in ["client", "server", "publish", "sse"] {
        for rel in schema_files(dir) {
            assert!(in_async.contains(&rel), "schemas/{rel} is not referenced by docs/asyncapi.yaml");
        }
    }
    for dir in ["http", "publish"] {
        for rel in schema_files(dir) {
            assert!(in_open.contains(&rel), "schemas/{rel} is not referenced by docs/openapi.yaml");
        }
    }
}

#[test]
fn every_client_channel_carries_every_message_under_its_own_name() {
    let doc = yaml("docs/asyncapi.yaml");
    let expected: BTreeSet<String> = schema_files("client").into_iter().chain(schema_files("server")).collect();
    let channels = doc["channels"].as_object().expect("channels");
    for name in ["wsLocation", "wsVendor", "wtLocation", "wtVendor"] {
        let channel = channels.get(name).unwrap_or_else(|| panic!("asyncapi channel {name} is missing"));
        let mut carried = BTreeMap::new();
        for (key, msg) in channel["messages"].as_object().expect("channel messages") {
            let msg = match msg.get("$ref").and_then(Value::as_str) {
                Some(r) => resolve(&doc, r),
                None => msg,
            };
            let payload =
                msg["payload"]["$ref"].as_str().unwrap_or_else(|| panic!("{name}.{key}: payload is not a $ref"));
            let rel = payload.strip_prefix("../schemas/").unwrap_or_else(|| panic!("{name}.{key}: {payload}"));
            // The message's name is the `type` its schema fixes.
            let schema: Value = serde_json::from_str(&read(&format!("schemas/{rel}"))).expect("schema json");
            let ty = schema["properties"]["type"]["const"]
                .as_str()
                .unwrap_or_else(|| panic!("schemas/{rel}: no type const"));
            assert_eq!(msg["name"].as_str(), Some(ty), "{name}.{key} is named unlike its schema's type");
            carried.insert(rel.to_owned(), key.clone());
        }
        let missing: Vec<_> = expected.iter().filter(|r| !carried.contains_key(*r)).collect();
        assert!(missing.is_empty(), "asyncapi channel {name} lacks {missing:?}");
    }
    // WebTransport messages are MessagePack, WebSocket ones JSON.
    let content_type = |chan: &str, key: &str| -> String {
        let msg = resolve(&doc, channels[chan]["messages"][key]["$ref"].as_str().expect("message ref"));
        let traits = msg["traits"].as_array().map(Vec::as_slice).unwrap_or_default();
        traits
            .iter()
            .filter_map(|t| t["$ref"].as_str())
            .map(|r| resolve(&doc, r))
            .find_map(|t| t["contentType"].as_str())
            .or(msg["contentType"].as_str())
            .unwrap_or_else(|| doc["defaultContentType"].as_str().unwrap_or_default())
            .to_owned()
    };
    assert_eq!(content_type("wsLocation", "subscribeLocation"), "application/json");
    assert_eq!(content_type("wtLocation", "subscribeLocation"), "application/vnd.msgpack");
    assert_eq!(content_type("wtVendor", "locationUpdated"), "application/vnd.msgpack");
}

#[test]
fn the_readme_links_both_specs() {
    let readme = read("README.md");
    for spec in ["docs/asyncapi.yaml", "docs/openapi.yaml"] {
        assert!(readme.contains(&format!("]({spec})")), "README.md does not link {spec}");
        assert!(Path::new(&root().join(spec)).is_file());
    }
}

#[test]
fn sse_events_are_the_same_in_both_specs() {
    let (asyncapi, openapi) = (yaml("docs/asyncapi.yaml"), yaml("docs/openapi.yaml"));
    for (channel, path) in [("sseLocation", "/sse/location"), ("sseVendor", "/sse/vendor"), ("sseArea", "/sse/area")] {
        let messages = asyncapi["channels"][channel]["messages"].as_object().unwrap_or_else(|| panic!("{channel}"));
        let in_async: BTreeSet<String> = messages
            .values()
            .map(|m| {
                let m = resolve(&asyncapi, m["$ref"].as_str().expect("message ref"));
                m["name"].as_str().expect("message name").to_owned()
            })
            .collect();
        // The 200 response's schema: one event, a oneOf of one schema per type.
        let op = &openapi["paths"][path]["get"];
        let resp = resolve(&openapi, op["responses"]["200"]["$ref"].as_str().expect("200 ref"));
        let event = resolve(&openapi, resp["content"]["text/event-stream"]["schema"]["$ref"].as_str().expect("schema"));
        let in_open: BTreeSet<String> = event["oneOf"]
            .as_array()
            .unwrap_or_else(|| panic!("{path}: event schema is not a oneOf"))
            .iter()
            .map(|s| {
                let s = resolve(&openapi, s["$ref"].as_str().expect("event ref"));
                s["properties"]["event"]["const"].as_str().expect("event const").to_owned()
            })
            .collect();
        assert_eq!(in_async, in_open, "{channel} (asyncapi.yaml) and {path} (openapi.yaml) list different events");
        for ty in ["subscribed", "error", "close"] {
            assert!(in_open.contains(ty), "{path} lacks event {ty}");
        }
    }
}
