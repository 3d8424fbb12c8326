//! An append-only JSON-lines file.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

pub struct JsonlFile {
    file: File,
    /// Length of the whole records written: where the next batch starts.
    whole: u64,
    /// A failed write may have left part of a batch after `whole`.
    torn: bool,
}

impl JsonlFile {
    /// Opens `path` for appending, creating it and its folder. A last line cut short by a
    /// crash is removed, so that the file holds only whole records.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        let whole = whole_length(&mut file)?;
        if whole != file.metadata()?.len() {
            file.set_len(whole)?;
        }
        Ok(JsonlFile {
            file,
            whole,
            torn: false,
        })
    }

    /// Appends whole records. A write that fails part-way (a full disk) is cut back to the
    /// last whole record before the error is returned, or at the latest before the next
    /// append, so that a retried batch never lands after a torn line.
    pub fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.torn {
            self.file.set_len(self.whole)?;
            self.torn = false;
        }
        match self.file.write_all(bytes) {
            Ok(()) => {
                self.whole += bytes.len() as u64;
                Ok(())
            }
            Err(error) => {
                self.torn = self.file.set_len(self.whole).is_err();
                Err(error)
            }
        }
    }
}

/// Length of the file up to and including its last newline.
fn whole_length(file: &mut File) -> std::io::Result<u64> {
    let len = file.metadata()?.len();
    let mut end = len;
    let mut chunk = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk[..n])?;
        if let Some(i) = chunk[..n].iter().rposition(|b| *b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
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
}
