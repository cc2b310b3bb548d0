//! A panic on the decision path (screening, evaluation, the record) becomes
//! an `internal` refusal of exactly the call, batch item or stream item it
//! happened in: recorded and counted like any refusal, never an allow, a
//! lost answer, a whole batch failed, or a stream ended early.

use std::panic::{AssertUnwindSafe, catch_unwind};

use super::error::DecisionError;
use super::request::DecisionRequest;
use super::verified::Verified;
use super::{Answer, At, Pipeline, Refusal, new_decision_id};
use crate::decision_log::Slots;

impl Pipeline {
    /// Runs `work` (one request's decision, recorded in `at`'s slots) and
    /// turns a panic in it into a recorded `internal` refusal of
    /// `request_id`, as batch item `item` when it is one.
    pub(super) fn guarded(
        &self,
        request_id: &str,
        item: Option<usize>,
        mut at: At<'_, '_>,
        work: impl FnOnce(Option<&mut Slots>) -> Answer,
    ) -> Answer {
        let slots = at.slots.as_deref_mut();
        match catch_unwind(AssertUnwindSafe(|| work(slots))) {
            Ok(answer) => answer,
            Err(payload) => Err(self.panicked(request_id, item, payload.as_ref(), at)),
        }
    }

    /// Records and counts a request whose decision panicked. The record
    /// keeps only its id: what panicked may have been the rest of it.
    pub(super) fn panicked(
        &self,
        request_id: &str,
        item: Option<usize>,
        payload: &(dyn std::any::Any + Send),
        at: At<'_, '_>,
    ) -> Box<Refusal> {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".to_string());
        tracing::error!(request_id, panic = %what, "a decision panicked; refused as `internal`");
        let mut error = DecisionError::internal(format!("the decision panicked: {what}"));
        if let Some(i) = item {
            error = error.in_item(i, at.call.api.items());
        }
        let req = DecisionRequest {
            request_id: request_id.to_string(),
            ..DecisionRequest::default()
        };
        let (call, snapshot) = (at.call, at.snapshot);
        let recorded = catch_unwind(AssertUnwindSafe(|| {
            self.refuse_screened(req, &Verified::NONE, error.clone(), at)
        }));
        recorded.unwrap_or_else(|_| {
            // Recording panicked too: the refusal is still counted.
            self.metrics.request_error(
                call.api.as_str(),
                error.code().label(),
                error.reason.as_str(),
            );
            self.refusal(error, new_decision_id(), request_id.to_string(), snapshot)
        })
    }
}

/// The request id whose decision panics, in this crate's unit tests.
#[cfg(test)]
pub(super) const PANICS: &str = "test: this decision panics";

/// Panics for [`PANICS`]: the stand-in for a bug on the decision path.
#[cfg(test)]
#[expect(clippy::panic, reason = "the test's stand-in for a bug")]
pub(super) fn inject(request_id: &str) {
    if request_id == PANICS {
        panic!("injected by a test");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::config::{DecisionLogConfig, LogSink};
    use crate::decision_log::DecisionLog;
    use crate::identity::PeerFacts;
    use crate::metrics::Metrics;
    use crate::pipeline::{Admission, Call, PipelineOptions, Reason, Uid};
    use crate::policy_store::{LoadOptions, PolicyStore};

    fn uid(t: &str, id: &str) -> Option<Uid> {
        Some(Uid {
            type_name: t.into(),
            id: id.into(),
        })
    }

    fn request(id: &str) -> DecisionRequest {
        DecisionRequest {
            principal: uid("User", "alice"),
            action: uid("Action", "read"),
            resource: uid("Doc", "d"),
            request_id: id.into(),
            ..DecisionRequest::default()
        }
    }

    /// Unary on the async worker and on the pool, and a batch: the item
    /// that panics is an `internal` refusal, recorded and counted; the
    /// others are decided.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_refuses_exactly_its_item_and_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("p.cedar"),
            "permit (principal, action, resource);",
        )
        .unwrap();
        let store = Arc::new(PolicyStore::new(dir.path(), LoadOptions::default()));
        store.reload().unwrap();
        let log_path = dir.path().join("decisions.log");
        let (log, writer) = DecisionLog::start(&DecisionLogConfig {
            enabled: true,
            sink: LogSink::File,
            path: log_path.clone(),
            ..DecisionLogConfig::default()
        })
        .unwrap();
        let metrics = Arc::new(Metrics::new());
        let admission = Admission::Acquire {
            timeout: Duration::from_secs(5),
        };
        let call = || Call::new(PeerFacts::default(), None, tracing::Span::none());
        for inline in [4096, 0] {
            let opts = PipelineOptions {
                inline_evaluation_bytes: inline,
                ..PipelineOptions::default()
            };
            let pipeline = Pipeline::new(store.clone(), opts, metrics.clone())
                .unwrap()
                .with_decision_log(log.clone());
            let refused = pipeline
                .authorize(Ok(request(PANICS)), &call(), admission)
                .await
                .expect_err("a panic is never an answer");
            assert_eq!(refused.error.reason, Reason::Internal);
            assert!(!refused.decision_id.is_empty());
            let allowed = pipeline
                .authorize(Ok(request("fine")), &call(), admission)
                .await
                .unwrap();
            assert!(allowed.decision.allow);

            let items = ["a", PANICS, "c"].map(|id| Ok(request(id))).to_vec();
            let answers = pipeline
                .authorize_batch(items, Ok(Vec::new()), &call(), Duration::from_secs(5))
                .await
                .expect("the batch is answered, item by item");
            assert_eq!(answers.len(), 3);
            assert!(answers[0].as_ref().unwrap().decision.allow);
            let item = answers[1].as_ref().unwrap_err();
            assert_eq!(item.error.reason, Reason::Internal);
            assert_eq!(item.error.field.as_deref(), Some("requests[1]"));
            assert!(answers[2].as_ref().unwrap().decision.allow);
        }
        drop(log);
        writer.finish(Duration::from_secs(10)).await.unwrap();
        let records: Vec<serde_json::Value> = std::fs::read_to_string(&log_path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|r: &serde_json::Value| r.get("request_id").is_some())
            .collect();
        let panicked: Vec<_> = records
            .iter()
            .filter(|r| r["request_id"] == PANICS)
            .collect();
        assert_eq!(panicked.len(), 4, "one record per panicked call or item");
        for r in panicked {
            assert_eq!(r["error"]["reason"], "internal", "{r}");
        }
        let scrape = metrics.encode();
        assert!(
            scrape
                .lines()
                .any(|l| l.starts_with("cedar_pdp_request_errors_total")
                    && l.contains("reason=\"internal\"")
                    && l.ends_with(" 4")),
            "{scrape}"
        );
    }
}
