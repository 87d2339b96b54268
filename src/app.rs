//! What each command does. `main.rs` only parses arguments and calls in here.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::agent::{self, socket, Agent, AgentOptions, KeyReport, StatusReport};
use crate::audit::{self, AuditLog};
use crate::cli::{AgentArgs, Cli, Command, ListArgs, LogArgs, MockCommand, SetupArgs, StatusArgs, TokenArgs};
use crate::policy::{Policy, PolicyError};
use crate::client;
use crate::paths;
use crate::prompt::{Prompter, SystemPrompter};
use crate::token::mock::{InitOptions, MockToken};
use crate::token::owner::{OwnerOptions, TokenHandle};
use crate::token::{piv, KeySelector, Token, TokenError, TokenKind};

/// Errors a command reports; each says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Socket(#[from] socket::SocketError),
    #[error(transparent)]
    Client(#[from] client::ClientError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
    #[error("{0}")]
    Message(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Cot(#[from] crate::cot::CotError),
}

impl AppError {
    /// Exit status for this error.
    pub fn exit_code(&self) -> i32 {
        1
    }
}

pub fn run(cli: Cli) -> Result<(), AppError> {
    match cli.command {
        Command::Agent(args) => run_agent(args),
        Command::List(args) => list(args),
        Command::Status(args) => status(args),
        Command::Mock(cmd) => mock(cmd),
        Command::Setup(args) => setup(args),
        Command::Cert(cmd) => crate::cert::command::run(cmd),
        Command::Git(crate::cli::GitCommand::Setup(args)) => crate::git_signing::setup(args),
        Command::AuthorizedKey(args) => crate::git_signing::authorized_key(args),
        Command::Log(args) => log(args),
        Command::Attest(args) => crate::attest::command::run(*args),
        Command::Cot(cmd) => Ok(crate::cot::run(cmd)?),
        Command::Fido(cmd) => crate::fido::command::run(cmd),
    }
}

fn report_protected(changed: bool) {
    if changed {
        println!("The default management key was replaced by a random one stored on the token behind the PIN.");
    } else {
        println!("The management key is not the factory default; left as it is.");
    }
}

/// `keytap setup`: generate a key on the token, write its certificate, print the key.
fn setup(args: SetupArgs) -> Result<(), AppError> {
    if args.fido.fido {
        return crate::fido::command::setup(&args);
    }
    use crate::token::owner::{Owner, SignContext};
    use crate::token::GenerateRequest;
    use crate::token::Secret;
    // New secrets are read here, by the command the user runs, before any card work.
    let change_pin = if args.change_pin {
        Some(secret_change(Secret::Pin, args.pin_file.as_deref(), args.new_pin_file.as_deref(), args.pinentry.as_deref())?)
    } else {
        None
    };
    let change_puk = if args.change_puk {
        Some(secret_change(Secret::Puk, args.puk_file.as_deref(), args.new_puk_file.as_deref(), args.pinentry.as_deref())?)
    } else {
        None
    };
    // The running agent owns the tokens: go through it when SSH_AUTH_SOCK is keytap's.
    if let Some((mut client, _)) = client::keytap_agent() {
        use crate::agent::setup_ext::{decode_json, encode_json, SetupAnswer, SetupRequest, EXT_SETUP};
        let request = SetupRequest {
            change_pin,
            change_puk,
            no_key: args.no_key,
            serial: args.serial,
            slot: args.slot,
            algorithm: args.alg,
            pin_policy: args.pin_policy,
            touch_policy: args.touch,
            force: args.force,
            protect_management_key: args.protect_management_key,
        };
        let details = client.extension(EXT_SETUP, encode_json(&request))?;
        return match decode_json::<SetupAnswer>(&details).map_err(|e| AppError::Message(format!("unexpected answer from the agent: {e}")))? {
            SetupAnswer::Created(key, protected, notes) => {
                if let Some(protected) = protected {
                    report_protected(protected);
                }
                if let Some(key) = key {
                    println!(
                        "Created a {} key in slot {} of token {} (pin={}, touch={}), generated on the token (through the agent).",
                        key.algorithm, key.slot, key.serial, key.pin_policy, key.touch_policy
                    );
                    println!("Add this line to ~/.ssh/authorized_keys on the servers you log in to:");
                    println!("{}", key.authorized_key);
                }
                for note in notes {
                    println!("{note}");
                }
                Ok(())
            }
            SetupAnswer::Refused(reason) => Err(AppError::Message(format!("the agent refused: {reason}"))),
        };
    }
    let mut tokens = open_tokens(&args.token)?;
    let token = match args.serial {
        Some(serial) => {
            let i = tokens
                .iter_mut()
                .position(|t| t.info().map(|i| i.serial == serial).unwrap_or(false))
                .ok_or_else(|| AppError::Message(format!("no token with serial {serial} is connected; `keytap list` shows them")))?;
            tokens.swap_remove(i)
        }
        None if tokens.len() == 1 => tokens.pop().expect("one token"),
        None => {
            let serials: Vec<String> =
                tokens.iter_mut().filter_map(|t| t.info().ok()).map(|i| i.serial.to_string()).collect();
            return Err(AppError::Message(format!(
                "{} tokens are connected ({}); choose one with --serial",
                serials.len(),
                serials.join(", ")
            )));
        }
    };
    let prompter: Arc<dyn Prompter> = Arc::new(SystemPrompter::new(args.pin_file.clone(), args.pinentry.clone(), None));
    let mut owner = Owner::new(token, prompter);
    let info = owner.token.info()?;
    let context = SignContext { requester: "keytap setup".into(), purpose: format!("create a key in slot {}", args.slot) };
    let request = GenerateRequest { slot: args.slot, algorithm: args.alg, pin_policy: args.pin_policy, touch_policy: args.touch };
    // The certificate written next to the key is signed by it, which needs the PIN: ask first
    // (on every kind of token, so setup behaves the same on the mock).
    // 0: the card reports the PIN as verified already (a blocked PIN is an error).
    match owner.token.pin_retries()? {
        0 => {}
        retries => owner.ensure_pin(retries, &context)?,
    }
    if args.no_key {
        if args.protect_management_key {
            report_protected(owner.token.protect_management_key()?);
        }
        for note in crate::agent::setup_ext::finish(&mut owner, change_pin, change_puk)? {
            println!("{note}");
        }
        return Ok(());
    }
    let occupied = owner.token.keys()?.iter().any(|k| k.slot == args.slot);
    let key = match owner.token.generate(request, args.force) {
        // PIN policy "always": the new key wants the PIN again for its certificate. Forcing
        // the second attempt is safe: the slot was free before, or --force was given.
        Err(TokenError::PinRequired { retries }) if !occupied || args.force => {
            owner.ensure_pin(retries, &context)?;
            owner.token.generate(request, true)?
        }
        other => other?,
    };
    if args.protect_management_key {
        report_protected(owner.token.protect_management_key()?);
    }
    println!(
        "Created a {} key in slot {} of token {} (pin={}, touch={}), generated on the token.",
        key.algorithm, key.slot, info.serial, key.pin_policy, key.touch_policy
    );
    println!("Add this line to ~/.ssh/authorized_keys on the servers you log in to:");
    println!("{}", key.authorized_key());
    for note in crate::agent::setup_ext::finish(&mut owner, change_pin, change_puk)? {
        println!("{note}");
    }
    Ok(())
}

/// The current and the new PIN or PUK: from files (mode 0600) or pinentry (the new one twice).
fn secret_change(
    which: crate::token::Secret,
    current_file: Option<&Path>,
    new_file: Option<&Path>,
    pinentry: Option<&str>,
) -> Result<crate::agent::setup_ext::SecretChange, AppError> {
    use crate::prompt::{ask_with_pinentry, read_pin_file};
    let ask = |desc: &str| -> Result<crate::token::Pin, AppError> {
        ask_with_pinentry(pinentry, desc, &format!("{which}:"))
            .map_err(|e| AppError::Message(format!("cannot ask for the {which}: {e}")))?
            .ok_or_else(|| AppError::Message(format!("no {which} was given (cancelled)")))
    };
    let read = |path: &Path| read_pin_file(path).map_err(|e| AppError::Message(e.to_string()));
    let current = match current_file {
        Some(path) => read(path)?,
        None => ask(&format!("Enter the CURRENT {which} of the YubiKey."))?,
    };
    let new = match new_file {
        Some(path) => read(path)?,
        None => {
            let new = ask(&format!("Choose a NEW {which} (6 to 8 characters)."))?;
            let again = ask(&format!("Enter the new {which} again."))?;
            if new != again {
                return Err(AppError::Message(format!("the two new {which}s differ; nothing was changed")));
            }
            new
        }
    };
    crate::token::check_new_secret(which, &new)?;
    Ok(crate::agent::setup_ext::SecretChange { current, new })
}

fn mock_dir(state_dir: Option<PathBuf>) -> PathBuf {
    state_dir.unwrap_or_else(paths::default_mock_dir)
}

/// Open the tokens a command names, directly (no agent in between).
pub fn open_tokens(args: &TokenArgs) -> Result<Vec<Box<dyn Token>>, AppError> {
    match args.token {
        TokenKind::Mock => Ok(vec![Box::new(MockToken::open(&mock_dir(args.state_dir.clone()))?)]),
        TokenKind::Piv => Ok(piv::open_all()?),
    }
}

fn mock(cmd: MockCommand) -> Result<(), AppError> {
    match cmd {
        MockCommand::Init { state_dir, force, serial } => {
            let dir = mock_dir(state_dir);
            let path = MockToken::init(&dir, &InitOptions { force, serial })?;
            let mut token = MockToken::open(&dir)?;
            let info = token.info()?;
            println!("Created a mock TEST token (serial {}) in {}", info.serial, path.display());
            println!("Its private keys are stored there in plain text: never use them for anything real.");
            println!("PIN 123456, PUK 12345678. Start an agent on it: keytap agent --token mock --state-dir {}", dir.display());
            Ok(())
        }
        MockCommand::Unplug { state_dir } => {
            let dir = existing_mock(state_dir)?;
            std::fs::write(dir.join("unplugged"), b"")?;
            println!("mock token unplugged");
            Ok(())
        }
        MockCommand::Plug { state_dir } => {
            let dir = existing_mock(state_dir)?;
            match std::fs::remove_file(dir.join("unplugged")) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
            println!("mock token plugged in");
            Ok(())
        }
        MockCommand::Touch { mode, state_dir } => {
            mode.parse::<crate::token::mock::TouchMode>().map_err(AppError::Message)?;
            let dir = existing_mock(state_dir)?;
            std::fs::write(dir.join("touch"), format!("{mode}\n"))?;
            println!("mock touch: {mode}");
            Ok(())
        }
        MockCommand::Imported { slot, undo, state_dir } => {
            let dir = existing_mock(state_dir)?;
            MockToken::open(&dir)?.set_attestable(slot, undo)?;
            println!("slot {slot}: {}", if undo { "generated on the token (attestable)" } else { "imported (not attestable)" });
            Ok(())
        }
    }
}

fn existing_mock(state_dir: Option<PathBuf>) -> Result<PathBuf, AppError> {
    let dir = mock_dir(state_dir);
    MockToken::open(&dir)?;
    Ok(dir)
}

pub fn reports_from_tokens(tokens: Vec<Box<dyn Token>>) -> Result<Vec<KeyReport>, AppError> {
    let mut keys = Vec::new();
    for mut token in tokens {
        keys.extend(token.keys()?.iter().map(KeyReport::from));
    }
    Ok(keys)
}

fn list(args: ListArgs) -> Result<(), AppError> {
    let keys = match client::keytap_agent() {
        Some((_, status)) => {
            if status.locked {
                return Err(AppError::Message("the agent is locked; unlock it with `ssh-add -X`".into()));
            }
            status.tokens.into_iter().flat_map(|t| t.keys).collect()
        }
        None => reports_from_tokens(open_tokens(&args.token)?)?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&keys).expect("keys serialise"));
        return Ok(());
    }
    if keys.is_empty() {
        println!("no keys on any token; create one with `keytap setup --slot 9a`");
    }
    for k in &keys {
        println!(
            "{}/{}  {:<8} pin={:<6} touch={:<6} {}",
            k.serial, k.slot, k.algorithm, k.pin_policy, k.touch_policy, k.fingerprint
        );
        println!("  {}", k.authorized_key);
    }
    Ok(())
}

fn status(args: StatusArgs) -> Result<(), AppError> {
    let path = std::env::var_os("SSH_AUTH_SOCK")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(socket::default_socket_path);
    let report: Result<StatusReport, client::ClientError> =
        client::AgentClient::connect(&path).and_then(|mut c| c.status());
    let report = match report {
        Ok(r) => r,
        Err(client::ClientError::Refused) => {
            return Err(AppError::Message(format!(
                "{} is an agent, but not keytap; point SSH_AUTH_SOCK at keytap's socket",
                path.display()
            )))
        }
        Err(e) => return Err(e.into()),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).expect("status serialises"));
        return Ok(());
    }
    println!("agent: running (keytap {}, pid {}) at {}", report.version, report.pid, path.display());
    println!("locked: {}", if report.locked { "yes (unlock with `ssh-add -X`)" } else { "no" });
    if report.tokens.is_empty() {
        println!("tokens: none");
    }
    for t in &report.tokens {
        match (t.present, t.serial) {
            (true, Some(serial)) => println!(
                "token {}: serial {serial}, {}, firmware {}, {} keys",
                t.label,
                t.model.as_deref().unwrap_or("?"),
                t.firmware.as_deref().unwrap_or("?"),
                t.keys.len()
            ),
            _ => println!("token {}: not present", t.label),
        }
    }
    Ok(())
}

/// `keytap agent`.
pub fn run_agent(args: AgentArgs) -> Result<(), AppError> {
    if !args.foreground && !args.daemon_child {
        return start_in_background(&args);
    }
    if args.daemon_child {
        let _ = nix::unistd::setsid();
    }
    init_agent_logging(&args)?;
    let policy = load_policy(args.config.as_deref())?;
    let audit_path = args.audit_log.clone().unwrap_or_else(default_audit_path);
    let audit_log = AuditLog::open(&audit_path, args.audit_max_bytes.max(4096), 5)?;
    tracing::info!(audit = %audit_path.display(), "audit log");
    let prompter: Arc<dyn Prompter> =
        Arc::new(SystemPrompter::new(args.pin_file.clone(), args.pinentry.clone(), args.askpass.clone()));
    let owner_options = OwnerOptions {
        idle_release: (args.release_after > 0).then(|| Duration::from_secs(args.release_after)),
        ..OwnerOptions::default()
    };
    let piv_claimed = piv::Claimed::default();
    let tokens: Vec<(String, Box<dyn Token>)> = match args.token.token {
        TokenKind::Mock => {
            let dir = mock_dir(args.token.state_dir.clone());
            if !dir.join(crate::token::mock::STATE_FILE).exists() {
                MockToken::init(&dir, &InitOptions::default())?;
                tracing::warn!(dir = %dir.display(), "created a new mock TEST token (PIN 123456); its keys are software keys on disk");
            }
            tracing::warn!(dir = %dir.display(), "serving the MOCK TEST token: software keys, not a hardware token");
            vec![("mock".into(), Box::new(MockToken::open(&dir)?) as Box<dyn Token>)]
        }
        // YubiKeys: those present now; the watcher below adds any plugged in later.
        TokenKind::Piv => match piv::open_present(&piv_claimed) {
            Ok(tokens) => tokens.into_iter().map(|(serial, t)| (format!("piv-{serial}"), t)).collect(),
            Err(e) => {
                tracing::warn!("{e}; serving no YubiKey until one is plugged in");
                Vec::new()
            }
        },
    };
    if args.token.token == TokenKind::Piv && tokens.is_empty() {
        tracing::warn!("no YubiKey connected yet; keytap will pick it up when plugged in");
    }
    let handles: Vec<TokenHandle> = tokens
        .into_iter()
        .map(|(label, token)| TokenHandle::spawn(label, token, prompter.clone(), owner_options.clone()))
        .collect();

    // One event loop for every connection, like ssh-agent's: a request's own work is a few
    // microseconds, and the heavy parts run elsewhere (signatures on the token owner threads,
    // audit writes and prompts on blocking threads). Measured on 2 cores, a work-stealing runtime
    // or a loop per core answered no faster and woke threads across cores for every request,
    // which stretched the latency tail (docs/performance.md).
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    raise_fd_limit();
    let (std_listener, socket_path) = match socket::from_systemd()? {
        Some(listener) => (listener, None),
        None => {
            let path = args.socket.clone().unwrap_or_else(socket::default_socket_path);
            (socket::bind(&path)?, Some(path))
        }
    };
    std_listener.set_nonblocking(true)?;
    if let Some(path) = &socket_path {
        let pid = std::process::id();
        if args.daemon_child {
            // The parent waits for this line, prints the shell commands and exits.
            println!("READY {pid} {}", path.display());
            let _ = std::io::stdout().flush();
        } else {
            print!("{}", shell_commands(path, pid, args.csh));
            let _ = std::io::stdout().flush();
        }
        tracing::info!(socket = %path.display(), pid, "listening");
    } else {
        tracing::info!("listening on a socket from systemd");
    }
    let options = AgentOptions {
        timeouts: agent::frame::FrameTimeouts {
            idle: Duration::from_secs(args.idle_timeout.max(1)),
            ..AgentOptions::default().timeouts
        },
        cert_dir: Some(args.cert_dir.clone().unwrap_or_else(crate::cert::scan::default_dir)),
        certs_only: args.certs_only,
        ..AgentOptions::default()
    };
    let known: Vec<u32> = handles.iter().filter_map(|h| h.label().strip_prefix("piv-")?.parse().ok()).collect();
    let (sk_store, fido_handles) = crate::fido::command::agent_devices(&args, owner_options.clone())?;
    let mut handles = handles;
    handles.extend(fido_handles);
    let mut agent = Agent::new(handles, options).with_policy(policy).with_audit(audit_log).with_prompter(prompter.clone());
    if let Some(store) = sk_store {
        agent = agent.with_sk_store(store);
    }
    let agent = Arc::new(agent);
    let fido_known = agent.tokens().iter().filter_map(|t| t.label().strip_prefix("fido:").map(str::to_string)).collect();
    let fido_agent = agent.clone();
    crate::fido::command::spawn_watcher(&args, owner_options.clone(), fido_known, move |handle| fido_agent.add_token(handle));
    if args.token.token == TokenKind::Piv {
        let watch_agent = agent.clone();
        let prompter = prompter.clone();
        piv::spawn_watcher(piv_claimed, known, Duration::from_secs(2), move |serial, token| {
            watch_agent.add_token(TokenHandle::spawn(format!("piv-{serial}"), token, prompter.clone(), owner_options.clone()));
        });
    }
    let result = runtime.block_on(async {
        let listener = tokio::net::UnixListener::from_std(std_listener)?;
        let hup_agent = agent.clone();
        tokio::spawn(async move {
            let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: releasing tokens for other programs");
                for t in hup_agent.tokens() {
                    t.release();
                }
            }
        });
        agent.serve(listener, shutdown_signal()).await;
        Ok::<(), std::io::Error>(())
    });
    if let Some(path) = &socket_path {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("agent stopped");
    runtime.shutdown_timeout(Duration::from_millis(200));
    result.map_err(AppError::from)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}

/// Serve hundreds of clients: lift the soft open-file limit to the hard one.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard.min(65536), hard);
    }
}

/// The lines `eval $(keytap agent)` runs, as ssh-agent prints them.
pub fn shell_commands(socket: &Path, pid: u32, csh: bool) -> String {
    if csh {
        format!("setenv SSH_AUTH_SOCK {};\nsetenv SSH_AGENT_PID {pid};\necho Agent pid {pid};\n", socket.display())
    } else {
        format!(
            "SSH_AUTH_SOCK={}; export SSH_AUTH_SOCK;\nSSH_AGENT_PID={pid}; export SSH_AGENT_PID;\necho Agent pid {pid};\n",
            socket.display()
        )
    }
}

fn init_agent_logging(args: &AgentArgs) -> Result<(), AppError> {
    // The yubikey crate logs every empty reader as an error on each scan; keytap reports what
    // matters itself (KEYTAP_LOG=yubikey=debug brings it back).
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEYTAP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,yubikey=off"));
    if args.daemon_child {
        let path = args.log_file.clone().unwrap_or_else(|| paths::state_home().join("agent.log"));
        if let Some(dir) = path.parent() {
            crate::token::mock::create_private_dir(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| AppError::Message(format!("cannot open the log file {}: {e}", path.display())))?;
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_writer(std::sync::Mutex::new(file)).try_init();
    } else {
        use std::io::IsTerminal;
        let ansi = std::io::stderr().is_terminal();
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
    }
    Ok(())
}

/// Start a detached copy of this agent and print its environment once its socket is ready.
fn start_in_background(args: &AgentArgs) -> Result<(), AppError> {
    let exe = std::env::current_exe()?;
    let mut child = Process::new(exe)
        .args(std::env::args_os().skip(1))
        .arg("--daemon-child")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    stdout.read_line(&mut line)?;
    let parts: Vec<&str> = line.trim_end().splitn(3, ' ').collect();
    match parts.as_slice() {
        ["READY", pid, path] => {
            let pid: u32 = pid.parse().map_err(|_| AppError::Message("agent start: bad READY line".into()))?;
            print!("{}", shell_commands(Path::new(path), pid, args.csh));
            Ok(())
        }
        _ => {
            let mut err = String::new();
            if let Some(stderr) = child.stderr.take() {
                let _ = BufReader::new(stderr).read_line(&mut err);
            }
            let _ = child.wait();
            Err(AppError::Message(format!("the agent did not start: {}", err.trim())))
        }
    }
}

fn default_audit_path() -> PathBuf {
    paths::state_home().join("audit.jsonl")
}

/// The policy from `--config`, else the default file when it exists, else the built-in one.
fn load_policy(explicit: Option<&Path>) -> Result<Policy, AppError> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => {
            let default = paths::config_home().join("config.toml");
            if !default.exists() {
                return Ok(Policy::default());
            }
            default
        }
    };
    let policy = Policy::load(&path)?;
    tracing::info!(config = %path.display(), "policy loaded");
    Ok(policy)
}

/// Parse `--since`: RFC 3339 or an age like `10m`.
fn parse_since(text: &str) -> Result<std::time::SystemTime, AppError> {
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return Ok(t);
    }
    let age = humantime::parse_duration(text).map_err(|_| {
        AppError::Message(format!("--since {text:?}: use RFC 3339 (2026-11-22T10:00:00Z) or an age (10m, 2h, 1d)"))
    })?;
    Ok(std::time::SystemTime::now() - age)
}

fn record_matches(r: &audit::Record, since: Option<std::time::SystemTime>, key: Option<&KeySelector>) -> bool {
    if let Some(since) = since {
        match humantime::parse_rfc3339_weak(&r.time) {
            Ok(t) if t >= since => {}
            _ => return false,
        }
    }
    if let Some(key) = key {
        let Some(k) = &r.key else { return false };
        if !key.matches(k.slot.parse().ok().map(|slot| (k.serial, slot)), &k.fingerprint) {
            return false;
        }
    }
    true
}

fn log(args: LogArgs) -> Result<(), AppError> {
    let path = args.file.clone().unwrap_or_else(default_audit_path);
    let since = args.since.as_deref().map(parse_since).transpose()?;
    let key = args.key.as_deref().map(str::parse::<KeySelector>).transpose().map_err(|e| AppError::Message(format!("--key: {e}")))?;
    let files = audit::files_oldest_first(&path);
    if files.is_empty() && !args.follow {
        return Err(AppError::Message(format!(
            "no audit log at {}; the agent writes it once it has served a request (see --audit-log)",
            path.display()
        )));
    }
    let mut out = std::io::stdout().lock();
    let mut print = |line: &str| -> std::io::Result<()> {
        if line.trim().is_empty() {
            return Ok(());
        }
        match serde_json::from_str::<audit::Record>(line) {
            Ok(r) if record_matches(&r, since, key.as_ref()) => {
                if args.json {
                    writeln!(out, "{line}")
                } else {
                    writeln!(out, "{}", audit::format_record(&r))
                }
            }
            Ok(_) => Ok(()),
            Err(e) => writeln!(out, "(unreadable record: {e})"),
        }
    };
    for file in &files {
        for line in std::fs::read_to_string(file)?.lines() {
            print(line)?;
        }
    }
    if !args.follow {
        return Ok(());
    }
    // Follow the live file, starting at its current end; reopen when it is rotated.
    use std::io::{Read, Seek, SeekFrom};
    let mut offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let mut pending = String::new();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let Ok(mut file) = std::fs::File::open(&path) else { continue };
        let len = file.metadata()?.len();
        if len < offset {
            offset = 0;
        }
        if len == offset {
            continue;
        }
        file.seek(SeekFrom::Start(offset))?;
        let mut chunk = String::new();
        file.read_to_string(&mut chunk)?;
        offset += chunk.len() as u64;
        pending.push_str(&chunk);
        while let Some(newline) = pending.find('\n') {
            let line: String = pending.drain(..=newline).collect();
            print(line.trim_end())?;
        }
        out_flush();
    }
}

fn out_flush() {
    let _ = std::io::stdout().flush();
}
