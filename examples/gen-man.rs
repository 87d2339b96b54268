//! Regenerate the man pages in docs/man/ from the command line definitions (src/cli.rs):
//!
//! ```sh
//! cargo run --example gen-man              # writes docs/man/keytap.1, keytap-agent.1, ...
//! cargo run --example gen-man -- OUT_DIR   # somewhere else (packaging)
//! ```
//!
//! tests/cli_docs.rs fails while the checked-in pages differ from what this writes.
#![forbid(unsafe_code)]

use std::path::PathBuf;

fn main() {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/man"));
    match keytap::completions::write_man_pages(&dir) {
        Ok(pages) => println!("wrote {} man pages into {}", pages.len(), dir.display()),
        Err(e) => {
            eprintln!("gen-man: cannot write the man pages into {}: {e}", dir.display());
            std::process::exit(1);
        }
    }
}
