//! The PIV backend end to end, through a real pcscd with the software PIV card
//! (`examples/vcard.rs`, plugged into vsmartcard's vpcd).
//!
//! Runs when `KEYTAP_TEST_VCARD=1` (then a missing stack is a FAILURE) or when pcscd with vpcd
//! is reachable; otherwise each test says why it did nothing. Start the stack with
//! `scripts/pcsc-up.sh` (see docs/testing.md).

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// All tests share vpcd's readers: one at a time.
static CARD_LOCK: Mutex<()> = Mutex::new(());

use support::{secret_file as pin_file, text};
const GOOD_PIN: &str = "123456";

fn vpcd_listening() -> bool {
    let tables = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default()
        + &std::fs::read_to_string("/proc/net/tcp6").unwrap_or_default();
    tables.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[1].ends_with(":8C7B") && f[3] == "0A"
    })
}

/// Whether to run; panics when the stack was required but is missing.
fn stack_ready() -> bool {
    let required = std::env::var("KEYTAP_TEST_VCARD").map(|v| v == "1").unwrap_or(false);
    let pcscd = Path::new("/run/pcscd/pcscd.comm").exists();
    let ready = pcscd && vpcd_listening();
    if !ready {
        let why = format!("pcscd socket present: {pcscd}, vpcd listening on 35963: {}", vpcd_listening());
        if required {
            panic!("KEYTAP_TEST_VCARD=1 but the PC/SC stack is missing ({why}); run scripts/pcsc-up.sh");
        }
        eprintln!("skipping: no pcscd with vpcd ({why}); set KEYTAP_TEST_VCARD=1 to require it");
    }
    ready
}

fn lock() -> std::sync::MutexGuard<'static, ()> {
    CARD_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The vcard example binary, built on demand (`cargo test --test piv` does not build examples).
fn vcard_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let bin = profile_dir.join("examples").join("vcard");
    static BUILT: Mutex<bool> = Mutex::new(false);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !*built {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--example", "vcard", "--quiet"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running cargo build --example vcard");
        assert!(status.success(), "building the vcard example failed");
        *built = true;
    }
    assert!(bin.exists(), "{} missing after build", bin.display());
    bin
}

/// A running virtual card process; killed on drop (= unplugged).
struct VCard {
    child: Child,
    readers: u16,
}

impl VCard {
    fn start(readers: u16, state: &Path, serial: u32) -> VCard {
        VCard::start_with(readers, state, serial, &[])
    }

    /// With extra vcard flags (`--refuse-metadata`).
    fn start_with(readers: u16, state: &Path, serial: u32, extra: &[&str]) -> VCard {
        let child = Command::new(vcard_binary())
            .args(["--readers", &readers.to_string(), "--serial", &serial.to_string(), "--state"])
            .arg(state)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting vcard");
        let card = VCard { child, readers };
        for r in 0..readers {
            wait_for_card(r, true);
        }
        card
    }

    fn unplug(self) {
        drop(self);
    }
}

impl Drop for VCard {
    /// Unplug: kill the card process and wait until pcscd saw the cards go, so the next
    /// test never meets a stale card.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            for r in 0..self.readers {
                wait_for_card(r, false);
            }
        }
    }
}

/// Wait until pcscd reports a card in "Virtual PCD 00 0<reader>" (or none).
fn wait_for_card(reader: u16, present: bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let wanted = format!("Virtual PCD 00 {reader:02}");
    loop {
        let now = pcsc::Context::establish(pcsc::Scope::User).ok().and_then(|ctx| {
            let names = ctx.list_readers_owned().ok()?;
            let name = names.into_iter().find(|n| n.to_string_lossy().starts_with(&wanted))?;
            let mut states = [pcsc::ReaderState::new(name.clone(), pcsc::State::UNAWARE)];
            ctx.get_status_change(Duration::ZERO, &mut states).ok()?;
            let present = states[0].event_state().contains(pcsc::State::PRESENT);
            // Present is not yet usable: wait until a connection (power-up, ATR) works.
            if present {
                let card = ctx.connect(&name, pcsc::ShareMode::Shared, pcsc::Protocols::ANY).ok()?;
                let _ = card.disconnect(pcsc::Disposition::LeaveCard);
            }
            Some(present)
        });
        if now == Some(present) {
            return;
        }
        assert!(Instant::now() < deadline, "card in {wanted} never became present={present}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// keytap with its config, state and runtime directories under the test's `dir`.
fn keytap(dir: &Path, args: &[&str]) -> Output {
    support::keytap_in(dir).args(args).env("KEYTAP_LOG", "warn").output().unwrap()
}

/// `keytap setup` on the virtual card; returns the authorized_keys line.
fn setup(dir: &Path, serial: u32, alg: &str, pin: &Path, extra: &[&str]) -> Result<String, String> {
    let serial = serial.to_string();
    let mut args = vec![
        "setup", "--token", "piv", "--serial", &serial, "--slot", "9a", "--alg", alg, "--touch", "never", "--pin-policy",
        "once", "--pinentry", "/bin/false", "--pin-file",
    ];
    let pin = pin.to_str().unwrap();
    args.push(pin);
    args.extend_from_slice(extra);
    let out = keytap(dir, &args);
    if !out.status.success() {
        return Err(text(&out));
    }
    let stdout = String::from_utf8(out.stdout).unwrap();
    let line = key_line(&stdout);
    assert!(line.starts_with("ecdsa-sha2-nistp"), "no key line in:\n{stdout}");
    Ok(line)
}

/// The authorized_keys line `keytap setup` printed (notes such as the default-PIN offer follow it).
fn key_line(stdout: &str) -> String {
    stdout.lines().find(|l| l.starts_with("ssh-") || l.starts_with("ecdsa-")).unwrap_or_default().to_string()
}

struct Agent {
    child: Child,
    socket: PathBuf,
}

impl Agent {
    fn start(dir: &Path, pin: &Path) -> Agent {
        let sock_dir = dir.join("sock");
        std::fs::create_dir_all(&sock_dir).unwrap();
        std::fs::set_permissions(&sock_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let socket = sock_dir.join("agent.sock");
        let log = std::fs::File::create(dir.join("agent.log")).unwrap();
        let child = support::keytap_in(dir)
            .args(["agent", "--foreground", "--token", "piv", "--socket"])
            .arg(&socket)
            .arg("--pin-file")
            .arg(pin)
            .args(["--pinentry", "/bin/false"])
            .env("KEYTAP_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "agent socket never appeared; log:\n{}",
                std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Agent { child, socket }
    }

    fn listed(&self) -> Vec<String> {
        let out = Command::new("ssh-add").arg("-L").env("SSH_AUTH_SOCK", &self.socket).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("ecdsa") || l.starts_with("ssh-"))
            .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
            .collect()
    }

    /// Wait until the agent lists exactly these keys (by "type base64").
    fn wait_listed(&self, keys: &[&str]) {
        let mut want: Vec<String> = keys.iter().map(|k| k.split_whitespace().take(2).collect::<Vec<_>>().join(" ")).collect();
        want.sort();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut got = self.listed();
            got.sort();
            if got == want {
                return;
            }
            assert!(Instant::now() < deadline, "agent lists {got:?}, want {want:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `ssh-keygen -Y sign` through the agent, then `-Y verify`; Ok when both succeed.
    fn sign_and_verify(&self, dir: &Path, key_line: &str) -> Result<(), String> {
        support::sshsig_sign_and_verify(&self.socket, dir, key_line, b"signed through keytap and a PIV card\n")
    }

    fn log(&self, dir: &Path) -> String {
        std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

#[test]
fn list_setup_refuses_replacement_and_lists_by_serial() {
    if !stack_ready() {
        return;
    }
    let _guard = lock();
    let dir = tempfile::tempdir().unwrap();
    let serial = 7_100_001;
    let _card = VCard::start(1, &dir.path().join("card"), serial);
    let pin = pin_file(dir.path(), "pin", GOOD_PIN);

    let out = keytap(dir.path(), &["list", "--token", "piv"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no keys"), "{}", text(&out));

    let line = setup(dir.path(), serial, "p256", &pin, &[]).unwrap();
    // Replacing needs --force.
    let err = setup(dir.path(), serial, "p256", &pin, &[]).unwrap_err();
    assert!(err.contains("already holds a key") && err.contains("--force"), "{err}");

    let out = keytap(dir.path(), &["list", "--token", "piv", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let keys: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(keys[0]["serial"], serial);
    assert_eq!(keys[0]["slot"], "9a");
    assert_eq!(keys[0]["algorithm"], "p256");
    // The certificate recorded the policy (the card has no metadata).
    assert_eq!(keys[0]["pin_policy"], "once");
    assert_eq!(keys[0]["touch_policy"], "never");
    let listed = keys[0]["authorized_key"].as_str().unwrap();
    assert_eq!(listed.split_whitespace().nth(1), line.split_whitespace().nth(1));

    // --force replaces the key with a different one.
    let replaced = setup(dir.path(), serial, "p256", &pin, &["--force"]).unwrap();
    assert_ne!(replaced.split_whitespace().nth(1), line.split_whitespace().nth(1));

    // An unknown serial is a clear error.
    let out = keytap(dir.path(), &["setup", "--token", "piv", "--serial", "1", "--pin-file", pin.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no token with serial 1"), "{}", text(&out));
}

#[test]
fn wrong_pin_counts_down_and_the_last_retry_is_never_spent() {
    if !stack_ready() {
        return;
    }
    let _guard = lock();
    let dir = tempfile::tempdir().unwrap();
    let serial = 7_200_001;
    let _card = VCard::start(1, &dir.path().join("card"), serial);
    let wrong = pin_file(dir.path(), "wrong", "999999");
    let good = pin_file(dir.path(), "good", GOOD_PIN);

    // 3 -> 2: the file's PIN is wrong, and no other PIN source exists.
    let first = setup(dir.path(), serial, "p256", &wrong, &[]).unwrap_err();
    assert!(!first.contains("only one PIN try is left"), "{first}");
    // 2 -> 1, and then keytap stops before spending the last try.
    let second = setup(dir.path(), serial, "p256", &wrong, &[]).unwrap_err();
    assert!(second.contains("only one PIN try is left"), "{second}");
    // Even the right PIN is not tried at one retry left: the user must unblock deliberately.
    let third = setup(dir.path(), serial, "p256", &good, &[]).unwrap_err();
    assert!(third.contains("only one PIN try is left"), "{third}");
    let out = keytap(dir.path(), &["list", "--token", "piv"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("no keys"), "{}", text(&out));
}

#[test]
fn agent_signs_survives_unplug_and_picks_up_the_card_again() {
    if !stack_ready() {
        return;
    }
    let _guard = lock();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("card");
    let serial = 7_300_001;
    let pin = pin_file(dir.path(), "pin", GOOD_PIN);
    let card = VCard::start(1, &state, serial);
    let line = setup(dir.path(), serial, "p256", &pin, &[]).unwrap();

    let agent = Agent::start(dir.path(), &pin);
    agent.wait_listed(&[&line]);
    agent.sign_and_verify(dir.path(), &line).unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log(dir.path())));
    // A second signature uses the card's PIN cache (one long-lived handle).
    agent.sign_and_verify(dir.path(), &line).unwrap();
    // `ssh-add -D` lets go of the card; the next request reconnects by itself.
    let out = Command::new("ssh-add").arg("-D").env("SSH_AUTH_SOCK", &agent.socket).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    agent.sign_and_verify(dir.path(), &line).unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log(dir.path())));

    // Unplug: the key disappears and signing fails cleanly, the agent keeps running.
    card.unplug();
    agent.wait_listed(&[]);
    assert!(agent.sign_and_verify(dir.path(), &line).is_err());

    // Plug back in (same card state): listed and signing again, PIN re-verified from the file.
    let _card = VCard::start(1, &state, serial);
    agent.wait_listed(&[&line]);
    agent.sign_and_verify(dir.path(), &line).unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log(dir.path())));
    let log = agent.log(dir.path());
    assert!(log.contains("signed"), "{log}");
}

#[test]
fn agent_started_without_a_card_picks_it_up_later() {
    if !stack_ready() {
        return;
    }
    let _guard = lock();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("card");
    let serial = 7_400_001;
    let pin = pin_file(dir.path(), "pin", GOOD_PIN);
    let card = VCard::start(1, &state, serial);
    let line = setup(dir.path(), serial, "p256", &pin, &[]).unwrap();
    card.unplug();

    // Without a card, direct commands fail with what to do next.
    let out = keytap(dir.path(), &["list", "--token", "piv"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no YubiKey found; plug it in"), "{}", text(&out));

    let agent = Agent::start(dir.path(), &pin);
    std::thread::sleep(Duration::from_millis(500));
    assert!(agent.listed().is_empty());
    let status = support::keytap_in(dir.path()).arg("status").env("SSH_AUTH_SOCK", &agent.socket).output().unwrap();
    assert!(status.status.success(), "{}", text(&status));

    let _card = VCard::start(1, &state, serial);
    agent.wait_listed(&[&line]);
    agent.sign_and_verify(dir.path(), &line).unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log(dir.path())));
}

#[test]
fn two_cards_are_two_tokens_and_each_signs() {
    if !stack_ready() {
        return;
    }
    let _guard = lock();
    let dir = tempfile::tempdir().unwrap();
    let serial = 7_500_001;
    let pin = pin_file(dir.path(), "pin", GOOD_PIN);
    let _cards = VCard::start(2, &dir.path().join("cards"), serial);
    // Both virtual cards seed their RNG alike: different algorithms keep the keys distinct.
    let first = setup(dir.path(), serial, "p256", &pin, &[]).unwrap();
    let second = setup(dir.path(), serial + 1, "p384", &pin, &[]).unwrap();
    assert!(second.starts_with("ecdsa-sha2-nistp384"));

    // Without --serial, setup refuses to guess.
    let out = keytap(dir.path(), &["setup", "--token", "piv", "--pin-file", pin.to_str().unwrap(), "--force"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--serial"), "{}", text(&out));

    let agent = Agent::start(dir.path(), &pin);
    agent.wait_listed(&[&first, &second]);
    agent.sign_and_verify(dir.path(), &first).unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log(dir.path())));
    agent.sign_and_verify(dir.path(), &second).unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log(dir.path())));
    let status = support::keytap_in(dir.path()).args(["status", "--json"]).env("SSH_AUTH_SOCK", &agent.socket).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let mut serials: Vec<u64> =
        report["tokens"].as_array().unwrap().iter().filter_map(|t| t["serial"].as_u64()).collect();
    serials.sort();
    assert_eq!(serials, vec![u64::from(serial), u64::from(serial) + 1]);
}

#[test]
fn setup_goes_through_the_running_agent() {
    if !stack_ready() {
        return;
    }
    let _guard = lock();
    let dir = tempfile::tempdir().unwrap();
    let serial = 7_600_001;
    let pin = pin_file(dir.path(), "pin", GOOD_PIN);
    let _card = VCard::start(1, &dir.path().join("card"), serial);
    let agent = Agent::start(dir.path(), &pin);
    agent.wait_listed(&[]);
    let via_agent = |extra: &[&str]| {
        let mut args = vec!["setup", "--slot", "9a", "--alg", "p256", "--touch", "never", "--pin-policy", "once"];
        args.extend_from_slice(extra);
        // No --pin-file: the agent asks for the PIN with its own prompter (its --pin-file).
        support::keytap_in(dir.path()).args(&args).env("SSH_AUTH_SOCK", &agent.socket).output().unwrap()
    };
    let out = via_agent(&[]);
    assert!(out.status.success(), "{}\nagent log:\n{}", text(&out), agent.log(dir.path()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("through the agent"), "{stdout}");
    let line = key_line(&stdout);
    // The agent serves the new key at once, and it signs.
    agent.wait_listed(&[&line]);
    agent.sign_and_verify(dir.path(), &line).unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log(dir.path())));
    // Replacing still needs --force, and the refusal says so.
    let out = via_agent(&[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the agent refused") && stderr.contains("--force"), "{stderr}");
}

#[test]
fn management_key_is_replaced_by_a_pin_protected_one() {
    if !stack_ready() {
        return;
    }
    let _guard = lock();
    let dir = tempfile::tempdir().unwrap();
    let serial = 7_700_001;
    let pin = pin_file(dir.path(), "pin", GOOD_PIN);
    let _card = VCard::start(1, &dir.path().join("card"), serial);
    let first = keytap(dir.path(), &[
        "setup", "--token", "piv", "--serial", "7700001", "--touch", "never", "--protect-management-key", "--pin-file",
        pin.to_str().unwrap(),
    ]);
    assert!(first.status.success(), "{}", text(&first));
    assert!(String::from_utf8_lossy(&first.stdout).contains("replaced by a random one"), "{}", text(&first));
    // Key management still works: with the PIN, keytap finds the protected key on the card.
    let again = keytap(dir.path(), &[
        "setup", "--token", "piv", "--serial", "7700001", "--touch", "never", "--force", "--protect-management-key",
        "--pin-file", pin.to_str().unwrap(),
    ]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(String::from_utf8_lossy(&again.stdout).contains("not the factory default"), "{}", text(&again));
    let a = key_line(&String::from_utf8_lossy(&first.stdout));
    let b = key_line(&String::from_utf8_lossy(&again.stdout));
    assert_ne!(a, b);
}

#[test]
fn ssh_login_through_the_piv_path() {
    if !stack_ready() {
        return;
    }
    let _guard = lock();
    let dir = tempfile::tempdir().unwrap();
    let serial = 7_800_001;
    let pin = pin_file(dir.path(), "pin", GOOD_PIN);
    let _card = VCard::start(1, &dir.path().join("card"), serial);
    let line = setup(dir.path(), serial, "p256", &pin, &[]).unwrap();
    let agent = Agent::start(dir.path(), &pin);
    agent.wait_listed(&[&line]);
    let sshd = support::Sshd::start(std::slice::from_ref(&line), &[]);
    let known_hosts = dir.path().join("known_hosts");
    std::fs::write(&known_hosts, format!("[127.0.0.1]:{} {}\n", sshd.port, sshd.host_key_pub)).unwrap();
    let out = Command::new("ssh")
        .args(["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o"])
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args(["-o", "ConnectTimeout=10", "-p", &sshd.port.to_string()])
        .arg(format!("{}@127.0.0.1", support::user()))
        .arg("echo logged-in-with-piv")
        .env("SSH_AUTH_SOCK", &agent.socket)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("logged-in-with-piv"),
        "{}\nsshd:\n{}\nagent:\n{}",
        text(&out),
        sshd.log_text(),
        agent.log(dir.path())
    );
    assert!(sshd.log_text().contains("Accepted publickey"), "{}", sshd.log_text());
    // The agent recorded the signature as an SSH login.
    assert!(agent.log(dir.path()).contains("signed"), "{}", agent.log(dir.path()));
}

#[test]
fn setup_changes_pin_and_puk_on_the_card() {
    if !stack_ready() {
        return;
    }
    let _guard = lock();
    let dir = tempfile::tempdir().unwrap();
    let serial = 7_800_001;
    let card = VCard::start(1, &dir.path().join("card"), serial);
    let good = pin_file(dir.path(), "good", GOOD_PIN);
    let new_pin = pin_file(dir.path(), "new-pin", "75318642");
    let puk = pin_file(dir.path(), "puk", "12345678");
    let new_puk = pin_file(dir.path(), "new-puk", "64297531");
    let serial_arg = serial.to_string();
    // First-time setup on the factory PIN ends with the offer to change it.
    let out = keytap(dir.path(), &["setup", "--token", "piv", "--serial", &serial_arg, "--touch", "never", "--pin-file", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("keytap setup --no-key --change-pin --change-puk\n"), "{}", text(&out));
    let out = keytap(dir.path(), &[
        "setup", "--token", "piv", "--serial", &serial_arg, "--no-key",
        "--pin-file", good.to_str().unwrap(), "--change-pin", "--new-pin-file", new_pin.to_str().unwrap(),
        "--change-puk", "--puk-file", puk.to_str().unwrap(), "--new-puk-file", new_puk.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "PUK changed.\nPIN changed.\n");
    // Replug (the card keeps its state, and forgets that a PIN was verified): the old PIN is
    // refused, the new one is taken and no change is offered any more.
    card.unplug();
    let _card = VCard::start(1, &dir.path().join("card"), serial);
    let old = keytap(dir.path(), &["setup", "--token", "piv", "--serial", &serial_arg, "--no-key", "--pin-file", good.to_str().unwrap()]);
    assert_eq!(old.status.code(), Some(1), "{}", text(&old));
    assert!(String::from_utf8_lossy(&old.stderr).contains("wrong PIN (2 tries left; one was spent)"), "{}", text(&old));
    let out = keytap(dir.path(), &["setup", "--token", "piv", "--serial", &serial_arg, "--no-key", "--pin-file", new_pin.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
}

/// The reader name of the first virtual card, as pcscd lists it.
fn reader_name() -> String {
    let ctx = pcsc::Context::establish(pcsc::Scope::User).unwrap();
    let names = ctx.list_readers_owned().unwrap();
    names.into_iter().map(|n| n.to_string_lossy().into_owned()).find(|n| n.starts_with("Virtual PCD 00 00")).expect("vpcd reader 0")
}

/// Provision `slot` as a PIV tool does, without keytap: `yubico-piv-tool` generates a P-256 key
/// on the card and imports a certificate for it, issued by a throwaway CA (python3-cryptography).
/// Returns the key's public line, converted by `ssh-keygen` from the card's own answer.
fn provision_with_yubico_piv_tool(dir: &Path, slot: &str) -> String {
    let tool = |args: &[&str]| {
        let out = Command::new("yubico-piv-tool").arg("-r").arg(reader_name()).args(args).output();
        let out = out.unwrap_or_else(|e| panic!("yubico-piv-tool: {e}; install it (scripts/install-deps.sh)"));
        assert!(out.status.success(), "yubico-piv-tool {args:?}: {}", text(&out));
    };
    let public = dir.join(format!("pub-{slot}.pem"));
    let cert = dir.join(format!("cert-{slot}.pem"));
    tool(&["-a", "generate", "-s", slot, "-A", "ECCP256", "-o", public.to_str().unwrap()]);
    let script = r#"
import sys, datetime
from cryptography import x509
from cryptography.x509.oid import NameOID
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
public = serialization.load_pem_public_key(open(sys.argv[1], "rb").read())
ca = ec.generate_private_key(ec.SECP256R1())
start = datetime.datetime(2026, 1, 1)
name = lambda cn: x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
cert = (x509.CertificateBuilder().subject_name(name("piv slot")).issuer_name(name("provisioning CA"))
        .public_key(public).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=3650))
        .sign(ca, hashes.SHA256()))
open(sys.argv[2], "wb").write(cert.public_bytes(serialization.Encoding.PEM))
"#;
    let out = Command::new("python3").arg("-c").arg(script).arg(&public).arg(&cert).output().unwrap();
    assert!(out.status.success(), "making the certificate: {}", text(&out));
    tool(&["-a", "import-certificate", "-s", slot, "-i", cert.to_str().unwrap()]);
    let out = Command::new("ssh-keygen").args(["-i", "-m", "PKCS8", "-f"]).arg(&public).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// "type base64" of a public line.
fn blob(line: &str) -> String {
    line.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

#[test]
fn keys_provisioned_with_certificates_are_listed_whether_metadata_is_partial_or_refused() {
    if !stack_ready() {
        return;
    }
    let _guard = lock();
    // Default: GET METADATA reaches piv-authenticator, which answers without the public key
    // (the policies alone for 9e, nothing for 9a), as a Nitrokey 3 does. Then: refused (6D00).
    for (serial, refuse) in [(7_900_001u32, false), (7_900_101, true)] {
        let dir = tempfile::tempdir().unwrap();
        let extra: &[&str] = if refuse { &["--refuse-metadata"] } else { &[] };
        let _card = VCard::start_with(1, &dir.path().join("card"), serial, extra);
        let auth = provision_with_yubico_piv_tool(dir.path(), "9a");
        let card_auth = provision_with_yubico_piv_tool(dir.path(), "9e");

        let out = keytap(dir.path(), &["list", "--token", "piv", "--json"]);
        assert!(out.status.success(), "{}", text(&out));
        let keys: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let listed: Vec<(String, String, String)> = keys
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                let s = |f: &str| k[f].as_str().unwrap().to_string();
                (s("slot"), blob(&s("authorized_key")), s("pin_policy"))
            })
            .collect();
        // 9e: the card's metadata says "PIN never" when it answers; the certificate says nothing.
        let card_auth_pin = if refuse { "once" } else { "never" };
        assert_eq!(
            listed,
            vec![("9a".into(), blob(&auth), "once".into()), ("9e".into(), blob(&card_auth), card_auth_pin.into())],
            "refuse_metadata={refuse}"
        );

        // And the agent serves both and signs with them.
        let pin = pin_file(dir.path(), "pin", GOOD_PIN);
        let agent = Agent::start(dir.path(), &pin);
        agent.wait_listed(&[&auth, &card_auth]);
        for line in [&auth, &card_auth] {
            agent.sign_and_verify(dir.path(), line).unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log(dir.path())));
        }
    }
}

#[test]
fn the_first_request_under_socket_activation_lists_the_cards_keys() {
    if !stack_ready() {
        return;
    }
    let _guard = lock();
    let dir = tempfile::tempdir().unwrap();
    let serial = 7_950_001;
    let pin = pin_file(dir.path(), "pin", GOOD_PIN);
    let _card = VCard::start(1, &dir.path().join("card"), serial);
    let line = setup(dir.path(), serial, "p256", &pin, &[]).unwrap();

    // As systemd/keytap.socket does: the first client's connection starts the agent, which
    // then takes over a second to read the card.
    let socket = dir.path().join("activated.sock");
    let log = dir.path().join("agent.log");
    let mut activator = Command::new("systemd-socket-activate");
    support::isolate(&mut activator, dir.path());
    let mut activator = activator
        .arg("-l")
        .arg(&socket)
        .args([support::KEYTAP, "agent", "--foreground", "--token", "piv", "--pinentry", "/bin/false", "--pin-file"])
        .arg(&pin)
        .env("KEYTAP_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("systemd-socket-activate (package systemd)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "systemd-socket-activate never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The very first request, nothing before it.
    let first = Command::new("ssh-add").arg("-L").env("SSH_AUTH_SOCK", &socket).output().unwrap();
    let signed = support::sshsig_sign_and_verify(&socket, dir.path(), &line, b"first signature after boot\n");
    let _ = activator.kill();
    let _ = activator.wait();
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(first.status.success(), "{}\nagent log:\n{log}", text(&first));
    let listed: Vec<String> = String::from_utf8_lossy(&first.stdout).lines().map(blob).collect();
    assert_eq!(listed, vec![blob(&line)], "agent log:\n{log}");
    signed.unwrap_or_else(|e| panic!("{e}\nagent log:\n{log}"));
    assert!(log.contains("listening on a socket from systemd"), "{log}");
    assert!(!log.contains("answering without"), "{log}");
}
