//! The command layer's shape (docs/architecture.md): `app` dispatches to the command families,
//! the families use the shared plumbing in `command`, and the plumbing and the libraries below
//! it never import a family or `app`. A source scan, so an import in the wrong direction fails
//! here with the rule it breaks.

use std::path::{Path, PathBuf};

/// Modules that hold one command family's code, besides every `*/command.rs`.
const FAMILIES: &[&str] =
    &["setup.rs", "mock.rs", "status.rs", "log.rs", "daemon.rs", "completions.rs", "git_signing.rs"];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Source files relative to src/, with their text.
fn crate_sources() -> Vec<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| (p.strip_prefix(&src).unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&p).unwrap()))
        .collect()
}

fn is_family(file: &str) -> bool {
    FAMILIES.contains(&file) || file.ends_with("/command.rs")
}

fn is_plumbing(file: &str) -> bool {
    file == "command.rs" || file.starts_with("command/")
}

/// The lines of `text` that are code mentioning `needle` (comments left out).
fn mentions<'a>(text: &'a str, needle: &str) -> Vec<&'a str> {
    text.lines().filter(|l| !l.trim_start().starts_with("//") && l.contains(needle)).collect()
}

#[test]
fn nothing_imports_the_dispatch() {
    let sources = crate_sources();
    assert!(sources.iter().any(|(f, _)| f == "app.rs"));
    let offenders: Vec<String> = sources
        .iter()
        .filter(|(f, _)| f != "app.rs" && f != "main.rs")
        .flat_map(|(f, text)| mentions(text, "crate::app").into_iter().map(move |l| format!("{f}: {}", l.trim())))
        .collect();
    assert!(
        offenders.is_empty(),
        "app.rs is only dispatch; shared command code belongs in src/command/ (see docs/architecture.md):\n{}",
        offenders.join("\n")
    );
}

#[test]
fn the_plumbing_imports_no_family() {
    let sources = crate_sources();
    let families: Vec<String> = sources
        .iter()
        .map(|(f, _)| f.clone())
        .filter(|f| is_family(f))
        .map(|f| format!("crate::{}", f.trim_end_matches(".rs").replace('/', "::")))
        .collect();
    assert!(families.len() >= FAMILIES.len() + 3, "{families:?}");
    let mut offenders = Vec::new();
    for (file, text) in sources.iter().filter(|(f, _)| is_plumbing(f)) {
        for family in &families {
            for line in mentions(text, family) {
                offenders.push(format!("{file}: {}", line.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "src/command/ sits below the command families and must not import them:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn only_families_and_dispatch_use_the_plumbing() {
    let offenders: Vec<String> = crate_sources()
        .iter()
        .filter(|(f, _)| !is_family(f) && !is_plumbing(f) && f != "app.rs" && f != "lib.rs")
        .flat_map(|(f, text)| mentions(text, "crate::command").into_iter().map(move |l| format!("{f}: {}", l.trim())))
        .collect();
    assert!(
        offenders.is_empty(),
        "library modules sit below src/command/; put command code in the family's module \
         (a top-level one or FEATURE/command.rs, see docs/architecture.md):\n{}",
        offenders.join("\n")
    );
}
