//! Sinks and the writer loop.
//!
//! The file sink rotates itself rather than through `file-rotate`: that
//! crate drops writes silently when it cannot reopen the file, and never
//! syncs a file before rotating it away. Here every write error reaches the
//! writer (and is counted), and the writer rotates between lines, so a
//! file ends with a checkpoint of its last record.
//!
//! The writer links each record into the chain in the order it writes
//! them, gathers lines while the queue has more, and hands them to the sink
//! when it is momentarily empty. The chain head is made durable (a signed
//! checkpoint with a key, the file fsynced, then the `.head` file written
//! and fsynced) every `checkpoint_interval` when records came, at rotation
//! and at shutdown.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::chain::{self, Body, Chain, Resumed, Signer};
use super::export::Feed;
use super::fsync;
use super::{DecisionLogError, Queued};

/// Where the writer puts lines; `sync` makes what was written durable.
pub(super) trait Sink: Write + Send {
    fn sync(&mut self) -> io::Result<()>;

    /// Whether the sink should rotate before taking a line, with `pending`
    /// bytes still to come.
    fn is_full(&self, _pending: usize) -> bool {
        false
    }

    /// Starts a new file; see [`RotatingFile`].
    fn rotate(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// Where the chain head is kept durably, beside the file.
    fn head_file(&self) -> Option<PathBuf> {
        None
    }

    /// Where side files go, beside the file.
    fn side_dir(&self) -> Option<PathBuf> {
        None
    }

    /// Whether nothing was written to the file at hand: it needs its start.
    fn is_empty(&self) -> bool {
        false
    }

    /// Counts side-file bytes against the file that names them, so a log
    /// and its side files rotate together.
    fn charge(&mut self, _bytes: u64) {}
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
    fn shift(&mut self) -> io::Result<()> {
        fsync::file(&self.file)?;
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
        fsync::dir(&self.path)?;
        self.prune_side_files();
        Ok(())
    }

    /// Removes the side files no kept file names. Each file names only side
    /// files touched since it started (the writer touches a side file the
    /// first time a file names it), so those last touched before the oldest
    /// kept file started are named by no kept file. A clock stepped back
    /// while the writer runs could prune one early; `replay` names the
    /// record it leaves unreplayable.
    fn prune_side_files(&self) {
        let oldest = (1..=self.max_files)
            .rev()
            .map(|n| self.numbered(n))
            .chain(std::iter::once(self.path.clone()))
            .find(|p| p.exists());
        let started = oldest.and_then(|p| chain::started_at(&p));
        let (Some(started), Some(dir)) = (started, self.side_dir()) else {
            return;
        };
        // Side files' mtimes are set from the same clock, after the start
        // line of the file that names them took its time.
        let cutoff = started;
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let mut removed = 0u64;
        for entry in entries.flatten() {
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < cutoff);
            if stale && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::debug!(removed, dir = %dir.display(), "decision log side files no kept file names were removed");
        }
    }
}

fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Sink for RotatingFile {
    fn sync(&mut self) -> io::Result<()> {
        fsync::file(&self.file)
    }

    fn is_full(&self, pending: usize) -> bool {
        self.written.saturating_add(pending as u64) > self.max_bytes
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.shift()
    }

    fn head_file(&self) -> Option<PathBuf> {
        Some(chain::head_path(&self.path))
    }

    fn side_dir(&self) -> Option<PathBuf> {
        let mut dir = self.path.as_os_str().to_os_string();
        dir.push(super::SIDE_DIR_SUFFIX);
        Some(PathBuf::from(dir))
    }

    fn is_empty(&self) -> bool {
        self.written == 0
    }

    fn charge(&mut self, bytes: u64) {
        self.written = self.written.saturating_add(bytes);
    }
}

fn now() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

/// How many bytes of lines the writer gathers before it writes them.
const BATCH_BYTES: usize = 64 * 1024;

/// The writer thread's state: the sink, the chain's end, and the lines
/// not yet handed to the sink.
pub(super) struct Writer {
    sink: Box<dyn Sink>,
    chain: Chain,
    signer: Option<Signer>,
    interval: Duration,
    buf: Vec<u8>,
    /// Records in `buf`.
    buffered: u64,
    /// Records handed to the sink.
    written: u64,
    /// The last line is a checkpoint of the chain's head.
    covered: bool,
    /// Records were written since the sink was last synced.
    dirty: bool,
    /// Errors are logged once per run of failures.
    failing: bool,
    /// A write failed, perhaps mid-line: the next write starts a new line.
    torn: bool,
    /// Side files known to exist, so each is checked for once.
    stored: HashSet<String>,
    /// Where written lines are offered for export, if anywhere.
    export: Option<Feed>,
    /// The log's instance, which every mark names.
    instance: String,
    /// The file at hand has no start line yet.
    needs_start: bool,
    /// Records linked but not written since the last gap mark: the first
    /// seq, and the head after the last.
    lost: Option<(u64, chain::Head)>,
    /// The lines in `buf`, for `export`: offered once the sink took them,
    /// so an exported record is always one the log holds.
    exporting: Vec<Vec<u8>>,
}

impl Writer {
    /// A writer appending to `sink`, continuing the chain from `resumed`.
    pub(super) fn new(
        sink: Box<dyn Sink>,
        resumed: Resumed,
        signer: Option<Signer>,
        interval: Duration,
        export: Option<Feed>,
        instance: String,
    ) -> Self {
        Self {
            needs_start: sink.is_empty(),
            instance,
            lost: None,
            sink,
            chain: Chain::new(resumed.head),
            signer,
            interval,
            buf: Vec::with_capacity(BATCH_BYTES * 2),
            buffered: 0,
            written: 0,
            covered: resumed.covered,
            dirty: false,
            failing: false,
            torn: false,
            stored: HashSet::new(),
            export,
            exporting: Vec::new(),
        }
    }

    /// Writes queued records until every sender is gone; see the module
    /// docs. Returns the records written, or why the end did not reach
    /// the sink.
    pub(super) fn drain(
        mut self,
        rx: &Receiver<Queued>,
        dropped: &AtomicU64,
    ) -> Result<u64, (u64, io::Error)> {
        let mut next_sync = Instant::now() + self.interval;
        loop {
            let wait = next_sync.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(first) => {
                    let mut next = Some(first);
                    while let Some(queued) = next {
                        self.append(&queued.body, dropped);
                        drop(queued);
                        if self.buf.len() >= BATCH_BYTES {
                            let _ = self.flush(dropped);
                        }
                        next = rx.try_recv().ok();
                    }
                    let _ = self.flush(dropped);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if Instant::now() >= next_sync {
                self.sync_point(dropped);
                next_sync = Instant::now() + self.interval;
            }
        }
        self.finish(dropped)
    }

    /// Links `body` into the chain and buffers its line, rotating first
    /// when the file is full.
    fn append(&mut self, body: &Body, dropped: &AtomicU64) {
        if self.sink.is_full(self.buf.len()) {
            self.rotate(dropped);
        }
        self.marks();
        for (digest, bytes) in &body.side {
            self.store(digest, bytes);
        }
        let line = self.chain.link(body);
        self.buf.extend_from_slice(line);
        if self.export.is_some() {
            self.exporting.push(line.to_vec());
        }
        self.buffered += 1;
        self.covered = false;
        self.dirty = true;
    }

    /// Writes a side file, once: durably, before any record names it is.
    /// A failure is logged; `replay` names the record it leaves unreplayable.
    fn store(&mut self, digest: &str, bytes: &[u8]) {
        if self.stored.contains(digest) {
            return;
        }
        let Some(dir) = self.sink.side_dir() else {
            return;
        };
        let path = dir.join(format!("{digest}.json"));
        let written = (|| {
            if path.exists() {
                // Named again: it lives as long as the file at hand.
                return File::options()
                    .append(true)
                    .open(&path)?
                    .set_modified(SystemTime::now())
                    .map(|()| 0);
            }
            std::fs::create_dir_all(&dir)?;
            let tmp = dir.join(format!(".{digest}.tmp"));
            let mut file = File::create(&tmp)?;
            file.write_all(bytes)?;
            // The writer's clock, not the file system's coarser one: what
            // pruning compares with start lines.
            file.set_modified(SystemTime::now())?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            fsync::dir(&path)?;
            Ok(bytes.len() as u64)
        })();
        match written {
            Ok(bytes) => {
                self.sink.charge(bytes);
                // Bounded: past this many, files are checked for again.
                if self.stored.len() >= 65_536 {
                    self.stored.clear();
                }
                self.stored.insert(digest.to_string());
            }
            Err(e) => tracing::error!(file = %path.display(), "decision log side file failed: {e}"),
        }
    }

    /// Buffers a signed checkpoint of the head, unless one is already last.
    fn checkpoint(&mut self) {
        if self.signer.is_none() || self.covered || self.chain.head().seq == 0 {
            return;
        }
        self.marks();
        let Some(signer) = &self.signer else {
            return;
        };
        let line = signer.checkpoint(self.chain.head(), &now(), &self.instance);
        self.push_mark(line);
        self.covered = true;
    }

    /// Buffers the marks owed before the next line: the file's start, then
    /// a gap for records linked but never written.
    fn marks(&mut self) {
        if self.needs_start {
            let head = self.chain.head();
            let body = serde_json::json!({
                "prev_seq": head.seq, "prev_hash": head.hash,
                "instance": self.instance, "timestamp": now(),
            });
            let line = chain::mark_line(self.signer.as_ref(), chain::START, body);
            self.push_mark(line);
            self.needs_start = false;
        }
        if let Some((first, last)) = self.lost.take() {
            let body = serde_json::json!({
                "first_seq": first, "last_seq": last.seq, "hash": last.hash,
                "instance": self.instance, "timestamp": now(),
            });
            let line = chain::mark_line(self.signer.as_ref(), chain::GAP, body);
            self.push_mark(line);
        }
    }

    fn push_mark(&mut self, line: Vec<u8>) {
        self.buf.extend_from_slice(&line);
        if self.export.is_some() {
            self.exporting.push(line);
        }
    }

    /// Hands the buffered lines to the sink. Records that do not reach it
    /// are counted as dropped, never lost silently.
    fn flush(&mut self, dropped: &AtomicU64) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let sink = &mut self.sink;
        let torn = self.torn;
        let result = (|| {
            if torn {
                sink.write_all(b"\n")?;
            }
            sink.write_all(&self.buf)?;
            sink.flush()
        })();
        match &result {
            Ok(()) => {
                self.written += self.buffered;
                self.failing = false;
                self.torn = false;
                if let Some(feed) = &self.export {
                    for line in self.exporting.drain(..) {
                        feed.offer(line);
                    }
                }
            }
            Err(e) => {
                // Lines the log does not hold are not shipped either.
                self.exporting.clear();
                dropped.fetch_add(self.buffered, Ordering::Relaxed);
                // The chain linked them: a gap mark will say they are gone
                // (and that the torn line before it is not a record).
                let head = self.chain.head().clone();
                let first = self
                    .lost
                    .as_ref()
                    .map_or(head.seq + 1 - self.buffered, |(first, _)| *first);
                self.lost = Some((first, head));
                // A start line that did not reach the file is owed again.
                self.needs_start = self.sink.is_empty();
                self.torn = true;
                if !self.failing {
                    self.failing = true;
                    tracing::error!("decision log write failed: {e}");
                }
            }
        }
        self.buf.clear();
        self.buffered = 0;
        result
    }

    /// Makes the head durable: a checkpoint (with a key), the lines, an
    /// fsync, and the `.head` file. Only when records came since the last.
    fn sync_point(&mut self, dropped: &AtomicU64) {
        if !self.dirty {
            return;
        }
        self.checkpoint();
        if let Err(e) = self.flush(dropped).and_then(|()| self.sync_head()) {
            tracing::error!("decision log sync failed: {e}");
        }
        self.dirty = false;
    }

    /// fsyncs the sink, then records the head beside it.
    fn sync_head(&mut self) -> io::Result<()> {
        self.sink.sync()?;
        match self.sink.head_file() {
            Some(path) => chain::write_head(&path, self.chain.head(), &self.instance),
            None => Ok(()),
        }
    }

    /// Ends the full file with a checkpoint, syncs it and starts the next.
    fn rotate(&mut self, dropped: &AtomicU64) {
        self.checkpoint();
        let rotated = self
            .flush(dropped)
            .and_then(|()| self.sink.rotate())
            .and_then(|()| self.sync_head());
        match rotated {
            Ok(()) => {
                self.dirty = false;
                self.needs_start = true;
                // Each file touches the side files it names.
                self.stored.clear();
            }
            // The records go on into the file at hand.
            Err(e) => tracing::error!("decision log rotation failed: {e}"),
        }
    }

    /// The last checkpoint, flush and sync.
    fn finish(mut self, dropped: &AtomicU64) -> Result<u64, (u64, io::Error)> {
        self.checkpoint();
        let end = self.flush(dropped).and_then(|()| self.sync_head());
        let written = self.written;
        end.map(|()| written).map_err(|e| (written, e))
    }
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
        for line in [
            "one-------\n",
            "two-------\n",
            "three-----\n",
            "four------\n",
        ] {
            if f.is_full(0) {
                f.rotate().unwrap();
            }
            f.write_all(line.as_bytes()).unwrap();
        }
        f.sync().unwrap();
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(path.clone()), "four------\n");
        assert_eq!(read(f.numbered(1)), "three-----\n");
        assert_eq!(read(f.numbered(2)), "two-------\n");
        assert!(!f.numbered(3).exists(), "only max_files are kept");

        // Reopening appends, and counts what is already there.
        let again = RotatingFile::open(&path, 10, 2).unwrap();
        assert_eq!(again.written, 11);
        assert!(again.is_full(0));
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
        let (tx, rx) = crossbeam_channel::unbounded();
        let room = std::sync::Arc::new(tokio::sync::Semaphore::new(1));
        let bytes = super::super::Bytes::new(1024);
        tx.send(Queued {
            body: Body::of(&super::super::record::tests::record(serde_json::json!({}))).unwrap(),
            _room: room.try_acquire_owned().unwrap(),
            _bytes: bytes.charge(3, false).unwrap(),
        })
        .unwrap();
        drop(tx);
        let dropped = AtomicU64::new(0);
        let resumed = Resumed::genesis();
        let writer = Writer::new(
            Box::new(Unsyncable(Vec::new())),
            resumed,
            None,
            Duration::from_secs(10),
            None,
            "test".into(),
        );
        let (written, e) = writer.drain(&rx, &dropped).unwrap_err();
        assert_eq!(written, 1);
        assert!(e.to_string().contains("disk gone"));
        // The line's room was given back once written.
        assert_eq!(bytes.used.load(Ordering::Relaxed), 0);
    }

    /// Takes lines until told to fail.
    struct Flaky(Vec<u8>, std::sync::Arc<std::sync::atomic::AtomicBool>);

    impl Write for Flaky {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.1.load(Ordering::Relaxed) {
                return Err(io::Error::other("disk full"));
            }
            self.0.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Sink for Flaky {
        fn sync(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn only_lines_the_sink_took_are_offered_for_export() {
        let (feed, lines, counters) = super::super::export::Feed::channel(16);
        let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let resumed = Resumed::genesis();
        let mut writer = Writer::new(
            Box::new(Flaky(Vec::new(), failing.clone())),
            resumed,
            None,
            Duration::from_secs(10),
            Some(feed),
            "test".into(),
        );
        let dropped = AtomicU64::new(0);
        let body = |id: &str| {
            let mut r = super::super::record::tests::record(serde_json::json!({}));
            r.decision_id = id.into();
            Body::of(&r).unwrap()
        };
        writer.append(&body("kept"), &dropped);
        writer.flush(&dropped).unwrap();
        failing.store(true, Ordering::Relaxed);
        writer.append(&body("lost"), &dropped);
        assert!(writer.flush(&dropped).is_err());
        assert_eq!(dropped.load(Ordering::Relaxed), 1);
        let offered: Vec<Vec<u8>> = lines.try_iter().collect();
        assert_eq!(offered.len(), 1, "the lost line is not shipped");
        let line = String::from_utf8(offered[0].clone()).unwrap();
        assert!(line.contains("\"decision_id\":\"kept\""), "{line}");
        assert!(
            line.contains("\"seq\":1") && line.ends_with("}\n"),
            "{line}"
        );
        assert_eq!(counters.dropped.load(Ordering::Relaxed), 0);
    }

    /// Takes part of a write and fails, when told to: a torn line.
    struct Tearing(
        std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
        std::sync::Arc<std::sync::atomic::AtomicBool>,
    );

    impl Write for Tearing {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut taken = self.0.lock().unwrap();
            if self.1.swap(false, Ordering::Relaxed) {
                taken.extend_from_slice(&buf[..buf.len() / 2]);
                return Err(io::Error::other("disk full"));
            }
            taken.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Sink for Tearing {
        fn sync(&mut self) -> io::Result<()> {
            Ok(())
        }
        fn is_empty(&self) -> bool {
            self.0.lock().unwrap().is_empty()
        }
    }

    /// Records lost to a failed write leave a torn line and a gap mark
    /// after it; `log verify` goes on past the gap, and names it.
    #[test]
    fn a_torn_write_leaves_a_gap_mark_that_verify_accounts_for() {
        let taken = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let tear = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut writer = Writer::new(
            Box::new(Tearing(taken.clone(), tear.clone())),
            Resumed::genesis(),
            None,
            Duration::from_secs(10),
            None,
            "test".into(),
        );
        let dropped = AtomicU64::new(0);
        let body = |n: u64| {
            let mut r = super::super::record::tests::record(serde_json::json!({}));
            r.decision_id = format!("d{n}");
            Body::of(&r).unwrap()
        };
        for n in 1..=3 {
            writer.append(&body(n), &dropped);
        }
        writer.flush(&dropped).unwrap();
        for n in 4..=6 {
            writer.append(&body(n), &dropped);
        }
        tear.store(true, Ordering::Relaxed);
        assert!(writer.flush(&dropped).is_err());
        for n in 7..=8 {
            writer.append(&body(n), &dropped);
        }
        writer.flush(&dropped).unwrap();
        let bytes = taken.lock().unwrap().clone();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.log");
        std::fs::write(&path, &bytes).unwrap();
        let options = super::super::verify::VerifyOptions {
            allow_unsigned_tail: true,
            ..Default::default()
        };
        let verified = super::super::verify::verify(std::slice::from_ref(&path), &options).unwrap();
        assert_eq!(verified.last_seq, 8);
        // Seq 4 may have reached the file whole before the tear.
        let (first, last) = verified.gaps[0];
        assert!((4..=5).contains(&first) && last == 6, "{:?}", verified.gaps);
        // Without the gap mark, the torn line is a problem.
        let text = String::from_utf8(bytes).unwrap();
        let unmarked: String = text
            .lines()
            .filter(|l| !l.starts_with("{\"gap\":"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&path, unmarked).unwrap();
        assert!(super::super::verify::verify(&[path], &options).is_err());
    }

    #[test]
    fn rotation_errors_reach_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.log");
        let mut f = RotatingFile::open(&path, 1, 1).unwrap();
        f.write_all(b"first line\n").unwrap();
        // The directory is gone: rotation cannot rename, and says so.
        drop(dir);
        assert!(f.is_full(0));
        assert!(f.rotate().is_err());
    }
}
