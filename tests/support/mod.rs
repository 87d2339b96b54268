//! Shared integration-test fixtures: a keytap agent on a fresh mock token, a loopback sshd,
//! and small helpers for running the real OpenSSH tools against them.
#![allow(dead_code)]

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const KEYTAP: &str = env!("CARGO_BIN_EXE_keytap");
pub const MOCK_SERIAL: u32 = 12345678;

/// Options for starting an agent.
#[derive(Clone, Debug, Default)]
pub struct AgentOptions {
    /// Extra arguments for `keytap agent`.
    pub args: Vec<String>,
    /// Extra environment for the agent.
    pub env: Vec<(String, String)>,
    /// Write this PIN to the PIN file (default 123456); `None` in `no_pin_file` mode.
    pub pin: Option<String>,
    pub no_pin_file: bool,
}

/// A running `keytap agent --token mock` in a temp directory. Killed on drop.
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    child: Child,
}

/// Give a command its own config, state and runtime directories under `root`, and no agent,
/// PIN credential or askpass from the environment: a test never reads the user's
/// `config.toml`, writes the user's audit log, or meets the user's agent.
pub fn isolate<'a>(cmd: &'a mut Command, root: &Path) -> &'a mut Command {
    let runtime = root.join("run");
    for dir in [&runtime, &root.join("home")] {
        if !dir.exists() {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
    }
    cmd.env("XDG_CONFIG_HOME", root.join("config"))
        .env("XDG_STATE_HOME", root.join("state"))
        .env("XDG_RUNTIME_DIR", &runtime)
        .env("HOME", root.join("home"))
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("SSH_AGENT_PID")
        .env_remove("SSH_ASKPASS")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("KEYTAP_LOG")
}

/// `keytap` isolated in `root` (see [`isolate`]); the only way tests start keytap.
pub fn keytap_in(root: &Path) -> Command {
    let mut cmd = Command::new(KEYTAP);
    isolate(&mut cmd, root);
    cmd
}

pub fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A secret (PIN, PUK) on one line of a mode-0600 file `dir/name`.
pub fn secret_file(dir: &Path, name: &str, value: &str) -> PathBuf {
    let path = dir.join(name);
    write_private(&path, &format!("{value}\n"));
    path
}

impl Agent {
    pub fn start() -> Agent {
        Agent::start_with(AgentOptions::default())
    }

    pub fn start_with(options: AgentOptions) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("mock");
        let out = keytap_in(dir.path())
            .args(["mock", "init", "--serial", &MOCK_SERIAL.to_string(), "--state-dir"])
            .arg(&state_dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "mock init failed: {}", String::from_utf8_lossy(&out.stderr));
        Agent::start_on(dir, state_dir, options)
    }

    /// Start an agent on an existing mock state directory inside `dir`.
    pub fn start_on(dir: tempfile::TempDir, state_dir: PathBuf, options: AgentOptions) -> Agent {
        let socket = dir.path().join("sock").join("agent.sock");
        let log = dir.path().join("agent.log");
        // In a session of its own, without a terminal: a test run from a terminal must never get
        // a PIN prompt drawn on it (the agent prompts on its own terminal as a last resort).
        // setsid execs in place (the child is no group leader), so the pid stays the agent's.
        let mut cmd = Command::new("setsid");
        isolate(&mut cmd, dir.path());
        cmd.arg(KEYTAP).args(["agent", "--foreground", "--token", "mock", "--state-dir"])
            .arg(&state_dir)
            .arg("--socket")
            .arg(&socket);
        if !options.no_pin_file {
            let pin_file = dir.path().join("pin");
            write_private(&pin_file, &format!("{}\n", options.pin.as_deref().unwrap_or("123456")));
            cmd.arg("--pin-file").arg(&pin_file);
        }
        cmd.args(&options.args)
            .env("KEYTAP_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in &options.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let mut agent = Agent { dir, socket, state_dir, log, child };
        agent.wait_ready();
        agent
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                // Keys are listed by the owner thread shortly after start.
                let out = self.cmd("ssh-add").arg("-l").output().unwrap();
                if out.status.success() {
                    return;
                }
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("agent exited early ({status}): {}", self.log_text());
            }
            assert!(Instant::now() < deadline, "agent did not become ready: {}", self.log_text());
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A command with SSH_AUTH_SOCK pointing at this agent and no other agent config.
    pub fn cmd(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        isolate(&mut cmd, self.dir.path());
        cmd.env("SSH_AUTH_SOCK", &self.socket)
            .env_remove("DISPLAY")
            .stdin(Stdio::null());
        cmd
    }

    pub fn keytap(&self) -> Command {
        self.cmd(KEYTAP)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Public keys as `ssh-add -L` prints them, one line each.
    pub fn public_keys(&self) -> Vec<String> {
        let out = self.cmd("ssh-add").arg("-L").output().unwrap();
        assert!(out.status.success(), "ssh-add -L: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect()
    }

    /// The public key line of the key in `slot` (comment `keytap SERIAL/SLOT`).
    pub fn key_line(&self, slot: &str) -> String {
        let suffix = format!("keytap {MOCK_SERIAL}/{slot}");
        self.public_keys().into_iter().find(|l| l.ends_with(&suffix)).unwrap_or_else(|| panic!("no key in slot {slot}"))
    }

    /// Write the slot's public key to a file in the temp dir and return its path.
    pub fn key_file(&self, slot: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{slot}.pub"));
        std::fs::write(&path, format!("{}\n", self.key_line(slot))).unwrap();
        path
    }

    pub fn mock(&self, args: &[&str]) {
        let out = keytap_in(self.dir.path()).arg("mock").args(args).arg("--state-dir").arg(&self.state_dir).output().unwrap();
        assert!(out.status.success(), "keytap mock {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Wait until the agent log contains `needle` (logs are written asynchronously).
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log_text();
            if log.contains(needle) {
                return log;
            }
            assert!(Instant::now() < deadline, "agent log never showed {needle:?}:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A loopback sshd with its own host key and config. Killed on drop.
pub struct Sshd {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub host_key_pub: String,
    pub log: PathBuf,
    child: Child,
}

pub fn user() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

impl Sshd {
    /// Start sshd trusting `authorized_keys` (lines) plus `extra` config lines.
    pub fn start(authorized_keys: &[String], extra: &[&str]) -> Sshd {
        Sshd::start_with_host_key(authorized_keys, extra, None)
    }

    pub fn start_with_host_key(authorized_keys: &[String], extra: &[&str], host_key_type: Option<&str>) -> Sshd {
        Sshd::start_inner(authorized_keys, extra, host_key_type, None)
    }

    /// Start sshd with a host certificate (`HostCertificate`): its host key signed by the CA
    /// private key `ca` for the comma-separated `principals`.
    pub fn start_certified(authorized_keys: &[String], extra: &[&str], ca: &Path, principals: &str) -> Sshd {
        Sshd::start_inner(authorized_keys, extra, None, Some((ca, principals)))
    }

    fn start_inner(authorized_keys: &[String], extra: &[&str], host_key_type: Option<&str>, certify: Option<(&Path, &str)>) -> Sshd {
        std::fs::create_dir_all("/run/sshd").ok();
        let dir = tempfile::tempdir().unwrap();
        let host_key = dir.path().join("host_key");
        let status = Command::new("ssh-keygen")
            .args(["-q", "-t", host_key_type.unwrap_or("ed25519"), "-N", "", "-f"])
            .arg(&host_key)
            .status()
            .unwrap();
        assert!(status.success());
        let host_key_pub = std::fs::read_to_string(host_key.with_extension("pub")).unwrap().trim().to_string();
        let mut extra: Vec<String> = extra.iter().map(|l| l.to_string()).collect();
        if let Some((ca, principals)) = certify {
            let out = Command::new("ssh-keygen")
                .args(["-q", "-s"])
                .arg(ca)
                .args(["-I", "test-host", "-h", "-n", principals, "-V", "always:forever"])
                .arg(host_key.with_extension("pub"))
                .output()
                .unwrap();
            assert!(out.status.success(), "certifying the host key: {}", text(&out));
            extra.push(format!("HostCertificate {}", dir.path().join("host_key-cert.pub").display()));
        }
        let auth_keys = dir.path().join("authorized_keys");
        std::fs::write(&auth_keys, authorized_keys.join("\n") + "\n").unwrap();
        let config = dir.path().join("sshd_config");
        let mut text = format!(
            "ListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nStrictModes no\nUsePAM no\n\
             PidFile none\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PermitRootLogin yes\nLogLevel DEBUG1\nAllowAgentForwarding yes\nSubsystem sftp internal-sftp\n",
            host_key.display(),
            auth_keys.display()
        );
        for line in &extra {
            text.push_str(line);
            text.push('\n');
        }
        std::fs::write(&config, text).unwrap();
        let log = dir.path().join("sshd.log");
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new("/usr/sbin/sshd")
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .args(["-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("starting /usr/sbin/sshd (install openssh-server)");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Sshd { dir, port, host_key_pub, log, child };
                }
                if let Some(status) = child.try_wait().unwrap() {
                    last_err = format!("sshd exited {status}: {}", std::fs::read_to_string(&log).unwrap_or_default());
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    last_err = "sshd did not listen".into();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("could not start sshd: {last_err}");
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An `ssh` command to this server through `agent`, no user config, host key pinned.
    pub fn ssh(&self, agent: &Agent) -> Command {
        let known_hosts = self.dir.path().join("known_hosts");
        std::fs::write(&known_hosts, format!("[127.0.0.1]:{} {}\n", self.port, self.host_key_pub)).unwrap();
        let mut cmd = agent.cmd("ssh");
        cmd.args(["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .args(["-o", "ConnectTimeout=10", "-p", &self.port.to_string()])
            .arg(format!("{}@127.0.0.1", user()));
        cmd
    }

    /// Log in with `login_slot`'s key, forwarding `agent`, and run `ssh-keygen -Y sign`
    /// (namespace `file`) of `message` with `sign_slot`'s key on the server's side: a
    /// signature asked for through the forwarded agent.
    pub fn sign_through_forwarded_agent(&self, agent: &Agent, login_slot: &str, sign_slot: &str, message: &Path) -> Output {
        let remote = format!("ssh-keygen -Y sign -U -n file -f {} {}", agent.key_file(sign_slot).display(), message.display());
        self.ssh(agent).args(["-A", "-o", "IdentitiesOnly=yes", "-i"]).arg(agent.key_file(login_slot)).arg(remote).output().unwrap()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ssh-keygen -Y sign` (namespace `file`) of `message` with the agent at `socket`, then
/// `ssh-keygen -Y verify` of the signature; Ok when both succeed. Works in `dir`.
pub fn sshsig_sign_and_verify(socket: &Path, dir: &Path, key_line: &str, message: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let pubkey = dir.join("key.pub");
    std::fs::write(&pubkey, format!("{key_line}\n")).unwrap();
    let data = dir.join("data.txt");
    std::fs::write(&data, message).unwrap();
    let sig = dir.join("data.txt.sig");
    let _ = std::fs::remove_file(&sig);
    let out = Command::new("ssh-keygen")
        .args(["-Y", "sign", "-n", "file", "-f"])
        .arg(&pubkey)
        .arg(&data)
        .env("SSH_AUTH_SOCK", socket)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(format!("ssh-keygen -Y sign: {}", text(&out)));
    }
    let signers = dir.join("allowed_signers");
    std::fs::write(&signers, format!("tester {key_line}\n")).unwrap();
    let mut verify = Command::new("ssh-keygen")
        .args(["-Y", "verify", "-n", "file", "-I", "tester", "-f"])
        .arg(&signers)
        .arg("-s")
        .arg(&sig)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    verify.stdin.take().unwrap().write_all(message).unwrap();
    let out = verify.wait_with_output().unwrap();
    if !out.status.success() {
        return Err(format!("ssh-keygen -Y verify: {}", text(&out)));
    }
    Ok(())
}

/// Output as text, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Read everything a raw socket sends until it closes or `timeout` passes.
pub fn read_all(stream: &mut std::os::unix::net::UnixStream, timeout: Duration) -> Vec<u8> {
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// An agent-protocol frame: u32 length + body.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

/// An SSH `string`: u32 length + bytes.
pub fn string(b: &[u8]) -> Vec<u8> {
    let mut out = (b.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(b);
    out
}

/// Send raw bytes, read one answer frame; `None` when the agent closed the connection.
pub fn exchange(stream: &mut std::os::unix::net::UnixStream, bytes: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    stream.write_all(bytes).ok()?;
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).ok()?;
    Some(body)
}

/// The wire blob of an authorized_keys line.
pub fn key_blob(line: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(line.split(' ').nth(1).unwrap()).unwrap()
}

/// A SIGN_REQUEST body.
pub fn sign_request(blob: &[u8], data: &[u8], flags: u32) -> Vec<u8> {
    [vec![13], string(blob), string(data), flags.to_be_bytes().to_vec()].concat()
}

/// An agent on a fresh mock token with this policy config and an audit log of its own, plus
/// `extra` agent flags; returns the agent and the audit log's path. The config's directory is
/// kept for the rest of the test process (the agent may re-read it on reload).
pub fn agent_with_config(config: &str, extra: &[&str]) -> (Agent, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("config.toml");
    std::fs::write(&config_path, config).unwrap();
    let audit = dir.path().join("audit.jsonl");
    let mut args = vec!["--config".to_string(), config_path.display().to_string(), "--audit-log".into(), audit.display().to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let agent = Agent::start_with(AgentOptions { args, ..Default::default() });
    std::mem::forget(dir);
    (agent, audit)
}

/// A throwaway user CA (a software key: it plays the role of gomote's coordinator) that
/// certifies keys with ssh-keygen.
pub struct Ca {
    pub dir: tempfile::TempDir,
    pub key: PathBuf,
}

impl Ca {
    pub fn new() -> Ca {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("ca");
        let out = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "test-ca", "-f"]).arg(&key).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        Ca { dir, key }
    }

    pub fn public(&self) -> PathBuf {
        self.key.with_extension("pub")
    }

    /// Certify `pubkey` (a .pub file) with `validity` (ssh-keygen -V); the cert's path, or
    /// ssh-keygen's output when it refused.
    pub fn try_sign(&self, pubkey: &Path, id: &str, principals: &str, validity: &str) -> Result<PathBuf, Output> {
        let copy = self.dir.path().join(format!("{id}.pub"));
        std::fs::copy(pubkey, &copy).unwrap();
        let out = Command::new("ssh-keygen")
            .args(["-q", "-s"])
            .arg(&self.key)
            .args(["-I", id, "-n", principals, "-V", validity])
            .arg(&copy)
            .output()
            .unwrap();
        if out.status.success() {
            Ok(self.dir.path().join(format!("{id}-cert.pub")))
        } else {
            Err(out)
        }
    }

    /// [`Ca::try_sign`], which must succeed.
    pub fn sign(&self, pubkey: &Path, id: &str, principals: &str, validity: &str) -> PathBuf {
        self.try_sign(pubkey, id, principals, validity).unwrap_or_else(|out| panic!("ssh-keygen -s: {}", text(&out)))
    }

    /// sshd trusting only this CA.
    pub fn sshd(&self) -> Sshd {
        Sshd::start(&[], &[&format!("TrustedUserCAKeys {}", self.public().display())])
    }
}
