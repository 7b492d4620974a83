//! The source tree's shape: no file imports a file that imports it.
//!
//! A file's imports are the module paths it names through `crate::` and
//! `super::` (resolved to the file that holds the module) and the child
//! modules it names by their own name (`config::X` in a `mod.rs` that
//! declares `mod config;`). Declaring a module is not importing it. Test
//! modules (`#[cfg(test)] mod …`, at the end of a file) are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const CRATES: [&str; 6] = [
    "src",
    "pipeline/src",
    "sources/src",
    "sinks/src",
    "queries/src",
    "bench/src",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file under its crate root.
fn module_of(root: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(root).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The file holding the longest prefix of `path` that is a module.
fn file_of(root: &Path, path: &[String]) -> Option<PathBuf> {
    for n in (1..=path.len()).rev() {
        let base = path[..n].iter().fold(root.to_path_buf(), |p, s| p.join(s));
        for candidate in [base.with_extension("rs"), base.join("mod.rs")] {
            if candidate.exists() {
                return Some(candidate);
            }
        }
    }
    None
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The identifiers after `start` in `text`: `a::b::c` → [a, b, c].
fn path_at(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(r) = rest.strip_prefix("::") {
        let end = r.find(|c: char| !is_ident(c)).unwrap_or(r.len());
        if end == 0 {
            break;
        }
        out.push(r[..end].to_string());
        rest = &r[end..];
    }
    out
}

fn imports(root: &Path, file: &Path) -> BTreeSet<PathBuf> {
    let text = std::fs::read_to_string(file).unwrap();
    let text = match text.find("#[cfg(test)]\nmod ") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    // Doc and line comments are not imports.
    let code: String = text
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let me = module_of(root, file);
    let mut out = BTreeSet::new();
    let mut add = |parts: Vec<String>| {
        let target = file_of(root, &parts).unwrap_or_else(|| {
            let lib = root.join("lib.rs");
            if lib.exists() {
                lib
            } else {
                root.join("main.rs")
            }
        });
        if target != file {
            out.insert(target);
        }
    };
    for (i, _) in code.match_indices("crate::") {
        if i > 0 && code[..i].ends_with(|c: char| is_ident(c)) {
            continue;
        }
        add(path_at(&code[i + "crate".len()..]));
    }
    for (i, _) in code.match_indices("super::") {
        if i > 0 && code[..i].ends_with(|c: char| is_ident(c) || c == ':') {
            continue;
        }
        let mut base = me.clone();
        base.pop();
        let mut path = path_at(&code[i + "super".len()..]);
        while path.first().is_some_and(|p| p == "super") {
            base.pop();
            path.remove(0);
        }
        base.extend(path);
        add(base);
    }
    // Child modules named by their own name.
    let children: Vec<String> = code
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l
                .strip_prefix("pub(crate) ")
                .or_else(|| l.strip_prefix("pub "))
                .unwrap_or(l);
            l.strip_prefix("mod ")?
                .strip_suffix(';')
                .map(|m| m.trim().to_string())
        })
        .collect();
    for child in children {
        let needle = format!("{child}::");
        let used = code
            .match_indices(&needle)
            .any(|(i, _)| i == 0 || !code[..i].ends_with(|c: char| is_ident(c) || c == ':'));
        if used {
            let mut path = me.clone();
            path.push(child);
            if let Some(f) = file_of(root, &path) {
                out.insert(f);
            }
        }
    }
    out
}

#[test]
fn no_file_imports_a_file_that_imports_it() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut graph: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for krate in CRATES {
        let root = repo.join(krate);
        let mut files = Vec::new();
        rust_files(&root, &mut files);
        for f in files {
            let deps = imports(&root, &f);
            graph.insert(f, deps);
        }
    }
    assert!(graph.len() > 50, "the walk found the source files");
    let mut cycles = Vec::new();
    for (a, deps) in &graph {
        for b in deps {
            if a < b && graph.get(b).is_some_and(|d| d.contains(a)) {
                cycles.push(format!(
                    "{} <-> {}",
                    a.strip_prefix(repo).unwrap().display(),
                    b.strip_prefix(repo).unwrap().display()
                ));
            }
        }
    }
    assert!(cycles.is_empty(), "files importing each other: {cycles:#?}");
}

#[test]
fn the_import_scan_sees_a_mutual_import() {
    // The scan itself: two files of a temporary crate that import each other.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("lib.rs"), "mod a;\nmod b;\n").unwrap();
    std::fs::write(root.join("a.rs"), "use crate::b::B;\npub struct A;\n").unwrap();
    std::fs::write(root.join("b.rs"), "use super::a::A;\npub struct B;\n").unwrap();
    let a = imports(root, &root.join("a.rs"));
    let b = imports(root, &root.join("b.rs"));
    assert!(a.contains(&root.join("b.rs")), "{a:?}");
    assert!(b.contains(&root.join("a.rs")), "{b:?}");
    assert!(!imports(root, &root.join("lib.rs")).contains(&root.join("a.rs")));
}
