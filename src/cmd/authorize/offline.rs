//! `authorize --policies DIR`: one decision with no server, through the
//! pipeline code the server and `cedar-pdp test` use, against the
//! directory loaded as the server would load it.

use std::path::Path;

use super::Answer;
use crate::config::Config;
use crate::grpc::{convert, proto};
use crate::identity::PeerFacts;
use crate::pipeline::{self, PipelineOptions};
use crate::policy_store::{LoadOptions, load_dir};

/// Decides `request` against `dir`, with `config`'s load and pipeline
/// settings. A refusal is an error, as the server's status would be.
pub(super) fn decide(
    dir: &Path,
    config: &Config,
    request: proto::AuthorizeRequest,
) -> Result<Answer, String> {
    let snapshot = load_dir(dir, &LoadOptions::from_config(config))
        .map_err(|e| format!("`{}` does not load: {e}", dir.display()))?;
    let req = convert::decision_request(request)
        .map_err(|r| format!("refused ({}): {}", r.reason.as_str(), r.error))?;
    let opts = PipelineOptions::from_config(config);
    let decision = pipeline::judge_at(&opts, &snapshot, req, &PeerFacts::default(), None)
        .map_err(|e| format!("refused ({}): {}", e.reason.as_str(), e.message))?;
    // The flags carry no delegation chain to be unverified.
    let why = pipeline::why::why(&decision, false);
    Ok(Answer {
        why,
        allow: decision.allow,
        determining_policies: decision.determining_policies,
        errors: decision
            .errors
            .into_iter()
            .map(|e| (e.policy_id, e.message))
            .collect(),
        decision_id: String::new(),
        policy_revision: snapshot.revision.clone(),
    })
}
