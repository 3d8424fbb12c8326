//! A JSON-lines file, read once from the checkpoint to the end: a bounded source.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;
use mirador_actors::{Position, Source, SourceBatch, StageError};

use crate::event::RawRecord;

pub struct FileSource {
    path: PathBuf,
    reader: BufReader<File>,
    /// Byte offset of the next line.
    offset: u64,
    batch_records: usize,
    /// Lines longer than this are cut here; the decoder rejects them as oversized.
    max_line_bytes: usize,
    /// The file is finished: a last line without its newline is read as it is.
    complete: bool,
    /// The warning about an unfinished last line was given.
    warned: bool,
}

impl FileSource {
    /// Opens `path` at the byte offset of `resume` (the partition's checkpoint). A
    /// checkpoint past the end of the file (the file was replaced or truncated) is an error:
    /// reading from there would silently skip the new content.
    pub fn open(
        path: &Path,
        batch_records: usize,
        max_line_bytes: usize,
        complete: bool,
        resume: Option<Position>,
    ) -> Result<Self, StageError> {
        let fatal = |e: std::io::Error| StageError::Fatal(format!("{}: {e}", path.display()));
        let file = File::open(path).map_err(fatal)?;
        let length = file.metadata().map_err(fatal)?.len();
        let offset = resume.map_or(0, |p| p.offset);
        if offset > length {
            return Err(StageError::Fatal(format!(
                "{}: the checkpoint is at byte {offset}, past the end of the file ({length} \
                 bytes): the file was replaced or truncated. Delete the checkpoint to read it \
                 from the start",
                path.display()
            )));
        }
        let mut reader = BufReader::with_capacity(256 * 1024, file);
        reader.seek(SeekFrom::Start(offset)).map_err(fatal)?;
        Ok(FileSource {
            path: path.to_path_buf(),
            reader,
            offset,
            batch_records,
            max_line_bytes,
            complete,
            warned: false,
        })
    }

    /// Reads one line into `line`, keeping at most `max_line_bytes + 1` bytes of it so that
    /// a huge line cannot take unbounded memory. Returns the bytes consumed (0 at the end)
    /// and whether the line ended with its newline.
    fn read_line(&mut self, line: &mut Vec<u8>) -> std::io::Result<(u64, bool)> {
        let mut consumed = 0u64;
        loop {
            let buf = self.reader.fill_buf()?;
            if buf.is_empty() {
                return Ok((consumed, false));
            }
            let (chunk, done) = match memchr(buf) {
                Some(i) => (&buf[..=i], true),
                None => (buf, false),
            };
            let room = (self.max_line_bytes + 1).saturating_sub(line.len());
            line.extend_from_slice(&chunk[..chunk.len().min(room)]);
            let n = chunk.len();
            self.reader.consume(n);
            consumed += n as u64;
            if done {
                return Ok((consumed, true));
            }
        }
    }
}

fn unavailable(path: &Path, e: std::io::Error) -> StageError {
    StageError::Unavailable {
        service: "file",
        message: format!("{}: {e}", path.display()),
    }
}

fn memchr(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|b| *b == b'\n')
}

impl Source for FileSource {
    type Out = RawRecord;

    fn name(&self) -> &'static str {
        "source"
    }

    // Reads from the page cache synchronously: a batch is a few hundred microseconds of
    // work, cheaper than handing it to a blocking thread.
    async fn next_batch(&mut self) -> Result<Option<SourceBatch<RawRecord>>, StageError> {
        let mut lines = Vec::with_capacity(self.batch_records);
        let mut line = Vec::new();
        while lines.len() < self.batch_records {
            line.clear();
            let start = self.offset;
            let (consumed, terminated) = self
                .read_line(&mut line)
                .map_err(|e| unavailable(&self.path, e))?;
            if consumed == 0 {
                break;
            }
            if !terminated && !self.complete {
                // A line still being written: it is read, whole, once its newline comes.
                if !std::mem::replace(&mut self.warned, true) {
                    tracing::warn!(path = %self.path.display(), offset = start,
                        "the last line has no newline yet: left for the next run");
                }
                self.reader
                    .seek(SeekFrom::Start(start))
                    .map_err(|e| unavailable(&self.path, e))?;
                break;
            }
            self.offset += consumed;
            while matches!(line.last(), Some(b'\n' | b'\r')) {
                line.pop();
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            lines.push((start, Bytes::copy_from_slice(&line)));
        }
        if lines.is_empty() {
            return Ok(None);
        }
        let end = Position {
            partition: 0,
            offset: self.offset,
        };
        let read_at = Instant::now();
        let items = lines
            .into_iter()
            .map(|(offset, payload)| RawRecord::read(0, offset, payload, read_at))
            .collect();
        Ok(Some(SourceBatch { items, end }))
    }
}
