//! The direction of the data path, enforced by path (docs/modules.md, "Borders"): every
//! `crate::` path in a folder's source is checked against the folders it must not reach.
//! Doc comments are attributes to the tokenizer, so a doc link is not an import.
use std::{fs, path::Path};

use proc_macro2::{Delimiter, TokenStream, TokenTree};

/// Folder (or top-level module) → the top-level modules its code must not name.
const BORDERS: &[(&str, &[&str])] = &[
    (
        "util",
        &[
            "backend",
            "data",
            "recording",
            "sinks",
            "ftrace",
            "host",
            "live",
            "tui",
            "serve",
            "cmd",
            "cli",
        ],
    ),
    (
        "backend",
        &[
            "recording",
            "sinks",
            "ftrace",
            "host",
            "live",
            "tui",
            "serve",
            "cmd",
            "cli",
        ],
    ),
    (
        "data",
        &[
            "recording",
            "sinks",
            "ftrace",
            "host",
            "live",
            "tui",
            "serve",
            "cmd",
            "cli",
        ],
    ),
    (
        "recording",
        &[
            "sinks", "ftrace", "host", "live", "tui", "serve", "cmd", "cli",
        ],
    ),
    ("sinks", &["host", "live", "tui", "serve", "cmd", "cli"]),
    (
        "ftrace",
        &["sinks", "host", "live", "tui", "serve", "cmd", "cli"],
    ),
    (
        "host",
        &["recording", "sinks", "live", "tui", "serve", "cmd", "cli"],
    ),
    ("live", &["sinks", "tui", "serve", "cmd", "cli"]),
    ("tui", &["cmd", "cli"]),
    ("serve", &["cmd", "cli"]),
];

/// The top-level modules named by `crate::` paths in `source`, `crate::{a::x, b}` included.
fn crate_paths(source: &str) -> Vec<String> {
    fn walk(tokens: TokenStream, out: &mut Vec<String>) {
        let t: Vec<TokenTree> = tokens.into_iter().collect();
        for (i, tree) in t.iter().enumerate() {
            if let TokenTree::Group(g) = tree {
                walk(g.stream(), out);
            }
            let TokenTree::Ident(id) = tree else { continue };
            let colons = matches!((t.get(i + 1), t.get(i + 2)),
                (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b))) if a.as_char() == ':' && b.as_char() == ':');
            if id != "crate" || !colons {
                continue;
            }
            match t.get(i + 3) {
                Some(TokenTree::Ident(m)) => out.push(m.to_string()),
                Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Brace => {
                    // The first name of each comma-separated item.
                    let mut first = true;
                    for tt in g.stream() {
                        match tt {
                            TokenTree::Punct(p) if p.as_char() == ',' => first = true,
                            TokenTree::Ident(m) if first => {
                                out.push(m.to_string());
                                first = false;
                            }
                            _ => first = false,
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    walk(source.parse().expect("Rust source tokenizes"), &mut out);
    out
}

/// Every `.rs` file under `dir`, with its path.
fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in fs::read_dir(dir).expect("source folder readable") {
        let p = e.expect("directory entry").path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn paths_are_read_through_braces_and_not_from_docs() {
    let src = "/// [`crate::cli::Cli`]\nuse crate::{data::x, live::{self, Session}};\n\
               fn f() { crate::cmd::run(); let s = \"crate::tui\"; }";
    assert_eq!(crate_paths(src), ["data", "live", "cmd"]);
}

#[test]
fn nothing_reaches_against_the_data_path() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mut wrong = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&root).expect("under src");
        let top = rel
            .iter()
            .next()
            .and_then(|c| c.to_str())
            .expect("utf-8 path");
        let top = top.strip_suffix(".rs").unwrap_or(top);
        let Some((_, banned)) = BORDERS.iter().find(|(m, _)| *m == top) else {
            continue;
        };
        let source = fs::read_to_string(f).expect("source readable");
        for m in crate_paths(&source) {
            if banned.contains(&m.as_str()) {
                wrong.push(format!("{} uses crate::{m}", rel.display()));
            }
        }
    }
    assert!(files.len() > 50, "found only {} sources", files.len());
    assert!(
        wrong.is_empty(),
        "against the data path:\n{}",
        wrong.join("\n")
    );
}
