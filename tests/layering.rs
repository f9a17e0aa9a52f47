//! The module structure of `src/`: no import cycle, and every import goes down the layers.
//!
//! A module is a file (`src/a.rs`, `src/a/mod.rs`, `src/a/b.rs`); a `use crate::x` or a
//! `crate::x::...` path in a file is an edge to the deepest module that path names. The crate
//! roots (`lib.rs`, `main.rs`) declare the modules and are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Bottom to top; a module may import from its own layer (without a cycle) and the ones below.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "plain data and tools",
        &[
            "allocator",
            "path",
            "secrets",
            "lazy_timer",
            "metrics",
            "body",
            "error",
            "hop_by_hop",
            "identity",
            "cors",
            "config",
            "tls",
            "telemetry",
            "woken",
        ],
    ),
    (
        "remote stores: the user directory, the replicas' shared state",
        &["directory", "cluster"],
    ),
    ("credentials and exchanges", &["auth"]),
    (
        "forwarding",
        &["pool", "proxy", "routes", "client_timeouts"],
    ),
    ("one configuration's runtime state", &["state"]),
    ("the request pipeline", &["endpoints", "gateway"]),
    (
        "the server, reload and commands",
        &["server", "reload", "doctor"],
    ),
];

/// Module name (`auth::cas`) → its source, for every `.rs` file under `src/` but the roots.
fn modules(src: &Path) -> BTreeMap<String, String> {
    fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
            if path.is_dir() {
                let mut inner = prefix.to_vec();
                inner.push(name);
                walk(&path, &inner, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                if prefix.is_empty() && (name == "lib" || name == "main") {
                    continue;
                }
                let mut segments = prefix.to_vec();
                if name != "mod" {
                    segments.push(name);
                }
                out.insert(segments.join("::"), std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(src, &[], &mut out);
    out
}

/// `text` without `//` and `/* */` comments (string literals kept: a path in an attribute
/// string, like serde's `deserialize_with`, is a real dependency).
fn strip_comments(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let (mut i, mut in_string) = (0, false);
    while i < bytes.len() {
        let rest = &text[i..];
        if in_string {
            if rest.starts_with("\\\\") || rest.starts_with("\\\"") {
                out.push_str(&rest[..2]);
                i += 2;
                continue;
            }
            in_string = !rest.starts_with('"');
        } else if rest.starts_with("//") {
            i += rest.find('\n').unwrap_or(rest.len());
            continue;
        } else if rest.starts_with("/*") {
            i += rest.find("*/").map_or(rest.len(), |end| end + 2);
            continue;
        } else if rest.starts_with('"') {
            in_string = true;
        } else if rest.starts_with("'\"'") {
            out.push_str("'\"'");
            i += 3;
            continue;
        }
        let c = rest.chars().next().unwrap();
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// Every path that starts with `crate::`, with `use` groups expanded:
/// `crate::a::{b, c::{d, self}}` gives `a::b`, `a::c::d` and `a::c`.
fn crate_paths(text: &str) -> Vec<Vec<String>> {
    fn path(s: &[char], mut i: usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
        let mut segments = prefix;
        loop {
            while i < s.len() && s[i].is_whitespace() {
                i += 1;
            }
            if i < s.len() && s[i] == '{' {
                i += 1;
                loop {
                    i = path(s, i, segments.clone(), out);
                    while i < s.len() && s[i].is_whitespace() {
                        i += 1;
                    }
                    match s.get(i) {
                        Some(',') => i += 1,
                        Some('}') => return i + 1,
                        _ => return i,
                    }
                    while i < s.len() && s[i].is_whitespace() {
                        i += 1;
                    }
                    if s.get(i) == Some(&'}') {
                        return i + 1;
                    }
                }
            }
            let start = i;
            while i < s.len() && (s[i].is_alphanumeric() || s[i] == '_' || s[i] == '*') {
                i += 1;
            }
            let segment: String = s[start..i].iter().collect();
            if !segment.is_empty() && segment != "self" && segment != "*" {
                segments.push(segment);
            }
            if s.get(i) == Some(&':') && s.get(i + 1) == Some(&':') {
                i += 2;
                continue;
            }
            out.push(segments);
            return i;
        }
    }
    let chars: Vec<char> = strip_comments(text).chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i + 7 <= chars.len() {
        let boundary = i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
        if boundary && chars[i..i + 7].iter().collect::<String>() == "crate::" {
            i = path(&chars, i + 7, Vec::new(), &mut out);
        } else {
            i += 1;
        }
    }
    out
}

/// Module → the modules it imports (the deepest module each path names; itself excluded).
fn edges(modules: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut edges = BTreeMap::new();
    for (module, text) in modules {
        let mut targets = BTreeSet::new();
        for path in crate_paths(text) {
            let target = (1..=path.len())
                .rev()
                .map(|n| path[..n].join("::"))
                .find(|candidate| modules.contains_key(candidate));
            if let Some(target) = target.filter(|t| t != module) {
                targets.insert(target);
            }
        }
        edges.insert(module.clone(), targets);
    }
    edges
}

/// The strongly connected components of more than one module (Tarjan), each sorted.
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.edges.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                loop {
                    let w = self.stack.pop().unwrap();
                    self.on_stack.remove(w);
                    component.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.found
}

/// The layer of a module: that of its top-level module.
fn layer(module: &str) -> Option<usize> {
    let top = module.split("::").next().unwrap();
    LAYERS.iter().position(|(_, tops)| tops.contains(&top))
}

fn src() -> BTreeMap<String, String> {
    modules(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

#[test]
fn no_module_is_in_an_import_cycle() {
    let modules = src();
    assert!(modules.len() > 20, "{:?}", modules.keys());
    let found = cycles(&edges(&modules));
    assert!(found.is_empty(), "modules in an import cycle: {found:?}");
}

#[test]
fn every_import_goes_down_the_layers() {
    let modules = src();
    // Every module, whether it imports anything or not.
    let unplaced: Vec<_> = modules.keys().filter(|m| layer(m).is_none()).collect();
    assert!(
        unplaced.is_empty(),
        "in no layer of tests/layering.rs: {unplaced:?}"
    );
    let mut wrong = Vec::new();
    for (from, targets) in edges(&modules) {
        let from_layer = layer(&from).expect("placed");
        for to in targets {
            let to_layer = layer(&to).expect("placed");
            if to_layer > from_layer {
                wrong.push(format!(
                    "{from} ({}) imports {to} ({})",
                    LAYERS[from_layer].0, LAYERS[to_layer].0
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that go up:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_checker_finds_a_cycle_through_groups_and_full_paths() {
    let modules: BTreeMap<String, String> = [
        ("a", "use crate::b::{self, Thing};"),
        // Comments and look-alikes are not edges.
        (
            "b",
            "// use crate::a;\nlet x = my_crate::a::f(); crate::c::run();",
        ),
        ("c", "use crate::{config::X, d::{e::{F, G}}};"),
        ("d::e", "fn f() { crate::a::g() }"),
        ("config", "use crate::config::Y;"),
    ]
    .into_iter()
    .map(|(m, t)| (m.to_owned(), t.to_owned()))
    .collect();
    let edges = edges(&modules);
    let targets = |m: &str| edges[m].iter().cloned().collect::<Vec<_>>();
    assert_eq!(targets("a"), ["b"]);
    assert_eq!(targets("b"), ["c"]);
    assert_eq!(targets("c"), ["config", "d::e"]);
    assert_eq!(targets("config"), Vec::<String>::new());
    assert_eq!(
        cycles(&edges),
        [vec![
            "a".to_owned(),
            "b".to_owned(),
            "c".to_owned(),
            "d::e".to_owned()
        ]]
    );
}

#[test]
fn the_checker_reads_attribute_strings_and_ignores_block_comments() {
    let paths = crate_paths(
        "/* crate::x::y */ #[serde(deserialize_with = \"crate::config::duration\")] let s = \"\\\"\"; crate::z",
    );
    assert_eq!(
        paths,
        [
            vec!["config".to_owned(), "duration".to_owned()],
            vec!["z".to_owned()]
        ]
    );
}
