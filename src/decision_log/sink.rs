//! Sinks and the writer loop.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::{ContentLimit, FileRotate};
use tokio::sync::mpsc;

use super::{DecisionLogError, DecisionRecord, Queued};

/// A file that rotates to `path.1`, `path.2`, … once it passes `max_bytes`.
pub(super) fn rotating_file(
    path: &Path,
    max_bytes: usize,
    max_files: usize,
) -> Result<FileRotate<AppendCount>, DecisionLogError> {
    // FileRotate creates the file lazily; open it now so a bad path fails at
    // start-up rather than on the first decision.
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| DecisionLogError::Open {
            path: path.display().to_string(),
            source,
        })?;
    Ok(FileRotate::new(
        path,
        AppendCount::new(max_files),
        ContentLimit::BytesSurpassed(max_bytes),
        Compression::None,
        None,
    ))
}

/// Writes records as JSON lines until every sender is gone. Flushes whenever
/// the queue is momentarily empty, so lines reach the sink in batches.
pub(super) fn drain(
    mut rx: mpsc::UnboundedReceiver<Queued>,
    sink: Box<dyn Write + Send>,
    dropped: &AtomicU64,
) -> u64 {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, sink);
    let mut written = 0u64;
    let mut failing = false;
    while let Some(first) = rx.blocking_recv().map(Queued::open) {
        let mut next = Some(first);
        while let Some(record) = next {
            match write_line(&mut out, &record) {
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
            next = rx.try_recv().ok().map(Queued::open);
        }
        if let Err(e) = out.flush() {
            tracing::error!("decision log flush failed: {e}");
        } else {
            failing = false;
        }
    }
    let _ = out.flush();
    written
}

fn write_line(out: &mut impl Write, record: &DecisionRecord) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, record)?;
    out.write_all(b"\n")
}
