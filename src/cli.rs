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
    /// Check everything keytap needs (agent, SSH_AUTH_SOCK, pcscd, PIN prompt, tokens, config)
    /// and say what to do about each problem; exits 1 when something is wrong.
    Doctor(DoctorArgs),
    /// Make the running agent read its policy config, PIN file and certificates again
    /// (as SIGHUP does); a config that does not parse keeps the old policy, and this fails.
    Reload,
    /// Manage the mock (TEST) token.
    #[command(subcommand)]
    Mock(MockCommand),
    /// Create a key on the token (generated on the device) and print its authorized_keys line.
    Setup(SetupArgs),
    /// OpenSSH certificates for token keys, offered by the running agent.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Configure git to sign commits and tags with a token key.
    #[command(subcommand)]
    Git(GitCommand),
    /// Print a key's public line to paste into GitHub, GitLab or authorized_keys.
    AuthorizedKey(AuthorizedKeyArgs),
    /// Print the audit log readably.
    Log(LogArgs),
    /// Prove which YubiKey key this worker holds (PIV attestation), or verify such a proof.
    Attest(Box<AttestArgs>),
    /// Chain of trust for CI workers (Taskcluster-compatible): sign a task run, verify one.
    #[command(subcommand)]
    Cot(CotCommand),
    /// Print the shell completion script for bash, zsh or fish.
    Completions(CompletionsArgs),
    /// Approvals the running agent remembers (`confirm = "remember:8h"`), or forget them.
    Approvals(ApprovalsArgs),
    /// Buildkite signed pipelines: sign command steps through the agent, print the JWKS, verify.
    #[command(subcommand)]
    Buildkite(BuildkiteCommand),
    /// FIDO security keys (sk-ecdsa / sk-ed25519): load resident keys.
    #[command(subcommand)]
    Fido(FidoCommand),
}

#[derive(Args, Debug)]
pub struct ApprovalsArgs {
    #[command(subcommand)]
    pub action: Option<ApprovalsAction>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum ApprovalsAction {
    /// Forget every remembered approval.
    Clear,
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: CompletionShell,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Subcommand, Debug)]
pub enum FidoCommand {
    /// Read the device's resident `ssh:*` keys (needs the FIDO PIN) and add them to the running
    /// agent, like `ssh-add -K`; with --out also write the key files, like `ssh-keygen -K`.
    Load(FidoLoadArgs),
}

#[derive(Args, Debug)]
pub struct FidoLoadArgs {
    /// The security key: a hidraw path or `unix:PATH` [default: the only one plugged in].
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
    /// Read the FIDO PIN from this file (mode 0600) instead of asking.
    #[arg(long, value_name = "FILE")]
    pub pin_file: Option<PathBuf>,
    /// pinentry program [default: `pinentry` on PATH].
    #[arg(long, value_name = "PROGRAM")]
    pub pinentry: Option<String>,
    /// Also write each key as `id_{ecdsa,ed25519}_sk_rk[_APP][_USER]` (+ .pub) in this directory.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// `keytap setup --fido`: a new sk credential on a FIDO security key.
#[derive(Args, Debug, Default)]
pub struct FidoSetupArgs {
    /// Create an sk key on a FIDO security key instead of a PIV key (--alg p256 or ed25519).
    #[arg(long)]
    pub fido: bool,
    /// The security key: a hidraw path or `unix:PATH` [default: the only one plugged in].
    #[arg(long, value_name = "DEVICE", requires = "fido")]
    pub device: Option<String>,
    /// Store the key on the device (discoverable), so `keytap fido load` can read it back.
    #[arg(long, requires = "fido")]
    pub resident: bool,
    /// Every signature needs the PIN (or built-in verification), for `verify-required` in
    /// authorized_keys.
    #[arg(long, requires = "fido")]
    pub verify_required: bool,
    /// Signatures need no touch (for `no-touch-required` in authorized_keys).
    #[arg(long, requires = "fido")]
    pub no_touch_required: bool,
    /// The FIDO application (relying party); must start with `ssh:`.
    #[arg(long, default_value = "ssh:", value_name = "ssh:NAME", requires = "fido")]
    pub application: String,
    /// User name stored with a resident key (at most 31 characters).
    #[arg(long, value_name = "NAME", requires = "fido")]
    pub user: Option<String>,
    /// Write the key file here (openssh-key-v1 without a secret) and PATH.pub.
    #[arg(long, value_name = "PATH", requires = "fido")]
    pub out: Option<PathBuf>,
}

/// The agent's FIDO options.
#[derive(Args, Debug, Clone, Default)]
pub struct FidoAgentArgs {
    /// A FIDO security key to serve sk keys on: a hidraw path or `unix:PATH` (repeatable)
    /// [default: every FIDO device libfido2 finds, unless --token mock].
    #[arg(long = "fido-device", value_name = "DEVICE")]
    pub devices: Vec<String>,
    /// Serve no FIDO keys (ssh-add of sk keys is refused).
    #[arg(long)]
    pub no_fido: bool,
    /// Give up waiting for a touch on a security key after this many seconds [default: the
    /// key's own timeout, about 30 s].
    #[arg(long, value_name = "SECONDS")]
    pub touch_timeout: Option<f64>,
    /// Read the FIDO PIN from this file (mode 0600) [default: systemd credential
    /// `keytap-fido-pin`, else pinentry].
    #[arg(long, value_name = "FILE")]
    pub fido_pin_file: Option<PathBuf>,
    /// The loaded sk keys' state file [default: $XDG_STATE_HOME/keytap/fido-keys.json].
    #[arg(long, value_name = "FILE")]
    pub fido_keys: Option<PathBuf>,
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
    /// pinentry program [default: pinentry-curses on a terminal, pinentry on a desktop].
    #[arg(long, value_name = "PROGRAM")]
    pub pinentry: Option<String>,
    /// Change the PIN (the current one from --pin-file or pinentry, the new one from
    /// --new-pin-file or pinentry, asked twice).
    #[arg(long)]
    pub change_pin: bool,
    /// Change the PUK (current from --puk-file or pinentry, new from --new-puk-file or pinentry).
    #[arg(long)]
    pub change_puk: bool,
    /// The new PIN, in a file (mode 0600).
    #[arg(long, value_name = "FILE")]
    pub new_pin_file: Option<PathBuf>,
    /// The current PUK, in a file (mode 0600).
    #[arg(long, value_name = "FILE")]
    pub puk_file: Option<PathBuf>,
    /// The new PUK, in a file (mode 0600).
    #[arg(long, value_name = "FILE")]
    pub new_puk_file: Option<PathBuf>,
    /// Create no key: only change the PIN, PUK or management key (with --fido: only set or
    /// change the FIDO PIN, from --new-pin-file).
    #[arg(long)]
    pub no_key: bool,
    #[command(flatten)]
    pub fido: FidoSetupArgs,
}

#[derive(Args, Debug)]
pub struct LogArgs {
    /// Keep printing new records as they are written.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only records since this time: RFC 3339 (2026-11-22T10:00:00Z) or an age (10m, 2h, 1d).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only records for this key: a slot (9a), SERIAL/SLOT (12345678/9a) or a SHA256 fingerprint.
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// Audit log file [default: $XDG_STATE_HOME/keytap/audit.jsonl].
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Print the raw JSON lines.
    #[arg(long)]
    pub json: bool,
}

/// Which token a command uses; the same defaults as the agent.
#[derive(Args, Debug, Clone)]
pub struct TokenArgs {
    /// Token kind: `piv` for YubiKeys, `mock` for the software TEST token [default: piv, or mock
    /// with --state-dir]. Commands that can go through a running agent open a named token
    /// directly.
    #[arg(long, value_enum)]
    pub token: Option<TokenKind>,
    /// Mock token state directory [default: $XDG_STATE_HOME/keytap/mock].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

impl TokenArgs {
    /// The token kind, `piv` unless named.
    pub fn kind(&self) -> TokenKind {
        match (self.token, &self.state_dir) {
            (Some(kind), _) => kind,
            // --state-dir only makes sense for the mock.
            (None, Some(_)) => TokenKind::Mock,
            (None, None) => TokenKind::Piv,
        }
    }

    /// Did the user name a token (`--token` or `--state-dir`)? Then commands open it directly
    /// instead of going through a running agent.
    pub fn explicit(&self) -> bool {
        self.token.is_some() || self.state_dir.is_some()
    }
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
    /// pinentry program [default: pinentry-curses on a terminal, pinentry on a desktop].
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
    /// Another agent's socket whose keys keytap lists after its own and signs with under its
    /// policy and audit (repeatable; adds to `upstream = [...]` in config.toml).
    #[arg(long, value_name = "SOCKET")]
    pub upstream: Vec<PathBuf>,
    /// Policy file [default: $XDG_CONFIG_HOME/keytap/config.toml when it exists].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Audit log [default: $XDG_STATE_HOME/keytap/audit.jsonl].
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// Rotate the audit log when it reaches this many bytes.
    #[arg(long, default_value_t = 10 * 1024 * 1024, value_name = "BYTES")]
    pub audit_max_bytes: u64,
    /// Audit records younger than this many days are not rotated away silently: while they
    /// would be, refused requests are only counted (see docs/policy.md).
    #[arg(long, default_value_t = 30, value_name = "DAYS")]
    pub audit_retain_days: u64,
    /// Offer the certificates in this directory (`*-cert.pub`) [default: $XDG_CONFIG_HOME/keytap/certs].
    #[arg(long, value_name = "DIR")]
    pub cert_dir: Option<PathBuf>,
    /// Do not list a plain key while it has a valid certificate (for servers that want only
    /// certificates; see docs/gomote.md for keeping the number of offered keys low).
    #[arg(long)]
    pub certs_only: bool,
    /// Internal: the detached child of a background start.
    #[arg(long, hide = true)]
    pub daemon_child: bool,
    #[command(flatten)]
    pub fido: FidoAgentArgs,
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

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// The token kind to check when no keytap agent answers (and whether pcscd matters).
    #[command(flatten)]
    pub token: TokenArgs,
    /// Policy file to check [default: $XDG_CONFIG_HOME/keytap/config.toml].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// pinentry program to check [default: pinentry-curses on a terminal, pinentry on a desktop].
    #[arg(long, value_name = "PROGRAM")]
    pub pinentry: Option<String>,
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

/// `keytap attest`: write a proof; `keytap attest verify`: check one.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct AttestArgs {
    #[command(subcommand)]
    pub command: Option<AttestCommand>,
    #[command(flatten)]
    pub token: TokenArgs,
    /// The slot whose key to attest.
    #[arg(long, default_value = "9a")]
    pub slot: Slot,
    /// Use the token with this serial (when several are plugged in).
    #[arg(long)]
    pub serial: Option<u32>,
    /// The verifier's challenge (e.g. from the worker manager).
    #[arg(long, required = true)]
    pub nonce: Option<String>,
    /// Worker pool id the proof is for.
    #[arg(long, required = true, value_name = "P")]
    pub worker_pool: Option<String>,
    /// Worker group the proof is for.
    #[arg(long, required = true, value_name = "G")]
    pub worker_group: Option<String>,
    /// Worker id the proof is for.
    #[arg(long, required = true, value_name = "W")]
    pub worker_id: Option<String>,
    /// Write the proof here instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Without an agent: read the PIN from this file (mode 0600) [default: $CREDENTIALS_DIRECTORY/keytap-pin, else pinentry].
    #[arg(long, value_name = "FILE")]
    pub pin_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum AttestCommand {
    /// Verify a proof; prints the verified claims as JSON, exits non-zero with the reason.
    Verify(AttestVerifyArgs),
}

#[derive(Args, Debug)]
pub struct AttestVerifyArgs {
    /// The proof JSON (`-` for stdin).
    #[arg(long, value_name = "FILE")]
    pub proof: PathBuf,
    /// Trusted root certificates (PEM or DER files); never built in.
    #[arg(long, required = true, num_args = 1.., value_name = "PEM")]
    pub roots: Vec<PathBuf>,
    /// Extra intermediate certificates (firmware 5.7.4+ chains).
    #[arg(long, num_args = 1.., value_name = "PEM")]
    pub intermediates: Vec<PathBuf>,
    /// The nonce this proof must answer.
    #[arg(long)]
    pub nonce: String,
    /// Accepted token serials, comma-separated [default: any token chaining to the roots].
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub allow_serial: Vec<u32>,
    /// Weakest acceptable PIN policy.
    #[arg(long, value_enum)]
    pub require_pin: Option<PinPolicy>,
    /// Weakest acceptable touch policy.
    #[arg(long, value_enum)]
    pub require_touch: Option<TouchPolicy>,
    /// Oldest acceptable proof (90s, 5m, 1h).
    #[arg(long, default_value = "5m", value_parser = crate::attest::parse_duration)]
    pub max_age: std::time::Duration,
    /// The worker pool the proof must name.
    #[arg(long, value_name = "P")]
    pub worker_pool: Option<String>,
    /// The worker group the proof must name.
    #[arg(long, value_name = "G")]
    pub worker_group: Option<String>,
    /// The worker id the proof must name.
    #[arg(long, value_name = "W")]
    pub worker_id: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Hand a certificate (`*-cert.pub` from `ssh-keygen -s`) to the running agent.
    Add {
        file: PathBuf,
    },
    /// Certificates the agent holds, with their validity.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Forget a certificate added with `keytap cert add`, by file or key id.
    Remove {
        #[arg(value_name = "FILE|KEYID")]
        target: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum GitCommand {
    /// Set gpg.format=ssh, user.signingkey and gpg.ssh.allowedSignersFile for a token key.
    Setup(GitSetupArgs),
}

#[derive(Args, Debug)]
pub struct GitSetupArgs {
    #[command(flatten)]
    pub token: TokenArgs,
    /// The key: a slot (9c), SERIAL/SLOT (12345678/9c) or a SHA256 fingerprint [default: 9c if
    /// present, else 9a].
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// Write to the global git config instead of this repository's.
    #[arg(long)]
    pub global: bool,
    /// Also set commit.gpgsign=true and tag.gpgsign=true.
    #[arg(long)]
    pub sign_commits: bool,
}

#[derive(Args, Debug)]
pub struct AuthorizedKeyArgs {
    #[command(flatten)]
    pub token: TokenArgs,
    /// The key: a slot (9a), SERIAL/SLOT (12345678/9a) or a SHA256 fingerprint [default: 9a if
    /// present, else the first].
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum CotCommand {
    /// Hash a task run's artifacts, write chain-of-trust.json and sign it through the agent.
    Sign(CotSignArgs),
    /// Verify a chain-of-trust document, its signature and (optionally) the artifacts.
    Verify(CotVerifyArgs),
    /// Print the base64 raw 32-byte Ed25519 public key (Taskcluster's form) of the signing key.
    Pubkey(CotPubkeyArgs),
}

#[derive(Args, Debug)]
pub struct CotSignArgs {
    /// Directory holding the task run's artifacts (names are paths relative to it).
    #[arg(long, value_name = "DIR")]
    pub artifacts: PathBuf,
    /// The task definition (JSON) as the queue returned it.
    #[arg(long, value_name = "FILE")]
    pub task: PathBuf,
    #[arg(long, value_name = "ID")]
    pub task_id: String,
    #[arg(long, value_name = "N")]
    pub run_id: u64,
    #[arg(long, value_name = "G")]
    pub worker_group: String,
    #[arg(long, value_name = "W")]
    pub worker_id: String,
    /// Worker environment (JSON object) to embed [default: {}].
    #[arg(long, value_name = "FILE")]
    pub environment: Option<PathBuf>,
    /// Agent key: a slot (9c), SERIAL/SLOT (12345678/9c) or a SHA256 fingerprint
    /// [default: the first Ed25519 key, else the first ECDSA key].
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// Where to write chain-of-trust.json and its signature [default: the current directory].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Also list sha512 digests.
    #[arg(long)]
    pub sha512: bool,
}

#[derive(Args, Debug)]
pub struct CotVerifyArgs {
    /// The chain-of-trust.json to verify (its exact bytes are what is checked).
    #[arg(long, value_name = "FILE")]
    pub cot: PathBuf,
    /// Detached signature [default: FILE.sig, else FILE.sshsig].
    #[arg(long, value_name = "FILE")]
    pub sig: Option<PathBuf>,
    /// Trusted worker key: base64 of the raw 32-byte Ed25519 public key (repeatable).
    #[arg(long, value_name = "B64", num_args = 1.., required_unless_present = "allowed_signers")]
    pub trusted_key: Vec<String>,
    /// OpenSSH allowed_signers file of trusted keys (namespace chain-of-trust).
    #[arg(long, value_name = "FILE")]
    pub allowed_signers: Option<PathBuf>,
    /// Downloaded artifacts: each must be listed and match every listed digest.
    #[arg(long, value_name = "DIR")]
    pub artifacts: Option<PathBuf>,
    /// The task id the document must be for (without it, a warning: any task's document passes).
    #[arg(long, value_name = "ID")]
    pub task_id: Option<String>,
    /// The run id the document must be for.
    #[arg(long, value_name = "N")]
    pub run_id: Option<u64>,
    /// Principal the allowed_signers line must name [default: WORKER_ID@WORKER_GROUP of the document].
    #[arg(long, value_name = "ID")]
    pub principal: Option<String>,
    /// Also require every listed artifact to be present in --artifacts, and --task-id.
    #[arg(long, requires = "artifacts")]
    pub strict: bool,
    /// Machine-readable output on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct CotPubkeyArgs {
    /// Agent key, as for `keytap cot sign --key` [default: the first Ed25519 key].
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum BuildkiteCommand {
    /// Print the pipeline with a signature on every command step, made by the running agent.
    Sign(BuildkiteSignArgs),
    /// Print the public JWKS for `buildkite-agent start --verification-jwks-file`.
    Jwks(BuildkiteJwksArgs),
    /// Verify the signature of every command step; exit 1 if any fails.
    Verify(BuildkiteVerifyArgs),
}

#[derive(Args, Debug)]
pub struct BuildkiteSignArgs {
    /// The repository URL exactly as the agents will see it in BUILDKITE_REPO.
    #[arg(long, value_name = "URL")]
    pub repo: String,
    /// Agent key: a slot (9c), SERIAL/SLOT (12345678/9c) or a SHA256 fingerprint
    /// [default: the first Ed25519 key, else the first ECDSA key].
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// The JWS `kid` [default: the key's RFC 7638 JWK thumbprint].
    #[arg(long, value_name = "KID")]
    pub key_id: Option<String>,
    /// The pipeline YAML (`-` or nothing for stdin).
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct BuildkiteJwksArgs {
    /// Agent key to publish (repeat for key rotation) [default: the key `sign` picks].
    #[arg(long, value_name = "KEY")]
    pub key: Vec<String>,
    /// The `kid` [default: each key's RFC 7638 JWK thumbprint]; only with one key.
    #[arg(long, value_name = "KID")]
    pub key_id: Option<String>,
}

#[derive(Args, Debug)]
pub struct BuildkiteVerifyArgs {
    /// The JWKS holding the public keys (as given to the Buildkite agents).
    #[arg(long, value_name = "FILE")]
    pub jwks: PathBuf,
    /// The repository URL the steps must have been signed for.
    #[arg(long, value_name = "URL")]
    pub repo: String,
    /// Job environment variable, over the pipeline's `env` (repeatable).
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// The signed pipeline YAML (`-` or nothing for stdin).
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
}
