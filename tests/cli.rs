//! Starting the agent the ways users do: in the background like ssh-agent, and by systemd.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{keytap_in, text, KEYTAP};

fn mock_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("mock");
    let out = keytap_in(dir.path()).args(["mock", "init", "--state-dir"]).arg(&state).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    (dir, state)
}

fn wait_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        // A zombie of an already-reaped parent can linger briefly; its state is Z.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.contains(") Z ") {
            return;
        }
        assert!(Instant::now() < deadline, "agent {pid} did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn background_start_prints_sh_and_csh_commands_like_ssh_agent() {
    for csh in [false, true] {
        let (dir, state) = mock_dir();
        let socket = dir.path().join("s").join("agent.sock");
        let mut cmd = keytap_in(dir.path());
        cmd.args(["agent", "--token", "mock", "--state-dir"]).arg(&state).arg("--socket").arg(&socket);
        cmd.arg("--log-file").arg(dir.path().join("agent.log"));
        if csh {
            cmd.arg("-c");
        }
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let stdout = String::from_utf8(out.stdout).unwrap();
        let pid: u32 = stdout.lines().last().unwrap().trim_start_matches("echo Agent pid ").trim_end_matches(';').parse().unwrap();
        let expected = if csh {
            format!("setenv SSH_AUTH_SOCK {};\nsetenv SSH_AGENT_PID {pid};\necho Agent pid {pid};\n", socket.display())
        } else {
            format!(
                "SSH_AUTH_SOCK={}; export SSH_AUTH_SOCK;\nSSH_AGENT_PID={pid}; export SSH_AGENT_PID;\necho Agent pid {pid};\n",
                socket.display()
            )
        };
        assert_eq!(stdout, expected);
        // The detached agent serves, then stops on SIGTERM and removes its socket.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let listed = Command::new("ssh-add").arg("-L").env("SSH_AUTH_SOCK", &socket).output().unwrap();
            if listed.status.success() {
                assert_eq!(String::from_utf8_lossy(&listed.stdout).lines().count(), 4);
                break;
            }
            assert!(Instant::now() < deadline, "{}", text(&listed));
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(Command::new("kill").arg(pid.to_string()).status().unwrap().success());
        wait_gone(pid);
        let deadline = Instant::now() + Duration::from_secs(5);
        while socket.exists() {
            assert!(Instant::now() < deadline, "socket left behind");
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap();
        assert!(log.contains("serving the MOCK TEST token"), "{log}");
    }
}

#[test]
fn a_second_agent_on_the_same_socket_is_refused() {
    let (dir, state) = mock_dir();
    let socket = dir.path().join("s").join("agent.sock");
    let first = keytap_in(dir.path())
        .args(["agent", "--token", "mock", "--state-dir"])
        .arg(&state)
        .arg("--socket")
        .arg(&socket)
        .arg("--log-file")
        .arg(dir.path().join("a.log"))
        .output()
        .unwrap();
    assert!(first.status.success(), "{}", text(&first));
    let second = keytap_in(dir.path())
        .args(["agent", "--foreground", "--token", "mock", "--state-dir"])
        .arg(&state)
        .arg("--socket")
        .arg(&socket)
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains(&format!("keytap: {}: another agent is already listening there; stop it or choose another --socket", socket.display())), "{stderr}");
    // In the background, as `eval "$(keytap agent)"` runs it: one "keytap:" prefix, and the
    // shell sees the failure.
    let mut eval = Command::new("sh");
    eval.arg("-c")
        .arg(r#"eval "$("$0" agent --token mock --state-dir "$1" --socket "$2")""#)
        .arg(KEYTAP)
        .arg(&state)
        .arg(&socket);
    support::isolate(&mut eval, dir.path());
    let eval = eval.output().unwrap();
    assert_eq!(eval.status.code(), Some(1), "{}", text(&eval));
    assert_eq!(
        String::from_utf8_lossy(&eval.stderr),
        format!("keytap: the agent did not start: {}: another agent is already listening there; stop it or choose another --socket\n", socket.display())
    );
    let stdout = String::from_utf8(first.stdout).unwrap();
    let pid = stdout.lines().last().unwrap().trim_start_matches("echo Agent pid ").trim_end_matches(';').to_string();
    Command::new("kill").arg(&pid).status().unwrap();
    wait_gone(pid.parse().unwrap());
}

#[test]
fn systemd_socket_activation() {
    let Ok(activate) = which("systemd-socket-activate") else {
        panic!("systemd-socket-activate is missing: install the systemd package (scripts/install-deps.sh does)");
    };
    let (dir, state) = mock_dir();
    let socket = dir.path().join("activated.sock");
    let mut child = Command::new(activate);
    support::isolate(&mut child, dir.path());
    let mut child = child
        .arg("-l")
        .arg(&socket)
        .args([KEYTAP, "agent", "--foreground", "--token", "mock", "--state-dir"])
        .arg(&state)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "systemd-socket-activate never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The request that starts the agent already sees the token's keys: it waits for the
    // owner's first key read instead of answering "no identities".
    let result = Command::new("ssh-add").arg("-L").env("SSH_AUTH_SOCK", &socket).output().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
    assert!(result.status.success(), "{}\n{log}", text(&result));
    assert_eq!(String::from_utf8_lossy(&result.stdout).lines().count(), 4);
    assert!(log.contains("listening on a socket from systemd"), "{log}");
}

fn which(program: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join(program)).find(|p| p.is_file()))
        .ok_or(())
}

/// Every test starts keytap through `support::keytap_in` / `support::isolate`, which give it
/// its own config, state and runtime directories: no test may read the user's config.toml or
/// write into the user's audit log (issue 19).
#[test]
fn tests_start_keytap_only_isolated() {
    let tests = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut offenders = Vec::new();
    for entry in std::fs::read_dir(&tests).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap();
        for (n, line) in source.lines().enumerate() {
            // Split so that this list does not match itself.
            let direct = [("Command::new(", "KEYTAP"), ("Command::new(", "support::KEYTAP"), ("Command::new(", "BIN"), ("Cmd::new(", "BIN"), ("&str = env!(\"", "CARGO_BIN_EXE_keytap")];
            if direct.iter().any(|(a, b)| line.contains(&format!("{a}{b}"))) {
                offenders.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(offenders.is_empty(), "start keytap with support::keytap_in(dir) instead:\n{}", offenders.join("\n"));
}
