//! The schemas themselves: each compiles, each example validates, and the
//! copies inside `server/any.json` match their own files.

mod common;

use std::path::Path;

use serde_json::Value;

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
}

#[test]
fn every_example_matches_its_schema() {
    let root = common::root().join("schemas");
    let mut examples = Vec::new();
    walk(&root.join("examples"), &mut examples);
    assert!(examples.len() >= 20, "expected an example per schema, found {}", examples.len());
    for ex in examples {
        let rel = ex.strip_prefix(root.join("examples")).unwrap().to_string_lossy().into_owned();
        let value: Value = serde_json::from_str(&std::fs::read_to_string(&ex).unwrap()).unwrap();
        common::assert_schema(&rel, &value);
    }
}

#[test]
fn any_json_holds_exact_copies_of_the_server_schemas() {
    let root = common::root().join("schemas");
    let any: Value = serde_json::from_str(&std::fs::read_to_string(root.join("server/any.json")).unwrap()).unwrap();
    let defs = any["$defs"].as_object().expect("$defs");
    let mut files = Vec::new();
    walk(&root.join("server"), &mut files);
    let mut seen = 0;
    for f in files {
        let name = f.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "any" {
            continue;
        }
        let own: Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        let copy = defs.values().find(|d| d["$id"] == own["$id"]).unwrap_or_else(|| panic!("{name} not in any.json"));
        assert_eq!(copy, &own, "any.json's copy of {name} drifted");
        seen += 1;
    }
    assert!(seen >= 7);
}
