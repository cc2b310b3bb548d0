//! A named pipe as the decision-log file, full before the server starts:
//! the log writer blocks on its first flush, so calls that need log room
//! wait, holding their in-flight slot, for as long as a test wants.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cedar_pdp::config::{Config, LogSink, OnFull};

/// Linux's `O_NONBLOCK` (the same on x86-64 and aarch64); the crate forbids
/// `unsafe`, and `libc` is not a dependency of the tests.
const O_NONBLOCK: i32 = 0o4000;

/// A named pipe as the decision-log file, full before the server starts, and
/// read by nobody until [`StuckPipe::drain`]. The log writer blocks on its
/// first flush, the queue fills, and the next call that needs more queue room
/// than is left waits in `reserve` while holding its in-flight permit:
/// a call held for as long as the test wants, through the public API alone.
pub struct StuckPipe {
    pub path: PathBuf,
    /// Taken by [`StuckPipe::drain`].
    reader: Option<File>,
}

impl Drop for StuckPipe {
    /// A test that fails while the pipe is stuck must not leave the server's
    /// log writer blocked forever: the runtime would wait for it on drop.
    fn drop(&mut self) {
        if let Some(reader) = self.reader.take() {
            drop(drain_to_eof(reader));
        }
    }
}

impl StuckPipe {
    pub fn new(dir: &Path) -> Self {
        let path = dir.join("decisions.fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success(), "mkfifo failed");
        // Non-blocking, so that opening does not wait for a writer.
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(O_NONBLOCK)
            .open(&path)
            .unwrap();
        let mut writer = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(O_NONBLOCK)
            .open(&path)
            .unwrap();
        // Fill it with blank lines (so the records read back still parse),
        // in pages and then byte by byte.
        let mut filled = 0;
        for chunk in [&[b'\n'; 4096][..], &b"\n"[..]] {
            loop {
                match writer.write(chunk) {
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("filling the pipe: {e}"),
                }
            }
        }
        assert!(filled >= 4096, "the pipe took only {filled} bytes");
        Self {
            path,
            reader: Some(reader),
        }
    }

    /// Reads the pipe on a thread until every writer has closed it (the
    /// server stopped); returns everything read.
    pub fn drain(mut self) -> JoinHandle<Vec<u8>> {
        drain_to_eof(self.reader.take().unwrap())
    }
}

/// Reads `reader` on a thread until every writer has closed the pipe.
fn drain_to_eof(mut reader: File) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = vec![0; 64 * 1024];
        let start = Instant::now();
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return out,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    assert!(
                        start.elapsed() < Duration::from_secs(120),
                        "the pipe never closed"
                    );
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("reading the pipe: {e}"),
            }
        }
    })
}

impl StuckPipe {
    /// `config` with its decision log writing into this pipe, in `block`
    /// mode with room for `queue` records, and limits that let a request
    /// carry the 32 KiB pads that fill the pipe's writer quickly.
    pub fn log_into(&self, config: &mut Config, queue: usize) {
        config.limits.max_string_bytes = 64 * 1024;
        config.limits.max_context_bytes = 128 * 1024;
        config.decision_log.enabled = true;
        config.decision_log.sink = LogSink::File;
        config.decision_log.path = self.path.clone();
        config.decision_log.queue_capacity = queue;
        config.decision_log.on_full = OnFull::Block;
    }
}
