//! `keytap completions` and the man pages: both generated from `cli`, so they name exactly the
//! commands and flags keytap has. docs/man/ is written by `cargo run --example gen-man`
//! (examples/gen-man.rs); tests/cli_docs.rs fails when it is not current.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::CommandFactory;

use crate::cli::{Cli, CompletionShell, CompletionsArgs};
use crate::command::AppError;

/// `keytap completions SHELL`: the script on stdout.
pub fn completions(args: CompletionsArgs) -> Result<(), AppError> {
    let shell = match args.shell {
        CompletionShell::Bash => clap_complete::Shell::Bash,
        CompletionShell::Zsh => clap_complete::Shell::Zsh,
        CompletionShell::Fish => clap_complete::Shell::Fish,
    };
    // Generated into memory first: the generator panics on a failed write (a closed pipe).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "keytap", &mut script);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)?;
    out.flush()?;
    Ok(())
}

/// Write `keytap.1` and one page per subcommand (`keytap-mock-init.1`, ...) into `dir`, after
/// removing the keytap pages already there (so a removed command leaves no stale page).
/// Returns the pages written, sorted.
pub fn write_man_pages(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    for page in man_pages_in(dir)? {
        std::fs::remove_file(page)?;
    }
    clap_mangen::generate_to(Cli::command(), dir)?;
    man_pages_in(dir)
}

/// The `keytap*.1` files in `dir`, sorted.
pub fn man_pages_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut pages = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with("keytap") && name.ends_with(".1") {
            pages.push(path);
        }
    }
    pages.sort();
    Ok(pages)
}
