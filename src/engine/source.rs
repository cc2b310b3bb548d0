//! Where a problem in a policy input is, as `file:line:column`, found from
//! Cedar's diagnostics. The engine names its inputs; it does not read them.

use std::fmt;

use miette::Diagnostic;

/// One problem in one file, located as `file:line:column`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceProblem {
    /// Path relative to the policy directory.
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for SourceProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// A list of problems, one per line.
pub struct Problems<'a>(pub &'a [SourceProblem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Locates a diagnostic in `text` (the contents of `file`) by its first
/// labelled span.
pub fn problem(file: &str, text: &str, diag: &(impl Diagnostic + 'static)) -> SourceProblem {
    let offset = first_offset(diag);
    let (line, column) = offset.map_or((1, 1), |o| line_column(text, o));
    SourceProblem {
        file: file.to_string(),
        line,
        column,
        message: render_diagnostic(diag),
    }
}

fn first_offset(diag: &(impl Diagnostic + ?Sized)) -> Option<usize> {
    if let Some(label) = diag.labels().and_then(|mut l| l.next()) {
        return Some(label.offset());
    }
    diag.related()
        .and_then(|mut related| related.find_map(|d| d.labels().and_then(|mut l| l.next())))
        .map(|label| label.offset())
}

/// A diagnostic, its related messages and its help, as one line.
pub(crate) fn render_diagnostic(diag: &(impl Diagnostic + 'static)) -> String {
    let mut message = crate::error_chain::chain(diag);
    if let Some(related) = diag.related() {
        for r in related {
            message.push_str("; ");
            message.push_str(&r.to_string());
        }
    }
    if let Some(help) = diag.help() {
        message.push_str(&format!(" (help: {help})"));
    }
    message
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_counts_from_one() {
        let text = "ab\ncd\né f";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 4), (2, 2));
        assert_eq!(line_column(text, 9), (3, 3));
    }
}
