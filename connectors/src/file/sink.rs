//! An append-only JSON-lines file, shared by every writer of it.
//!
//! The partitions of a pipeline, and the executors of both regions, may append to one
//! file. Each append holds an exclusive lock on the file (`flock`, released when its
//! process dies), so that no writer ever sees another's batch half-written: a last line
//! without its newline, found under the lock, is what a writer killed mid-write or a
//! failed write left, and it is cut off before the next batch lands.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

pub struct JsonlFile {
    file: File,
}

impl JsonlFile {
    /// Opens `path` for appending, creating it and its folder, and cuts off a last line
    /// cut short by a crash, so that the file holds only whole records.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        let sink = JsonlFile { file };
        sink.locked(|file| whole_length(file).map(drop))?;
        Ok(sink)
    }

    /// Appends whole records. A write that fails part-way (a full disk) is cut back to the
    /// last whole record before the error is returned, or at the latest before the next
    /// append (by whichever writer comes next), so that a retried batch never lands after
    /// a torn line.
    pub fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.locked(|mut file| {
            let whole = whole_length(file)?;
            file.write_all(bytes).inspect_err(|_| {
                let _ = file.set_len(whole);
            })
        })
    }

    /// Runs `f` holding the file's exclusive lock.
    fn locked<T>(&self, f: impl FnOnce(&File) -> std::io::Result<T>) -> std::io::Result<T> {
        self.file.lock()?;
        let result = f(&self.file);
        let unlocked = self.file.unlock();
        let value = result?;
        unlocked?;
        Ok(value)
    }
}

/// The length of the file up to and including its last newline, once whatever follows
/// that newline (a torn line) is cut off. Called under the lock.
fn whole_length(file: &File) -> std::io::Result<u64> {
    let len = file.metadata()?.len();
    let mut last = [0u8; 1];
    if len == 0 || (file.read_exact_at(&mut last, len - 1).is_ok() && last[0] == b'\n') {
        return Ok(len);
    }
    let mut end = len;
    let mut chunk = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let n = (end - start) as usize;
        file.read_exact_at(&mut chunk[..n], start)?;
        if let Some(i) = chunk[..n].iter().rposition(|b| *b == b'\n') {
            let whole = start + i as u64 + 1;
            if whole != len {
                file.set_len(whole)?;
            }
            return Ok(whole);
        }
        end = start;
    }
    if len != 0 {
        file.set_len(0)?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_cut_short_is_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out/sink.jsonl");
        let mut file = JsonlFile::open(&path).unwrap();
        file.append(b"{\"a\":1}\n{\"b\":").unwrap();
        drop(file);
        let mut file = JsonlFile::open(&path).unwrap();
        file.append(b"{\"c\":3}\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"a\":1}\n{\"c\":3}\n"
        );
    }

    #[test]
    fn writers_of_one_file_opening_and_appending_at_once_keep_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scored.jsonl");
        let record = |writer: usize, i: usize| {
            format!(
                "{{\"writer\":{writer},\"i\":{i},\"pad\":\"{}\"}}\n",
                "x".repeat(400)
            )
        };
        // Large batches, so that a write in progress is often seen half-done; writers that
        // open the file while another appends, as partitions starting beside running ones do.
        let writers: Vec<_> = (0..4)
            .map(|writer| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for round in 0..25 {
                        let mut file = JsonlFile::open(&path).unwrap();
                        for batch in 0..4 {
                            let from = (round * 4 + batch) * 50;
                            let bytes: String =
                                (from..from + 50).map(|i| record(writer, i)).collect();
                            file.append(bytes.as_bytes()).unwrap();
                        }
                    }
                })
            })
            .collect();
        writers.into_iter().for_each(|w| w.join().unwrap());
        let text = std::fs::read_to_string(&path).unwrap();
        let mut seen = std::collections::HashSet::new();
        for line in text.lines() {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("a whole line: {e}: {line:.60}"));
            assert!(
                seen.insert((value["writer"].as_u64(), value["i"].as_u64())),
                "{line:.60}"
            );
        }
        assert_eq!(
            seen.len(),
            4 * 25 * 4 * 50,
            "every record of every writer, once"
        );
    }
}
