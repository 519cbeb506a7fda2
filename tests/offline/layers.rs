//! The module graph of every library crate of the workspace is acyclic, and the engine's layers
//! only import downwards.
//!
//! How it is read: every `.rs` file under a crate's `src/` is a module (`src/a/b.rs` and
//! `src/a/b/mod.rs` are `a::b`). A module depends on another when its code (comments left out)
//! names a path in it through `crate::…` or `super::…`, including grouped `use` trees. A module
//! naming one of its own ancestors is not counted: a child lives inside its parent. Any cycle is
//! printed with its members; fix it by moving the shared item to the lower module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The crates whose module graphs are checked (their `src/` folders, from the repository root).
const CRATES: &[&str] = &["src", "verify/src", "testbeds/src", "lab/src", "cli/src"];

type Graph = BTreeMap<String, BTreeSet<String>>;

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") && !is_test_file(&p) {
            out.push(p);
        }
    }
}

/// Unit tests kept in files of their own (`tests.rs`, `*_tests.rs`, mounted with `#[path]`
/// under `#[cfg(test)]`) may reach anywhere in their crate, like inline test modules.
fn is_test_file(p: &Path) -> bool {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    name == "tests.rs" || name.ends_with("_tests.rs")
}

/// `src/a/b.rs` -> `a::b`; `src/a/mod.rs` -> `a`; `src/lib.rs`/`main.rs` -> `` (the root).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod")) {
        parts.pop();
    }
    if parts.len() == 1 && matches!(parts[0].as_str(), "lib" | "main") {
        parts.clear();
    }
    parts.join("::")
}

/// The source without `//` comments (doc links are not imports) and string literals.
fn code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut in_str = false;
        let mut prev = ' ';
        let mut kept = String::new();
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if !in_str && c == '/' && chars.get(i + 1) == Some(&'/') {
                break;
            }
            if c == '"' && prev != '\\' {
                in_str = !in_str;
            } else if !in_str {
                kept.push(c);
            }
            prev = c;
            i += 1;
        }
        out.push_str(&kept);
        out.push('\n');
    }
    out
}

fn ident(s: &[char], i: &mut usize) -> String {
    let start = *i;
    while *i < s.len() && (s[*i].is_alphanumeric() || s[*i] == '_') {
        *i += 1;
    }
    s[start..*i].iter().collect()
}

fn skip_ws(s: &[char], i: &mut usize) {
    while *i < s.len() && s[*i].is_whitespace() {
        *i += 1;
    }
}

/// Parses a path or use tree after `crate::` (at `i`), pushing every full path it names.
fn tree(s: &[char], i: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut path = prefix;
    loop {
        skip_ws(s, i);
        if *i < s.len() && s[*i] == '{' {
            *i += 1;
            loop {
                skip_ws(s, i);
                if *i >= s.len() || s[*i] == '}' {
                    *i += 1;
                    return;
                }
                tree(s, i, path.clone(), out);
                skip_ws(s, i);
                if *i < s.len() && s[*i] == ',' {
                    *i += 1;
                }
            }
        }
        let id = ident(s, i);
        if id.is_empty() {
            out.push(path);
            return;
        }
        if id != "self" {
            path.push(id);
        }
        if s.get(*i) == Some(&':') && s.get(*i + 1) == Some(&':') {
            *i += 2;
        } else {
            // `as alias` and anything after the path end it.
            out.push(path);
            return;
        }
    }
}

/// Every module path `text` (the code of module `me`) names through `crate::` or `super::`.
fn referenced(me: &str, text: &str) -> Vec<Vec<String>> {
    let s: Vec<char> = code(text).chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let boundary =
            i == 0 || !(s[i - 1].is_alphanumeric() || s[i - 1] == '_' || s[i - 1] == ':');
        let word: String = s[i..(i + 7).min(s.len())].iter().collect();
        if boundary && word == "crate::" {
            i += 7;
            tree(&s, &mut i, Vec::new(), &mut out);
            continue;
        }
        let word: String = s[i..(i + 7).min(s.len())].iter().collect();
        if boundary && word == "super::" {
            let mut base: Vec<String> = me
                .split("::")
                .filter(|p| !p.is_empty())
                .map(String::from)
                .collect();
            while {
                let w: String = s[i..(i + 7).min(s.len())].iter().collect();
                w == "super::"
            } {
                base.pop();
                i += 7;
            }
            tree(&s, &mut i, base, &mut out);
            continue;
        }
        i += 1;
    }
    out
}

/// The graph of one crate: module -> modules it depends on.
fn graph(src: &Path) -> Graph {
    let mut fs = Vec::new();
    files(src, &mut fs);
    let modules: BTreeSet<String> = fs.iter().map(|f| module_of(src, f)).collect();
    let mut g = Graph::new();
    for f in &fs {
        let me = module_of(src, f);
        let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        // Unit tests may reach anywhere in their crate.
        let text = text.split("#[cfg(test)]").next().unwrap_or("");
        let deps = g.entry(me.clone()).or_default();
        for path in referenced(&me, text) {
            // The longest prefix of the path that is a module.
            let target = (1..=path.len())
                .rev()
                .map(|n| path[..n].join("::"))
                .find(|p| modules.contains(p));
            let Some(target) = target else { continue };
            let ancestor =
                target.is_empty() || me == target || me.starts_with(&format!("{target}::"));
            if !ancestor {
                deps.insert(target);
            }
        }
    }
    g
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                scc.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                t.out.push(scc);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn no_crate_has_an_import_cycle() {
    let mut found = Vec::new();
    for c in CRATES {
        let g = graph(&Path::new(ROOT).join(c));
        for scc in cycles(&g) {
            let edges: Vec<String> = scc
                .iter()
                .flat_map(|a| {
                    g[a].iter()
                        .filter(|b| scc.contains(b))
                        .map(move |b| format!("{a} -> {b}"))
                })
                .collect();
            found.push(format!(
                "{c}: {{{}}} via {}",
                scc.join(", "),
                edges.join(", ")
            ));
        }
    }
    assert!(found.is_empty(), "import cycles:\n{}", found.join("\n"));
}

#[test]
fn the_checker_sees_grouped_uses_super_paths_and_cycles() {
    let refs = referenced(
        "a::b",
        "use crate::{x::{self, Y}, z};\n// crate::ignored\nfn f() { super::c::g(); crate::w::h(); }",
    );
    let names: Vec<String> = refs.iter().map(|p| p.join("::")).collect();
    assert_eq!(names, ["x", "x::Y", "z", "a::c::g", "w::h"]);
    let mut g = Graph::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("a".into());
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(cycles(&g), vec![vec!["a".to_string(), "b".to_string()]]);
}

/// The engine's layers, lowest first (see `src/lib.rs`): a module may import from its own layer
/// and from lower ones, never from a higher one.
const ENGINE_LAYERS: &[&[&str]] = &[
    &["model", "events"],
    &["domxml", "hypervisor"],
    &["group"],
    &["catalog"],
    &["release"],
    &["snapshot"],
    &["backup"],
    &["report"],
    &["hook", "metrics"],
];

fn layer_of(top: &str) -> Option<usize> {
    ENGINE_LAYERS.iter().position(|l| l.contains(&top))
}

#[test]
fn engine_layers_only_import_downwards() {
    let g = graph(&Path::new(ROOT).join("src"));
    let mut wrong = Vec::new();
    for (a, bs) in &g {
        let ta = a.split("::").next().unwrap_or("");
        if ta.is_empty() {
            continue;
        }
        let la = layer_of(ta).unwrap_or_else(|| {
            panic!("module {ta} has no layer: add it to ENGINE_LAYERS and src/lib.rs")
        });
        for b in bs {
            let tb = b.split("::").next().unwrap_or("");
            let lb = layer_of(tb).unwrap_or_else(|| panic!("module {tb} has no layer"));
            if lb > la {
                wrong.push(format!("{a} (layer {la}) -> {b} (layer {lb})"));
            }
        }
    }
    assert!(wrong.is_empty(), "upward imports:\n{}", wrong.join("\n"));
}
