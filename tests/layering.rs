//! The crate's files import each other without a cycle: every path
//! `crate::a::b` (and `super::x` in a submodule) outside comments and
//! tests is an edge from its file to the file that defines the module,
//! and the graph must have no cycle. Test-only modules are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Files that exist only for tests.
const TEST_ONLY: [&str; 5] =
    ["fault_sweep.rs", "fault_tests.rs", "failure_tests.rs", "model_tests.rs", "storage/faulty.rs"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|name| name != "bin") {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// The file defining module `parts` under `src`, longest prefix first.
fn module_file(src: &Path, parts: &[&str]) -> Option<PathBuf> {
    (1..=parts.len()).rev().find_map(|len| {
        let base = parts[..len].iter().fold(src.to_path_buf(), |path, part| path.join(part));
        let file = base.with_extension("rs");
        let dir_mod = base.join("mod.rs");
        if file.is_file() {
            Some(file)
        } else if dir_mod.is_file() {
            Some(dir_mod)
        } else {
            None
        }
    })
}

/// The module path segments after `prefix` at each occurrence in `code`.
fn paths_after<'a>(code: &'a str, prefix: &str) -> Vec<Vec<&'a str>> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).unwrap_or(rest.len());
        found.push(rest[..end].split("::").filter(|part| !part.is_empty()).collect());
    }
    found
}

fn edges(src: &Path) -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graph = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(src).unwrap().to_string_lossy().replace('\\', "/");
        if TEST_ONLY.contains(&relative.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or_default();
        let code: String =
            text.lines().filter(|line| !line.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
        let mut deps = BTreeSet::new();
        for parts in paths_after(&code, "crate::") {
            if let Some(target) = module_file(src, &parts) {
                deps.insert(target);
            }
        }
        let own_dir = file.parent().unwrap();
        let parent_dir = if file.ends_with("mod.rs") { own_dir.parent().unwrap() } else { own_dir };
        let base: Vec<String> =
            parent_dir.strip_prefix(src).unwrap().iter().map(|part| part.to_string_lossy().into_owned()).collect();
        for parts in paths_after(&code, "super::") {
            let mut full: Vec<&str> = base.iter().map(String::as_str).collect();
            full.extend(parts.iter().copied());
            let target = module_file(src, &full).unwrap_or_else(|| parent_dir.join("mod.rs"));
            deps.insert(target);
        }
        deps.remove(&file);
        graph.insert(file, deps);
    }
    graph
}

/// A cycle through `node`, if the search from it finds one.
fn find_cycle(
    node: &PathBuf,
    graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
    path: &mut Vec<PathBuf>,
    done: &mut BTreeSet<PathBuf>,
) -> Option<Vec<PathBuf>> {
    if let Some(at) = path.iter().position(|seen| seen == node) {
        return Some(path[at..].to_vec());
    }
    if !done.insert(node.clone()) {
        return None;
    }
    path.push(node.clone());
    for next in graph.get(node).into_iter().flatten() {
        if graph.contains_key(next) {
            if let Some(cycle) = find_cycle(next, graph, path, done) {
                return Some(cycle);
            }
        }
    }
    path.pop();
    None
}

#[test]
fn the_crates_files_import_each_other_without_a_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = edges(&src);
    assert!(graph.len() > 30, "the walk found only {} files", graph.len());
    assert!(graph.values().map(BTreeSet::len).sum::<usize>() > 50, "the walk found almost no imports");
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        let cycle = find_cycle(node, &graph, &mut Vec::new(), &mut done);
        assert!(cycle.is_none(), "import cycle: {:?}", cycle.unwrap_or_default());
    }
}

#[test]
fn the_settings_module_imports_nothing_above_the_storage_seam() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = edges(&src);
    // The remote-store trait, which the settings name, imports nothing.
    let allowed: BTreeSet<PathBuf> = [src.join("storage/mod.rs"), src.join("tier/store.rs")].into_iter().collect();
    let imports = &graph[&src.join("options.rs")];
    assert!(imports.is_subset(&allowed), "options.rs imports {imports:?}");
    let store = &graph[&src.join("tier/store.rs")];
    assert!(store.is_empty(), "tier/store.rs imports {store:?}");
}
