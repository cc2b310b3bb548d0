//! Policy tests: named requests and the decisions they must get, kept beside
//! the policies in `*.test.yaml` / `*.test.json` files.
//!
//! `cedar-pdp test` runs them against a directory loaded exactly as the
//! server loads it; with `reload.require_tests`, the policy store runs them
//! on every new set before it goes live. Both evaluate each case through
//! [`crate::authorizer::authorize`], the path every server request takes.
//!
//! - [`spec`]: the file format, and reading a directory's test files.
//! - [`run`](mod@run): evaluating cases and comparing what they got.
//! - [`junit`]: the results as JUnit XML.
//! - [`command`]: the `cedar-pdp test` subcommand.

pub mod command;
pub mod junit;
pub mod run;
pub mod spec;

pub use command::{TestArgs, main};
pub use run::{CaseResult, FileResult, Report, run};
pub use spec::{Case, Expect, ExpectedError, Suite, TestFile, is_test_file, read_suite};
