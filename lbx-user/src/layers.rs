//! The library's layering, checked on its source: every `use` and path names only modules
//! of its own area or of an area below it, and no two files import each other, directly or
//! round a longer circle. A new area takes a line in `AREAS`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// Areas from the top down, each with its rank: an area may use the areas of lower rank.
/// Areas of one rank are independent of each other.
const AREAS: &[(&str, u32)] = &[
    ("cli", 5),
    ("agent", 4),
    ("restart", 3),
    ("balance", 2),
    ("dataplane", 2),
    ("metrics", 2),
    ("cluster", 2),
    ("history", 2),
    ("config", 1),
    ("maglev", 0),
    ("addr", 0),
];

/// A file's module path: `agent/adapt.rs` is `agent::adapt`, `config/mod.rs` is `config`.
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

/// `use` trees flattened into paths: `use a::{b, c::{d, e}};` gives a::b, a::c::d, a::c::e.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        return vec![tree.split(" as ").next().unwrap_or(tree).trim().to_owned()];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').expect("balanced use tree")];
    let (mut depth, mut start, mut out) = (0, 0, Vec::new());
    let push = |part: &str, out: &mut Vec<String>| {
        if !part.trim().is_empty() {
            out.extend(expand(part).into_iter().map(|p| format!("{prefix}{p}")));
        }
    };
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                push(&inner[start..i], &mut out);
                start = i + 1;
            }
            _ => {}
        }
    }
    push(&inner[start..], &mut out);
    out
}

/// Every crate-relative path `text` names, as module segments from the crate root.
fn paths(text: &str, module: &[String]) -> Vec<Vec<String>> {
    // A file's unit tests are not an import of it: their `super` is the file itself.
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
    // Drop comments, so prose that mentions a path does not count.
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut raw = Vec::new();
    let lines: Vec<&str> = code.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        let t = t.strip_prefix("pub").map_or(t, |r| {
            r.trim_start()
                .strip_prefix('(')
                .and_then(|r| r.split_once(')'))
                .map_or(r, |(_, r)| r)
                .trim_start()
        });
        let Some(tree) = t.strip_prefix("use ") else {
            continue;
        };
        // A use tree runs to its semicolon, over as many lines as it takes.
        let mut text = tree.to_owned();
        let mut next = i + 1;
        while !text.contains(';') && next < lines.len() {
            text.push(' ');
            text.push_str(lines[next]);
            next += 1;
        }
        raw.extend(expand(text.split(';').next().unwrap_or("")));
    }
    // Paths written inline in code, such as `crate::dataplane::preflight(...)`.
    for (i, _) in code.match_indices("crate::") {
        if code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let tail: String = code[i..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        raw.push(tail);
    }
    let mut out = Vec::new();
    for p in raw {
        let segs: Vec<&str> = p
            .split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let mut at: Vec<String> = match segs.first() {
            Some(&"crate") => Vec::new(),
            Some(&"super") | Some(&"self") => module.to_vec(),
            _ => continue,
        };
        let mut rest = &segs[1..];
        if segs[0] == "super" {
            at.pop();
            while rest.first() == Some(&"super") {
                at.pop();
                rest = &rest[1..];
            }
        }
        at.extend(rest.iter().map(|s| (*s).to_owned()));
        out.push(at);
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("readable source folder") {
        let path = entry.expect("folder entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Module path of each library file, and the files each one's paths lead to.
fn import_graph() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeMap<Vec<String>, String> = files
        .iter()
        // The binary is another crate; this checker's own test text is not an import.
        .filter(|f| !f.ends_with("main.rs") && !f.ends_with("layers.rs"))
        .map(|f| {
            let rel = f.strip_prefix(&src).expect("under src");
            (
                module_of(rel),
                fs::read_to_string(f).expect("readable source"),
            )
        })
        .collect();
    let mut graph = BTreeMap::new();
    for (module, text) in &modules {
        let mut targets = BTreeSet::new();
        for path in paths(text, module) {
            // The longest prefix of the path that is a module file is what it imports.
            let target = (0..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|p| modules.contains_key(p))
                .expect("the crate root is a module");
            if target != *module && !target.is_empty() {
                targets.insert(target);
            }
        }
        graph.insert(module.clone(), targets);
    }
    graph
}

fn rank(module: &[String]) -> Option<(&'static str, u32)> {
    let area = module.first()?;
    let found = AREAS.iter().find(|(name, _)| name == area).copied();
    assert!(
        found.is_some(),
        "module {} is in no area: add it to AREAS",
        module.join("::")
    );
    found
}

#[test]
fn areas_depend_only_downwards() {
    let graph = import_graph();
    assert!(graph.len() > 20, "found only {} modules", graph.len());
    let mut wrong = Vec::new();
    for (from, targets) in &graph {
        let Some((area, r)) = rank(from) else {
            continue;
        };
        for to in targets {
            let Some((to_area, to_r)) = rank(to) else {
                continue;
            };
            if to_area != area && to_r >= r {
                wrong.push(format!("{} uses {}", from.join("::"), to.join("::")));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layering:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_import_circles() {
    let graph = import_graph();
    // Depth-first search; a back edge to a module on the stack closes a circle.
    fn visit<'a>(
        m: &'a Vec<String>,
        graph: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        stack: &mut Vec<&'a Vec<String>>,
        done: &mut BTreeSet<&'a Vec<String>>,
    ) -> Option<String> {
        if let Some(i) = stack.iter().position(|s| *s == m) {
            let names: Vec<String> = stack[i..]
                .iter()
                .chain([&m])
                .map(|s| s.join("::"))
                .collect();
            return Some(names.join(" -> "));
        }
        if !done.insert(m) {
            return None;
        }
        stack.push(m);
        for next in graph.get(m).into_iter().flatten() {
            if let Some(circle) = visit(next, graph, stack, done) {
                return Some(circle);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        if let Some(circle) = visit(m, &graph, &mut Vec::new(), &mut done) {
            panic!("import circle: {circle}");
        }
    }
}

#[test]
fn the_checker_sees_uses_and_circles() {
    let module = vec!["agent".to_owned(), "adapt".to_owned()];
    let text = r#"
use super::{Agent, api::Request};
use crate::{
    config::VipId,
    dataplane::plan::{self, FULL},
};
// crate::cli::main
let x = crate::balance::probe::run();
"#;
    let found = paths(text, &module);
    let joined: Vec<String> = found.iter().map(|p| p.join("::")).collect();
    for want in [
        "agent::Agent",
        "agent::api::Request",
        "config::VipId",
        "dataplane::plan::self",
        "dataplane::plan::FULL",
        "balance::probe::run",
    ] {
        assert!(
            joined.contains(&want.to_owned()),
            "{want} not in {joined:?}"
        );
    }
    assert!(
        !joined.iter().any(|p| p.starts_with("cli")),
        "comments are not code: {joined:?}"
    );
}
