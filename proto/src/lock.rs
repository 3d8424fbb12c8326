//! Exclusive locks on a directory's contents, held for a process's life.
//!
//! Two processes on one checkpoint directory (or one coordinator data directory) would
//! both read and write the same positions: every record twice, or a torn Raft log. The
//! first takes an advisory lock (`flock`) on a lock file in the directory and writes its
//! pid there; a second one is refused at start with that pid. The kernel drops the lock
//! when its holder exits, however it exits, so a `kill -9` leaves nothing to clean up.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// A held lock; dropped, it is released.
#[derive(Debug)]
pub struct DirLock {
    path: PathBuf,
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{} is held by process {pid}: another process runs on this directory", path.display())]
    Held { path: PathBuf, pid: String },
    #[error("cannot lock {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl DirLock {
    /// Takes the lock file `name` in `dir` (which must exist), without waiting.
    pub fn acquire(dir: &Path, name: &str) -> Result<DirLock, LockError> {
        let path = dir.join(name);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = match pid.trim() {
                    "" => "unknown".to_string(),
                    pid => pid.to_string(),
                };
                return Err(LockError::Held { path, pid });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(DirLock { path, _file: file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_until_it_lets_go() {
        let dir = std::env::temp_dir().join(format!("mirador-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = DirLock::acquire(&dir, "test.lock").unwrap();
        // flock locks belong to an open file: a second open, even in this process, is
        // refused as another process would be.
        let error = DirLock::acquire(&dir, "test.lock").unwrap_err();
        assert!(
            matches!(&error, LockError::Held { pid, .. } if *pid == std::process::id().to_string()),
            "{error}"
        );
        assert!(error.to_string().contains("test.lock"), "{error}");
        drop(first);
        DirLock::acquire(&dir, "test.lock").expect("free once dropped");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
