//! The shape of the source: no module of `src/` reaches, through `crate::`
//! imports, back to itself, and no file of a folder reaches back to itself
//! through its siblings. A circle makes every module in it change with
//! every other; this test keeps the layering (protocol and validate at the
//! bottom; session, dispatch and config above; upstream, the front-ends and the
//! listeners on those; server wiring them) from eroding.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The top-level module a file belongs to (`src/dispatch/mod.rs` -> dispatch).
fn module_of(path: &Path, src: &Path) -> String {
    let rel = path.strip_prefix(src).unwrap();
    let mut parts = rel.components().map(|c| {
        c.as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned()
    });
    let first = parts.next().unwrap();
    // Each tool is a module of its own: `src/tools/sim/mod.rs` -> tools::sim.
    match parts.next() {
        Some(tool) if first == TOOLS && tool != "mod" => format!("{TOOLS}::{tool}"),
        _ => first,
    }
}

/// The folder of the tools, each a module of its own (they share nothing).
const TOOLS: &str = "tools";

/// The name a path inside the crate starts with: its first segment, or for
/// a tool the tool (`tools::sim::SimConfig` -> `tools::sim`).
fn leading_name(path: &str) -> String {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let first = ident(path);
    match path[first.len()..].strip_prefix("::") {
        Some(rest) if first == TOOLS && !ident(rest).is_empty() => {
            format!("{TOOLS}::{}", ident(rest))
        }
        _ => first,
    }
}

/// The modules a file's code (not its comments or tests) names as `crate::x`.
fn imports(text: &str) -> BTreeSet<String> {
    names_after(text, "crate::")
}

/// A file's code: its lines up to its inline test module (`#[cfg(test)]`
/// before `mod tests {`), without comments or test-only declarations
/// (`#[cfg(test)] mod testing;`, whose files are not code either).
fn code_of(text: &str) -> String {
    let mut code = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]" {
            match lines.next() {
                Some(next) if next.trim_end().ends_with(';') => continue,
                _ => break,
            }
        }
        if !line.trim_start().starts_with("//") {
            code.push(line);
        }
    }
    code.join("\n")
}

/// The names a file's code (not its comments or tests) reaches through
/// `prefix` (`crate::`, `super::`): `prefix{a, b::c}` names a and b.
fn names_after(text: &str, prefix: &str) -> BTreeSet<String> {
    let code = code_of(text);
    let mut found = BTreeSet::new();
    let mut at = 0;
    while let Some(i) = code[at..].find(prefix) {
        let before = code[..at + i].chars().next_back();
        at += i + prefix.len();
        let rest = &code[at..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            // `super::super::x`, `a::crate::x`: not this prefix's name.
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            // use crate::{a::X, b};
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let name = leading_name(part.trim());
                if !matches!(name.as_str(), "" | "super" | "self") {
                    found.insert(name);
                }
            }
        } else {
            let name = leading_name(rest);
            if !matches!(name.as_str(), "" | "super" | "self") {
                found.insert(name);
            }
        }
    }
    found
}

/// A source file of the library's code: not a file of unit tests (`tests.rs`,
/// `testing.rs`, declared under `#[cfg(test)]`).
fn is_code(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "rs")
        && path
            .file_stem()
            .is_some_and(|n| n != "tests" && n != "testing")
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if is_code(&path) {
                let module = module_of(&path, &src);
                let text = std::fs::read_to_string(&path).unwrap();
                let deps = graph.entry(module.clone()).or_default();
                deps.extend(imports(&text).into_iter().filter(|d| *d != module));
            }
        }
    }
    graph
}

/// For each folder of `src/`, its files (not `mod.rs`, which is the
/// folder's face) and the siblings each names through `super::` or the
/// folder's own `crate::` path.
fn sibling_graphs() -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut folders = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if is_code(&path) && path.file_name().is_some_and(|n| n != "mod.rs") {
                let name = path.file_stem().unwrap().to_string_lossy().into_owned();
                files.insert(name, std::fs::read_to_string(&path).unwrap());
            }
        }
        if dir == src {
            continue; // the top level: the module graph above
        }
        let folder = dir
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .replace('/', "::");
        let own = format!("crate::{folder}::");
        let graph: BTreeMap<String, BTreeSet<String>> = files
            .iter()
            .map(|(name, text)| {
                let mut named = names_after(text, "super::");
                named.extend(names_after(text, &own));
                named.retain(|n| n != name && files.contains_key(n));
                (name.clone(), named)
            })
            .collect();
        folders.insert(folder, graph);
    }
    folders
}

/// A path from `from` back to itself, if there is one.
fn circle(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    let mut stack = vec![vec![from.to_owned()]];
    let mut seen = BTreeSet::new();
    while let Some(path) = stack.pop() {
        let last = path.last().unwrap();
        for next in graph.get(last).into_iter().flatten() {
            if next == from {
                let mut found = path.clone();
                found.push(next.clone());
                return Some(found);
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push(longer);
            }
        }
    }
    None
}

#[test]
fn no_module_imports_itself_in_a_circle() {
    let graph = graph();
    assert!(graph.len() > 10, "found the modules: {graph:?}");
    assert!(
        graph["upstream"].contains("connection") && graph["frontend"].contains("dispatch"),
        "the import scan works: {graph:?}"
    );
    for module in graph.keys() {
        if let Some(path) = circle(&graph, module) {
            panic!("import circle: {}", path.join(" -> "));
        }
    }
}

#[test]
fn the_scan_finds_a_circle_when_there_is_one() {
    let mut graph = graph();
    graph
        .get_mut("protocol")
        .unwrap()
        .insert("dispatch".to_owned());
    assert!(circle(&graph, "protocol").is_some());
}

#[test]
fn no_file_imports_itself_through_its_siblings() {
    let folders = sibling_graphs();
    assert!(
        folders.get("dispatch").is_some_and(|g| g.len() > 3),
        "found the folders: {folders:?}"
    );
    for (folder, graph) in &folders {
        for file in graph.keys() {
            if let Some(path) = circle(graph, file) {
                panic!("import circle in src/{folder}: {}", path.join(" -> "));
            }
        }
    }
}

#[test]
fn the_sibling_scan_sees_super_and_crate_paths() {
    let text = "use super::{a::X, b};\nuse crate::f::c::Y;\nuse super::super::d;\n";
    assert_eq!(
        names_after(text, "super::"),
        BTreeSet::from(["a".to_owned(), "b".to_owned()])
    );
    assert_eq!(
        names_after(text, "crate::f::"),
        BTreeSet::from(["c".to_owned()])
    );
}
