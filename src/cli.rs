//! Command-line interface (clap derive), all in one place.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::token::{KeyAlgorithm, PinPolicy, Slot, TokenKind, TouchPolicy};

#[derive(Parser, Debug)]
#[command(name = "keytap", version, about = "An ssh-agent whose keys never leave hardware tokens")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the agent (an SSH_AUTH_SOCK drop-in).
    Agent(AgentArgs),
    /// List the keys on the tokens (through the running agent when SSH_AUTH_SOCK is keytap's).
    List(ListArgs),
    /// Is the agent reachable, which tokens does it see, is it locked?
    Status(StatusArgs),
    /// Manage the mock (TEST) token.
    #[command(subcommand)]
    Mock(MockCommand),
    /// Create a key on the token (generated on the device) and print its authorized_keys line.
    Setup(SetupArgs),
}

#[derive(Args, Debug)]
pub struct SetupArgs {
    #[command(flatten)]
    pub token: TokenArgs,
    /// PIV slot for the key: 9a (authentication), 9c, 9d, 9e or 82-95.
    #[arg(long, default_value = "9a")]
    pub slot: Slot,
    /// Key algorithm (ed25519 needs YubiKey firmware 5.7+).
    #[arg(long, value_enum, default_value = "p256")]
    pub alg: KeyAlgorithm,
    /// When the key wants a touch.
    #[arg(long, value_enum, default_value = "cached")]
    pub touch: TouchPolicy,
    /// When the key wants the PIN.
    #[arg(long = "pin-policy", value_enum, default_value = "once")]
    pub pin_policy: PinPolicy,
    /// Replace a key already in the slot (the old key is lost for good).
    #[arg(long)]
    pub force: bool,
    /// First-time setup: replace the factory-default management key with a random one stored
    /// on the YubiKey, protected by the PIN (as ykman's --protect). Key changes then need the PIN.
    #[arg(long)]
    pub protect_management_key: bool,
    /// The YubiKey to use when several are connected.
    #[arg(long)]
    pub serial: Option<u32>,
    /// Read the PIN from this file (mode 0600) instead of asking.
    #[arg(long, value_name = "FILE")]
    pub pin_file: Option<PathBuf>,
    /// pinentry program [default: `pinentry` on PATH].
    #[arg(long, value_name = "PROGRAM")]
    pub pinentry: Option<String>,
}

/// Which token a command uses; the same defaults as the agent.
#[derive(Args, Debug, Clone)]
pub struct TokenArgs {
    /// Token kind: `piv` for YubiKeys, `mock` for the software TEST token.
    #[arg(long, value_enum, default_value = "piv")]
    pub token: TokenKind,
    /// Mock token state directory [default: $XDG_STATE_HOME/keytap/mock].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    #[command(flatten)]
    pub token: TokenArgs,
    /// Socket path [default: $XDG_RUNTIME_DIR/keytap/agent.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Stay in the foreground and log to stderr.
    #[arg(long, short = 'D')]
    pub foreground: bool,
    /// Print Bourne shell commands (the default).
    #[arg(short = 's', conflicts_with = "csh")]
    pub sh: bool,
    /// Print csh commands.
    #[arg(short = 'c')]
    pub csh: bool,
    /// Read the PIN from this file (mode 0600) instead of asking; for headless workers.
    #[arg(long, value_name = "FILE")]
    pub pin_file: Option<PathBuf>,
    /// pinentry program [default: `pinentry` on PATH].
    #[arg(long, value_name = "PROGRAM")]
    pub pinentry: Option<String>,
    /// askpass program for confirmations [default: $SSH_ASKPASS].
    #[arg(long, value_name = "PROGRAM")]
    pub askpass: Option<String>,
    /// Log file when running in the background [default: $XDG_STATE_HOME/keytap/agent.log].
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Close client connections idle this long (seconds).
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub idle_timeout: u64,
    /// Release the token after this long without use (seconds; 0 = never).
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    pub release_after: u64,
    /// Internal: the detached child of a background start.
    #[arg(long, hide = true)]
    pub daemon_child: bool,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub token: TokenArgs,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum MockCommand {
    /// Create the mock TEST token: PIN 123456, PUK 12345678, keys in 9a 9c 9d 9e.
    Init {
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// Replace an existing mock token (its keys are lost).
        #[arg(long)]
        force: bool,
        /// Use this serial number instead of a random one.
        #[arg(long)]
        serial: Option<u32>,
    },
    /// Simulate unplugging the mock token.
    Unplug {
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Simulate plugging the mock token back in.
    Plug {
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
    /// How the simulated touch sensor answers: approve, deny, timeout or delay:MS.
    Touch {
        mode: String,
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Mark a slot's key as imported (it can no longer be attested), or back.
    Imported {
        slot: Slot,
        /// Mark it generated on the token again.
        #[arg(long)]
        undo: bool,
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
}
