//! Small helpers shared by the throwaway servers.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};

/// A uniquely named directory under the system temp dir, removed (recursively) on drop.
pub(crate) struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates `$TMPDIR/testkit-<kind>-<pid>-<n>-<nanos>`. The first call in a
    /// process also removes the leftovers of dead processes (see [`sweep_stale`]).
    pub(crate) fn new(kind: &str) -> anyhow::Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        static SWEEP: Once = Once::new();
        let base = std::env::temp_dir();
        SWEEP.call_once(|| sweep_stale(&base));
        for _ in 0..100 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let path = base.join(format!(
                "testkit-{kind}-{}-{n}-{nanos:08x}",
                std::process::id()
            ));
            match fs::create_dir(&path) {
                Ok(()) => return Ok(Self { path }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("creating temp dir {}", path.display()));
                }
            }
        }
        bail!(
            "could not create a unique temp dir under {}",
            base.display()
        )
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Restricts the directory to its owner (`chmod 0700`).
    pub(crate) fn make_private(&self) -> anyhow::Result<()> {
        fs::set_permissions(&self.path, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod 0700 {}", self.path.display()))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        // Best effort: a leftover directory in $TMPDIR is not worth a panic in Drop.
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Removes `testkit-*` dirs in `base` whose creating process is gone (its pid,
/// the third `-`-separated part from the end of the name, has no `/proc` entry). Those are
/// left behind when a test process dies without unwinding (e.g. on Ctrl-C, where
/// the servers themselves exit on the SIGINT they also receive). Linux only; best
/// effort.
fn sweep_stale(base: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(creator_pid) else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// The pid in a `testkit-<kind>-<pid>-<n>-<nanos>` dir name.
fn creator_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("testkit-")?;
    let mut parts = rest.rsplitn(4, '-');
    let (_nanos, _n, pid) = (parts.next()?, parts.next()?, parts.next()?);
    parts.next()?; // the kind
    pid.parse().ok()
}

/// Finds an executable called `name` in the directories of `$PATH`.
pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Whether `path` is a regular file (after following symlinks) with an execute bit.
pub(crate) fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Current length of the file at `path` (0 if it does not exist).
pub(crate) fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

/// The text of `path` from byte `offset` on (lossy UTF-8; empty if unreadable).
pub(crate) fn read_from(path: &Path, offset: u64) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// The last `lines` lines of `text`, indented for use in an error message.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    if all.is_empty() {
        return "    (log is empty)".to_owned();
    }
    all[start..]
        .iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_dir_is_unique_and_removed_on_drop() {
        let a = ScratchDir::new("unit").unwrap();
        let b = ScratchDir::new("unit").unwrap();
        assert_ne!(a.path(), b.path());
        fs::write(a.path().join("f"), b"x").unwrap();
        let path = a.path().to_owned();
        drop(a);
        assert!(!path.exists());
    }

    #[test]
    fn creator_pid_from_dir_name() {
        assert_eq!(creator_pid("testkit-redis-123-4-0a1b2c3d"), Some(123));
        assert_eq!(creator_pid("testkit-postgres-9-0-ffffffff"), Some(9));
        assert_eq!(creator_pid("testkit-redis-x-4-0a1b2c3d"), None);
        assert_eq!(creator_pid("testkit-123-4-0a1b2c3d"), None);
        assert_eq!(creator_pid("other-redis-123-4-0a1b2c3d"), None);
    }

    #[test]
    fn stale_dirs_of_dead_processes_are_swept() {
        let base = ScratchDir::new("unit").unwrap();
        // pid 0 is never a process; our own pid is alive.
        let dead = base.path().join("testkit-redis-0-0-00000000");
        let alive = base
            .path()
            .join(format!("testkit-redis-{}-0-00000000", std::process::id()));
        let unrelated = base.path().join("something-else");
        for dir in [&dead, &alive, &unrelated] {
            fs::create_dir(dir).unwrap();
        }
        sweep_stale(base.path());
        assert!(!dead.exists());
        assert!(alive.exists());
        assert!(unrelated.exists());
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "    b\n    c");
        assert_eq!(tail("", 2), "    (log is empty)");
    }

    #[test]
    fn read_from_offset() {
        let dir = ScratchDir::new("unit").unwrap();
        let f = dir.path().join("log");
        fs::write(&f, b"hello world").unwrap();
        assert_eq!(read_from(&f, 6), "world");
        assert_eq!(read_from(&f, 100), "");
        assert_eq!(file_len(&f), 11);
    }
}
