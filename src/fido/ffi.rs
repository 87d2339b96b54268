//! The thin safe wrapper over libfido2 (through `libfido2-sys`): the only module in keytap with
//! `unsafe` code. libfido2 is the library OpenSSH's sk-usbhid and systemd use; everything above
//! HID report read/write (CTAPHID framing, CBOR, clientPIN, assertion checks) is its code.
//!
//! Safety model: every libfido2 object (`fido_dev_t`, `fido_cred_t`, `fido_assert_t`,
//! `fido_credman_*`) is owned by exactly one Rust value, created by its `_new` function, freed
//! once in `Drop`, and never shared between threads at the same time. Pointers libfido2
//! returns into an object (`*_ptr`, `*_len`) are copied out before the object is touched again.
//! Strings passed in are `CString`s that outlive the call.
//!
//! Devices named `unix:PATH` use libfido2's custom-I/O hook (`fido_dev_set_io_functions`): a
//! Unix stream socket carrying raw 64-byte HID reports (tests' virtual key). Every other name is
//! a hidraw path opened by libfido2 itself.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_uchar, c_void, CStr, CString};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use libfido2_sys as sys;

/// A libfido2 error code (`FIDO_ERR_*`, CTAP2 status codes among them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FidoError(pub i32);

impl FidoError {
    pub const RX: FidoError = FidoError(sys::FIDO_ERR_RX);
    pub const TX: FidoError = FidoError(sys::FIDO_ERR_TX);
    pub const PIN_INVALID: FidoError = FidoError(sys::FIDO_ERR_PIN_INVALID);
    pub const PIN_BLOCKED: FidoError = FidoError(sys::FIDO_ERR_PIN_BLOCKED);
    pub const PIN_AUTH_BLOCKED: FidoError = FidoError(sys::FIDO_ERR_PIN_AUTH_BLOCKED);
    pub const PIN_REQUIRED: FidoError = FidoError(sys::FIDO_ERR_PIN_REQUIRED);
    pub const PIN_NOT_SET: FidoError = FidoError(sys::FIDO_ERR_PIN_NOT_SET);
    pub const NO_CREDENTIALS: FidoError = FidoError(sys::FIDO_ERR_NO_CREDENTIALS);
    pub const USER_ACTION_TIMEOUT: FidoError = FidoError(sys::FIDO_ERR_USER_ACTION_TIMEOUT);
    pub const OPERATION_DENIED: FidoError = FidoError(sys::FIDO_ERR_OPERATION_DENIED);
    pub const KEEPALIVE_CANCEL: FidoError = FidoError(sys::FIDO_ERR_KEEPALIVE_CANCEL);
    pub const UNSUPPORTED_ALGORITHM: FidoError = FidoError(sys::FIDO_ERR_UNSUPPORTED_ALGORITHM);
    pub const UNSUPPORTED_OPTION: FidoError = FidoError(sys::FIDO_ERR_UNSUPPORTED_OPTION);
    pub const UNSUPPORTED_EXTENSION: FidoError = FidoError(sys::FIDO_ERR_UNSUPPORTED_EXTENSION);
    pub const INVALID_ARGUMENT: FidoError = FidoError(sys::FIDO_ERR_INVALID_ARGUMENT);
    pub const INTERNAL: FidoError = FidoError(sys::FIDO_ERR_INTERNAL);

    /// libfido2's name for the code.
    pub fn name(self) -> String {
        // SAFETY: fido_strerr accepts any int and returns a pointer to a static NUL-terminated
        // string ("unknown error" for codes it does not know); it is never NULL.
        unsafe { CStr::from_ptr(sys::fido_strerr(self.0)) }.to_string_lossy().into_owned()
    }

    /// The host lost the device (unplugged, or the virtual key stopped).
    pub fn is_transport(self) -> bool {
        matches!(self.0, sys::FIDO_ERR_RX | sys::FIDO_ERR_TX | sys::FIDO_ERR_RX_NOT_CBOR | sys::FIDO_ERR_RX_INVALID_CBOR)
    }
}

impl std::fmt::Display for FidoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

impl std::error::Error for FidoError {}

pub type Result<T> = std::result::Result<T, FidoError>;

fn check(code: c_int) -> Result<()> {
    if code == sys::FIDO_OK {
        Ok(())
    } else {
        Err(FidoError(code))
    }
}

fn init() {
    static INIT: Once = Once::new();
    // SAFETY: fido_init only sets library-global flags; Once makes it run once, before any
    // other libfido2 call made through this module.
    INIT.call_once(|| unsafe { sys::fido_init(0) });
}

fn cstring(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| FidoError::INVALID_ARGUMENT)
}

/// Copy `len` bytes libfido2 points at; NULL or 0 gives an empty vector.
///
/// # Safety
/// `ptr` must be NULL or valid for `len` bytes for the duration of the call.
unsafe fn bytes(ptr: *const c_uchar, len: usize) -> Vec<u8> {
    if ptr.is_null() || len == 0 {
        Vec::new()
    } else {
        std::slice::from_raw_parts(ptr, len).to_vec()
    }
}

/// A C string libfido2 owns, copied; NULL gives `None`.
///
/// # Safety
/// `ptr` must be NULL or a valid NUL-terminated string for the duration of the call.
unsafe fn string(ptr: *const c_char) -> Option<String> {
    (!ptr.is_null()).then(|| CStr::from_ptr(ptr).to_string_lossy().into_owned())
}

// ---- device listing ----

/// FIDO devices libfido2 finds (hidraw nodes with the FIDO usage page).
pub fn manifest() -> Vec<String> {
    init();
    const MAX: usize = 64;
    // SAFETY: fido_dev_info_new allocates an array of MAX entries or returns NULL.
    let list = unsafe { sys::fido_dev_info_new(MAX) };
    if list.is_null() {
        return Vec::new();
    }
    let mut found: usize = 0;
    let mut out = Vec::new();
    // SAFETY: `list` has MAX entries; libfido2 fills at most MAX and reports how many in `found`.
    if unsafe { sys::fido_dev_info_manifest(list, MAX, &mut found) } == sys::FIDO_OK {
        for i in 0..found.min(MAX) {
            // SAFETY: i < found <= MAX, so the entry exists; the path string lives in `list`,
            // which is freed only below, after copying.
            if let Some(path) = unsafe { string(sys::fido_dev_info_path(sys::fido_dev_info_ptr(list, i))) } {
                out.push(path);
            }
        }
    }
    let mut list = list;
    // SAFETY: `list` came from fido_dev_info_new(MAX) and is freed exactly once.
    unsafe { sys::fido_dev_info_free(&mut list, MAX) };
    out
}

// ---- the unix: transport ----

/// Controls for one open device's transport, shared with the owner so that a waiting request
/// can be cancelled (client gone) or timed out (no touch) from the report reader.
#[derive(Debug, Default)]
pub struct IoControl {
    /// When this (the running request's switch) turns true, send a CTAPHID CANCEL.
    pub cancel: Mutex<Option<Arc<AtomicBool>>>,
    /// Cancel the running transaction when this passes (the touch timeout).
    pub deadline: Mutex<Option<Instant>>,
    /// The deadline passed and a CANCEL was sent for it.
    pub timed_out: AtomicBool,
    /// CTAPHID messages sent (INIT, CBOR, CANCEL...), for benchmarks.
    pub messages: std::sync::atomic::AtomicU64,
}

struct UnixIo {
    stream: UnixStream,
    control: Arc<IoControl>,
    /// The channel of the last report written: where a CANCEL goes.
    cid: [u8; 4],
    cancel_sent: bool,
    broken: bool,
}

const REPORT: usize = 64;
const CTAPHID_CANCEL: u8 = 0x91;

impl UnixIo {
    fn send_cancel(&mut self) {
        if self.cancel_sent {
            return;
        }
        self.cancel_sent = true;
        let mut packet = [0u8; REPORT];
        packet[..4].copy_from_slice(&self.cid);
        packet[4] = CTAPHID_CANCEL;
        self.control.messages.fetch_add(1, Ordering::Relaxed);
        if self.stream.write_all(&packet).is_err() {
            self.broken = true;
        }
    }

    /// Read one report, waiting at most `ms` (-1: forever), acting on cancel and deadline.
    fn read_report(&mut self, buf: &mut [u8], ms: c_int) -> c_int {
        if self.broken {
            return -1;
        }
        let start = Instant::now();
        let limit = (ms >= 0).then(|| Duration::from_millis(ms as u64));
        let mut got = 0;
        let mut report = [0u8; REPORT];
        loop {
            let cancelled = self.control.cancel.lock().expect("cancel lock").as_ref().is_some_and(|c| c.load(Ordering::SeqCst));
            if cancelled {
                self.send_cancel();
            }
            let deadline = *self.control.deadline.lock().expect("deadline lock");
            if deadline.is_some_and(|d| Instant::now() >= d) && !self.cancel_sent {
                self.control.timed_out.store(true, Ordering::SeqCst);
                self.send_cancel();
            }
            if limit.is_some_and(|l| start.elapsed() >= l) {
                // A report cut in half would desynchronise the stream: give it up.
                if got > 0 {
                    self.broken = true;
                }
                return -1;
            }
            // Short slices, so that cancel and deadline are noticed while the key waits.
            let _ = self.stream.set_read_timeout(Some(Duration::from_millis(50)));
            match self.stream.read(&mut report[got..]) {
                Ok(0) => {
                    self.broken = true;
                    return -1;
                }
                Ok(n) => {
                    got += n;
                    if got == REPORT {
                        let n = buf.len().min(REPORT);
                        buf[..n].copy_from_slice(&report[..n]);
                        return n as c_int;
                    }
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted) => {}
                Err(_) => {
                    self.broken = true;
                    return -1;
                }
            }
        }
    }

    /// libfido2 writes the report id (0) and 64 bytes; the socket carries the 64.
    fn write_report(&mut self, data: &[u8]) -> c_int {
        if self.broken || data.is_empty() {
            return -1;
        }
        let report = &data[1..];
        let mut packet = [0u8; REPORT];
        let n = report.len().min(REPORT);
        packet[..n].copy_from_slice(&report[..n]);
        self.cid.copy_from_slice(&packet[..4]);
        if packet[4] & 0x80 != 0 {
            // A new message: a fresh transaction may be cancelled again.
            self.cancel_sent = false;
            self.control.messages.fetch_add(1, Ordering::Relaxed);
        }
        match self.stream.write_all(&packet) {
            Ok(()) => data.len() as c_int,
            Err(_) => {
                self.broken = true;
                -1
            }
        }
    }
}

thread_local! {
    /// The control for the device being opened on this thread: libfido2 calls `io_open` from
    /// inside `fido_dev_open`, on the caller's thread, with only the path.
    static OPENING: std::cell::RefCell<Option<Arc<IoControl>>> = const { std::cell::RefCell::new(None) };
}

unsafe extern "C" fn io_open(path: *const c_char) -> *mut c_void {
    // SAFETY: libfido2 passes the NUL-terminated path given to fido_dev_open.
    let Some(path) = (unsafe { string(path) }) else { return std::ptr::null_mut() };
    let Some(socket) = path.strip_prefix("unix:") else { return std::ptr::null_mut() };
    let Ok(stream) = UnixStream::connect(socket) else { return std::ptr::null_mut() };
    let control = OPENING.with(|o| o.borrow_mut().take()).unwrap_or_default();
    let io = Box::new(UnixIo { stream, control, cid: [0xff; 4], cancel_sent: false, broken: false });
    Box::into_raw(io).cast()
}

unsafe extern "C" fn io_close(handle: *mut c_void) {
    if !handle.is_null() {
        // SAFETY: `handle` came from Box::into_raw in io_open, and libfido2 closes it once.
        drop(unsafe { Box::from_raw(handle.cast::<UnixIo>()) });
    }
}

unsafe extern "C" fn io_read(handle: *mut c_void, buf: *mut c_uchar, len: usize, ms: c_int) -> c_int {
    if handle.is_null() || buf.is_null() {
        return -1;
    }
    // SAFETY: `handle` is the live UnixIo from io_open (libfido2 uses a device from one thread
    // at a time), and `buf` is libfido2's buffer of `len` bytes.
    let (io, buf) = unsafe { (&mut *handle.cast::<UnixIo>(), std::slice::from_raw_parts_mut(buf, len)) };
    io.read_report(buf, ms)
}

unsafe extern "C" fn io_write(handle: *mut c_void, buf: *const c_uchar, len: usize) -> c_int {
    if handle.is_null() || buf.is_null() {
        return -1;
    }
    // SAFETY: as in io_read; `buf` holds `len` bytes libfido2 wrote.
    let (io, data) = unsafe { (&mut *handle.cast::<UnixIo>(), std::slice::from_raw_parts(buf, len)) };
    io.write_report(data)
}

// ---- devices ----

/// What getInfo says about a device, as libfido2 keeps it after opening.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceCaps {
    /// Built-in user verification (biometrics) is configured.
    pub has_uv: bool,
    pub has_pin: bool,
    pub supports_pin: bool,
    pub supports_cred_prot: bool,
    pub supports_credman: bool,
    pub is_fido2: bool,
}

/// An open FIDO device.
pub struct Device {
    dev: NonNull<sys::fido_dev_t>,
    path: String,
    control: Arc<IoControl>,
}

// SAFETY: a fido_dev_t has no thread affinity (libfido2 keeps no thread-local state for it);
// it is only used through `&mut self` or `&self` of its single owner, so never concurrently.
unsafe impl Send for Device {}

impl Device {
    /// Open a device: `unix:PATH` (the test transport) or a hidraw path.
    pub fn open(path: &str) -> Result<Device> {
        init();
        // SAFETY: fido_dev_new allocates a device object or returns NULL.
        let dev = NonNull::new(unsafe { sys::fido_dev_new() }).ok_or(FidoError::INTERNAL)?;
        let control = Arc::new(IoControl::default());
        let device = Device { dev, path: path.to_string(), control: control.clone() };
        let cpath = cstring(path)?;
        if path.starts_with("unix:") {
            let io = sys::fido_dev_io_t { open: Some(io_open), close: Some(io_close), read: Some(io_read), write: Some(io_write) };
            // SAFETY: `device.dev` is a fresh, unopened device; libfido2 copies `io`.
            check(unsafe { sys::fido_dev_set_io_functions(device.dev.as_ptr(), &io) })?;
            OPENING.with(|o| *o.borrow_mut() = Some(control));
        }
        // SAFETY: `cpath` outlives the call; on failure the device stays unopened and Drop only
        // frees it.
        let opened = check(unsafe { sys::fido_dev_open(device.dev.as_ptr(), cpath.as_ptr()) });
        OPENING.with(|o| o.borrow_mut().take());
        opened?;
        Ok(device)
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// The transport's cancel/deadline switches (only effective on `unix:` devices).
    pub fn control(&self) -> Arc<IoControl> {
        self.control.clone()
    }

    pub fn caps(&self) -> DeviceCaps {
        let d = self.dev.as_ptr();
        // SAFETY: these read flags libfido2 stored at open time from the device's getInfo.
        unsafe {
            DeviceCaps {
                has_uv: sys::fido_dev_has_uv(d),
                has_pin: sys::fido_dev_has_pin(d),
                supports_pin: sys::fido_dev_supports_pin(d),
                supports_cred_prot: sys::fido_dev_supports_cred_prot(d),
                supports_credman: sys::fido_dev_supports_credman(d),
                is_fido2: sys::fido_dev_is_fido2(d),
            }
        }
    }

    /// PIN retries left (asks the device; spends none).
    pub fn pin_retries(&mut self) -> Result<u8> {
        let mut retries: c_int = 0;
        // SAFETY: the device is open; `retries` is a valid out-pointer.
        check(unsafe { sys::fido_dev_get_retry_count(self.dev.as_ptr(), &mut retries) })?;
        Ok(retries.clamp(0, 255) as u8)
    }

    /// Set the PIN of a device that has none, or change it (`old` given).
    pub fn set_pin(&mut self, new: &str, old: Option<&str>) -> Result<()> {
        let new = cstring(new)?;
        let old = old.map(cstring).transpose()?;
        // SAFETY: both strings outlive the call; NULL old means "set", as libfido2 documents.
        check(unsafe {
            sys::fido_dev_set_pin(self.dev.as_ptr(), new.as_ptr(), old.as_ref().map_or(std::ptr::null(), |o| o.as_ptr()))
        })
    }

    /// Create a credential (authenticatorMakeCredential).
    pub fn make_credential(&mut self, request: &MakeCredential, pin: Option<&str>) -> Result<Credential> {
        let cred = Cred::new()?;
        let c = cred.0.as_ptr();
        let rp = cstring(&request.rp_id)?;
        let user_name = cstring(&request.user_name)?;
        let pin = pin.map(cstring).transpose()?;
        // SAFETY: `c` is a live fido_cred_t; every pointer/length pair describes a live Rust
        // buffer or CString for the duration of its call; libfido2 copies what it keeps.
        unsafe {
            check(sys::fido_cred_set_type(c, request.cose_alg))?;
            check(sys::fido_cred_set_clientdata_hash(c, request.client_data_hash.as_ptr(), request.client_data_hash.len()))?;
            check(sys::fido_cred_set_rp(c, rp.as_ptr(), std::ptr::null()))?;
            check(sys::fido_cred_set_user(
                c,
                request.user_id.as_ptr(),
                request.user_id.len(),
                user_name.as_ptr(),
                std::ptr::null(),
                std::ptr::null(),
            ))?;
            check(sys::fido_cred_set_rk(c, if request.resident { sys::fido_opt_t_FIDO_OPT_TRUE } else { sys::fido_opt_t_FIDO_OPT_OMIT }))?;
            if let Some(prot) = request.cred_protect {
                check(sys::fido_cred_set_prot(c, prot))?;
            }
            check(sys::fido_dev_make_cred(self.dev.as_ptr(), c, pin.as_ref().map_or(std::ptr::null(), |p| p.as_ptr())))?;
            Ok(Credential {
                id: bytes(sys::fido_cred_id_ptr(c), sys::fido_cred_id_len(c)),
                public_key: bytes(sys::fido_cred_pubkey_ptr(c), sys::fido_cred_pubkey_len(c)),
                flags: sys::fido_cred_flags(c),
            })
        }
    }

    /// Get one assertion for one credential (authenticatorGetAssertion).
    pub fn get_assertion(&mut self, request: &GetAssertion, pin: Option<&str>) -> Result<Assertion> {
        // SAFETY: fido_assert_new allocates or returns NULL.
        let assert = Assert(NonNull::new(unsafe { sys::fido_assert_new() }).ok_or(FidoError::INTERNAL)?);
        let a = assert.0.as_ptr();
        let rp = cstring(&request.rp_id)?;
        let pin = pin.map(cstring).transpose()?;
        let opt = |b: Option<bool>| match b {
            None => sys::fido_opt_t_FIDO_OPT_OMIT,
            Some(false) => sys::fido_opt_t_FIDO_OPT_FALSE,
            Some(true) => sys::fido_opt_t_FIDO_OPT_TRUE,
        };
        // SAFETY: `a` is a live fido_assert_t; buffers and strings outlive each call; results are
        // copied out while `assert` is alive and checked against fido_assert_count first.
        unsafe {
            check(sys::fido_assert_set_rp(a, rp.as_ptr()))?;
            check(sys::fido_assert_set_clientdata_hash(a, request.client_data_hash.as_ptr(), request.client_data_hash.len()))?;
            check(sys::fido_assert_allow_cred(a, request.key_handle.as_ptr(), request.key_handle.len()))?;
            check(sys::fido_assert_set_up(a, opt(Some(request.up))))?;
            check(sys::fido_assert_set_uv(a, opt(request.uv.then_some(true))))?;
            check(sys::fido_assert_set_extensions(a, 0))?;
            check(sys::fido_dev_get_assert(self.dev.as_ptr(), a, pin.as_ref().map_or(std::ptr::null(), |p| p.as_ptr())))?;
            if sys::fido_assert_count(a) != 1 {
                return Err(FidoError::INTERNAL);
            }
            Ok(Assertion {
                flags: sys::fido_assert_flags(a, 0),
                counter: sys::fido_assert_sigcount(a, 0),
                signature: bytes(sys::fido_assert_sig_ptr(a, 0), sys::fido_assert_sig_len(a, 0)),
            })
        }
    }

    /// Every resident credential of relying parties whose id starts with `prefix`
    /// (credential management; needs the PIN).
    pub fn resident_credentials(&mut self, prefix: &str, pin: &str) -> Result<Vec<ResidentCredential>> {
        let cpin = cstring(pin)?;
        // SAFETY: fido_credman_rp_new allocates or returns NULL.
        let rps = CredmanRp(NonNull::new(unsafe { sys::fido_credman_rp_new() }).ok_or(FidoError::INTERNAL)?);
        // SAFETY: live objects, `cpin` outlives the call.
        check(unsafe { sys::fido_credman_get_dev_rp(self.dev.as_ptr(), rps.0.as_ptr(), cpin.as_ptr()) })?;
        let mut ids = Vec::new();
        // SAFETY: indices are below fido_credman_rp_count; strings are copied at once.
        unsafe {
            for i in 0..sys::fido_credman_rp_count(rps.0.as_ptr()) {
                if let Some(id) = string(sys::fido_credman_rp_id(rps.0.as_ptr(), i)) {
                    ids.push(id);
                }
            }
        }
        let mut out = Vec::new();
        for rp_id in ids.into_iter().filter(|id| id.starts_with(prefix)) {
            let crp = cstring(&rp_id)?;
            // SAFETY: as above.
            let rks = CredmanRk(NonNull::new(unsafe { sys::fido_credman_rk_new() }).ok_or(FidoError::INTERNAL)?);
            // SAFETY: live objects; strings outlive the call.
            check(unsafe { sys::fido_credman_get_dev_rk(self.dev.as_ptr(), crp.as_ptr(), rks.0.as_ptr(), cpin.as_ptr()) })?;
            // SAFETY: indices are below fido_credman_rk_count; each fido_cred_t returned lives in
            // `rks` and is only read (copied) here.
            unsafe {
                for i in 0..sys::fido_credman_rk_count(rks.0.as_ptr()) {
                    let c = sys::fido_credman_rk(rks.0.as_ptr(), i);
                    if c.is_null() {
                        continue;
                    }
                    out.push(ResidentCredential {
                        rp_id: rp_id.clone(),
                        cose_alg: sys::fido_cred_type(c),
                        id: bytes(sys::fido_cred_id_ptr(c), sys::fido_cred_id_len(c)),
                        public_key: bytes(sys::fido_cred_pubkey_ptr(c), sys::fido_cred_pubkey_len(c)),
                        user_id: bytes(sys::fido_cred_user_id_ptr(c), sys::fido_cred_user_id_len(c)),
                        user_name: string(sys::fido_cred_user_name(c)).unwrap_or_default(),
                        cred_protect: sys::fido_cred_prot(c),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Give up on a request after `ms` milliseconds (-1: wait as long as the device does).
    /// libfido2 then reports FIDO_ERR_RX while the device may still wait: cancel and reopen.
    pub fn set_timeout(&mut self, ms: i32) -> Result<()> {
        // SAFETY: the device is open and owned by this thread.
        check(unsafe { sys::fido_dev_set_timeout(self.dev.as_ptr(), ms) })
    }

    /// Send CTAPHID CANCEL for whatever the device is doing.
    pub fn cancel(&mut self) -> Result<()> {
        // SAFETY: the device is open and owned by this thread.
        check(unsafe { sys::fido_dev_cancel(self.dev.as_ptr()) })
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        let mut dev = self.dev.as_ptr();
        // SAFETY: `dev` was allocated by fido_dev_new and is closed (a no-op error when it was
        // never opened) and freed exactly once, here.
        unsafe {
            sys::fido_dev_close(dev);
            sys::fido_dev_free(&mut dev);
        }
    }
}

struct Cred(NonNull<sys::fido_cred_t>);

impl Cred {
    fn new() -> Result<Cred> {
        // SAFETY: fido_cred_new allocates or returns NULL.
        NonNull::new(unsafe { sys::fido_cred_new() }).map(Cred).ok_or(FidoError::INTERNAL)
    }
}

impl Drop for Cred {
    fn drop(&mut self) {
        let mut p = self.0.as_ptr();
        // SAFETY: allocated by fido_cred_new, freed once.
        unsafe { sys::fido_cred_free(&mut p) };
    }
}

struct Assert(NonNull<sys::fido_assert_t>);

impl Drop for Assert {
    fn drop(&mut self) {
        let mut p = self.0.as_ptr();
        // SAFETY: allocated by fido_assert_new, freed once.
        unsafe { sys::fido_assert_free(&mut p) };
    }
}

struct CredmanRp(NonNull<sys::fido_credman_rp_t>);

impl Drop for CredmanRp {
    fn drop(&mut self) {
        let mut p = self.0.as_ptr();
        // SAFETY: allocated by fido_credman_rp_new, freed once.
        unsafe { sys::fido_credman_rp_free(&mut p) };
    }
}

struct CredmanRk(NonNull<sys::fido_credman_rk_t>);

impl Drop for CredmanRk {
    fn drop(&mut self) {
        let mut p = self.0.as_ptr();
        // SAFETY: allocated by fido_credman_rk_new, freed once.
        unsafe { sys::fido_credman_rk_free(&mut p) };
    }
}

// ---- plain data in and out ----

pub const COSE_ES256: i32 = sys::COSE_ES256;
pub const COSE_EDDSA: i32 = sys::COSE_EDDSA;
pub const CRED_PROT_UV_OPTIONAL_WITH_ID: i32 = sys::FIDO_CRED_PROT_UV_OPTIONAL_WITH_ID;
pub const CRED_PROT_UV_REQUIRED: i32 = sys::FIDO_CRED_PROT_UV_REQUIRED;

#[derive(Clone, Debug)]
pub struct MakeCredential {
    pub cose_alg: i32,
    pub rp_id: String,
    pub client_data_hash: [u8; 32],
    pub user_id: Vec<u8>,
    pub user_name: String,
    pub resident: bool,
    pub cred_protect: Option<i32>,
}

#[derive(Clone, Debug)]
pub struct Credential {
    pub id: Vec<u8>,
    /// ES256: X‖Y (64 bytes); EdDSA: the 32-byte key.
    pub public_key: Vec<u8>,
    pub flags: u8,
}

#[derive(Clone, Debug)]
pub struct GetAssertion {
    pub rp_id: String,
    pub client_data_hash: [u8; 32],
    pub key_handle: Vec<u8>,
    pub up: bool,
    /// Ask for built-in user verification.
    pub uv: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assertion {
    /// authenticatorData flags (0x01 UP, 0x04 UV).
    pub flags: u8,
    pub counter: u32,
    /// DER (ES256) or 64 bytes (EdDSA), over authenticatorData ‖ clientDataHash.
    pub signature: Vec<u8>,
}

#[derive(Clone, Debug)]
pub struct ResidentCredential {
    pub rp_id: String,
    pub cose_alg: i32,
    pub id: Vec<u8>,
    pub public_key: Vec<u8>,
    pub user_id: Vec<u8>,
    pub user_name: String,
    pub cred_protect: i32,
}
