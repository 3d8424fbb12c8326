//! A file sink that cannot write (a full disk, a file size limit) never leaves a torn line.
//!
//! The limit is this process's file size limit (RLIMIT_FSIZE), the one OS limit a test can
//! set without privileges: a write past it fails part-way with EFBIG, as a write to a full
//! disk fails with ENOSPC. This file holds one test, so no other test shares the limit.

use mirador_connectors::file::JsonlFile;

fn set_file_size_limit(bytes: libc::rlim_t) {
    let limit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain system calls on this process; the signal is ignored so that a write
    // past the limit fails with EFBIG instead of killing the process.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
    }
}

#[test]
fn a_write_that_fails_part_way_is_cut_back_and_the_retry_leaves_whole_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scored.jsonl");
    let mut file = JsonlFile::open(&path).unwrap();
    let record = |i: usize| format!("{{\"event_id\":\"e{i:06}\",\"score\":0.5}}\n");
    let batch = |from: usize| (from..from + 100).map(record).collect::<String>();
    file.append(batch(0).as_bytes()).unwrap();
    let whole = std::fs::metadata(&path).unwrap().len();

    // Room for part of the next batch only.
    set_file_size_limit(whole + 1000);
    let error = file.append(batch(100).as_bytes()).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EFBIG), "{error}");
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        whole,
        "the part of the batch written before the error is removed"
    );

    // The space comes back; the sink retries the same batch.
    set_file_size_limit(libc::RLIM_INFINITY);
    file.append(batch(100).as_bytes()).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 200);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(
            *line,
            record(i).trim_end(),
            "line {i} is whole and in order"
        );
    }
}
