//! The shipped service files parse and say what the docs say: systemd user units (checked with
//! `systemd-analyze verify` when installed), the launchd plist (Python's plistlib), the udev rule
//! (strict parser; `udevadm verify` needs systemd 254+).

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Runs `systemd-analyze --user verify` on copies of the units whose ExecStart points at the
/// keytap binary under test (verify insists the program exists). Returns stderr.
fn analyze(dir: &Path, service: &str, socket: &str) -> Result<String, String> {
    std::fs::write(dir.join("keytap.service"), service).unwrap();
    std::fs::write(dir.join("keytap.socket"), socket).unwrap();
    let runtime = dir.join("runtime");
    std::fs::create_dir_all(&runtime).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["--user", "verify"])
        .arg(dir.join("keytap.socket"))
        .arg(dir.join("keytap.service"))
        .env("XDG_RUNTIME_DIR", &runtime)
        .output()
        .map_err(|e| e.to_string())?;
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    if out.status.success() && stderr.trim().is_empty() {
        Ok(stderr)
    } else {
        Err(stderr)
    }
}

#[test]
fn systemd_units_verify_and_use_the_documented_socket() {
    let service = read("systemd/keytap.service");
    let socket = read("systemd/keytap.socket");
    assert!(socket.contains("ListenStream=%t/keytap/agent.sock"), "socket path must match keytap's default");
    assert!(socket.contains("SocketMode=0600") && socket.contains("DirectoryMode=0700"));
    assert!(service.contains("ExecStart=/usr/local/bin/keytap agent --foreground"));
    for hardening in ["NoNewPrivileges=yes", "MemoryDenyWriteExecute=yes", "UMask=0077", "RestrictAddressFamilies=AF_UNIX"] {
        assert!(service.contains(hardening), "missing {hardening}");
    }
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("systemd-analyze not installed: structural checks only");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let service = service.replace("/usr/local/bin/keytap", env!("CARGO_BIN_EXE_keytap"));
    analyze(dir.path(), &service, &socket).unwrap_or_else(|e| panic!("systemd-analyze verify: {e}"));
    // The check can fail: an unknown directive is reported.
    let broken = service.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes");
    let err = analyze(dir.path(), &broken, &socket).unwrap_err();
    assert!(err.contains("NoNewPrivilege"), "{err}");
}

#[test]
fn launchd_plist_parses_and_runs_the_agent_in_the_foreground() {
    let script = r#"
import plistlib, sys
p = plistlib.load(open(sys.argv[1], 'rb'))
assert p['Label'] == 'dev.keytap.agent', p['Label']
assert p['RunAtLoad'] is True
cmd = ' '.join(p['ProgramArguments'])
assert 'keytap agent --foreground --socket "$HOME/.keytap/agent.sock"' in cmd, cmd
assert 'mkdir -p -m 700 "$HOME/.keytap"' in cmd, cmd
print('ok')
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(repo("launchd/dev.keytap.agent.plist"))
        .output()
        .expect("python3 is needed (scripts/install-deps.sh)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A broken plist is rejected by the same check.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.plist");
    std::fs::write(&bad, read("launchd/dev.keytap.agent.plist").replace("</dict>", "")).unwrap();
    let out = Command::new("python3").arg("-c").arg(script).arg(&bad).output().unwrap();
    assert!(!out.status.success());
}

/// One udev rule line: `KEY[{attr}]OP"value"` pairs joined by commas.
fn parse_udev_line(line: &str) -> Result<Vec<(String, String, String)>, String> {
    let mut pairs = Vec::new();
    for part in line.split(", ") {
        let part = part.trim();
        let op_at = part.find(['=', '!', '+', ':', '-']).ok_or_else(|| format!("no operator in {part:?}"))?;
        let key = &part[..op_at];
        let rest = &part[op_at..];
        let op = ["==", "!=", "+=", "-=", ":=", "="]
            .into_iter()
            .find(|op| rest.starts_with(op))
            .ok_or_else(|| format!("bad operator in {part:?}"))?;
        let value = &rest[op.len()..];
        if !(value.len() >= 2 && value.starts_with('"') && value.ends_with('"')) {
            return Err(format!("value not quoted in {part:?}"));
        }
        let name = key.split('{').next().unwrap();
        let known = ["ACTION", "SUBSYSTEM", "SUBSYSTEMS", "ATTRS", "ATTR", "KERNEL", "TAG", "MODE", "GROUP", "ENV"];
        if !known.contains(&name) {
            return Err(format!("unknown key {key:?}"));
        }
        if key.contains('{') && !key.ends_with('}') {
            return Err(format!("bad attribute in {key:?}"));
        }
        let assignment = op != "==" && op != "!=";
        if assignment && !["TAG", "MODE", "GROUP", "ENV"].contains(&name) {
            return Err(format!("{key} cannot be assigned"));
        }
        pairs.push((key.to_string(), op.to_string(), value[1..value.len() - 1].to_string()));
    }
    Ok(pairs)
}

#[test]
fn udev_rule_tags_yubikeys_for_the_seat_user() {
    let rules = read("udev/70-keytap-yubikey.rules");
    let lines: Vec<&str> = rules.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')).collect();
    assert!(!lines.is_empty());
    let mut subsystems = Vec::new();
    for line in &lines {
        let pairs = parse_udev_line(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        let has = |k: &str, op: &str, v: &str| pairs.iter().any(|(a, b, c)| a == k && b == op && c == v);
        assert!(has("ATTRS{idVendor}", "==", "1050"), "{line}");
        assert!(has("TAG", "+=", "uaccess"), "{line}");
        assert!(!pairs.iter().any(|(k, _, _)| k == "MODE"), "no world-writable modes: {line}");
        subsystems.extend(pairs.iter().filter(|(k, _, _)| k == "SUBSYSTEM").map(|(_, _, v)| v.clone()));
    }
    assert_eq!(subsystems, ["usb", "hidraw"]);
    // The parser rejects what udev would reject.
    assert!(parse_udev_line(r#"ATTRS{idVendor}=="1050", TAG+=uaccess"#).is_err());
    assert!(parse_udev_line(r#"ATTRS{idVendor}=="1050", BOGUS+="x""#).is_err());
    assert!(parse_udev_line(r#"SUBSYSTEM="usb""#).is_err());
}
