//! `cedar-pdp fmt`: formats the `.cedar` files of a policy directory with the
//! Cedar project's own formatter, which refuses any output whose policies
//! differ from the input.

use std::path::{Path, PathBuf};

use cedar_policy_formatter::{Config, policies_str_to_pretty};

/// What formatting found, file by file (paths relative to the directory).
#[derive(Debug, Default)]
pub struct FormatReport {
    /// Files already formatted.
    pub unchanged: Vec<String>,
    /// Files that were (or, with `check`, would be) rewritten.
    pub changed: Vec<String>,
    /// Files that could not be read, parsed or written, with why.
    pub failed: Vec<(String, String)>,
}

/// Formats every `.cedar` file under `root`, skipping hidden entries as the
/// loader does. With `check`, nothing is written.
pub fn format_dir(root: &Path, check: bool, line_width: usize) -> FormatReport {
    let config = Config {
        line_width,
        indent_width: 2,
    };
    let mut report = FormatReport::default();
    let walk = walkdir::WalkDir::new(root)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'));
    for entry in walk {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                report
                    .failed
                    .push((root.display().to_string(), e.to_string()));
                continue;
            }
        };
        if !entry.file_type().is_file() || entry.path().extension().is_none_or(|x| x != "cedar") {
            continue;
        }
        let rel = entry
            .path()
            .strip_prefix(root)
            .unwrap_or(entry.path())
            .display()
            .to_string();
        match format_file(entry.path(), check, &config) {
            Ok(true) => report.changed.push(rel),
            Ok(false) => report.unchanged.push(rel),
            Err(e) => report.failed.push((rel, e)),
        }
    }
    report
}

/// `Ok(true)` when the file's formatting differs (and, unless `check`, was
/// rewritten).
fn format_file(path: &Path, check: bool, config: &Config) -> Result<bool, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let formatted = policies_str_to_pretty(&text, config).map_err(|e| format!("{e:?}"))?;
    if formatted == text {
        return Ok(false);
    }
    if !check {
        write_atomic(path, &formatted).map_err(|e| format!("cannot write: {e}"))?;
    }
    Ok(true)
}

/// Write then rename, so a server watching the directory never reads half a file.
fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp: PathBuf = path.with_file_name(format!(".{name}.fmt.tmp"));
    std::fs::write(&tmp, text)?;
    if let Ok(meta) = std::fs::metadata(path) {
        std::fs::set_permissions(&tmp, meta.permissions())?;
    }
    std::fs::rename(&tmp, path)
}
