//! Hashing an artifact tree at disk speed: files in parallel (rayon), each streamed through a
//! large buffer, never read whole.
//!
//! Every file is reached from a descriptor of the artifact directory, one path component at a
//! time (`openat` with `O_NOFOLLOW | O_NONBLOCK`), symlinks resolved by keytap itself so that
//! no hop may leave the tree, and only what `fstat` says is a regular file is read: what is
//! hashed is what was opened, not whatever a path names a moment later. A FIFO, socket or
//! device is refused before it is opened, and one swapped in later opens without blocking and
//! is refused by `fstat`.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};

/// The live logs a worker streams while the task runs, at the artifact names Taskcluster
/// gives them. Workers do not list them (generic-worker uploads `live_backing.log` after
/// the chain of trust is made), so `cot sign` leaves them out and `cot verify` tolerates
/// them unlisted; when a document lists one, it is checked like any artifact.
pub const LIVE_LOGS: [&str; 2] = ["public/logs/live.log", "public/logs/live_backing.log"];

/// Read buffer per file: large enough that syscalls vanish next to hashing.
const BUFFER: usize = 1 << 20;

/// Show a progress bar (on a terminal) when the tree is at least this big.
const PROGRESS_BYTES: u64 = 256 << 20;

/// Symlink hops allowed while resolving one name (Linux's own limit is 40).
const MAX_LINK_HOPS: usize = 40;

/// Digests of one artifact, as the chain-of-trust document lists them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digests {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha512: Option<String>,
}

/// Which digests to compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Algorithms {
    pub sha256: bool,
    pub sha512: bool,
}

impl Algorithms {
    pub const SHA256: Algorithms = Algorithms { sha256: true, sha512: false };
    pub const BOTH: Algorithms = Algorithms { sha256: true, sha512: true };
}

/// Why an artifact tree cannot be hashed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("{path}: symlink points outside the artifact directory (to {target}); copy the file into the directory instead of linking to it")]
    SymlinkEscapes { path: String, target: PathBuf },
    #[error("{path}: broken symlink ({source}); remove it or point it at a file inside the artifact directory")]
    BrokenSymlink { path: String, source: std::io::Error },
    #[error("{path}: cannot read ({source}); fix its permissions or remove it from the artifact directory")]
    Unreadable { path: String, source: std::io::Error },
    #[error("{path}: not a regular file (a FIFO, socket or device); remove it from the artifact directory")]
    NotRegular { path: String },
    #[error("{path}: symlink loop; remove the link that points back up the tree")]
    SymlinkLoop { path: String },
    #[error("{path}: changed while it was being read (replaced by a link or another file); make sure nothing writes the artifact directory during signing or verification")]
    Changed { path: String },
    #[error("{path}: the file name is not UTF-8; artifact names must be UTF-8")]
    NotUtf8 { path: String },
    #[error("artifact directory {path}: {source}; check that it exists and is readable")]
    Root { path: PathBuf, source: std::io::Error },
}

/// One file found under the root: its artifact name (relative, `/`-separated) and size.
#[derive(Clone, Debug)]
pub struct FileEntry {
    pub name: String,
    pub size: u64,
}

/// A descriptor this module owns (nix 0.29 hands out raw descriptors); closed on drop.
struct Fd(RawFd);

impl Drop for Fd {
    fn drop(&mut self) {
        let _ = nix::unistd::close(self.0);
    }
}

fn io_err(e: Errno) -> std::io::Error {
    std::io::Error::from(e)
}

fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
}

/// An artifact directory, held open; every name is resolved from its descriptor.
pub struct Tree {
    root: Fd,
    /// The directory as given (made absolute) and as canonicalised: absolute symlink targets
    /// under either stay inside.
    prefixes: Vec<PathBuf>,
    root_real: PathBuf,
}

impl Tree {
    /// Open the artifact directory (the directory itself may be reached through links: the
    /// operator chose it).
    pub fn open(root: &Path) -> Result<Tree, HashError> {
        let root_err = |source| HashError::Root { path: root.to_path_buf(), source };
        let root_real = root.canonicalize().map_err(root_err)?;
        let fd = nix::fcntl::open(&root_real, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| match e {
                Errno::ENOTDIR => root_err(std::io::Error::other("not a directory")),
                e => root_err(io_err(e)),
            })?;
        let given = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
        Ok(Tree { root: Fd(fd), prefixes: vec![root_real.clone(), given], root_real })
    }

    /// Resolve `name` (`/`-separated, relative to the root) to an open regular file or
    /// directory and its `fstat`. Symlinks are followed only while every hop stays inside.
    fn resolve(&self, name: &str) -> Result<(Fd, FileStat), HashError> {
        let err_path = || name.to_string();
        // Directories opened below the root, innermost last; empty means "at the root".
        let mut stack: Vec<Fd> = Vec::new();
        let mut todo: Vec<Vec<u8>> = name.split('/').rev().map(|c| c.as_bytes().to_vec()).collect();
        let mut hops = 0;
        loop {
            let dirfd = stack.last().map_or(self.root.0, |f| f.0);
            let Some(comp) = todo.pop() else {
                // The name ends at a directory (e.g. a link to "..").
                return self.open_checked(dirfd, b".", None, name, hops > 0);
            };
            match comp.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    if stack.pop().is_none() {
                        return Err(HashError::SymlinkEscapes { path: err_path(), target: PathBuf::from("..") });
                    }
                    continue;
                }
                _ => {}
            }
            let comp_os = OsStr::from_bytes(&comp);
            let lst = nix::sys::stat::fstatat(Some(dirfd), comp_os, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(|e| {
                if hops > 0 {
                    HashError::BrokenSymlink { path: err_path(), source: io_err(e) }
                } else {
                    HashError::Unreadable { path: err_path(), source: io_err(e) }
                }
            })?;
            let k = kind(&lst);
            if k == SFlag::S_IFLNK {
                hops += 1;
                if hops > MAX_LINK_HOPS {
                    return Err(HashError::SymlinkLoop { path: err_path() });
                }
                let target = nix::fcntl::readlinkat(Some(dirfd), comp_os)
                    .map_err(|e| HashError::Unreadable { path: err_path(), source: io_err(e) })?;
                let target = PathBuf::from(target);
                let relative: &Path = if target.is_absolute() {
                    // Absolute targets count only under the root; they restart from it.
                    let inside = self.prefixes.iter().find_map(|p| target.strip_prefix(p).ok());
                    match inside {
                        Some(rest) => {
                            stack.clear();
                            rest
                        }
                        None => return Err(HashError::SymlinkEscapes { path: err_path(), target }),
                    }
                } else {
                    &target
                };
                let parts: Vec<Vec<u8>> = relative.as_os_str().as_bytes().split(|b| *b == b'/').map(<[u8]>::to_vec).collect();
                // A target that climbs above the root is refused naming the link's text.
                let climbs_out = {
                    let mut depth = stack.len() as isize;
                    parts.iter().any(|p| {
                        match p.as_slice() {
                            b".." => depth -= 1,
                            b"" | b"." => {}
                            _ => depth += 1,
                        }
                        depth < 0
                    })
                };
                if climbs_out {
                    return Err(HashError::SymlinkEscapes { path: err_path(), target });
                }
                todo.extend(parts.into_iter().rev());
                continue;
            }
            let last = todo.is_empty();
            if k != SFlag::S_IFDIR && (!last || k != SFlag::S_IFREG) {
                if !last {
                    return Err(HashError::Unreadable { path: err_path(), source: io_err(Errno::ENOTDIR) });
                }
                // Never open a FIFO, socket or device: opening can block or have effects.
                return Err(HashError::NotRegular { path: err_path() });
            }
            let (fd, st) = self.open_checked(dirfd, &comp, Some(&lst), name, hops > 0)?;
            if last {
                return Ok((fd, st));
            }
            stack.push(fd);
        }
    }

    /// `openat` one component without following links or blocking, then `fstat` what was
    /// opened: it must be the regular file or directory seen by `lstat` a moment earlier.
    fn open_checked(&self, dirfd: RawFd, comp: &[u8], seen: Option<&FileStat>, name: &str, via_link: bool) -> Result<(Fd, FileStat), HashError> {
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
        let fd = nix::fcntl::openat(Some(dirfd), OsStr::from_bytes(comp), flags, Mode::empty()).map_err(|e| match e {
            Errno::ELOOP => HashError::Changed { path: name.to_string() },
            Errno::ENOENT if via_link => HashError::BrokenSymlink { path: name.to_string(), source: io_err(e) },
            e => HashError::Unreadable { path: name.to_string(), source: io_err(e) },
        })?;
        let fd = Fd(fd);
        let st = nix::sys::stat::fstat(fd.0).map_err(|e| HashError::Unreadable { path: name.to_string(), source: io_err(e) })?;
        let k = kind(&st);
        if k != SFlag::S_IFREG && k != SFlag::S_IFDIR {
            return Err(HashError::NotRegular { path: name.to_string() });
        }
        if let Some(seen) = seen {
            if (seen.st_dev, seen.st_ino) != (st.st_dev, st.st_ino) {
                return Err(HashError::Changed { path: name.to_string() });
            }
        }
        Ok((fd, st))
    }

    /// Every file under the root, sorted by name, except the paths in `exclude` (the CoT
    /// files themselves when they are written into the tree). Directory links are followed
    /// while they stay inside; a link back up the tree is a loop.
    pub fn collect(&self, exclude: &[PathBuf]) -> Result<Vec<FileEntry>, HashError> {
        let root_st = nix::sys::stat::fstat(self.root.0)
            .map_err(|e| HashError::Root { path: self.root_real.clone(), source: io_err(e) })?;
        let mut files = Vec::new();
        let mut ancestors = vec![(root_st.st_dev, root_st.st_ino)];
        self.walk("", self.root.0, &mut ancestors, exclude, &mut files)?;
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(files)
    }

    fn walk(
        &self,
        prefix: &str,
        dirfd: RawFd,
        ancestors: &mut Vec<(u64, u64)>,
        exclude: &[PathBuf],
        files: &mut Vec<FileEntry>,
    ) -> Result<(), HashError> {
        let shown = if prefix.is_empty() { ".".to_string() } else { prefix.to_string() };
        let mut dir = nix::dir::Dir::openat(Some(dirfd), ".", OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| HashError::Unreadable { path: shown.clone(), source: io_err(e) })?;
        let mut names = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(|e| HashError::Unreadable { path: shown.clone(), source: io_err(e) })?;
            let bytes = entry.file_name().to_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            let Ok(text) = std::str::from_utf8(bytes) else {
                let lossy = String::from_utf8_lossy(bytes);
                return Err(HashError::NotUtf8 { path: if prefix.is_empty() { lossy.into_owned() } else { format!("{prefix}/{lossy}") } });
            };
            names.push(text.to_string());
        }
        drop(dir);
        names.sort();
        for n in names {
            let name = if prefix.is_empty() { n } else { format!("{prefix}/{n}") };
            let (fd, st) = self.resolve(&name)?;
            if kind(&st) == SFlag::S_IFDIR {
                let id = (st.st_dev, st.st_ino);
                if ancestors.contains(&id) {
                    return Err(HashError::SymlinkLoop { path: name });
                }
                ancestors.push(id);
                self.walk(&name, fd.0, ancestors, exclude, files)?;
                ancestors.pop();
                continue;
            }
            if exclude.iter().any(|x| *x == self.root_real.join(&name)) {
                continue;
            }
            files.push(FileEntry { name, size: u64::try_from(st.st_size).unwrap_or(0) });
        }
        Ok(())
    }

    /// Hash one file of the tree by its artifact name.
    pub fn hash_file(&self, name: &str, algorithms: Algorithms) -> Result<Digests, HashError> {
        self.hash_with(&mut vec![0u8; BUFFER], name, algorithms, None)
    }

    fn hash_with(&self, buffer: &mut [u8], name: &str, algorithms: Algorithms, progress: Option<&ProgressBar>) -> Result<Digests, HashError> {
        let (fd, st) = self.resolve(name)?;
        if kind(&st) != SFlag::S_IFREG {
            return Err(HashError::Unreadable { path: name.to_string(), source: std::io::Error::other("is a directory") });
        }
        let mut sha256 = algorithms.sha256.then(Sha256::new);
        let mut sha512 = algorithms.sha512.then(Sha512::new);
        loop {
            let n = match nix::unistd::read(fd.0, buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(HashError::Unreadable { path: name.to_string(), source: io_err(e) }),
            };
            if let Some(h) = sha256.as_mut() {
                h.update(&buffer[..n]);
            }
            if let Some(h) = sha512.as_mut() {
                h.update(&buffer[..n]);
            }
            if let Some(p) = progress {
                p.inc(n as u64);
            }
        }
        Ok(Digests {
            sha256: sha256.map(|h| hex::encode(h.finalize())),
            sha512: sha512.map(|h| hex::encode(h.finalize())),
        })
    }

    /// Hash every file in parallel; the first error wins.
    pub fn hash_all(&self, files: &[FileEntry], algorithms: Algorithms) -> Result<BTreeMap<String, Digests>, HashError> {
        let progress = progress_bar(files);
        let result = files
            .par_iter()
            .map_init(
                || vec![0u8; BUFFER],
                |buffer, f| self.hash_with(buffer, &f.name, algorithms, progress.as_ref()).map(|d| (f.name.clone(), d)),
            )
            .collect::<Result<BTreeMap<_, _>, _>>();
        if let Some(p) = progress {
            p.finish_and_clear();
        }
        result
    }
}

/// What `cot sign` lists: every file of the tree except `exclude` and the live logs.
pub fn hash_tree(root: &Path, exclude: &[PathBuf], algorithms: Algorithms) -> Result<BTreeMap<String, Digests>, HashError> {
    let tree = Tree::open(root)?;
    let files: Vec<FileEntry> = tree.collect(exclude)?.into_iter().filter(|f| !LIVE_LOGS.contains(&f.name.as_str())).collect();
    tree.hash_all(&files, algorithms)
}

/// A byte-counting bar, only for big trees and only when a person watches stderr.
fn progress_bar(files: &[FileEntry]) -> Option<ProgressBar> {
    use std::io::IsTerminal;
    let total: u64 = files.iter().map(|f| f.size).sum();
    if total < PROGRESS_BYTES || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template("hashing {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    Some(bar)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, bytes: &[u8]) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }

    #[test]
    fn names_are_relative_with_slashes_and_live_logs_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "public/logs/live.log", b"x");
        write(dir.path(), "public/logs/live_backing.log", b"x");
        write(dir.path(), "public/logs/certified.log", b"log");
        write(dir.path(), "public/build/a.bin", b"abc");
        // Only the live logs at Taskcluster's names are left out; other files called so are not.
        write(dir.path(), "public/build/live.log", b"an artifact");
        write(dir.path(), "live_backing.log", b"an artifact");
        let map = hash_tree(dir.path(), &[], Algorithms::BOTH).unwrap();
        let names: Vec<&str> = map.keys().map(String::as_str).collect();
        assert_eq!(names, ["live_backing.log", "public/build/a.bin", "public/build/live.log", "public/logs/certified.log"]);
        // The tree itself lists them all (a verifier decides about the live logs).
        let tree = Tree::open(dir.path()).unwrap();
        assert_eq!(tree.collect(&[]).unwrap().len(), 6);
        let a = &map["public/build/a.bin"];
        assert_eq!(a.sha256.as_deref(), Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
        assert!(a.sha512.as_deref().unwrap().starts_with("ddaf35a193617aba"));
        let only256 = hash_tree(dir.path(), &[], Algorithms::SHA256).unwrap();
        assert_eq!(only256["public/build/a.bin"].sha512, None);
    }

    #[test]
    fn streaming_matches_one_shot_hash_across_buffer_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(BUFFER * 2 + 12345)).map(|i| (i * 7 % 251) as u8).collect();
        write(dir.path(), "big", &data);
        let d = Tree::open(dir.path()).unwrap().hash_file("big", Algorithms::SHA256).unwrap();
        assert_eq!(d.sha256.unwrap(), hex::encode(Sha256::digest(&data)));
    }

    #[test]
    fn symlinks_inside_are_followed_and_escaping_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        write(dir.path(), "real.txt", b"abc");
        write(outside.path(), "secret", b"s");
        std::os::unix::fs::symlink(dir.path().join("real.txt"), dir.path().join("alias.txt")).unwrap();
        let map = hash_tree(dir.path(), &[], Algorithms::SHA256).unwrap();
        assert_eq!(map["alias.txt"], map["real.txt"]);
        std::os::unix::fs::symlink(outside.path(), dir.path().join("sub")).unwrap();
        let err = hash_tree(dir.path(), &[], Algorithms::SHA256).unwrap_err();
        assert!(matches!(&err, HashError::SymlinkEscapes { path, .. } if path == "sub"), "{err}");
        std::fs::remove_file(dir.path().join("sub")).unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::os::unix::fs::symlink("..", dir.path().join("d/up")).unwrap();
        let err = hash_tree(dir.path(), &[], Algorithms::SHA256).unwrap_err();
        assert!(matches!(&err, HashError::SymlinkLoop { path } if path == "d/up"), "{err}");
    }

    #[test]
    fn unreadable_file_is_an_error_naming_it() {
        // Root can read any mode, so make the read itself fail: a directory is not a file.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("public/d")).unwrap();
        let tree = Tree::open(dir.path()).unwrap();
        let err = tree.hash_file("public/d", Algorithms::SHA256).unwrap_err();
        assert!(matches!(err, HashError::Unreadable { .. }));
        assert!(err.to_string().starts_with("public/d: cannot read"), "{err}");
        let err = tree.hash_file("gone", Algorithms::SHA256).unwrap_err();
        assert!(err.to_string().starts_with("gone: cannot read"), "{err}");
    }

    #[test]
    fn excluded_paths_and_fifos() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "chain-of-trust.json", b"{}");
        write(dir.path(), "a", b"a");
        let real = dir.path().canonicalize().unwrap();
        let map = hash_tree(dir.path(), &[real.join("chain-of-trust.json")], Algorithms::SHA256).unwrap();
        assert_eq!(map.keys().collect::<Vec<_>>(), ["a"]);
        nix::unistd::mkfifo(&dir.path().join("pipe"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = hash_tree(dir.path(), &[], Algorithms::SHA256).unwrap_err();
        assert!(matches!(&err, HashError::NotRegular { path } if path == "pipe"), "{err}");
    }

    #[test]
    fn a_link_chain_through_an_outside_pivot_is_refused() {
        // in/a -> /outside/pivot -> in/real.txt: the final target is inside, a hop is not.
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        write(dir.path(), "real.txt", b"abc");
        std::os::unix::fs::symlink(dir.path().join("real.txt"), outside.path().join("pivot")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("pivot"), dir.path().join("a")).unwrap();
        let err = hash_tree(dir.path(), &[], Algorithms::SHA256).unwrap_err();
        assert!(matches!(&err, HashError::SymlinkEscapes { path, target } if path == "a" && *target == outside.path().join("pivot")), "{err}");
        // The same through a relative link that climbs out and back in.
        std::fs::remove_file(dir.path().join("a")).unwrap();
        let name = dir.path().file_name().unwrap().to_str().unwrap();
        std::os::unix::fs::symlink(format!("../{name}/real.txt"), dir.path().join("b")).unwrap();
        let err = hash_tree(dir.path(), &[], Algorithms::SHA256).unwrap_err();
        assert!(matches!(&err, HashError::SymlinkEscapes { path, .. } if path == "b"), "{err}");
        // Relative links that stay inside, through a directory link, are followed.
        std::fs::remove_file(dir.path().join("b")).unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::os::unix::fs::symlink("d", dir.path().join("dlink")).unwrap();
        std::os::unix::fs::symlink("../real.txt", dir.path().join("d/up.txt")).unwrap();
        let map = hash_tree(dir.path(), &[], Algorithms::SHA256).unwrap();
        assert_eq!(map.keys().collect::<Vec<_>>(), ["d/up.txt", "dlink/up.txt", "real.txt"]);
        assert_eq!(map["dlink/up.txt"], map["real.txt"]);
    }

    #[test]
    fn files_swapped_after_the_walk_are_refused_without_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        write(dir.path(), "f", b"regular when listed");
        write(dir.path(), "g", b"regular when listed");
        write(outside.path(), "secret", b"s");
        let tree = Tree::open(dir.path()).unwrap();
        let files = tree.collect(&[]).unwrap();
        assert_eq!(files.len(), 2);
        // A FIFO in place of f: opening it would block a reader that follows paths.
        std::fs::remove_file(dir.path().join("f")).unwrap();
        nix::unistd::mkfifo(&dir.path().join("f"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let only_f = vec![files[0].clone()];
        std::thread::scope(|scope| {
            scope.spawn(|| tx.send(tree.hash_all(&only_f, Algorithms::SHA256)).unwrap());
            // A generous watchdog: the refusal is immediate; a hang would be the defect.
            let result = rx.recv_timeout(std::time::Duration::from_secs(60));
            if result.is_err() {
                // Unblock the stuck reader so the scope can end, then fail.
                let _ = std::fs::write(dir.path().join("f"), b"");
                panic!("hashing a FIFO blocked");
            }
            let err = result.unwrap().unwrap_err();
            assert!(matches!(&err, HashError::NotRegular { path } if path == "f"), "{err}");
        });
        // A link out of the tree in place of g.
        std::fs::remove_file(dir.path().join("g")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("g")).unwrap();
        let err = tree.hash_all(&files[1..], Algorithms::SHA256).unwrap_err();
        assert!(matches!(&err, HashError::SymlinkEscapes { path, .. } if path == "g"), "{err}");
    }
}
