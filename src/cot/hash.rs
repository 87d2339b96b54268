//! Hashing an artifact tree at disk speed: files in parallel (rayon), each streamed through a
//! large buffer, never read whole.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{ErrorKind, IsTerminal, Read};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};

/// Worker logs that are streamed while the task runs and are never part of the chain of trust.
pub const LIVE_LOGS: [&str; 2] = ["live.log", "live_backing.log"];

/// Read buffer per file: large enough that syscalls vanish next to hashing.
const BUFFER: usize = 1 << 20;

/// Show a progress bar (on a terminal) when the tree is at least this big.
const PROGRESS_BYTES: u64 = 256 << 20;

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
    #[error("{path}: the file name is not UTF-8; artifact names must be UTF-8")]
    NotUtf8 { path: String },
    #[error("artifact directory {path}: {source}; check that it exists and is readable")]
    Root { path: PathBuf, source: std::io::Error },
}

/// One file found under the root: its artifact name (relative, `/`-separated) and real path.
#[derive(Clone, Debug)]
pub struct FileEntry {
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
}

/// Every file under `root` to hash, sorted by name. Live logs are left out, as are the paths
/// in `exclude` (the CoT files themselves when they are written into the tree). Symlinks are
/// followed only while they stay inside `root`.
pub fn collect(root: &Path, exclude: &[PathBuf]) -> Result<Vec<FileEntry>, HashError> {
    let root_real = root.canonicalize().map_err(|source| HashError::Root { path: root.to_path_buf(), source })?;
    if !root_real.is_dir() {
        return Err(HashError::Root {
            path: root.to_path_buf(),
            source: std::io::Error::other("not a directory"),
        });
    }
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(&root_real).follow_links(true).sort_by_file_name() {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => return Err(walk_error(&root_real, e)),
        };
        let rel = entry.path().strip_prefix(&root_real).expect("walkdir stays under its root");
        if rel.as_os_str().is_empty() {
            continue;
        }
        let name = artifact_name(rel)?;
        if entry.path_is_symlink() {
            let target = entry.path().canonicalize().map_err(|source| HashError::BrokenSymlink { path: name.clone(), source })?;
            if !target.starts_with(&root_real) {
                return Err(HashError::SymlinkEscapes { path: name, target });
            }
        }
        let file_type = entry.file_type();
        if file_type.is_dir() {
            continue;
        }
        if !file_type.is_file() {
            return Err(HashError::NotRegular { path: name });
        }
        let file_name = entry.file_name().to_string_lossy();
        if LIVE_LOGS.contains(&file_name.as_ref()) {
            continue;
        }
        if exclude.iter().any(|x| x == entry.path()) {
            continue;
        }
        let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
        files.push(FileEntry { name, path: entry.path().to_path_buf(), size });
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

fn artifact_name(rel: &Path) -> Result<String, HashError> {
    let mut parts = Vec::new();
    for c in rel.components() {
        match c.as_os_str().to_str() {
            Some(s) => parts.push(s),
            None => return Err(HashError::NotUtf8 { path: rel.to_string_lossy().into_owned() }),
        }
    }
    Ok(parts.join("/"))
}

fn walk_error(root: &Path, e: walkdir::Error) -> HashError {
    let path = e.path().map(|p| p.strip_prefix(root).unwrap_or(p).to_string_lossy().into_owned()).unwrap_or_default();
    let is_link = e.path().map(|p| p.symlink_metadata().map(|m| m.file_type().is_symlink()).unwrap_or(false)).unwrap_or(false);
    if e.loop_ancestor().is_some() {
        return HashError::SymlinkLoop { path };
    }
    let source = e.into_io_error().unwrap_or_else(|| std::io::Error::other("directory walk failed"));
    if is_link {
        HashError::BrokenSymlink { path, source }
    } else {
        HashError::Unreadable { path, source }
    }
}

/// Hash one file, streaming. Opening and reading errors name the artifact.
pub fn hash_file(name: &str, path: &Path, algorithms: Algorithms, progress: Option<&ProgressBar>) -> Result<Digests, HashError> {
    hash_file_with(&mut vec![0u8; BUFFER], name, path, algorithms, progress)
}

/// `hash_file` with a caller's buffer, so a worker thread reuses one buffer for many files.
fn hash_file_with(
    buffer: &mut [u8],
    name: &str,
    path: &Path,
    algorithms: Algorithms,
    progress: Option<&ProgressBar>,
) -> Result<Digests, HashError> {
    let unreadable = |source| HashError::Unreadable { path: name.to_string(), source };
    let mut file = File::open(path).map_err(unreadable)?;
    // An open that succeeds on something that is not a regular file (a directory, a FIFO
    // swapped in after the walk) must not hash as empty or block.
    let meta = file.metadata().map_err(unreadable)?;
    if !meta.is_file() {
        if meta.is_dir() {
            return Err(unreadable(std::io::Error::other("is a directory")));
        }
        return Err(HashError::NotRegular { path: name.to_string() });
    }
    let mut sha256 = algorithms.sha256.then(Sha256::new);
    let mut sha512 = algorithms.sha512.then(Sha512::new);
    loop {
        let n = match file.read(buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(unreadable(e)),
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
pub fn hash_all(files: &[FileEntry], algorithms: Algorithms) -> Result<BTreeMap<String, Digests>, HashError> {
    let progress = progress_bar(files);
    let result = files
        .par_iter()
        .map_init(
            || vec![0u8; BUFFER],
            |buffer, f| hash_file_with(buffer, &f.name, &f.path, algorithms, progress.as_ref()).map(|d| (f.name.clone(), d)),
        )
        .collect::<Result<BTreeMap<_, _>, _>>();
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    result
}

/// Collect and hash a tree in one go.
pub fn hash_tree(root: &Path, exclude: &[PathBuf], algorithms: Algorithms) -> Result<BTreeMap<String, Digests>, HashError> {
    hash_all(&collect(root, exclude)?, algorithms)
}

/// A byte-counting bar, only for big trees and only when a person watches stderr.
fn progress_bar(files: &[FileEntry]) -> Option<ProgressBar> {
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
        let map = hash_tree(dir.path(), &[], Algorithms::BOTH).unwrap();
        let names: Vec<&str> = map.keys().map(String::as_str).collect();
        assert_eq!(names, ["public/build/a.bin", "public/logs/certified.log"]);
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
        let d = hash_file("big", &dir.path().join("big"), Algorithms::SHA256, None).unwrap();
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
        // Root can read any mode, so make the read itself fail: a directory opens but cannot be read.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let err = hash_file("public/d", &dir.path().join("d"), Algorithms::SHA256, None).unwrap_err();
        assert!(matches!(err, HashError::Unreadable { .. }));
        assert!(err.to_string().starts_with("public/d: cannot read"), "{err}");
        let err = hash_file("gone", &dir.path().join("gone"), Algorithms::SHA256, None).unwrap_err();
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
}
