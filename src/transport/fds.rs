//! The open-file limit: every connection is a file descriptor, so the soft
//! limit (often 1024) is raised to the hard one at start, where allowed.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// The soft `RLIMIT_NOFILE` before and after [`raise_nofile`]; `None` is
/// unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NofileLimit {
    pub before: Option<u64>,
    pub after: Option<u64>,
    pub hard: Option<u64>,
}

/// Raises the soft open-file limit to the hard limit. A refusal leaves the
/// limit as it was (`after == before`).
pub fn raise_nofile() -> NofileLimit {
    let limit = getrlimit(Resource::Nofile);
    let before = limit.current;
    let hard = limit.maximum;
    let after = if before == hard {
        before
    } else {
        let raised = Rlimit {
            current: hard,
            maximum: hard,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => getrlimit(Resource::Nofile).current,
            Err(_) => before,
        }
    };
    NofileLimit {
        before,
        after,
        hard,
    }
}
