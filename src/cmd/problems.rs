//! The one printer of source problems, shared by `validate`, `test` and
//! `fmt`: `file:line:col: message` lines that editors and CI annotate.

use std::path::Path;

use crate::engine::SourceProblem;
use crate::policy_store::LoadError;

/// Whether a problem stops the load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Severity {
    Error,
    Warning,
}

/// `p`, with its file as a path under `dir` as the user typed it. Pseudo
/// files such as `<schema>` stay as they are.
pub(super) fn located(dir: &Path, p: &SourceProblem) -> SourceProblem {
    let file = if p.file.starts_with('<') {
        p.file.clone()
    } else {
        dir.join(&p.file).display().to_string()
    };
    SourceProblem { file, ..p.clone() }
}

/// The problems of a load error, located under `dir`; an error that is not
/// about one file is about the directory.
pub(super) fn of_load_error(dir: &Path, e: &LoadError) -> Vec<SourceProblem> {
    match e {
        LoadError::Invalid(problems) => problems.iter().map(|p| located(dir, p)).collect(),
        other => vec![SourceProblem {
            file: dir.display().to_string(),
            line: 0,
            column: 0,
            message: other.to_string(),
        }],
    }
}

/// Prints located problems on stderr, one a line. A problem of no
/// particular line (line 0) prints as `file: message`.
pub(super) fn print(problems: &[SourceProblem], severity: Severity) {
    for p in problems {
        eprintln!("{}", line(p, severity));
    }
}

fn line(p: &SourceProblem, severity: Severity) -> String {
    let tag = match severity {
        Severity::Error => "",
        Severity::Warning => "warning: ",
    };
    if p.line == 0 {
        format!("{}: {tag}{}", p.file, p.message)
    } else {
        format!("{}:{}:{}: {tag}{}", p.file, p.line, p.column, p.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(file: &str, line: usize) -> SourceProblem {
        SourceProblem {
            file: file.to_string(),
            line,
            column: 3,
            message: "bad".to_string(),
        }
    }

    #[test]
    fn lines_name_the_file_as_typed() {
        let dir = Path::new("pol");
        let p = located(dir, &problem("a/b.cedar", 2));
        assert_eq!(line(&p, Severity::Error), "pol/a/b.cedar:2:3: bad");
        assert_eq!(
            line(&p, Severity::Warning),
            "pol/a/b.cedar:2:3: warning: bad"
        );
        let p = located(dir, &problem("<schema>", 1));
        assert_eq!(line(&p, Severity::Error), "<schema>:1:3: bad");
        let e = LoadError::NoPolicies("pol".into());
        let p = &of_load_error(dir, &e)[0];
        assert_eq!(
            line(p, Severity::Error),
            "pol: no `.cedar` policy files under `pol`"
        );
    }
}
