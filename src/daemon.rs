//! `keytap agent`: the agent process around `agent::Agent`: starting in the background like
//! ssh-agent (a detached child that reports READY), logging, the policy and audit log, the
//! tokens to serve, the socket (or systemd's), and the signals (SIGHUP reloads, see
//! `agent::reload`; SIGTERM and SIGINT stop it).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command as Process, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::agent::{self, socket, Agent, AgentOptions};
use crate::audit::AuditLog;
use crate::cli::AgentArgs;
use crate::command::{mock_dir, AppError};
use crate::paths::{self, default_audit_path};
use crate::prompt::{Prompter, SystemPrompter};
use crate::token::mock::{InitOptions, MockToken};
use crate::token::owner::{OwnerOptions, TokenHandle};
use crate::token::{piv, Token, TokenKind};

/// `keytap agent`.
pub fn run(args: AgentArgs) -> Result<(), AppError> {
    // The agent serves the mock (software keys on disk) only when told to in so many words: a
    // --state-dir alone never turns a YubiKey agent into a software one.
    if args.token.token.is_none() && args.token.state_dir.is_some() {
        if !args.foreground && !args.daemon_child {
            // As start_in_background does: `eval "$(keytap agent ...)"` must fail too.
            println!("false;");
        }
        return Err(AppError::Message(
            "--state-dir is the mock TEST token's directory; to serve the mock token say so: keytap agent --token mock --state-dir DIR".into(),
        ));
    }
    if !args.foreground && !args.daemon_child {
        return start_in_background(&args);
    }
    if args.daemon_child {
        let _ = nix::unistd::setsid();
    }
    crate::command::check_token_args(&args.token)?;
    init_agent_logging(&args)?;
    let policy_source = agent::reload::PolicySource::new(args.config.clone());
    let (policy, policy_path) = policy_source.load()?;
    if let Some(path) = policy_path {
        tracing::info!(config = %path.display(), "policy loaded");
    }
    let audit_path = args.audit_log.clone().unwrap_or_else(default_audit_path);
    let retention = crate::audit::Retention { min_age: Duration::from_secs(args.audit_retain_days.saturating_mul(86400)), ..Default::default() };
    let audit_log = AuditLog::open_with(&audit_path, args.audit_max_bytes.max(4096), 5, retention)?;
    tracing::info!(audit = %audit_path.display(), "audit log");
    let prompter: Arc<dyn Prompter> =
        Arc::new(SystemPrompter::new(args.pin_file.clone(), args.pinentry.clone(), args.askpass.clone()));
    let owner_options = OwnerOptions {
        idle_release: (args.release_after > 0).then(|| Duration::from_secs(args.release_after)),
        ..OwnerOptions::default()
    };
    let piv_claimed = piv::Claimed::default();
    let tokens: Vec<(String, Box<dyn Token>)> = match args.token.kind() {
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
    if args.token.kind() == TokenKind::Piv && tokens.is_empty() {
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
    // Know every token's keys before saying the agent is ready: a script that starts the agent
    // and asks for a key at once (docs/chain-of-trust.md) must find it. Each owner thread lists
    // its keys first thing; a job queued behind that waits for it. Bounded, for a slow card.
    runtime.block_on(async {
        let first_lists = async {
            for handle in &handles {
                let _ = handle.run(|_| ()).await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), first_lists).await.is_err() {
            tracing::warn!("a token is slow to list its keys; serving before it finished");
        }
    });
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
    let upstreams = crate::upstream::configured(&args.upstream, &policy.upstream, socket_path.as_deref()).map_err(|e| AppError::Message(e.to_string()))?;
    let (sk_store, fido_handles) = crate::fido::command::agent_devices(&args, owner_options.clone())?;
    let mut handles = handles;
    handles.extend(fido_handles);
    let mut agent = Agent::new(handles, options).with_policy(policy).with_policy_source(policy_source).with_audit(audit_log).with_prompter(prompter.clone()).with_upstreams(upstreams);
    if let Some(store) = sk_store {
        agent = agent.with_sk_store(store);
    }
    let agent = Arc::new(agent);
    let fido_known = agent.tokens().iter().filter_map(|t| t.label().strip_prefix("fido:").map(str::to_string)).collect();
    let fido_agent = agent.clone();
    crate::fido::command::spawn_watcher(&args, owner_options.clone(), fido_known, move |handle| fido_agent.add_token(handle));
    if args.token.kind() == TokenKind::Piv {
        let watch_agent = agent.clone();
        let prompter = prompter.clone();
        piv::spawn_watcher(piv_claimed, known, Duration::from_secs(2), move |serial, token| {
            watch_agent.add_token(TokenHandle::spawn(format!("piv-{serial}"), token, prompter.clone(), owner_options.clone()));
        });
    }
    let result = runtime.block_on(async {
        let listener = tokio::net::UnixListener::from_std(std_listener)?;
        tokio::spawn(agent::reload::on_hangup(agent.clone()));
        // SIGUSR1, as in OpenSSH 10: forget remembered approvals and sk keys, release the tokens.
        let usr1_agent = agent.clone();
        tokio::spawn(async move {
            let Ok(mut usr1) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()) else { return };
            while usr1.recv().await.is_some() {
                usr1_agent.forget_on_signal().await;
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
    let started = spawn_detached(args);
    if started.is_err() {
        // `eval "$(keytap agent)"` runs what is printed; an empty string would "succeed".
        println!("false;");
    }
    started
}

fn spawn_detached(args: &AgentArgs) -> Result<(), AppError> {
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
            // The child's message already starts with "keytap: ", as ours will.
            let err = err.trim();
            Err(AppError::Message(format!("the agent did not start: {}", err.strip_prefix("keytap: ").unwrap_or(err))))
        }
    }
}
