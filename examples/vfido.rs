//! A virtual FIDO2 security key for tests: the FIDO app of the Nitrokey 3 / Solo 2 firmware
//! (`fido-authenticator`) on trussed's virtual platform, behind a device-side CTAPHID layer,
//! served on a Unix stream socket that carries raw 64-byte HID reports (the report-id byte
//! stripped) in both directions. keytap reaches it as the device `unix:PATH`, through libfido2's
//! custom-I/O hook, so everything above report read/write is libfido2's production code.
//!
//! ```text
//! cargo run --example vfido -- --socket PATH [--state DIR] [--touch MODE] [--touch-file FILE]
//!                              [--up-timeout-ms N] [--log FILE]
//! ```
//!
//! Touch (the key's button): MODE is `approve` (touched at once), `refuse` (the key reports
//! CTAP2_ERR_OPERATION_DENIED), `never` (nobody touches it: CTAP2_ERR_USER_ACTION_TIMEOUT after
//! the UP timeout) or `delay:MS` (touched after MS milliseconds). `--touch-file` names a file
//! whose content, when present, overrides `--touch`; it is re-read while the key waits, so a test
//! can change its mind mid-request. While waiting, the key sends CTAPHID keepalives with status
//! "UP needed" every 100 ms; a CTAPHID CANCEL (or the host closing its connection) ends the wait
//! with CTAP2_ERR_KEEPALIVE_CANCEL, as the firmware does through trussed's interrupt flag.
//!
//! Several connections may be open at once (as several programs may open one hidraw node); each
//! gets its own CTAPHID channels and the authenticator serves one transaction at a time, answering
//! ERR_CHANNEL_BUSY to other channels meanwhile. With `--state DIR` the key's flash lives in files
//! there, so a restarted ("replugged") key keeps its credentials, PIN and counter; volatile state
//! (the "3 wrong PINs in a row" block) is lost, as on a power cycle. `--log FILE` appends one line
//! per event (`open`, `init`, `cbor 0xNN`, `up-wait`, `cancel`, `close`) for tests and benchmarks.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ctap_types::ctap2;
use ctaphid_dispatch::app::{App, Command};
use fido_authenticator::{Authenticator, Config, TrussedRequirements, UserPresence};
use rand_core::RngCore;
use trussed::backend::BackendId;
use trussed::platform::Platform as _;
use trussed::virt::{self, StorageConfig, StoreConfig};
use trussed_staging::virt::{BackendIds, Dispatcher};

const REPORT: usize = 64;
const INIT_DATA: usize = REPORT - 7;
const CONT_DATA: usize = REPORT - 5;
/// The largest message CTAPHID can frame: one init packet and 128 continuation packets.
const MAX_MESSAGE: usize = INIT_DATA + 128 * CONT_DATA;
const BROADCAST: u32 = 0xffff_ffff;

const CMD_PING: u8 = 0x81;
const CMD_MSG: u8 = 0x83;
const CMD_LOCK: u8 = 0x84;
const CMD_INIT: u8 = 0x86;
const CMD_WINK: u8 = 0x88;
const CMD_CBOR: u8 = 0x90;
const CMD_CANCEL: u8 = 0x91;
const CMD_KEEPALIVE: u8 = 0xbb;
const CMD_ERROR: u8 = 0xbf;

const ERR_INVALID_CMD: u8 = 0x01;
const ERR_INVALID_LEN: u8 = 0x03;
const ERR_INVALID_SEQ: u8 = 0x04;
const ERR_MSG_TIMEOUT: u8 = 0x05;
const ERR_CHANNEL_BUSY: u8 = 0x06;
const ERR_INVALID_CHANNEL: u8 = 0x0b;

const STATUS_UPNEEDED: u8 = 2;
/// CAPABILITY_WINK | CAPABILITY_CBOR (U2F messages are supported, so NMSG is clear).
const CAPABILITIES: u8 = 0x01 | 0x04;
/// Between packets of one message (CTAPHID's transaction timeout).
const MESSAGE_TIMEOUT: Duration = Duration::from_millis(500);
const KEEPALIVE_EVERY: Duration = Duration::from_millis(100);

// ---- the touch ----

#[derive(Clone, Copy, Debug, PartialEq)]
enum Touch {
    Approve,
    Refuse,
    Never,
    Delay(Duration),
}

impl std::str::FromStr for Touch {
    type Err = String;
    fn from_str(s: &str) -> Result<Touch, String> {
        match s.trim() {
            "approve" => Ok(Touch::Approve),
            "refuse" => Ok(Touch::Refuse),
            "never" => Ok(Touch::Never),
            other => match other.strip_prefix("delay:").and_then(|ms| ms.parse().ok()) {
                Some(ms) => Ok(Touch::Delay(Duration::from_millis(ms))),
                None => Err(format!("unknown touch mode {other:?}: use approve, refuse, never or delay:MS")),
            },
        }
    }
}

/// What the authenticator thread and the connection readers share.
struct Device {
    /// The channel whose transaction the authenticator is working on, and its connection.
    busy: Mutex<Option<(u32, usize)>>,
    /// CANCEL arrived for the busy channel (or its connection closed).
    cancel: AtomicBool,
    writers: Mutex<HashMap<usize, Arc<Mutex<UnixStream>>>>,
    touch: Touch,
    touch_file: Option<PathBuf>,
    log: Option<Mutex<std::fs::File>>,
}

impl Device {
    fn log(&self, line: &str) {
        if let Some(log) = &self.log {
            let _ = writeln!(log.lock().expect("log lock"), "{line}");
        }
    }

    fn touch_mode(&self) -> Touch {
        self.touch_file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|s| match s.parse() {
                Ok(t) => Some(t),
                Err(e) => {
                    eprintln!("vfido: touch file: {e}");
                    None
                }
            })
            .unwrap_or(self.touch)
    }

    fn send(&self, conn: usize, cid: u32, cmd: u8, data: &[u8]) {
        let writer = self.writers.lock().expect("writers lock").get(&conn).cloned();
        if let Some(writer) = writer {
            // A host that went away is noticed by its reader; nothing to do here.
            let _ = writer.lock().expect("writer lock").write_all(&frame(cid, cmd, data));
        }
    }
}

/// Split a message into an init packet and continuation packets, zero-padded.
fn frame(cid: u32, cmd: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(REPORT * (1 + data.len() / CONT_DATA));
    let mut packet = [0u8; REPORT];
    packet[..4].copy_from_slice(&cid.to_be_bytes());
    packet[4] = cmd;
    packet[5..7].copy_from_slice(&(data.len() as u16).to_be_bytes());
    let first = data.len().min(INIT_DATA);
    packet[7..7 + first].copy_from_slice(&data[..first]);
    out.extend_from_slice(&packet);
    for (seq, chunk) in data[first..].chunks(CONT_DATA).enumerate() {
        let mut packet = [0u8; REPORT];
        packet[..4].copy_from_slice(&cid.to_be_bytes());
        packet[4] = seq as u8;
        packet[5..5 + chunk.len()].copy_from_slice(chunk);
        out.extend_from_slice(&packet);
    }
    out
}

/// The key's button, as `fido-authenticator` asks for it. Waits for the touch mode to allow the
/// request, sending "UP needed" keepalives, and answers as the firmware's `Conforming` presence
/// check does: timeout, cancel (trussed's interrupt), or denied.
#[derive(Clone, Copy)]
struct Button(&'static Device);

impl UserPresence for Button {
    fn user_present<T: TrussedRequirements>(self, _trussed: &mut T, timeout_milliseconds: u32) -> ctap2::Result<()> {
        let device = self.0;
        device.log("up-wait");
        let busy = *device.busy.lock().expect("busy lock");
        let start = Instant::now();
        let timeout = Duration::from_millis(u64::from(timeout_milliseconds));
        let mut last_keepalive: Option<Instant> = None;
        loop {
            if device.cancel.load(Ordering::SeqCst) {
                device.log("up-cancelled");
                return Err(ctap2::Error::KeepaliveCancel);
            }
            match device.touch_mode() {
                Touch::Approve => return Ok(()),
                Touch::Delay(d) if start.elapsed() >= d => return Ok(()),
                Touch::Refuse => return Err(ctap2::Error::OperationDenied),
                _ => {}
            }
            if start.elapsed() > timeout {
                device.log("up-timeout");
                return Err(ctap2::Error::UserActionTimeout);
            }
            if last_keepalive.map_or(true, |at| at.elapsed() >= KEEPALIVE_EVERY) {
                if let Some((cid, conn)) = busy {
                    device.send(conn, cid, CMD_KEEPALIVE, &[STATUS_UPNEEDED]);
                }
                last_keepalive = Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

// ---- connections ----

enum Event {
    Packet(usize, [u8; REPORT]),
    Closed(usize),
}

/// Read reports from one connection. While the authenticator is busy, CANCEL for its channel
/// is acted on here at once, and other channels are told the device is busy.
fn reader(device: &'static Device, conn: usize, mut stream: UnixStream, events: mpsc::Sender<Event>) {
    let mut packet = [0u8; REPORT];
    loop {
        if stream.read_exact(&mut packet).is_err() {
            let busy = *device.busy.lock().expect("busy lock");
            if matches!(busy, Some((_, c)) if c == conn) {
                device.cancel.store(true, Ordering::SeqCst);
            }
            let _ = events.send(Event::Closed(conn));
            return;
        }
        let cid = u32::from_be_bytes([packet[0], packet[1], packet[2], packet[3]]);
        let busy = *device.busy.lock().expect("busy lock");
        if let Some((busy_cid, busy_conn)) = busy {
            if busy_cid == cid && busy_conn == conn {
                if packet[4] == CMD_CANCEL {
                    device.log("cancel");
                    device.cancel.store(true, Ordering::SeqCst);
                }
                // Anything else on the busy channel mid-transaction is ignored, as USB does.
                continue;
            }
            if packet[4] & 0x80 != 0 && packet[4] != CMD_CANCEL {
                device.send(conn, cid, CMD_ERROR, &[ERR_CHANNEL_BUSY]);
                continue;
            }
        }
        if events.send(Event::Packet(conn, packet)).is_err() {
            return;
        }
    }
}

/// A message being reassembled.
struct Assembly {
    conn: usize,
    cid: u32,
    cmd: u8,
    len: usize,
    data: Vec<u8>,
    next_seq: u8,
    last: Instant,
}

struct Server<A> {
    device: &'static Device,
    app: A,
    channels: HashMap<u32, usize>,
    next_cid: AtomicU32,
}

impl<A: App<'static>> Server<A> {
    fn run(&mut self, events: mpsc::Receiver<Event>) {
        let mut assembly: Option<Assembly> = None;
        loop {
            let event = match events.recv_timeout(MESSAGE_TIMEOUT) {
                Ok(e) => e,
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(a) = assembly.take_if(|a| a.last.elapsed() >= MESSAGE_TIMEOUT) {
                        self.device.send(a.conn, a.cid, CMD_ERROR, &[ERR_MSG_TIMEOUT]);
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let (conn, packet) = match event {
                Event::Packet(conn, packet) => (conn, packet),
                Event::Closed(conn) => {
                    self.device.log("close");
                    self.device.writers.lock().expect("writers lock").remove(&conn);
                    self.channels.retain(|_, c| *c != conn);
                    if assembly.as_ref().is_some_and(|a| a.conn == conn) {
                        assembly = None;
                    }
                    continue;
                }
            };
            let cid = u32::from_be_bytes([packet[0], packet[1], packet[2], packet[3]]);
            let byte = packet[4];
            if byte & 0x80 == 0 {
                // A continuation packet.
                let Some(a) = assembly.as_mut().filter(|a| a.cid == cid && a.conn == conn) else {
                    continue; // spurious: ignored
                };
                if byte != a.next_seq {
                    self.device.send(conn, cid, CMD_ERROR, &[ERR_INVALID_SEQ]);
                    assembly = None;
                    continue;
                }
                let take = (a.len - a.data.len()).min(CONT_DATA);
                a.data.extend_from_slice(&packet[5..5 + take]);
                a.next_seq += 1;
                a.last = Instant::now();
            } else {
                if cid == 0 || (cid == BROADCAST && byte != CMD_INIT) {
                    self.device.send(conn, cid, CMD_ERROR, &[ERR_INVALID_CHANNEL]);
                    continue;
                }
                if cid != BROADCAST && self.channels.get(&cid) != Some(&conn) {
                    self.device.send(conn, cid, CMD_ERROR, &[ERR_INVALID_CHANNEL]);
                    continue;
                }
                if let Some(a) = &assembly {
                    if a.cid != cid || a.conn != conn {
                        self.device.send(conn, cid, CMD_ERROR, &[ERR_CHANNEL_BUSY]);
                        continue;
                    }
                    if byte != CMD_INIT {
                        self.device.send(conn, cid, CMD_ERROR, &[ERR_INVALID_SEQ]);
                        assembly = None;
                        continue;
                    }
                    assembly = None; // INIT resynchronises the channel
                }
                let len = usize::from(u16::from_be_bytes([packet[5], packet[6]]));
                if len > MAX_MESSAGE {
                    self.device.send(conn, cid, CMD_ERROR, &[ERR_INVALID_LEN]);
                    continue;
                }
                let take = len.min(INIT_DATA);
                assembly = Some(Assembly {
                    conn,
                    cid,
                    cmd: byte,
                    len,
                    data: packet[7..7 + take].to_vec(),
                    next_seq: 0,
                    last: Instant::now(),
                });
            }
            if let Some(a) = assembly.take_if(|a| a.data.len() == a.len) {
                self.message(a);
            }
        }
    }

    fn message(&mut self, a: Assembly) {
        let device = self.device;
        match a.cmd {
            CMD_INIT => {
                if a.data.len() != 8 {
                    device.send(a.conn, a.cid, CMD_ERROR, &[ERR_INVALID_LEN]);
                    return;
                }
                device.log("init");
                let cid = if a.cid == BROADCAST {
                    let mut cid;
                    loop {
                        cid = self.next_cid.fetch_add(1, Ordering::SeqCst);
                        if cid != 0 && cid != BROADCAST {
                            break;
                        }
                    }
                    self.channels.insert(cid, a.conn);
                    cid
                } else {
                    a.cid
                };
                let mut reply = a.data.clone();
                reply.extend_from_slice(&cid.to_be_bytes());
                // CTAPHID protocol 2, device version 1.0.0, capabilities.
                reply.extend_from_slice(&[2, 1, 0, 0, CAPABILITIES]);
                device.send(a.conn, a.cid, CMD_INIT, &reply);
            }
            CMD_PING => device.send(a.conn, a.cid, CMD_PING, &a.data),
            CMD_WINK => {
                device.log("wink");
                device.send(a.conn, a.cid, CMD_WINK, &[]);
            }
            // No transaction is running (a running one's CANCEL is taken by the reader).
            CMD_CANCEL => {}
            CMD_CBOR | CMD_MSG => {
                let command = if a.cmd == CMD_CBOR { Command::Cbor } else { Command::Msg };
                device.log(&match a.data.first() {
                    Some(op) if a.cmd == CMD_CBOR => format!("cbor {op:#04x}"),
                    _ => "msg".to_string(),
                });
                device.cancel.store(false, Ordering::SeqCst);
                *device.busy.lock().expect("busy lock") = Some((a.cid, a.conn));
                let mut response = heapless_bytes::Bytes::<MAX_MESSAGE>::new();
                let started = Instant::now();
                let result = self.app.call(command, &a.data, response.as_mut_view());
                *device.busy.lock().expect("busy lock") = None;
                // The device's own time, so benchmarks can subtract it from the host's.
                device.log(&format!("done {}us", started.elapsed().as_micros()));
                match result {
                    Ok(()) => device.send(a.conn, a.cid, a.cmd, &response),
                    Err(_) => device.send(a.conn, a.cid, CMD_ERROR, &[ERR_INVALID_LEN]),
                }
            }
            CMD_LOCK => device.send(a.conn, a.cid, CMD_ERROR, &[ERR_INVALID_CMD]),
            _ => device.send(a.conn, a.cid, CMD_ERROR, &[ERR_INVALID_CMD]),
        }
    }
}

// ---- main ----

struct Args {
    socket: PathBuf,
    state: Option<PathBuf>,
    touch: Touch,
    touch_file: Option<PathBuf>,
    up_timeout_ms: u32,
    log: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut socket = None;
    let mut args = Args { socket: PathBuf::new(), state: None, touch: Touch::Approve, touch_file: None, up_timeout_ms: 30_000, log: None };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--socket" => socket = Some(PathBuf::from(value()?)),
            "--state" => args.state = Some(PathBuf::from(value()?)),
            "--touch" => args.touch = value()?.parse()?,
            "--touch-file" => args.touch_file = Some(PathBuf::from(value()?)),
            "--up-timeout-ms" => args.up_timeout_ms = value()?.parse().map_err(|e| format!("--up-timeout-ms: {e}"))?,
            "--log" => args.log = Some(PathBuf::from(value()?)),
            "-h" | "--help" => {
                println!("usage: vfido --socket PATH [--state DIR] [--touch approve|refuse|never|delay:MS] [--touch-file FILE] [--up-timeout-ms N] [--log FILE]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    args.socket = socket.ok_or("--socket PATH is required")?;
    Ok(args)
}

fn store_config(state: Option<&PathBuf>) -> Result<StoreConfig<'static>, String> {
    Ok(match state {
        None => StoreConfig::ram(),
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
            StoreConfig {
                internal: StorageConfig::filesystem(dir.join("internal.bin")),
                external: StorageConfig::filesystem(dir.join("external.bin")),
                volatile: StorageConfig::ram(),
            }
        }
    })
}

fn run(args: Args) -> Result<(), String> {
    let log = match &args.log {
        Some(path) => Some(Mutex::new(
            std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| format!("{}: {e}", path.display()))?,
        )),
        None => None,
    };
    let device: &'static Device = Box::leak(Box::new(Device {
        busy: Mutex::new(None),
        cancel: AtomicBool::new(false),
        writers: Mutex::new(HashMap::new()),
        touch: args.touch,
        touch_file: args.touch_file.clone(),
        log,
    }));
    let _ = std::fs::remove_file(&args.socket);
    let listener = UnixListener::bind(&args.socket).map_err(|e| format!("binding {}: {e}", args.socket.display()))?;
    let (events_tx, events) = mpsc::channel();
    std::thread::spawn(move || {
        for (conn, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { continue };
            let Ok(write_half) = stream.try_clone() else { continue };
            device.log("open");
            device.writers.lock().expect("writers lock").insert(conn, Arc::new(Mutex::new(write_half)));
            let events = events_tx.clone();
            std::thread::spawn(move || reader(device, conn, stream, events));
        }
    });
    let store = store_config(args.state.as_ref())?;
    virt::with_platform(store, |mut platform| {
        // trussed's virtual RNG starts from a constant seed: reseed it from the OS each run, so
        // two runs (or two keys) never share key material or nonces.
        let mut seed = [0u8; 32];
        rand_core::OsRng.fill_bytes(&mut seed);
        *platform.rng() = rand_core::SeedableRng::from_seed(seed);
        platform.run_client_with_backends(
            "fido",
            Dispatcher::default(),
            &[BackendId::Custom(BackendIds::StagingBackend), BackendId::Core],
            |client| {
                let mut config = Config::new(3072);
                config.fido2_up_timeout = Some(args.up_timeout_ms);
                let app = Authenticator::new(client, Button(device), config);
                println!("vfido: listening on {}", args.socket.display());
                let _ = std::io::stdout().flush();
                Server { device, app, channels: HashMap::new(), next_cid: AtomicU32::new(1) }.run(events);
            },
        )
    });
    Ok(())
}

fn main() {
    let result = parse_args().and_then(run);
    if let Err(e) = result {
        eprintln!("vfido: {e}");
        std::process::exit(2);
    }
}
