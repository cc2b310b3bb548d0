//! Sinks and the writer loop.
//!
//! The file sink rotates by itself rather than through `file-rotate`: that
//! crate drops writes silently when it cannot reopen the file, and never
//! syncs a file before rotating it away. Here every write error reaches the
//! writer (and is counted), and a file is fsynced, with its directory, at
//! rotation and at shutdown.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use super::{DecisionLogError, Queued};

/// Where the writer puts lines; `sync` makes what was written durable.
pub(super) trait Sink: Write + Send {
    fn sync(&mut self) -> io::Result<()>;
}

impl Sink for io::Stdout {
    fn sync(&mut self) -> io::Result<()> {
        self.flush()
    }
}

/// A file that rotates to `path.1`, `path.2`, … (`.1` the newest) once it
/// passes `max_bytes`, keeping `max_files` rotated files.
#[derive(Debug)]
pub(super) struct RotatingFile {
    path: PathBuf,
    file: File,
    written: u64,
    /// Whether the last write ended a line: rotation waits for one, so a
    /// short write never splits a record across two files.
    at_line_end: bool,
    max_bytes: u64,
    max_files: usize,
}

impl RotatingFile {
    /// Opens (or creates) `path` for appending, so a bad path fails at
    /// start-up rather than on the first decision.
    pub(super) fn open(
        path: &Path,
        max_bytes: usize,
        max_files: usize,
    ) -> Result<Self, DecisionLogError> {
        let open_error = |source| DecisionLogError::Open {
            path: path.display().to_string(),
            source,
        };
        let file = append(path).map_err(open_error)?;
        let written = file.metadata().map_err(open_error)?.len();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            written,
            at_line_end: true,
            max_bytes: max_bytes as u64,
            max_files,
        })
    }

    fn numbered(&self, n: usize) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// Syncs the full file, shifts the numbered ones up (dropping the
    /// oldest), and starts an empty one.
    fn rotate(&mut self) -> io::Result<()> {
        durable(&self.file)?;
        if self.max_files == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            match std::fs::remove_file(self.numbered(self.max_files)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            for n in (1..self.max_files).rev() {
                match std::fs::rename(self.numbered(n), self.numbered(n + 1)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(&self.path, self.numbered(1))?;
        }
        self.file = append(&self.path)?;
        self.written = 0;
        sync_dir(&self.path)
    }
}

fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Makes renames and new files in `path`'s directory durable.
fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written > self.max_bytes && self.at_line_end {
            self.rotate()?;
        }
        // Up to the end of the line that passes the limit: the next write
        // starts the next file, however many lines the buffer holds.
        let room =
            usize::try_from(self.max_bytes.saturating_sub(self.written)).unwrap_or(usize::MAX);
        let end = match buf.get(room..) {
            Some(rest) if !rest.is_empty() => rest
                .iter()
                .position(|b| *b == b'\n')
                .map_or(buf.len(), |i| room + i + 1),
            _ => buf.len(),
        };
        let n = self.file.write(&buf[..end])?;
        self.written += n as u64;
        self.at_line_end = buf[..n].last().is_none_or(|b| *b == b'\n');
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Sink for RotatingFile {
    fn sync(&mut self) -> io::Result<()> {
        durable(&self.file)
    }
}

/// fsync; a file that cannot be synced (a pipe, a character device)
/// has nothing to make durable.
fn durable(file: &File) -> io::Result<()> {
    match file.sync_all() {
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => Ok(()),
        other => other,
    }
}

/// Writes queued lines until every sender is gone. Flushes whenever the
/// queue is momentarily empty, so lines reach the sink in batches; at the
/// end flushes and syncs, and returns the lines written, or why the end
/// did not reach the sink.
pub(super) fn drain(
    mut rx: mpsc::UnboundedReceiver<Queued>,
    sink: Box<dyn Sink>,
    dropped: &AtomicU64,
) -> Result<u64, (u64, io::Error)> {
    let mut out = io::BufWriter::with_capacity(64 * 1024, sink);
    let mut written = 0u64;
    let mut failing = false;
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some(queued) = next {
            match out.write_all(&queued.line) {
                Ok(()) => written += 1,
                // A record that cannot be written is counted, never lost silently.
                Err(e) => {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    if !failing {
                        failing = true;
                        tracing::error!("decision log write failed: {e}");
                    }
                }
            }
            drop(queued);
            next = rx.try_recv().ok();
        }
        if let Err(e) = out.flush() {
            tracing::error!("decision log flush failed: {e}");
        } else {
            failing = false;
        }
    }
    let end = out.flush().and_then(|()| out.get_mut().sync());
    end.map(|()| written).map_err(|e| (written, e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn rotation_keeps_max_files_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.log");
        let mut f = RotatingFile::open(&path, 10, 2).unwrap();
        // One buffer of many lines, as the writer's buffer hands them over.
        f.write_all(b"one-------\ntwo-------\nthree-----\nfour------\n")
            .unwrap();
        f.sync().unwrap();
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(path.clone()), "four------\n");
        assert_eq!(read(f.numbered(1)), "three-----\n");
        assert_eq!(read(f.numbered(2)), "two-------\n");
        assert!(!f.numbered(3).exists(), "only max_files are kept");

        // Reopening appends, and counts what is already there.
        let mut again = RotatingFile::open(&path, 10, 2).unwrap();
        assert_eq!(again.written, 11);
        again.write_all(b"five\n").unwrap();
        assert_eq!(read(f.numbered(1)), "four------\n");
    }

    /// A sink that takes lines but cannot make them durable.
    struct Unsyncable(Vec<u8>);

    impl Write for Unsyncable {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Sink for Unsyncable {
        fn sync(&mut self) -> io::Result<()> {
            Err(io::Error::other("disk gone"))
        }
    }

    #[test]
    fn an_end_that_does_not_reach_the_disk_is_an_error() {
        let (tx, rx) = mpsc::unbounded_channel();
        let room = std::sync::Arc::new(tokio::sync::Semaphore::new(1));
        let bytes = super::super::Bytes::new(1024);
        tx.send(Queued {
            line: b"{}\n".to_vec(),
            _room: room.try_acquire_owned().unwrap(),
            _bytes: bytes.charge(3, false).unwrap(),
        })
        .unwrap();
        drop(tx);
        let dropped = AtomicU64::new(0);
        let (written, e) = drain(rx, Box::new(Unsyncable(Vec::new())), &dropped).unwrap_err();
        assert_eq!(written, 1);
        assert!(e.to_string().contains("disk gone"));
        // The line's room was given back once written.
        assert_eq!(bytes.used.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn write_errors_reach_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.log");
        let mut f = RotatingFile::open(&path, 1, 1).unwrap();
        f.write_all(b"first line\n").unwrap();
        // The directory is gone: rotation cannot rename, and says so.
        drop(dir);
        assert!(f.write_all(b"second\n").is_err());
    }
}
