//! The PIN prompt on a terminal, as a user without a desktop meets it: the agent runs in the
//! foreground in one tmux pane, a signature is asked for from elsewhere, and the PIN is typed
//! into the pane that shows pinentry-curses. Real tmux, real pinentry-curses, real ssh-keygen.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{text, KEYTAP, MOCK_SERIAL};

fn require(program: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false);
    assert!(found, "{program} is missing: install tmux and pinentry-curses (scripts/install-deps.sh does)");
}

/// A private tmux server (its own socket) with one session; killed on drop.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    /// Start a detached session whose first pane runs `command` (through sh).
    fn start(dir: &Path, command: &str) -> Tmux {
        require("tmux");
        let tmux = Tmux { socket: dir.join("tmux.sock") };
        let out = tmux.cmd(&["-f", "/dev/null", "new-session", "-d", "-s", "t", "-x", "120", "-y", "40", command]);
        assert!(out.status.success(), "tmux new-session: {}", text(&out));
        tmux
    }

    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            // The panes get a clean environment: no desktop, no agent of the caller's.
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("TMUX")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// A second pane running `command`; returns its id (%N).
    fn split(&self, command: &str) -> String {
        let out = self.cmd(&["split-window", "-d", "-P", "-F", "#{pane_id}", "-t", "t", command]);
        assert!(out.status.success(), "tmux split-window: {}", text(&out));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// The first pane's id.
    fn first_pane(&self) -> String {
        let out = self.cmd(&["list-panes", "-t", "t", "-F", "#{pane_id}"]);
        String::from_utf8(out.stdout).unwrap().lines().next().unwrap().to_string()
    }

    fn screen(&self, pane: &str) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", pane]).stdout).into_owned()
    }

    /// Wait until `pane` shows `needle`; returns the screen.
    fn wait_for(&self, pane: &str, needle: &str, context: &dyn Fn() -> String) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let screen = self.screen(pane);
            if screen.contains(needle) {
                return screen;
            }
            assert!(Instant::now() < deadline, "pane {pane} never showed {needle:?}; it shows:\n{screen}\n{}", context());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn type_line(&self, pane: &str, keys: &str) {
        let out = self.cmd(&["send-keys", "-t", pane, "-l", keys]);
        assert!(out.status.success(), "{}", text(&out));
        let out = self.cmd(&["send-keys", "-t", pane, "Enter"]);
        assert!(out.status.success(), "{}", text(&out));
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

fn sh_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

/// A mock token, its 9d key (P-384, PIN once, no touch) and the agent's socket path.
struct Setup {
    dir: tempfile::TempDir,
    state: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    key: PathBuf,
    key_line: String,
    /// The agent in the tmux pane: stopped on drop (it outlives the tmux server, as it ignores
    /// SIGHUP, which tells it to let go of the tokens).
    agent_pid: std::cell::Cell<Option<i32>>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(pid) = self.agent_pid.get() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
    }
}

fn setup() -> Setup {
    require("pinentry-curses");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("mock");
    let out = support::keytap_in(dir.path()).args(["mock", "init", "--serial", &MOCK_SERIAL.to_string(), "--state-dir"]).arg(&state).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = support::keytap_in(dir.path()).args(["list", "--token", "mock", "--json", "--state-dir"]).arg(&state).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let keys: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let key_line = keys.as_array().unwrap().iter().find(|k| k["slot"] == "9d").unwrap()["authorized_key"].as_str().unwrap().to_string();
    let key = dir.path().join("9d.pub");
    std::fs::write(&key, format!("{key_line}\n")).unwrap();
    let socket = dir.path().join("sock").join("agent.sock");
    let log = dir.path().join("agent.log");
    Setup { state, socket, log, key, key_line, dir, agent_pid: std::cell::Cell::new(None) }
}

impl Setup {
    /// The shell command that runs the agent in the foreground (no PIN file, default pinentry).
    fn agent_command(&self) -> String {
        format!(
            "KEYTAP_LOG=info {} agent --foreground --token mock --state-dir {} --socket {} 2>{}; sleep 600",
            KEYTAP,
            sh_quote(&self.state),
            sh_quote(&self.socket),
            sh_quote(&self.log)
        )
    }

    /// Wait until the agent listens and has logged its pid (so it can be stopped on drop).
    fn wait_socket(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // "listening socket=... pid=N", logged right after the socket is bound.
            let pid = self.log_text().lines().find(|l| l.contains("listening")).and_then(|l| l.rsplit("pid=").next()?.trim().parse().ok());
            self.agent_pid.set(pid);
            if pid.is_some() && std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "the agent never listened; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn data(&self) -> PathBuf {
        let data = self.dir.path().join("data.txt");
        std::fs::write(&data, b"the first signature\n").unwrap();
        data
    }

    /// `ssh-keygen -Y verify` of data.txt.sig, written from the spec's side (OpenSSH).
    fn verify(&self) -> Result<(), String> {
        let signers = self.dir.path().join("allowed_signers");
        std::fs::write(&signers, format!("tester {}\n", self.key_line)).unwrap();
        let out = Command::new("ssh-keygen")
            .args(["-Y", "verify", "-n", "file", "-I", "tester", "-f"])
            .arg(&signers)
            .arg("-s")
            .arg(self.dir.path().join("data.txt.sig"))
            .stdin(std::fs::File::open(self.dir.path().join("data.txt")).unwrap())
            .output()
            .unwrap();
        if out.status.success() {
            Ok(())
        } else {
            Err(text(&out))
        }
    }
}

#[test]
fn the_pin_prompt_appears_on_the_foreground_agents_terminal_for_a_requester_without_one() {
    let s = setup();
    let tmux = Tmux::start(s.dir.path(), &s.agent_command());
    let agent_pane = tmux.first_pane();
    s.wait_socket();
    // From outside any terminal (a new session without one): a program such as git run by an
    // editor. The prompt goes to the agent's own terminal, the tmux pane.
    let signer = Command::new("setsid")
        .args(["ssh-keygen", "-Y", "sign", "-n", "file", "-f"])
        .arg(&s.key)
        .arg(s.data())
        .env("SSH_AUTH_SOCK", &s.socket)
        .env_remove("DISPLAY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let screen = tmux.wait_for(&agent_pane, "PIN:", &|| s.log_text());
    assert!(screen.contains(&format!("Enter the PIN of YubiKey {MOCK_SERIAL} (3 tries left)")), "{screen}");
    assert!(screen.contains("ssh-keygen"), "the prompt names the requester:\n{screen}");
    tmux.type_line(&agent_pane, "123456");
    let out = signer.wait_with_output().unwrap();
    assert!(out.status.success(), "{}\nagent log:\n{}", text(&out), s.log_text());
    s.verify().unwrap_or_else(|e| panic!("{e}"));
    let log = s.log_text();
    assert!(log.contains("asking for the PIN") && log.contains("pinentry-curses"), "{log}");
    assert!(log.contains("signed"), "{log}");
}

#[test]
fn the_pin_prompt_appears_on_the_requesting_programs_terminal() {
    let s = setup();
    let tmux = Tmux::start(s.dir.path(), &s.agent_command());
    let agent_pane = tmux.first_pane();
    s.wait_socket();
    let signed = s.dir.path().join("signed");
    // The requester runs in a second pane, as a user types `ssh-keygen -Y sign` in a terminal.
    let requester = tmux.split(&format!(
        "SSH_AUTH_SOCK={} ssh-keygen -Y sign -n file -f {} {} && touch {}; sleep 600",
        sh_quote(&s.socket),
        sh_quote(&s.key),
        sh_quote(&s.data()),
        sh_quote(&signed)
    ));
    let screen = tmux.wait_for(&requester, "PIN:", &|| s.log_text());
    assert!(screen.contains("Enter the PIN of YubiKey"), "{screen}");
    assert!(!tmux.screen(&agent_pane).contains("PIN:"), "the prompt must not be on the agent's terminal");
    // A wrong PIN first: the prompt comes back saying so, with one try fewer.
    tmux.type_line(&requester, "999999");
    tmux.wait_for(&requester, "Wrong PIN (2 tries left)", &|| s.log_text());
    tmux.type_line(&requester, "123456");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !signed.exists() {
        assert!(Instant::now() < deadline, "no signature; pane:\n{}\nlog:\n{}", tmux.screen(&requester), s.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    s.verify().unwrap_or_else(|e| panic!("{e}"));
    let log = s.log_text();
    assert!(log.contains("terminal /dev/pts/"), "{log}");
}

#[test]
fn without_any_terminal_or_desktop_the_failure_says_where_the_prompt_could_not_go() {
    let s = setup();
    // The agent in a session of its own (no terminal), no desktop, no PIN file.
    let mut agent = Command::new("setsid")
        .args([KEYTAP, "agent", "--foreground", "--token", "mock", "--state-dir"])
        .arg(&s.state)
        .arg("--socket")
        .arg(&s.socket)
        .env("KEYTAP_LOG", "info")
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&s.log).unwrap())
        .spawn()
        .unwrap();
    s.wait_socket();
    let out = Command::new("setsid")
        .args(["ssh-keygen", "-Y", "sign", "-n", "file", "-f"])
        .arg(&s.key)
        .arg(s.data())
        .env("SSH_AUTH_SOCK", &s.socket)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = agent.kill();
    let _ = agent.wait();
    s.agent_pid.set(None); // reaped here: its pid may be reused
    assert!(!out.status.success(), "{}", text(&out));
    let log = s.log_text();
    assert!(log.contains("no terminal or desktop to show the PIN prompt on"), "{log}");
    assert!(!log.contains("cancelled"), "a prompt that could not be shown is no cancellation:\n{log}");
}
