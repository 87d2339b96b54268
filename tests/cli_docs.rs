//! The command line as users meet it, pinned so that docs and flags cannot drift apart:
//! `--help` of every command (snapshots in tests/help/), the man pages in docs/man/, and the
//! shell completions.
//!
//! After an intended change: `KEYTAP_BLESS=1 cargo test --test cli_docs` rewrites the help
//! snapshots and docs/man/ (the latter is also `cargo run --example gen-man`); review the diff
//! and commit it.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory;
use support::text;

const BLESS: &str = "KEYTAP_BLESS";

/// keytap isolated in a scratch directory under cargo's target/tmp (the commands here read
/// and write nothing there).
fn keytap() -> Command {
    support::keytap_in(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli_docs-home"))
}

fn blessing() -> bool {
    std::env::var_os(BLESS).is_some_and(|v| v == "1")
}

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Every command users can type (hidden ones and clap's `help` left out), as argument paths:
/// `[]` for `keytap`, `["mock", "init"]` for `keytap mock init`.
fn command_paths() -> Vec<Vec<String>> {
    fn walk(cmd: &clap::Command, path: Vec<String>, out: &mut Vec<Vec<String>>) {
        out.push(path.clone());
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
            let mut next = path.clone();
            next.push(sub.get_name().to_string());
            walk(sub, next, out);
        }
    }
    let mut out = Vec::new();
    walk(&keytap::cli::Cli::command(), Vec::new(), &mut out);
    out
}

/// The first line where two texts differ, for a readable failure.
fn first_difference(expected: &str, actual: &str) -> String {
    let (mut e, mut a) = (expected.lines(), actual.lines());
    for n in 1.. {
        match (e.next(), a.next()) {
            (None, None) => return "only in line endings".into(),
            (x, y) if x == y => continue,
            (x, y) => return format!("line {n}: expected {:?}, got {:?}", x.unwrap_or("<end>"), y.unwrap_or("<end>")),
        }
    }
    unreachable!()
}

#[test]
fn help_of_every_command_matches_its_snapshot() {
    let dir = repo_path("tests/help");
    let paths = command_paths();
    assert!(paths.len() > 20, "the command tree looks truncated: {paths:?}");
    let mut expected_files = Vec::new();
    let mut problems = Vec::new();
    for path in &paths {
        let name = std::iter::once("keytap").chain(path.iter().map(String::as_str)).collect::<Vec<_>>().join("-");
        let file = dir.join(format!("{name}.txt"));
        expected_files.push(file.clone());
        let out = keytap().args(path).arg("--help").output().unwrap();
        assert_eq!(out.status.code(), Some(0), "keytap {} --help: {}", path.join(" "), text(&out));
        assert!(out.stderr.is_empty(), "keytap {} --help wrote to stderr: {}", path.join(" "), text(&out));
        let actual = String::from_utf8(out.stdout).unwrap();
        if blessing() {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&file, &actual).unwrap();
            continue;
        }
        match std::fs::read_to_string(&file) {
            Ok(expected) if expected == actual => {}
            Ok(expected) => problems.push(format!(
                "`keytap {} --help` differs from {}: {}",
                path.join(" "),
                file.display(),
                first_difference(&expected, &actual)
            )),
            Err(_) => problems.push(format!("no snapshot {} for `keytap {} --help`", file.display(), path.join(" "))),
        }
    }
    // A snapshot of a command that is gone would pin help nobody can see.
    for entry in std::fs::read_dir(&dir).unwrap() {
        let file = entry.unwrap().path();
        if !expected_files.contains(&file) {
            if blessing() {
                std::fs::remove_file(&file).unwrap();
            } else {
                problems.push(format!("{} belongs to no command", file.display()));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{}\nIf the change is intended, run `{BLESS}=1 cargo test --test cli_docs` and commit tests/help/ (and update the docs that show it).",
        problems.join("\n")
    );
}

#[test]
fn help_snapshots_show_what_the_docs_rely_on() {
    // The snapshots are only as good as what they hold: spot-check a few facts users rely on.
    let read = |name: &str| std::fs::read_to_string(repo_path(&format!("tests/help/{name}.txt"))).unwrap();
    let top = read("keytap");
    for sub in ["agent", "list", "status", "mock", "setup", "cert", "git", "authorized-key", "log", "attest", "cot", "completions"] {
        assert!(top.lines().any(|l| l.trim_start().starts_with(&format!("{sub} "))), "`keytap --help` lacks {sub}:\n{top}");
    }
    let agent = read("keytap-agent");
    assert!(agent.contains("--foreground") && agent.contains("--certs-only"), "{agent}");
    assert!(!agent.contains("--daemon-child"), "an internal flag shows in help:\n{agent}");
    assert!(read("keytap-completions").contains("[possible values: bash, zsh, fish]"));
}

/// `(file name, bytes)` of the keytap man pages in `dir`.
fn man_pages(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    keytap::completions::man_pages_in(dir)
        .unwrap()
        .into_iter()
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect()
}

#[test]
fn checked_in_man_pages_are_current() {
    let checked_in = repo_path("docs/man");
    if blessing() {
        keytap::completions::write_man_pages(&checked_in).unwrap();
    }
    let fresh = tempfile::tempdir().unwrap();
    keytap::completions::write_man_pages(fresh.path()).unwrap();
    let (want, have) = (man_pages(fresh.path()), man_pages(&checked_in));
    let mut problems = Vec::new();
    for (name, bytes) in &want {
        match have.get(name) {
            None => problems.push(format!("docs/man/{name} is missing")),
            Some(old) if old != bytes => problems.push(format!(
                "docs/man/{name} is out of date: {}",
                first_difference(&String::from_utf8_lossy(bytes), &String::from_utf8_lossy(old))
            )),
            Some(_) => {}
        }
    }
    problems.extend(have.keys().filter(|n| !want.contains_key(*n)).map(|n| format!("docs/man/{n} belongs to no command")));
    assert!(
        problems.is_empty(),
        "{}\nRegenerate with `cargo run --example gen-man` and commit docs/man/.",
        problems.join("\n")
    );
    // One page per command, and the top page names every subcommand.
    assert_eq!(want.len(), command_paths().len(), "{:?}", want.keys());
    let top = String::from_utf8_lossy(&want["keytap.1"]).into_owned();
    for path in command_paths().iter().filter(|p| p.len() == 1) {
        assert!(top.contains(&format!("keytap\\-{}(1)", path[0].replace('-', "\\-"))), "keytap.1 does not list {}:\n{top}", path[0]);
    }
}

#[test]
fn man_renders_the_top_page_with_every_subcommand() {
    let Ok(out) = Command::new("man").arg("-l").arg(repo_path("docs/man/keytap.1")).env("MANWIDTH", "100").env("MANPAGER", "cat").output()
    else {
        panic!("man is missing: install the man-db package (scripts/install-deps.sh does)");
    };
    assert!(out.status.success(), "{}", text(&out));
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.contains("SUBCOMMANDS"), "{page}");
    for path in command_paths().iter().filter(|p| p.len() == 1) {
        assert!(page.contains(&format!("keytap-{}(1)", path[0])), "`man -l docs/man/keytap.1` lacks {}:\n{page}", path[0]);
    }
}

/// What bash completes after `line` (the cursor at its end) with keytap's completion script.
fn bash_complete(script: &Path, line: &str) -> Vec<String> {
    let program = r#"
source "$1"
line="$2"
read -ra words <<<"$line"
[[ "$line" == *" " ]] && words+=("")
COMP_WORDS=("${words[@]}")
COMP_CWORD=$((${#words[@]} - 1))
COMP_LINE="$line"
COMP_POINT=${#line}
_keytap keytap "${words[-1]}" "${words[-2]}"
printf '%s\n' "${COMPREPLY[@]}"
"#;
    let out = Command::new("bash").args(["-c", program, "complete"]).arg(script).arg(line).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).filter(|l| !l.is_empty()).collect()
}

#[test]
fn bash_completion_completes_commands_flags_and_values() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("keytap.bash");
    let out = keytap().args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    std::fs::write(&script, &out.stdout).unwrap();

    let top = bash_complete(&script, "keytap ");
    for path in command_paths().iter().filter(|p| p.len() == 1) {
        assert!(top.contains(&path[0]), "`keytap <TAB>` lacks {}: {top:?}", path[0]);
    }
    assert_eq!(bash_complete(&script, "keytap mock "), ["-h", "--help", "init", "unplug", "plug", "touch", "imported", "help"]);
    assert_eq!(bash_complete(&script, "keytap setup --al"), ["--alg"]);
    assert_eq!(bash_complete(&script, "keytap setup --alg "), ["p256", "p384", "ed25519", "rsa2048"]);
    assert_eq!(bash_complete(&script, "keytap completions "), ["-h", "--help", "bash", "zsh", "fish"]);
}

#[test]
fn zsh_and_fish_completions_name_every_command() {
    for shell in ["zsh", "fish"] {
        let out = keytap().args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let script = String::from_utf8(out.stdout).unwrap();
        for path in command_paths().iter().filter(|p| !p.is_empty()) {
            let name = path.last().unwrap();
            assert!(script.contains(name.as_str()), "{shell} completion lacks {}", path.join(" "));
        }
        // Where the shell is installed, the script must at least parse.
        if let Ok(check) = Command::new(shell).arg("-n").arg("/dev/stdin").stdin(std::process::Stdio::piped()).spawn() {
            use std::io::Write;
            let mut check = check;
            check.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
            let status = check.wait().unwrap();
            assert!(status.success(), "{shell} -n rejects keytap's completion script");
        }
    }
    let out = keytap().args(["completions", "powershell"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}
