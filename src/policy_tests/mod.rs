//! Policy tests: named requests and the decisions they must get, kept beside
//! the policies in `*.test.yaml` / `*.test.json` files.
//!
//! `cedar-pdp test` runs them against a directory loaded exactly as the
//! server loads it; with `reload.require_tests`, the policy store runs them
//! (through the [`gate`]) on every new set before it goes live. Both
//! evaluate each case through the decision pipeline, the path
//! every server request takes.
//!
//! - [`spec`]: the file format, and parsing a directory's test files.
//! - [`run`](mod@run): evaluating cases and comparing what they got.
//! - [`junit`]: the results as JUnit XML.
//! - [`gate`](mod@gate): the reload test gate.

pub mod gate;
pub mod junit;
pub mod run;
pub mod spec;

pub use gate::gate;
pub use run::{CaseResult, FileResult, Report, run};
pub use spec::{Case, Expect, ExpectedError, Suite, TestFile, parse_suite, read_suite};
