#![forbid(unsafe_code)]

use clap::Parser;

fn main() {
    let cli = keytap::cli::Cli::parse();
    if let Err(e) = keytap::app::run(cli) {
        eprintln!("keytap: {e}");
        std::process::exit(e.exit_code());
    }
}
