//! A [`Report`] as JUnit XML, for CI systems that show test results.
//!
//! One `<testsuite>` per test file (named by its path), one `<testcase>` per
//! case (`classname` the file, `name` the case), and a `<failure>` whose
//! message is the first mismatch and whose text lists them all.

use quick_junit::{NonSuccessKind, TestCase, TestCaseStatus, TestSuite};

use super::run::Report;

/// The report's name, the `<testsuites name>` attribute.
const REPORT_NAME: &str = "cedar-pdp test";

/// Renders `report` as a JUnit XML document.
pub fn to_xml(report: &Report) -> Result<String, quick_junit::SerializeError> {
    let mut junit = quick_junit::Report::new(REPORT_NAME);
    for file in &report.files {
        let mut suite = TestSuite::new(file.rel.as_str());
        for case in &file.cases {
            let status = if case.passed() {
                TestCaseStatus::success()
            } else {
                let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
                status
                    .set_message(case.mismatches.first().map_or("", String::as_str))
                    .set_type("mismatch")
                    .set_description(format!(
                        "{}:{}: {}\n{}",
                        file.rel,
                        case.line,
                        case.name,
                        case.mismatches.join("\n")
                    ));
                status
            };
            let mut test_case = TestCase::new(case.name.as_str(), status);
            test_case
                .set_classname(file.rel.as_str())
                .set_time(case.elapsed);
            suite.add_test_case(test_case);
        }
        junit.add_test_suite(suite);
    }
    junit.to_string()
}
