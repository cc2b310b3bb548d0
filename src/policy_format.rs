//! Formatting the `.cedar` files of a policy directory with the Cedar
//! project's own formatter, which refuses any output whose policies differ
//! from the input. The files are those the server loads, read by the policy
//! store's one reader (symlinks followed, hidden entries skipped).

use std::path::{Path, PathBuf};

use cedar_policy::PolicySet;
use cedar_policy_formatter::{Config, policies_str_to_pretty};

use crate::engine::{self, SourceProblem};
use crate::policy_store::{FileKind, LoadError, SourceFile, read_dir};

/// What formatting found, file by file (paths relative to the directory).
#[derive(Debug, Default)]
pub(crate) struct FormatReport {
    /// Files already formatted.
    pub unchanged: Vec<String>,
    /// Files that were (or, with `check`, would be) rewritten.
    pub changed: Vec<String>,
    /// With `check`, the unified diff formatting would apply to each file of
    /// `changed`. INVARIANT: empty, or one per `changed` entry, in its order.
    pub diffs: Vec<String>,
    /// Files that could not be parsed or written, with where and why.
    pub failed: Vec<SourceProblem>,
}

/// Formats every `.cedar` file under `root`. With `check`, nothing is
/// written. A directory that cannot be read is an error; a file that does
/// not format is reported and left alone.
pub(crate) fn format_dir(
    root: &Path,
    check: bool,
    line_width: usize,
) -> Result<FormatReport, LoadError> {
    let config = Config {
        line_width,
        indent_width: 2,
    };
    let mut report = FormatReport::default();
    let sources = read_dir(root)?;
    for file in sources
        .files()
        .iter()
        .filter(|f| f.kind() == FileKind::Policies)
    {
        match format_file(file, check, &config) {
            Ok(Some(formatted)) => {
                if check {
                    report
                        .diffs
                        .push(unified_diff(file.rel(), file.text(), &formatted));
                }
                report.changed.push(file.rel().to_string());
            }
            Ok(None) => report.unchanged.push(file.rel().to_string()),
            Err(problem) => report.failed.push(problem),
        }
    }
    Ok(report)
}

/// The unified diff from `before` to `after` of the file at `rel`, with
/// `git diff`'s `a/` and `b/` headers, so `patch -p1` in the directory applies it.
fn unified_diff(rel: &str, before: &str, after: &str) -> String {
    similar::TextDiff::from_lines(before, after)
        .unified_diff()
        .context_radius(3)
        .header(&format!("a/{rel}"), &format!("b/{rel}"))
        .to_string()
}

/// The formatted text when it differs from the file's (and, unless `check`,
/// was written).
fn format_file(
    file: &SourceFile,
    check: bool,
    config: &Config,
) -> Result<Option<String>, SourceProblem> {
    let text = file.text();
    let formatted = policies_str_to_pretty(text, config).map_err(|e| {
        // Cedar's parser locates a syntax error; the formatter does not.
        match first_parse_error(text) {
            Some(problem) => SourceProblem {
                file: file.rel().to_string(),
                ..problem
            },
            None => unlocated(file, format!("{e:?}")),
        }
    })?;
    if formatted == text {
        return Ok(None);
    }
    if !check {
        // Through the symlink: the file it names is the one the loader reads.
        write_atomic(file.target(), &formatted)
            .map_err(|e| unlocated(file, format!("cannot write: {e}")))?;
    }
    Ok(Some(formatted))
}

fn unlocated(file: &SourceFile, message: String) -> SourceProblem {
    SourceProblem {
        file: file.rel().to_string(),
        line: 0,
        column: 0,
        message,
    }
}

/// The first parse error of a policy file, located as the loader locates it.
fn first_parse_error(text: &str) -> Option<SourceProblem> {
    let errors = text.parse::<PolicySet>().err()?;
    let first = errors.iter().next()?;
    Some(engine::problem("", text, first))
}

/// Write then rename, so a server watching the directory never reads half a
/// file. The temporary file is hidden, so no reader of the directory sees it.
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

    use super::*;

    const MESSY: &str = "permit(principal,action,resource);\n";

    fn write(dir: &Path, rel: &str, text: &str) -> PathBuf {
        let path = dir.join(rel);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[cfg(unix)]
    #[test]
    fn follows_a_symlinked_file_and_keeps_the_link() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = write(outside.path(), "real.cedar", MESSY);
        let link = dir.path().join("linked.cedar");
        std::os::unix::fs::symlink(&target, &link).unwrap();

        let report = format_dir(dir.path(), true, 80).unwrap();
        assert_eq!(report.changed, ["linked.cedar"]);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), MESSY);

        let report = format_dir(dir.path(), false, 80).unwrap();
        assert_eq!(report.changed, ["linked.cedar"]);
        assert_ne!(std::fs::read_to_string(&target).unwrap(), MESSY);
        assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
        let report = format_dir(dir.path(), true, 80).unwrap();
        assert_eq!(report.unchanged, ["linked.cedar"]);
    }

    #[test]
    fn skips_hidden_files_as_the_loader_does() {
        let dir = tempfile::tempdir().unwrap();
        let hidden = write(dir.path(), ".scratch.cedar", MESSY);
        write(dir.path(), "p.cedar", MESSY);
        let report = format_dir(dir.path(), false, 80).unwrap();
        assert_eq!(report.changed, ["p.cedar"]);
        assert_eq!(std::fs::read_to_string(&hidden).unwrap(), MESSY);
    }

    #[test]
    fn refuses_a_file_over_the_size_limit() {
        let dir = tempfile::tempdir().unwrap();
        let big = write(dir.path(), "big.cedar", "");
        std::fs::File::options()
            .write(true)
            .open(&big)
            .unwrap()
            .set_len(crate::policy_store::MAX_FILE_BYTES + 1)
            .unwrap();
        let Err(LoadError::Io { path, source }) = format_dir(dir.path(), true, 80) else {
            panic!("a file over the limit was formatted");
        };
        assert!(path.ends_with("big.cedar"));
        assert_eq!(source.kind(), std::io::ErrorKind::FileTooLarge);
    }

    #[test]
    fn locates_a_syntax_error() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "bad.cedar",
            "permit(principal,\n  action resource);\n",
        );
        let report = format_dir(dir.path(), true, 80).unwrap();
        assert_eq!(report.failed.len(), 1);
        let p = &report.failed[0];
        assert_eq!((p.file.as_str(), p.line), ("bad.cedar", 2), "{p:?}");
    }
}
