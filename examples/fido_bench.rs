//! Benchmark: sk signatures through keytap on the virtual FIDO2 key (`examples/vfido.rs`).
//!
//! Reports CTAP exchanges per signature (keytap holds the device open, so one getAssertion;
//! OpenSSH's sk-usbhid opens the device per signature: INIT, getInfo, getAssertion) and the
//! agent's overhead per signature: the latency a client sees minus the authenticator's own time
//! (vfido logs it per request). Run with `scripts/bench.sh fido` (release build). Not a test.
//!
//! Options: `--keytap BIN`, `--vfido BIN`, `--signatures N`, `--alg p256|ed25519`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Guard(Vec<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while UnixStream::connect(path).is_err() {
        assert!(Instant::now() < deadline, "{} never answered", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn string(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

fn exchange(stream: &mut UnixStream, body: &[u8]) -> Vec<u8> {
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    stream.write_all(&frame).unwrap();
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).unwrap();
    let mut answer = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut answer).unwrap();
    answer
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let mut keytap = PathBuf::from("target/release/keytap");
    let mut vfido = PathBuf::from("target/release/examples/vfido");
    let mut n = 200usize;
    let mut alg = String::from("p256");
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().expect("flag value");
        match flag.as_str() {
            "--keytap" => keytap = value.into(),
            "--vfido" => vfido = value.into(),
            "--signatures" => n = value.parse().expect("--signatures N"),
            "--alg" => alg = value,
            other => panic!("unknown argument {other}"),
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let vsock = d.join("vfido.sock");
    let vlog = d.join("vfido.log");
    let mut guard = Guard(Vec::new());
    guard.0.push(
        Command::new(&vfido).arg("--socket").arg(&vsock).arg("--log").arg(&vlog).stdout(Stdio::null()).spawn().expect("starting vfido"),
    );
    wait_for(&vsock);
    let device = format!("unix:{}", vsock.display());
    let status = Command::new(&keytap).args(["mock", "init", "--state-dir"]).arg(d.join("mock")).stdout(Stdio::null()).status().unwrap();
    assert!(status.success());
    std::fs::create_dir(d.join("s")).unwrap();
    std::fs::set_permissions(d.join("s"), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let socket = d.join("s/agent.sock");
    guard.0.push(
        Command::new(&keytap)
            .args(["agent", "--foreground", "--token", "mock", "--state-dir"])
            .arg(d.join("mock"))
            .arg("--socket")
            .arg(&socket)
            .args(["--fido-device", &device])
            .env("XDG_STATE_HOME", d.join("state"))
            .env("KEYTAP_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting keytap"),
    );
    wait_for(&socket);
    let key = d.join("id_sk");
    let out = Command::new(&keytap).args(["setup", "--fido", "--alg", &alg, "--device", &device, "--out"]).arg(&key).output().unwrap();
    assert!(out.status.success(), "setup: {}", String::from_utf8_lossy(&out.stderr));
    let added = Command::new("ssh-add").arg(&key).env("SSH_AUTH_SOCK", &socket).output().unwrap();
    assert!(added.status.success(), "ssh-add: {}", String::from_utf8_lossy(&added.stderr));
    use base64::Engine;
    let line = std::fs::read_to_string(format!("{}.pub", key.display())).unwrap();
    let blob = base64::engine::general_purpose::STANDARD.decode(line.split(' ').nth(1).unwrap()).unwrap();

    let mut stream = UnixStream::connect(&socket).unwrap();
    let sign = |stream: &mut UnixStream, i: usize| {
        let mut body = vec![13u8];
        string(&mut body, &blob);
        string(&mut body, format!("benchmark data {i}").as_bytes());
        body.extend_from_slice(&0u32.to_be_bytes());
        let answer = exchange(stream, &body);
        assert_eq!(answer[0], 14, "signature refused");
    };
    for i in 0..5 {
        sign(&mut stream, i);
    }
    let offset = std::fs::read_to_string(&vlog).unwrap().len();
    let mut latency = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        sign(&mut stream, i);
        latency.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let log = std::fs::read_to_string(&vlog).unwrap();
    let log = &log[offset..];
    let cbor = log.lines().filter(|l| l.starts_with("cbor")).count();
    let inits = log.lines().filter(|l| *l == "init").count();
    let device_us: Vec<f64> = log.lines().filter_map(|l| l.strip_prefix("done ")?.strip_suffix("us")?.parse().ok()).collect();
    assert_eq!(device_us.len(), n, "one device request per signature");
    let mut overhead: Vec<f64> = latency.iter().zip(&device_us).map(|(l, d)| l - d).collect();
    let mut device = device_us.clone();
    println!("{alg} sk signatures through keytap on vfido, {n} signatures, one connection, device held open");
    println!("  CTAP exchanges per signature: {:.2} (CTAPHID INITs: {inits})", cbor as f64 / n as f64);
    println!("  client latency   median {:>8.0} us", median(&mut latency));
    println!("  device time      median {:>8.0} us", median(&mut device));
    println!("  keytap overhead  median {:>8.0} us (latency minus device time, per signature)", median(&mut overhead));
}
