//! The source tree's shape: no cycle of imports, of any length, between
//! files or between the folders of a crate.
//!
//! A file's imports are the module paths it names through `crate::` and
//! `super::` (resolved to the file that holds the module) and the child
//! modules it names by their own name (`config::X` in a `mod.rs` that
//! declares `mod config;`). Declaring a module is not importing it. Test
//! modules (`#[cfg(test)] mod …` or `pub(crate) mod …`, at the end of a
//! file) are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const CRATES: [&str; 8] = [
    "src",
    "proto/src",
    "pipeline/src",
    "sources/src",
    "sinks/src",
    "queries/src",
    "derive/src",
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

/// The items `lib.rs` re-exports (`pub use a::b::{X, Y};`), each with the
/// module path it comes from.
fn reexports(root: &Path) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    let Ok(text) = std::fs::read_to_string(root.join("lib.rs")) else {
        return out;
    };
    for stmt in text.split(';') {
        let Some(rest) = stmt.trim().strip_prefix("pub use ") else {
            continue;
        };
        let rest: String = rest.split_whitespace().collect();
        let (module, items) = match rest.split_once("::{") {
            Some((m, items)) => (m.to_string(), items.trim_end_matches('}').to_string()),
            None => match rest.rsplit_once("::") {
                Some((m, item)) => (m.to_string(), item.to_string()),
                None => continue,
            },
        };
        let module: Vec<String> = module
            .trim_start_matches("crate::")
            .split("::")
            .map(str::to_string)
            .collect();
        for item in items.split(',').filter(|i| !i.is_empty()) {
            out.insert(item.to_string(), module.clone());
        }
    }
    out
}

/// A file's code: without its test module and without comments.
fn code_of(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let test_module = ["#[cfg(test)]\nmod ", "#[cfg(test)]\npub(crate) mod "]
        .iter()
        .filter_map(|m| text.find(m))
        .min();
    let text = match test_module {
        Some(i) => &text[..i],
        None => &text[..],
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn imports(root: &Path, file: &Path) -> BTreeSet<PathBuf> {
    let code = code_of(file);
    let me = module_of(root, file);
    let mut out = BTreeSet::new();
    let reexports = reexports(root);
    let mut add = |parts: Vec<String>| {
        // An item the crate root re-exports (`crate::Dataset`) is imported
        // from the module that defines it.
        let parts = match parts.first().and_then(|p| reexports.get(p)) {
            Some(module) => module.clone(),
            None => parts,
        };
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

/// The import graph of every crate's files.
fn graph(repo: &Path) -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
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
    graph
}

/// The strongly connected components of more than one node (Tarjan):
/// every cycle, whatever its length, lies in one of them.
fn cycles<N: Ord + Clone>(graph: &BTreeMap<N, BTreeSet<N>>) -> Vec<Vec<N>> {
    struct State<N> {
        index: BTreeMap<N, usize>,
        low: BTreeMap<N, usize>,
        stack: Vec<N>,
        on_stack: BTreeSet<N>,
        out: Vec<Vec<N>>,
    }
    fn visit<N: Ord + Clone>(g: &BTreeMap<N, BTreeSet<N>>, v: &N, s: &mut State<N>) {
        let i = s.index.len();
        s.index.insert(v.clone(), i);
        s.low.insert(v.clone(), i);
        s.stack.push(v.clone());
        s.on_stack.insert(v.clone());
        for w in g.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(g, w, s);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut scc = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on_stack.remove(&w);
                let done = &w == v;
                scc.push(w);
                if done {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                s.out.push(scc);
            }
        }
    }
    let mut s = State {
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v) {
            visit(graph, v, &mut s);
        }
    }
    s.out
}

#[test]
fn no_cycle_of_imports_between_files() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let graph = graph(repo);
    assert!(graph.len() > 50, "the walk found the source files");
    let found: Vec<Vec<String>> = cycles(&graph)
        .into_iter()
        .map(|c| {
            c.iter()
                .map(|f| f.strip_prefix(repo).unwrap().display().to_string())
                .collect()
        })
        .collect();
    assert!(found.is_empty(), "files in a cycle of imports: {found:#?}");
}

/// The folder of a file under its crate root (`queries/src/history`), or
/// `None` for a file at the root (lib.rs, main.rs and their siblings,
/// which declare and re-export the folders).
fn folder(repo: &Path, file: &Path) -> Option<String> {
    let krate = CRATES.iter().find(|c| file.starts_with(repo.join(c)))?;
    let rel = file.strip_prefix(repo.join(krate)).ok()?;
    let mut parts = rel.components();
    let first = parts.next()?;
    parts.next()?;
    Some(format!("{krate}/{}", first.as_os_str().to_string_lossy()))
}

#[test]
fn no_cycle_of_imports_between_folders() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut folders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, deps) in graph(repo) {
        let Some(from) = folder(repo, &file) else {
            continue;
        };
        let entry = folders.entry(from.clone()).or_default();
        for d in deps {
            if let Some(to) = folder(repo, &d).filter(|to| *to != from) {
                entry.insert(to);
            }
        }
    }
    assert!(folders.len() > 10, "{folders:?}");
    let found = cycles(&folders);
    assert!(
        found.is_empty(),
        "folders in a cycle of imports: {found:#?}"
    );
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

#[test]
fn a_cycle_of_three_is_found() {
    let g: BTreeMap<u8, BTreeSet<u8>> = [
        (1, BTreeSet::from([2])),
        (2, BTreeSet::from([3])),
        (3, BTreeSet::from([1, 4])),
        (4, BTreeSet::new()),
    ]
    .into_iter()
    .collect();
    assert_eq!(cycles(&g), vec![vec![1, 2, 3]]);
    let acyclic: BTreeMap<u8, BTreeSet<u8>> = [(1, BTreeSet::from([2])), (2, BTreeSet::new())]
        .into_iter()
        .collect();
    assert!(cycles(&acyclic).is_empty());
}

/// The crates of tally a package's Cargo.toml depends on.
fn tally_deps(repo: &Path, package: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo.join(package).join("Cargo.toml")).unwrap();
    text.lines()
        .filter_map(|l| l.trim().split(['=', ' ', '.']).next())
        .filter(|name| name.starts_with("tally-"))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_bench_drives_tally_from_outside() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert_eq!(
        tally_deps(repo, "bench"),
        BTreeSet::from(["tally-proto".to_string()])
    );
    // The check reads dependencies: sources depends on pipeline and proto.
    assert!(tally_deps(repo, "sources").contains("tally-pipeline"));
}

/// What writes: records through the pipeline, state files, files.
const WRITES: [&str; 12] = [
    ".ingest(",
    ".ingest_with(",
    "state_file::replace",
    "state_file::remove",
    "fs::write",
    "fs::rename",
    "fs::remove_file",
    "fs::create_dir",
    "File::create",
    "OpenOptions",
    "ArrowWriter",
    "put_opts(",
];

/// The writes a piece of code makes.
fn writes_in(code: &str) -> Vec<&'static str> {
    WRITES.into_iter().filter(|w| code.contains(w)).collect()
}

#[test]
fn the_read_side_never_writes() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&repo.join("queries/src"), &mut files);
    let mut found = Vec::new();
    for f in files {
        // Test modules in files of their own write their inputs.
        if f.file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with("tests.rs"))
        {
            continue;
        }
        for w in writes_in(&code_of(&f)) {
            found.push(format!("{} calls {w}", f.display()));
        }
    }
    assert!(
        found.is_empty(),
        "queries/ only reads; these write: {found:#?}"
    );
    // Nor does it reach what writes: its only tally dependency is the pipeline.
    assert_eq!(
        tally_deps(repo, "queries"),
        BTreeSet::from(["tally-pipeline".to_string()])
    );
}

#[test]
fn the_write_scan_sees_a_write() {
    let code = "let r = self.pipeline.ingest(SOURCE, rows, Vec::new()).await;\n\
                tally_pipeline::state_file::replace(&p, &bytes)?;";
    assert_eq!(writes_in(code), [".ingest(", "state_file::replace"]);
    assert!(writes_in("let rows = history.hourly(d, from, to).await?;").is_empty());
}
