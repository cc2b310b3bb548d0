//! Making writes durable, for the chain's head file and the sink's files
//! alike; both import it, so neither imports the other for it.

use std::fs::File;
use std::io;
use std::path::Path;

/// Makes renames and new files in `path`'s directory durable.
pub(super) fn dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// fsync; a file that cannot be synced (a pipe, a character device)
/// has nothing to make durable.
pub(super) fn file(file: &File) -> io::Result<()> {
    match file.sync_all() {
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => Ok(()),
        other => other,
    }
}
