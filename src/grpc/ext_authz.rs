//! Envoy's `envoy.service.auth.v3.Authorization/Check`. A `CheckRequest`
//! becomes an `AuthorizeRequest` (the mapping is `[ext_authz]` in the
//! config) and takes the same path as `Authorize`: limits, spans, metrics and
//! the decision log. Every failure answers with a deny: Envoy must never let
//! a request through because the PDP could not decide.

use std::net::IpAddr;
use std::str::FromStr;

use cedar_policy::EntityUid;
use envoy_types::ext_authz::v3::CheckResponseExt;
use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderValueOption, HttpStatus,
    OkHttpResponse,
};
use envoy_types::pb::envoy::config::core::v3::address::Address;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, header_value_option};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::Peer;
use serde_json::{Map, Value as Json, json};
use tonic::{Request, Response, Status};

use super::http_path;
use super::rpc::Facts;
use crate::config::ExtAuthzConfig;
use crate::identity::SpiffeId;
use crate::pipeline::{
    Admission, Context, DecisionRequest, InvalidField, Pipeline, Reason, Rejected, Submitted, Uid,
    span,
};
use crate::policy_store::Snapshot;

use crate::pipeline::{DECISION_ID_HEADER, REVISION_HEADER};

/// The ext_authz service, over the same pipeline as the `Authorizer`.
#[derive(Clone, Debug)]
pub struct ExtAuthzService {
    pipeline: Pipeline,
    mapping: Mapping,
}

impl ExtAuthzService {
    /// Answers `Check` through `pipeline`, mapped by `config`.
    pub fn new(pipeline: Pipeline, config: &ExtAuthzConfig) -> Self {
        let mut mapping = Mapping::from(config);
        // Without issuers an `authorization` header is the upstream's
        // business: reading it would refuse every request that carries one.
        if !pipeline.verifies_tokens() {
            mapping.token_header = None;
        }
        Self { pipeline, mapping }
    }
}

#[derive(Clone, Debug)]
struct Mapping {
    config: ExtAuthzConfig,
    /// Validated with the config, so it parses.
    anonymous: Option<EntityUid>,
    /// The header a subject token comes in, lowercase (Envoy's keys are).
    token_header: Option<String>,
}

impl From<&ExtAuthzConfig> for Mapping {
    fn from(config: &ExtAuthzConfig) -> Self {
        Self {
            anonymous: EntityUid::from_str(&config.anonymous_principal).ok(),
            token_header: Some(config.subject_token_header.to_ascii_lowercase())
                .filter(|h| !h.is_empty()),
            config: config.clone(),
        }
    }
}

fn entity(uid: &Uid) -> Json {
    json!({"__entity": {"type": uid.type_name, "id": uid.id}})
}

fn uid_json(uid: &Uid) -> Json {
    json!({"type": uid.type_name, "id": uid.id})
}

fn spiffe_of(peer: Option<&Peer>, field: &str) -> Result<Option<SpiffeId>, InvalidField> {
    match peer.map(|p| p.principal.as_str()).filter(|p| !p.is_empty()) {
        None => Ok(None),
        Some(principal) => SpiffeId::parse(principal).map(Some).map_err(|e| {
            InvalidField::new(field, format!("`{principal}` is not a SPIFFE ID: {e}"))
        }),
    }
}

impl Mapping {
    /// The documented mapping from a `CheckRequest` to a decision request.
    /// Entities already loaded from disk are used as they are; the others
    /// are built from the request.
    fn to_request(&self, check: &CheckRequest, snapshot: &Snapshot) -> Submitted {
        let request_id = check
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
            .map(|h| h.id.clone())
            .unwrap_or_default();
        self.map(check, snapshot).map_err(|(error, reason)| {
            let request = DecisionRequest {
                request_id,
                ..DecisionRequest::default()
            };
            Box::new(Rejected {
                reason,
                ..Rejected::new(request, error)
            })
        })
    }

    fn map(
        &self,
        check: &CheckRequest,
        snapshot: &Snapshot,
    ) -> Result<DecisionRequest, (InvalidField, Reason)> {
        let invalid = |e: InvalidField| (e, Reason::InvalidRequest);
        let c = &self.config;
        let attrs = check
            .attributes
            .as_ref()
            .ok_or_else(|| invalid(InvalidField::new("attributes", "is required")))?;
        let http = attrs
            .request
            .as_ref()
            .and_then(|r| r.http.as_ref())
            .ok_or_else(|| invalid(InvalidField::new("attributes.request.http", "is required")))?;
        if http.method.is_empty() {
            return Err(invalid(InvalidField::new(
                "attributes.request.http.method",
                "is required",
            )));
        }
        // Envoy sends the request target: the path with its query string.
        let (raw_path, query) = match http.path.split_once('?') {
            Some((p, q)) => (p, q),
            None => (http.path.as_str(), http.query.as_str()),
        };
        let raw_path = raw_path.split('#').next().unwrap_or_default();
        let path = http_path::normalize(raw_path).map_err(|e| {
            let field =
                InvalidField::new("attributes.request.http.path", format!("`{raw_path}` {e}"));
            (field, Reason::InvalidPath)
        })?;
        let host = normalize_host(&http.host).map_err(invalid)?;
        let mut entities = Vec::new();
        let known = |u: &Uid| {
            u.parse("")
                .is_ok_and(|uid| snapshot.engine.entities().get(&uid).is_some())
        };

        let source =
            spiffe_of(attrs.source.as_ref(), "attributes.source.principal").map_err(invalid)?;
        let principal = match source {
            Some(spiffe) => {
                let principal = Uid::new(&c.principal_type, &spiffe.id);
                if !known(&principal) {
                    entities.push(self.workload_entity(&principal, &spiffe));
                }
                principal
            }
            None => {
                let anonymous = self.anonymous.as_ref().ok_or_else(|| {
                    invalid(InvalidField::new(
                        "attributes.source.principal",
                        "is required",
                    ))
                })?;
                Uid::new(
                    anonymous.type_name().to_string(),
                    anonymous.id().unescaped(),
                )
            }
        };

        let destination = spiffe_of(
            attrs.destination.as_ref(),
            "attributes.destination.principal",
        )
        .map_err(invalid)?;
        let service_id = self.service_id(destination.as_ref()).map_err(invalid)?;
        let service = Uid::new(&c.service_type, &service_id);
        let resource_id = expand(
            &c.resource_id,
            &[
                ("host", &host),
                ("path", &path),
                ("method", &http.method),
                ("service", &service_id),
            ],
        );
        let resource = Uid::new(&c.resource_type, resource_id);
        if !known(&resource) {
            entities.push(json!({
                "uid": uid_json(&resource),
                "attrs": {"host": host, "path": path, "service": entity(&service)},
                "parents": [uid_json(&service)],
            }));
        }

        let action_id = c
            .routes
            .iter()
            .find(|r| {
                (r.method.is_empty() || r.method.eq_ignore_ascii_case(&http.method))
                    && path.starts_with(&r.path_prefix)
            })
            .map_or(http.method.as_str(), |r| r.action.as_str());

        let headers: Map<String, Json> = c
            .headers
            .iter()
            .filter_map(|name| http.headers.get(name).map(|v| (name.clone(), json!(v))))
            .collect();
        let extensions: Map<String, Json> = attrs
            .context_extensions
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        let mut context = Map::new();
        context.insert("method".into(), json!(http.method));
        context.insert("path".into(), json!(path));
        context.insert("query".into(), json!(query));
        context.insert("host".into(), json!(host));
        context.insert("headers".into(), Json::Object(headers));
        context.insert(
            "destination".into(),
            json!(destination.as_ref().map_or("", |d| d.id.as_str())),
        );
        context.insert("context_extensions".into(), Json::Object(extensions));
        if let Some(ip) = source_ip(attrs.source.as_ref()) {
            context.insert(
                "source_ip".into(),
                json!({"__extn": {"fn": "ip", "arg": ip.to_string()}}),
            );
        }
        // `Bearer <token>`; any other scheme is not a token of ours.
        let subject_token = self
            .token_header
            .as_ref()
            .and_then(|h| http.headers.get(h))
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| token.trim().to_string())
            })
            .unwrap_or_default();
        Ok(DecisionRequest {
            principal: Some(principal),
            action: Some(Uid::new(&c.action_type, action_id)),
            resource: Some(resource),
            context: Context::Record(context),
            entities,
            subject_token,
            request_id: http.id.clone(),
            ..DecisionRequest::default()
        })
    }

    /// `<namespace>/<service account>` of the destination's SPIFFE ID, else
    /// `default_service`. The `Host` header is the client's to choose, so it
    /// never names the service.
    fn service_id(&self, destination: Option<&SpiffeId>) -> Result<String, InvalidField> {
        match destination {
            Some(d) if !d.namespace.is_empty() => {
                Ok(format!("{}/{}", d.namespace, d.service_account))
            }
            _ if !self.config.default_service.is_empty() => Ok(self.config.default_service.clone()),
            _ => Err(InvalidField::new(
                "attributes.destination.principal",
                "is required to name the service: a SPIFFE ID with `/ns/<namespace>/sa/<service account>`, or set `ext_authz.default_service`",
            )),
        }
    }

    /// A workload named by its SPIFFE ID, in its namespace and trust domain.
    fn workload_entity(&self, principal: &Uid, spiffe: &SpiffeId) -> Json {
        let c = &self.config;
        let trust_domain = Uid::new(&c.trust_domain_type, &spiffe.trust_domain);
        let mut attrs = Map::new();
        attrs.insert("spiffe_id".into(), json!(spiffe.id));
        attrs.insert("trust_domain".into(), entity(&trust_domain));
        let mut parents = vec![uid_json(&trust_domain)];
        if !spiffe.namespace.is_empty() {
            let namespace_id = expand(
                &c.namespace_id,
                &[
                    ("trust_domain", &spiffe.trust_domain),
                    ("namespace", &spiffe.namespace),
                ],
            );
            let namespace = Uid::new(&c.namespace_type, namespace_id);
            attrs.insert("namespace".into(), entity(&namespace));
            attrs.insert("service_account".into(), json!(spiffe.service_account));
            parents.push(uid_json(&namespace));
        }
        json!({"uid": uid_json(principal), "attrs": attrs, "parents": parents})
    }
}

/// Expands the `{name}` placeholders of `template` in one pass: a value
/// that itself holds `{service}` is copied, not expanded again.
fn expand(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let hit = vars.iter().find_map(|(name, value)| {
            let tail = after.strip_prefix(name)?.strip_prefix('}')?;
            Some((*value, tail))
        });
        match hit {
            Some((value, tail)) => {
                out.push_str(value);
                rest = tail;
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The host as one name: lower-case, without its port or a final `.`, so
/// `Admin.Internal.:80` is `admin.internal`. Characters that cannot be in
/// an authority are refused, so a host cannot pose as part of a path.
fn normalize_host(host: &str) -> Result<String, InvalidField> {
    if let Some(bad) = host
        .chars()
        .find(|c| c.is_control() || c.is_whitespace() || "/\\?#@".contains(*c))
    {
        return Err(InvalidField::new(
            "attributes.request.http.host",
            format!(
                "`{}` holds {bad:?}, which cannot be in a host",
                host.escape_debug()
            ),
        ));
    }
    let name = if let Some(rest) = host.strip_prefix('[') {
        // `[::1]:8080` keeps its brackets' contents.
        rest.split(']').next().unwrap_or(rest)
    } else {
        match host.rsplit_once(':') {
            // One colon and digits after it is a port; more colons is a bare
            // IPv6 address, kept whole.
            Some((name, port))
                if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) =>
            {
                name
            }
            _ => host,
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    Ok(name.to_ascii_lowercase())
}

fn source_ip(source: Option<&Peer>) -> Option<IpAddr> {
    match source?.address.as_ref()?.address.as_ref()? {
        Address::SocketAddress(s) => s.address.parse().ok(),
        _ => None,
    }
}

fn header(key: &str, value: &str) -> HeaderValueOption {
    #[allow(deprecated, reason = "`append` is deprecated but still a field")]
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_string(),
            value: value.to_string(),
            raw_value: Vec::new(),
        }),
        append: None,
        append_action: header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        keep_empty_value: false,
    }
}

fn denied(status: u16, headers: Vec<HeaderValueOption>, body: &str) -> CheckResponse {
    let mut response = CheckResponse::with_status(Status::permission_denied(body.trim_end()));
    response.set_http_response(DeniedHttpResponse {
        status: Some(HttpStatus {
            code: i32::from(status),
        }),
        headers,
        body: body.to_string(),
    });
    response
}

#[tonic::async_trait]
impl Authorization for ExtAuthzService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let rpc = Facts::of(&request).start(&self.pipeline, span::authorize(None));
        let snapshot = self.pipeline.store().snapshot();
        let req = match &snapshot {
            Some(snapshot) => self.mapping.to_request(request.get_ref(), snapshot),
            // Refused as not ready by the pipeline.
            None => Ok(DecisionRequest::default()),
        };
        let admission = Admission::Acquire {
            timeout: rpc.timeout,
        };
        let answer = self
            .pipeline
            .authorize_on(snapshot, req, &rpc.call, admission)
            .await;
        Ok(Response::new(match answer {
            Ok(outcome) => {
                let headers = vec![
                    header(DECISION_ID_HEADER, &outcome.decision_id),
                    header(REVISION_HEADER, &outcome.policy_revision),
                ];
                if outcome.decision.allow {
                    let mut ok = CheckResponse::with_status(Status::ok(""));
                    ok.set_http_response(OkHttpResponse {
                        headers,
                        ..Default::default()
                    });
                    ok
                } else {
                    denied(
                        self.mapping.config.deny_status,
                        headers,
                        "access denied by policy\n",
                    )
                }
            }
            // Fail closed: Envoy gets a deny it can apply, not an error it
            // might be configured to let through.
            Err(refusal) => {
                tracing::warn!(
                    reason = refusal.error.reason.as_str(),
                    decision_id = refusal.decision_id,
                    "ext_authz check denied on error: {}",
                    refusal.error.message
                );
                let mut headers = vec![header(DECISION_ID_HEADER, &refusal.decision_id)];
                if !refusal.policy_revision.is_empty() {
                    headers.push(header(REVISION_HEADER, &refusal.policy_revision));
                }
                denied(
                    self.mapping.config.error_status,
                    headers,
                    "authorization error\n",
                )
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn hosts_are_lower_case_without_port() {
        for (host, name) in [
            ("shop.example:8080", "shop.example"),
            ("shop.example", "shop.example"),
            ("Shop.EXAMPLE:443", "shop.example"),
            ("shop.example.", "shop.example"),
            ("shop.example.:80", "shop.example"),
            ("shop.example:", "shop.example"),
            ("[::1]:8080", "::1"),
            ("[::1]", "::1"),
            ("::1", "::1"),
            ("", ""),
        ] {
            assert_eq!(normalize_host(host).unwrap(), name, "{host}");
        }
        for host in ["a/admin", "a\\b", "a?b", "a#b", "user@host", "a b", "a\nb"] {
            assert!(normalize_host(host).is_err(), "{host}");
        }
    }

    #[test]
    fn templates_expand_in_one_pass() {
        let vars = [("host", "{service}"), ("path", "/{path}"), ("service", "s")];
        assert_eq!(expand("{host}{path}", &vars), "{service}/{path}");
        assert_eq!(expand("{service}:{host}", &vars), "s:{service}");
        assert_eq!(expand("{unknown}{service}{", &vars), "{unknown}s{");
        assert_eq!(expand("", &vars), "");
    }
}
