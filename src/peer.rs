//! Who is on the other end of an agent connection.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use crate::prompt::Terminal;

/// A connected client process, from SO_PEERCRED and /proc.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PeerInfo {
    pub pid: Option<i32>,
    pub uid: u32,
    /// Resolved executable path, when readable.
    pub exe: Option<PathBuf>,
    /// Command line, joined with spaces.
    pub cmdline: Option<String>,
    /// Parent chain, nearest first: `["git", "zsh"]`.
    pub parents: Vec<String>,
    /// Its controlling terminal, when it has one owned by its uid: PIN prompts are drawn there.
    #[serde(skip)]
    pub terminal: Option<Terminal>,
}

impl PeerInfo {
    /// The peer's credentials (SO_PEERCRED): pid and uid only, without blocking.
    pub fn credentials(stream: &tokio::net::UnixStream) -> std::io::Result<PeerInfo> {
        let cred = stream.peer_cred()?;
        Ok(PeerInfo { pid: cred.pid(), uid: cred.uid(), ..Default::default() })
    }

    /// Add the executable, command line and parent chain from /proc. This can block: reading a
    /// process's command line waits for its memory-map lock, which that process can hold, so
    /// the agent calls it on a blocking thread, never on its event loop.
    pub fn with_process_details(mut self) -> PeerInfo {
        if let Some(pid) = self.pid {
            self.exe = process_exe(pid);
            self.cmdline = process_cmdline(pid);
            self.parents = parent_chain(pid, 8);
            self.terminal = controlling_terminal(pid, self.uid);
        }
        self
    }

    /// Short program name: the executable's file name, or "unknown".
    pub fn program(&self) -> String {
        self.exe
            .as_ref()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "unknown".into())
    }

    /// `ssh <- git <- zsh`
    pub fn chain(&self) -> String {
        std::iter::once(self.program()).chain(self.parents.iter().cloned()).collect::<Vec<_>>().join(" <- ")
    }
}

/// For people: the program name is the peer's to choose, so control and format characters in
/// it are escaped (`crate::text`). [`PeerInfo::program`] and [`PeerInfo::chain`] stay raw for
/// the audit record; escape them where they are shown.
impl fmt::Display for PeerInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let program = self.program();
        let program = crate::text::escape(&program);
        match self.pid {
            Some(pid) => write!(f, "{program} (pid {pid})"),
            None => write!(f, "{program} (pid unknown)"),
        }
    }
}

#[cfg(target_os = "linux")]
fn process_exe(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}

#[cfg(target_os = "linux")]
fn process_cmdline(pid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let parts: Vec<String> =
        raw.split(|b| *b == 0).filter(|p| !p.is_empty()).map(|p| String::from_utf8_lossy(p).into_owned()).collect();
    (!parts.is_empty()).then(|| parts.join(" "))
}

/// Parent process names from /proc/PID/stat, stopping at init.
#[cfg(target_os = "linux")]
fn parent_chain(pid: i32, max: usize) -> Vec<String> {
    parent_pids(pid, max)
        .into_iter()
        .map(|ppid| {
            process_exe(ppid)
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .or_else(|| proc_stat(ppid).map(|(comm, _)| comm))
                .unwrap_or_else(|| format!("pid {ppid}"))
        })
        .collect()
}

/// The pids above `pid`, nearest first, at most `max`, stopping at init.
#[cfg(target_os = "linux")]
fn parent_pids(pid: i32, max: usize) -> Vec<i32> {
    let mut pids = Vec::new();
    let mut current = pid;
    while pids.len() < max {
        let Some(ppid) = proc_stat(current).map(|(_, ppid)| ppid) else { break };
        if ppid <= 1 {
            break;
        }
        pids.push(ppid);
        current = ppid;
    }
    pids
}

/// One process above a peer: its pid, start time (clock ticks after boot, so a reused pid
/// is a different process) and executable.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Ancestor {
    pub pid: i32,
    pub start: u64,
    pub exe: Option<PathBuf>,
}

/// The processes above `pid`, nearest first, stopping at init: where a program sits in the
/// process tree (its terminal's shell, its GUI application). Reads /proc: blocking.
#[cfg(target_os = "linux")]
pub fn ancestry(pid: i32, max: usize) -> Vec<Ancestor> {
    parent_pids(pid, max).into_iter().map(|ppid| Ancestor { pid: ppid, start: start_time(ppid).unwrap_or(0), exe: process_exe(ppid) }).collect()
}

#[cfg(not(target_os = "linux"))]
pub fn ancestry(_pid: i32, _max: usize) -> Vec<Ancestor> {
    Vec::new()
}

/// Field 22 of /proc/PID/stat (`starttime`).
#[cfg(target_os = "linux")]
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = stat.rfind(')')?;
    stat[close + 2..].split_whitespace().nth(19)?.parse().ok()
}

/// (comm, ppid) from /proc/PID/stat; comm may contain spaces and parentheses.
#[cfg(target_os = "linux")]
fn proc_stat(pid: i32) -> Option<(String, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_string();
    let ppid = stat[close + 2..].split_whitespace().nth(1)?.parse().ok()?;
    Some((comm, ppid))
}

/// The controlling terminal of `pid` (from /proc/PID/stat's tty_nr), when it is a terminal
/// device owned by `uid`; its type (TERM) from the environment of the process or a parent.
///
/// Only /proc/PID/stat is read for the device: it stays readable for processes that made
/// themselves non-dumpable (ssh does), whose fd links and environment are hidden.
#[cfg(target_os = "linux")]
pub fn controlling_terminal(pid: i32, uid: u32) -> Option<Terminal> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = stat.rfind(')')?;
    // After the command name: state, ppid, pgrp, session, tty_nr.
    let tty_nr: u64 = stat[close + 2..].split_whitespace().nth(4)?.parse().ok()?;
    if tty_nr == 0 {
        return None;
    }
    let (major, minor) = ((tty_nr >> 8) & 0xfff, (tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00));
    let path = match major {
        136..=143 => PathBuf::from(format!("/dev/pts/{}", (major - 136) * 256 + minor)),
        4 if minor < 64 => PathBuf::from(format!("/dev/tty{minor}")),
        4 => PathBuf::from(format!("/dev/ttyS{}", minor - 64)),
        _ => return None,
    };
    // The name is derived from the number: make sure it is that device, and the user's.
    let meta = std::fs::metadata(&path).ok()?;
    let rdev = meta.rdev();
    let dev_major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let dev_minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    if !meta.file_type().is_char_device() || (dev_major, dev_minor) != (major, minor) || meta.uid() != uid {
        return None;
    }
    Some(Terminal { path, term: terminal_type(pid) })
}

/// TERM from the process's environment, else its nearest parent's that can be read.
#[cfg(target_os = "linux")]
fn terminal_type(pid: i32) -> Option<String> {
    let mut current = pid;
    for _ in 0..8 {
        if let Ok(environ) = std::fs::read(format!("/proc/{current}/environ")) {
            let term = environ.split(|b| *b == 0).find_map(|e| e.strip_prefix(b"TERM=")).map(|t| String::from_utf8_lossy(t).into_owned());
            if let Some(term) = term.filter(|t| !t.is_empty()) {
                return Some(term);
            }
        }
        match proc_stat(current) {
            Some((_, ppid)) if ppid > 1 => current = ppid,
            _ => break,
        }
    }
    None
}

#[cfg(not(target_os = "linux"))]
pub fn controlling_terminal(_pid: i32, _uid: u32) -> Option<Terminal> {
    None
}

#[cfg(not(target_os = "linux"))]
fn process_exe(_pid: i32) -> Option<PathBuf> {
    None
}

#[cfg(not(target_os = "linux"))]
fn process_cmdline(_pid: i32) -> Option<String> {
    None
}

#[cfg(not(target_os = "linux"))]
fn parent_chain(_pid: i32, _max: usize) -> Vec<String> {
    Vec::new()
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn display_escapes_a_hostile_program_name() {
        let peer = PeerInfo { pid: Some(7), exe: Some(PathBuf::from("/tmp/ssh\r\x1b[2Kallow\u{202e}")), ..Default::default() };
        assert_eq!(peer.to_string(), "ssh\\r\\x1b[2Kallow\\u{202e} (pid 7)");
        assert_eq!(peer.program(), "ssh\r\x1b[2Kallow\u{202e}", "raw for the audit record");
    }

    #[test]
    fn ancestry_names_the_parent_by_pid_start_and_executable() {
        let me = std::process::id() as i32;
        let (_, ppid) = proc_stat(me).unwrap();
        let chain = ancestry(me, 8);
        assert_eq!(chain[0].pid, ppid);
        assert!(chain[0].start > 0);
        assert_eq!(chain, ancestry(me, 8), "stable while the processes live");
    }

    #[test]
    fn describes_this_process_and_its_parents() {
        let me = std::process::id() as i32;
        assert!(process_exe(me).is_some());
        assert!(process_cmdline(me).is_some());
        let (_, ppid) = proc_stat(me).unwrap();
        assert!(ppid > 0);
        assert!(parent_chain(me, 8).len() <= 8);
    }

    #[test]
    fn finds_the_controlling_terminal_of_a_process_and_only_the_users() {
        let pty = nix::pty::openpty(None, None).unwrap();
        let slave = std::fs::read_link(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&pty.slave))).unwrap();
        // `setsid --ctty`: a new session whose controlling terminal is its stdin, the pty.
        let mut child = std::process::Command::new("setsid")
            .args(["--ctty", "sleep", "30"])
            .env("TERM", "keytap-test-term")
            .stdin(std::process::Stdio::from(pty.slave))
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let uid = nix::unistd::geteuid().as_raw();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim() != "sleep" {
            assert!(std::time::Instant::now() < deadline, "setsid never ran sleep");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let found = controlling_terminal(pid, uid);
        let other_user = controlling_terminal(pid, uid.wrapping_add(1));
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found, Some(Terminal { path: slave, term: Some("keytap-test-term".into()) }));
        assert_eq!(other_user, None, "a terminal of another uid is never used");
        // A new session without --ctty has no terminal.
        let mut bare = std::process::Command::new("setsid").args(["sleep", "30"]).stdin(std::process::Stdio::null()).spawn().unwrap();
        let pid = bare.id() as i32;
        while std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim() != "sleep" {
            assert!(std::time::Instant::now() < deadline, "setsid never ran sleep");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let none = controlling_terminal(pid, uid);
        let _ = bare.kill();
        let _ = bare.wait();
        assert_eq!(none, None);
    }
}
