//! `cargo xtask tidy`: checks of the code's shape that no compiler makes (rust-analyzer's tidy tests).
//!
//! - **No import cycles between the modules of a crate** (STYLE.md: modules that import each other in a
//!   circle are one concept split badly). Each `.rs` file under a crate's `src/` is a module; every
//!   `crate::a::b::…` path in it (in `use` items or inline) is an edge to the deepest module that path
//!   names, `super::…` likewise from the file's parent; comments (doc links) are not imports. Edges into a module's own file, into the crate
//!   root and from a `mod.rs` into its children (declarations and re-exports) are not imports.
//! - **The binary is the thinnest crate**: every file of `crates/yaqa-cli/src` stays under
//!   [`CLI_MAX_LINES`] lines; the job lives in `yaqa_model::job`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The most lines a file of the command line may have (issue #27: "each under about 400 lines").
pub const CLI_MAX_LINES: usize = 400;

/// Runs every check on the workspace at `root`.
pub fn run(root: &Path) -> Result<()> {
    let mut problems = Vec::new();
    for entry in std::fs::read_dir(root.join("crates")).context("reading crates/")? {
        let src = entry.context("reading crates/")?.path().join("src");
        if src.is_dir() {
            problems.extend(import_cycles(&src)?);
        }
    }
    let cli = root.join("crates/yaqa-cli/src");
    for file in rust_files(&cli)? {
        let lines = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?
            .lines()
            .count();
        if lines > CLI_MAX_LINES {
            problems.push(format!(
                "{}: {lines} lines; a command-line file stays under {CLI_MAX_LINES} (move the work into \
                 yaqa_model::job)",
                file.display()
            ));
        }
    }
    if !problems.is_empty() {
        bail!("tidy:\n  {}", problems.join("\n  "));
    }
    println!(
        "tidy: no import cycles between modules, command-line files under {CLI_MAX_LINES} lines"
    );
    Ok(())
}

fn rust_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let p = entry
                .with_context(|| format!("reading {}", d.display()))?
                .path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The module path of a file under `src` (`job/mod.rs` → `job`, `lib.rs` → ``).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap_or(file);
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs");
        if !matches!(stem, "mod" | "lib" | "main") {
            parts.push(stem.to_string());
        }
    }
    parts
}

/// The cycles among the modules of the crate whose sources are in `src`, each as a message.
fn import_cycles(src: &Path) -> Result<Vec<String>> {
    let files = rust_files(src)?;
    let modules: BTreeMap<Vec<String>, PathBuf> = files
        .iter()
        .map(|f| (module_of(src, f), f.clone()))
        .collect();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, file) in &modules {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        // Comments (doc links included) name modules without importing them.
        let text: String = text
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let targets = edges.entry(module.clone()).or_default();
        for path in paths_in(&text, module) {
            // The deepest module the path names.
            let Some(target) = (1..=path.len())
                .rev()
                .map(|k| path[..k].to_vec())
                .find(|p| modules.contains_key(p))
            else {
                continue;
            };
            let is_child = target.len() > module.len() && target.starts_with(module);
            if target != *module && !target.is_empty() && !is_child {
                targets.insert(target);
            }
        }
    }
    Ok(find_cycles(&edges)
        .into_iter()
        .map(|cycle| {
            format!(
                "{}: modules import each other in a circle: {}",
                src.display(),
                cycle
                    .iter()
                    .map(|m| format!("crate::{}", m.join("::")))
                    .collect::<Vec<_>>()
                    .join(" → ")
            )
        })
        .collect())
}

/// Every `crate::…` and `super::…` path in `text`, as absolute module paths, with `use` groups
/// (`crate::a::{b, c::d}`) expanded one level.
fn paths_in(text: &str, module: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (root, base) in [("crate::", Vec::new()), ("super::", parent(module))] {
        let mut rest = text;
        while let Some(i) = rest.find(root) {
            let before = rest[..i].chars().next_back();
            rest = &rest[i + root.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let head: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let mut path = base.clone();
            path.extend(head.split("::").filter(|s| !s.is_empty()).map(String::from));
            if rest[head.len()..].starts_with('{') {
                let group: String = rest[head.len() + 1..]
                    .chars()
                    .take_while(|&c| c != '}')
                    .collect();
                for item in group.split(',') {
                    let mut p = path.clone();
                    p.extend(
                        item.trim()
                            .split("::")
                            .map(|s| s.trim_matches(|c: char| !(c.is_alphanumeric() || c == '_')))
                            .filter(|s| !s.is_empty() && *s != "self")
                            .map(String::from),
                    );
                    out.push(p);
                }
            }
            out.push(path);
        }
    }
    out
}

fn parent(module: &[String]) -> Vec<String> {
    module[..module.len().saturating_sub(1)].to_vec()
}

/// The strongly connected components with more than one module (Tarjan's algorithm, iteratively small
/// enough to recurse: a crate has tens of modules).
fn find_cycles(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<Vec<String>>> {
    struct State<'a> {
        edges: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'a Vec<String>, usize>,
        low: BTreeMap<&'a Vec<String>, usize>,
        stack: Vec<&'a Vec<String>>,
        on_stack: BTreeSet<&'a Vec<String>>,
        out: Vec<Vec<Vec<String>>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a Vec<String>) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        let edges = s.edges;
        for w in edges.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(lw));
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(iw));
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.clone());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.reverse();
                s.out.push(component);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(pairs: &[(&str, &str)]) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
        let mut g: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
        for (a, b) in pairs {
            g.entry(vec![a.to_string()])
                .or_default()
                .insert(vec![b.to_string()]);
            g.entry(vec![b.to_string()]).or_default();
        }
        g
    }

    #[test]
    fn finds_a_circle_and_nothing_in_a_chain() {
        assert!(find_cycles(&graph(&[("a", "b"), ("b", "c")])).is_empty());
        let c = find_cycles(&graph(&[("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].len(), 3);
    }

    #[test]
    fn paths_expand_groups_and_super() {
        let m = vec!["job".to_string(), "quantize".to_string()];
        let p = paths_in(
            "use crate::job::{calib::Shard, factors};\nlet x = super::guard::named;",
            &m,
        );
        let has = |s: &[&str]| {
            p.iter()
                .any(|q| q == &s.iter().map(|x| x.to_string()).collect::<Vec<_>>())
        };
        assert!(has(&["job", "calib", "Shard"]));
        assert!(has(&["job", "factors"]));
        assert!(has(&["job", "guard", "named"]));
    }
}
