//! Benchmark: keytap (mock token) against OpenSSH's ssh-agent (software keys), side by side.
//!
//! Run with `scripts/bench.sh` (release build). Measures REQUEST_IDENTITIES and SIGN_REQUEST
//! (P-256, Ed25519) throughput and latency at 1, 8 and 64 concurrent clients, alternating the
//! two agents over several rounds and reporting medians; idle and loaded RSS; and the time from
//! starting `keytap agent` to a socket that answers. With `--piv-socket` and
//! `--baseline-piv-socket` it also compares two agents already running on the virtual PIV card.
//! Not part of the test suite: numbers are printed (and with `--write FILE`, put in a doc).
//!
//! Options: `--rounds N`, `--seconds S`, `--clients 1,8,64`, `--only list,sign`, `--driver
//! loops|threads`, `--generator-threads N`, `--spread` (each run's percentiles), `--keytap BIN`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Args {
    keytap: PathBuf,
    rounds: usize,
    seconds: f64,
    clients: Vec<usize>,
    write: Option<PathBuf>,
    piv: Option<(PathBuf, PathBuf)>,
    /// Only the workloads whose name starts with one of these (e.g. `list`, `sign`).
    only: Vec<String>,
    driver: Driver,
    /// Event-loop threads of the `loops` driver.
    generator_threads: usize,
    /// Print each run's latency percentiles, to see how stable a cell is.
    spread: bool,
}

fn parse_args() -> Args {
    let mut args = Args {
        keytap: PathBuf::from("target/release/keytap"),
        rounds: 3,
        seconds: 2.0,
        clients: vec![1, 8, 64],
        write: None,
        piv: None,
        only: Vec::new(),
        driver: Driver::Loops,
        generator_threads: 1,
        spread: false,
    };
    let mut it = std::env::args().skip(1);
    let mut piv_keytap = None;
    let mut piv_baseline = None;
    while let Some(a) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--keytap" => args.keytap = PathBuf::from(value()),
            "--rounds" => args.rounds = value().parse().expect("--rounds N"),
            "--seconds" => args.seconds = value().parse().expect("--seconds S"),
            "--clients" => args.clients = value().split(',').map(|c| c.parse().expect("--clients 1,8,64")).collect(),
            "--driver" => {
                args.driver = match value().as_str() {
                    "loops" => Driver::Loops,
                    "threads" => Driver::Threads,
                    other => panic!("--driver loops|threads, not {other}"),
                }
            }
            "--generator-threads" => args.generator_threads = value().parse().expect("--generator-threads N"),
            "--spread" => args.spread = true,
            "--only" => args.only = value().split(',').map(str::to_string).collect(),
            "--write" => args.write = Some(PathBuf::from(value())),
            "--piv-socket" => piv_keytap = Some(PathBuf::from(value())),
            "--baseline-piv-socket" => piv_baseline = Some(PathBuf::from(value())),
            other => panic!("unknown argument {other}"),
        }
    }
    if let (Some(k), Some(b)) = (piv_keytap, piv_baseline) {
        args.piv = Some((k, b));
    }
    args
}

fn string(b: &[u8]) -> Vec<u8> {
    let mut out = (b.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(b);
    out
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

fn exchange(s: &mut UnixStream, request: &[u8], buf: &mut Vec<u8>) -> u8 {
    s.write_all(request).expect("write");
    let mut len = [0u8; 4];
    s.read_exact(&mut len).expect("read length");
    buf.resize(u32::from_be_bytes(len) as usize, 0);
    s.read_exact(buf).expect("read body");
    buf[0]
}

/// Key blobs (and comments) an agent lists.
fn identities(socket: &Path) -> Vec<(Vec<u8>, String)> {
    let mut s = UnixStream::connect(socket).expect("connect");
    let mut buf = Vec::new();
    assert_eq!(exchange(&mut s, &frame(&[11]), &mut buf), 12);
    let mut r = &buf[1..];
    let mut take = |n: usize| {
        let (a, b) = r.split_at(n);
        r = b;
        a.to_vec()
    };
    let count = u32::from_be_bytes(take(4).try_into().unwrap());
    (0..count)
        .map(|_| {
            let n = u32::from_be_bytes(take(4).try_into().unwrap()) as usize;
            let blob = take(n);
            let n = u32::from_be_bytes(take(4).try_into().unwrap()) as usize;
            let comment = String::from_utf8_lossy(&take(n)).into_owned();
            (blob, comment)
        })
        .collect()
}

fn blob_of_type(socket: &Path, key_type: &str) -> Vec<u8> {
    identities(socket)
        .into_iter()
        .map(|(b, _)| b)
        .find(|b| b.len() > 4 + key_type.len() && &b[4..4 + key_type.len()] == key_type.as_bytes())
        .unwrap_or_else(|| panic!("no {key_type} key in {}", socket.display()))
}

#[derive(Clone, Copy, Debug, Default)]
struct Stats {
    ops_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    /// The run's percentiles in µs, for `--spread`: p10 p50 p75 p90 p95 p98 p99 p99.9 max.
    spread: [f64; 9],
}

const SPREAD: [(&str, f64); 9] =
    [("p10", 0.10), ("p50", 0.50), ("p75", 0.75), ("p90", 0.90), ("p95", 0.95), ("p98", 0.98), ("p99", 0.99), ("p99.9", 0.999), ("max", 1.0)];

/// How the load generator holds its connections.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Driver {
    /// Like `wrk -t1`: one poll(2) loop thread (`--generator-threads` to change) drives every
    /// connection. On a small machine this keeps the generator from oversubscribing the cores
    /// it measures: more busy threads than cores means kernel time slices, and a connection
    /// whose thread waits out a slice shows that wait as agent latency.
    Loops,
    /// One blocking OS thread per connection (`--driver threads`): on 2 cores, 64 of them mostly
    /// measure how the kernel schedules 64 busy client threads.
    Threads,
}

/// Drive `clients` connections for `seconds`, each sending `request` in a loop.
fn drive(socket: &Path, request: &[u8], expect: u8, clients: usize, seconds: f64, args: &Args) -> Stats {
    let Args { driver, generator_threads, .. } = *args;
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let threads: Vec<_> = match driver {
        Driver::Threads => (0..clients)
            .map(|_| {
                let socket = socket.to_path_buf();
                let request = request.to_vec();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut s = UnixStream::connect(&socket).expect("connect");
                    let mut buf = Vec::new();
                    let mut lat = latency_buffer(seconds, clients);
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        assert_eq!(exchange(&mut s, &request, &mut buf), expect, "unexpected answer");
                        if !stop.load(Ordering::Relaxed) {
                            lat.push(t.elapsed().as_nanos() as u64);
                        }
                    }
                    lat
                })
            })
            .collect(),
        Driver::Loops => {
            let loops = generator_threads.clamp(1, clients);
            (0..loops)
                .map(|i| {
                    let mine = clients / loops + usize::from(i < clients % loops);
                    let socket = socket.to_path_buf();
                    let request = request.to_vec();
                    let stop = stop.clone();
                    std::thread::spawn(move || poll_loop(&socket, &request, expect, mine, latency_buffer(seconds, loops), &stop))
                })
                .collect()
        }
    };
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    // Throughput over the window; answers that land after it are not counted (with a card's
    // half-second signatures, counting them would inflate a short run).
    let elapsed = start.elapsed().as_secs_f64();
    let mut all: Vec<u64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert!(!all.is_empty(), "no answer within {seconds} s; is the agent stuck?");
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 - 1.0) * p) as usize] as f64 / 1000.0;
    Stats { ops_per_s: all.len() as f64 / elapsed, p50_us: pct(0.50), p99_us: pct(0.99), spread: SPREAD.map(|(_, p)| pct(p)) }
}

/// One load-generator thread: `count` connections, each with one request in flight. Every
/// pass over poll(2) answers all ready connections in order (fair by construction) and sends
/// each its next request at once; latency runs from the write to the read that completes the
/// answer.
fn poll_loop(socket: &Path, request: &[u8], expect: u8, count: usize, mut lat: Vec<u64>, stop: &AtomicBool) -> Vec<u64> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    struct InFlight {
        sent: Instant,
        buf: Vec<u8>,
    }
    let streams: Vec<UnixStream> = (0..count)
        .map(|_| {
            let stream = UnixStream::connect(socket).expect("connect");
            stream.set_nonblocking(true).expect("nonblocking");
            stream
        })
        .collect();
    let send = |stream: &UnixStream, f: &mut InFlight| {
        f.buf.clear();
        f.sent = Instant::now();
        // One request in flight per connection always fits the socket buffer.
        (&*stream).write_all(request).expect("write");
    };
    let mut flights: Vec<InFlight> = (0..count).map(|_| InFlight { sent: Instant::now(), buf: Vec::with_capacity(1024) }).collect();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut fds: Vec<PollFd> = streams.iter().map(|s| PollFd::new(s.as_fd(), PollFlags::POLLIN)).collect();
    for (stream, f) in streams.iter().zip(&mut flights) {
        send(stream, f);
    }
    while !stop.load(Ordering::Relaxed) {
        poll(&mut fds, PollTimeout::from(100u16)).expect("poll");
        for (i, fd) in fds.iter().enumerate() {
            if !fd.revents().is_some_and(|r| !r.is_empty()) {
                continue;
            }
            let (stream, f) = (&streams[i], &mut flights[i]);
            loop {
                match (&*stream).read(&mut chunk) {
                    Ok(0) => panic!("agent closed the connection"),
                    Ok(n) => f.buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("read: {e}"),
                }
            }
            if f.buf.len() >= 4 && f.buf.len() >= 4 + u32::from_be_bytes(f.buf[..4].try_into().unwrap()) as usize {
                assert_eq!(f.buf[4], expect, "unexpected answer");
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                lat.push(f.sent.elapsed().as_nanos() as u64);
                send(stream, f);
            }
        }
    }
    lat
}

/// Room for one of `threads` generator threads' latencies (up to 400,000 answers a second in
/// all), allocated and touched up front: growing the vector (or faulting its pages in) mid-run
/// would stall the generator and show up as the agent's tail.
fn latency_buffer(seconds: f64, threads: usize) -> Vec<u64> {
    let mut v = vec![0u64; (seconds * 400_000.0 / threads.max(1) as f64) as usize];
    v.clear();
    v
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn median_stats(runs: &[Stats]) -> Stats {
    Stats {
        ops_per_s: median(runs.iter().map(|s| s.ops_per_s).collect()),
        p50_us: median(runs.iter().map(|s| s.p50_us).collect()),
        p99_us: median(runs.iter().map(|s| s.p99_us).collect()),
        spread: [0.0; 9],
    }
}

fn print_spread(agent: &str, run: &Stats) {
    let cells: Vec<String> = SPREAD.iter().zip(run.spread).map(|((name, _), us)| format!("{name} {us:.0}")).collect();
    eprintln!("  {agent:<9} {} (µs)", cells.join(" "));
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_socket(socket: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(socket).is_err() {
        assert!(Instant::now() < deadline, "{} never answered", socket.display());
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn start_keytap(args: &Args, dir: &Path, state: &Path, name: &str) -> (Proc, PathBuf, Duration) {
    let socket = dir.join(name).join("agent.sock");
    let started = Instant::now();
    let child = Command::new(&args.keytap)
        .args(["agent", "--foreground", "--token", "mock", "--state-dir"])
        .arg(state)
        .arg("--socket")
        .arg(&socket)
        .arg("--pin-file")
        .arg(dir.join("pin"))
        .arg("--audit-log")
        .arg(dir.join(format!("{name}-audit.jsonl")))
        .env("KEYTAP_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start keytap");
    // Ready = the socket answers REQUEST_IDENTITIES with the token's keys.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut s) = UnixStream::connect(&socket) {
            let mut buf = Vec::new();
            if exchange(&mut s, &frame(&[11]), &mut buf) == 12 && buf.len() > 5 && buf[1..5] != [0, 0, 0, 0] {
                break;
            }
        }
        assert!(Instant::now() < deadline, "keytap did not start");
        std::thread::sleep(Duration::from_micros(200));
    }
    let ready = started.elapsed();
    (Proc(child), socket, ready)
}

fn start_ssh_agent(dir: &Path) -> (Proc, PathBuf) {
    let socket = dir.join("ssh-agent.sock");
    let child = Command::new("ssh-agent").arg("-D").arg("-a").arg(&socket).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("ssh-agent");
    wait_socket(&socket);
    for (t, bits) in [("ecdsa", "256"), ("ed25519", "256")] {
        let key = dir.join(format!("id_{t}"));
        let ok = Command::new("ssh-keygen").args(["-q", "-t", t, "-b", bits, "-N", "", "-f"]).arg(&key).status().unwrap().success();
        assert!(ok);
        let ok = Command::new("ssh-add").arg("-q").arg(&key).env("SSH_AUTH_SOCK", &socket).status().unwrap().success();
        assert!(ok, "ssh-add");
    }
    (Proc(child), socket)
}

struct Row {
    workload: String,
    clients: usize,
    keytap: Stats,
    baseline: Stats,
}

fn compare(a: &Path, b: &Path, workloads: &[(String, Vec<u8>, Vec<u8>, u8)], args: &Args, rows: &mut Vec<Row>) {
    for (name, req_a, req_b, expect) in workloads {
        for &clients in &args.clients {
            let mut runs_a = Vec::new();
            let mut runs_b = Vec::new();
            for round in 0..args.rounds {
                // Alternate which agent goes first, so neither always runs on a warmer machine.
                if round % 2 == 0 {
                    runs_a.push(drive(a, req_a, *expect, clients, args.seconds, args));
                    runs_b.push(drive(b, req_b, *expect, clients, args.seconds, args));
                } else {
                    runs_b.push(drive(b, req_b, *expect, clients, args.seconds, args));
                    runs_a.push(drive(a, req_a, *expect, clients, args.seconds, args));
                }
            }
            if args.spread {
                runs_a.iter().for_each(|r| print_spread("keytap", r));
                runs_b.iter().for_each(|r| print_spread("baseline", r));
            }
            let row = Row { workload: name.clone(), clients, keytap: median_stats(&runs_a), baseline: median_stats(&runs_b) };
            eprintln!(
                "{:<14} {:>3} clients: keytap {:>9.0} ops/s p50 {:>8.1}us p99 {:>8.1}us | baseline {:>9.0} ops/s p50 {:>8.1}us p99 {:>8.1}us | ratio {:.2}x",
                row.workload, clients, row.keytap.ops_per_s, row.keytap.p50_us, row.keytap.p99_us,
                row.baseline.ops_per_s, row.baseline.p50_us, row.baseline.p99_us, row.keytap.ops_per_s / row.baseline.ops_per_s
            );
            rows.push(row);
        }
    }
}

fn sign_request(blob: &[u8], data: &[u8]) -> Vec<u8> {
    frame(&[vec![13], string(blob), string(data), 0u32.to_be_bytes().to_vec()].concat())
}

fn table(rows: &[Row], baseline: &str) -> String {
    let mut t = format!(
        "| workload | clients | keytap ops/s | {baseline} ops/s | ratio | keytap p50 / p99 (µs) | {baseline} p50 / p99 (µs) | p99 ratio |\n|---|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for r in rows {
        t.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | {:.2}x | {:.0} / {:.0} | {:.0} / {:.0} | {:.2} |\n",
            r.workload,
            r.clients,
            r.keytap.ops_per_s,
            r.baseline.ops_per_s,
            r.keytap.ops_per_s / r.baseline.ops_per_s,
            r.keytap.p50_us,
            r.keytap.p99_us,
            r.baseline.p50_us,
            r.baseline.p99_us,
            r.keytap.p99_us / r.baseline.p99_us
        ));
    }
    t
}

fn main() {
    let args = parse_args();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("mock");
    let ok = Command::new(&args.keytap).args(["mock", "init", "--state-dir"]).arg(&state).stdout(Stdio::null()).status().unwrap().success();
    assert!(ok, "mock init");
    std::fs::write(dir.path().join("pin"), "123456\n").unwrap();
    std::fs::set_permissions(dir.path().join("pin"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

    // Start-up: median of several cold starts to a socket that lists keys.
    let mut starts = Vec::new();
    for i in 0..7 {
        let (p, _, ready) = start_keytap(&args, dir.path(), &state, &format!("start{i}"));
        starts.push(ready.as_secs_f64() * 1000.0);
        drop(p);
    }
    let start_ms = median(starts);

    let (keytap, k_sock, _) = start_keytap(&args, dir.path(), &state, "bench");
    let (ssh_agent, s_sock) = start_ssh_agent(dir.path());
    std::thread::sleep(Duration::from_millis(300));
    let idle_keytap = rss_kib(keytap.0.id(), "VmRSS:");
    let idle_ssh = rss_kib(ssh_agent.0.id(), "VmRSS:");

    let data = vec![0x42u8; 64];
    let list = frame(&[11]);
    let workloads = vec![
        ("list".to_string(), list.clone(), list, 12u8),
        ("sign P-256".to_string(), sign_request(&blob_of_type(&k_sock, "ecdsa-sha2-nistp256"), &data), sign_request(&blob_of_type(&s_sock, "ecdsa-sha2-nistp256"), &data), 14),
        ("sign Ed25519".to_string(), sign_request(&blob_of_type(&k_sock, "ssh-ed25519"), &data), sign_request(&blob_of_type(&s_sock, "ssh-ed25519"), &data), 14),
    ];
    let workloads: Vec<_> =
        workloads.into_iter().filter(|w| args.only.is_empty() || args.only.iter().any(|o| w.0.starts_with(o.as_str()))).collect();
    let mut rows = Vec::new();
    compare(&k_sock, &s_sock, &workloads, &args, &mut rows);
    let peak_keytap = rss_kib(keytap.0.id(), "VmHWM:");
    let peak_ssh = rss_kib(ssh_agent.0.id(), "VmHWM:");

    let mut piv_rows = Vec::new();
    if let Some((piv_k, piv_b)) = &args.piv {
        let blob_k = blob_of_type(piv_k, "ecdsa-sha2-nistp256");
        let blob_b = blob_of_type(piv_b, "ecdsa-sha2-nistp256");
        assert_eq!(blob_k, blob_b, "both PIV agents must serve the same card key");
        // A card signs in tens of milliseconds: longer cells, so a p99 is more than the maximum
        // of a few dozen answers.
        let piv_args = Args { clients: vec![1, 8], seconds: args.seconds.max(6.0), ..parse_args() };
        let w = vec![("PIV sign P-256".to_string(), sign_request(&blob_k, &data), sign_request(&blob_b, &data), 14u8)];
        compare(piv_k, piv_b, &w, &piv_args, &mut piv_rows);
    }

    let machine = format!(
        "{} cores, {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default().lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()).unwrap_or_default()
    );
    let ssh_version = String::from_utf8_lossy(&Command::new("ssh").arg("-V").output().unwrap().stderr).trim().to_string();
    let mut report = format!(
        "Measured {} on {machine}; baseline {ssh_version} `ssh-agent` with software keys; keytap on the mock token \
         (9a P-256 PIN once + touch cached, 9c Ed25519 PIN always + touch always, audit log on); \
         {} rounds of {} s per cell, agents alternating, medians; load generator: {}.\n\n",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        args.rounds,
        args.seconds,
        match args.driver {
            Driver::Loops => format!("{} poll(2) event-loop thread(s), one request in flight per connection", args.generator_threads),
            Driver::Threads => "one blocking thread per connection".to_string(),
        }
    );
    report.push_str(&table(&rows, "ssh-agent"));
    report.push_str(&format!(
        "\n| | keytap | ssh-agent |\n|---|---:|---:|\n| idle RSS | {:.1} MB | {:.1} MB |\n| peak RSS under load | {:.1} MB | {:.1} MB |\n| start to ready socket (median of 7) | {start_ms:.1} ms | |\n",
        idle_keytap as f64 / 1024.0,
        idle_ssh as f64 / 1024.0,
        peak_keytap as f64 / 1024.0,
        peak_ssh as f64 / 1024.0
    ));
    if !piv_rows.is_empty() {
        report.push_str("\nPIV path (same virtual card and key; baseline: ssh-agent with OpenSC's PKCS#11 module):\n\n");
        report.push_str(&table(&piv_rows, "ssh-agent+PKCS#11"));
    }
    println!("{report}");
    if let Some(path) = &args.write {
        let begin = "<!-- agent-bench:begin -->";
        let end = "<!-- agent-bench:end -->";
        let doc = std::fs::read_to_string(path).unwrap_or_default();
        let block = format!("{begin}\n{report}{end}");
        let updated = match (doc.find(begin), doc.find(end)) {
            (Some(b), Some(e)) => format!("{}{}{}", &doc[..b], block, &doc[e + end.len()..]),
            _ => format!("{doc}\n## Agent throughput, latency, memory, start-up\n\nCommand: `scripts/bench.sh`\n\n{block}\n"),
        };
        std::fs::write(path, updated).unwrap();
        eprintln!("wrote {}", path.display());
    }
}
