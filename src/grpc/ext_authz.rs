//! Envoy's `envoy.service.auth.v3.Authorization/Check`. A `CheckRequest`
//! becomes an `AuthorizeRequest` (the mapping is `[ext_authz]` in the
//! config) and takes the same path as `Authorize`: limits, spans, metrics and
//! the decision log. Every failure answers with a deny: Envoy must never let
//! a request through because the PDP could not decide.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::str::FromStr;

use cedar_policy::{EntityId, EntityTypeName, EntityUid};
use envoy_types::ext_authz::v3::CheckResponseExt;
use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderValueOption, HttpStatus,
    OkHttpResponse,
};
use envoy_types::pb::envoy::config::core::v3::address::Address;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, header_value_option};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::Peer;
use tonic::{Request, Response, Status};

use super::convert::InvalidField;
use super::proto::{self, value::Value as V};
use super::service::AuthorizerService;
use super::spans;
use super::status::ApiError;
use crate::config::ExtAuthzConfig;
use crate::identity::{PeerFacts, SpiffeId};
use crate::policy_store::Snapshot;

/// Header carrying the decision id, on allows and denies.
pub const DECISION_ID_HEADER: &str = "x-cedar-decision-id";
/// Header carrying the policy revision that decided.
pub const REVISION_HEADER: &str = "x-cedar-policy-revision";

/// The ext_authz service, sharing the `Authorizer`'s state.
#[derive(Clone, Debug)]
pub struct ExtAuthzService {
    inner: AuthorizerService,
    mapping: Mapping,
}

impl ExtAuthzService {
    /// Answers `Check` with `inner`'s policies, mapped by `config`.
    pub fn new(inner: AuthorizerService, config: &ExtAuthzConfig) -> Self {
        Self {
            inner,
            mapping: Mapping::from(config),
        }
    }
}

#[derive(Clone, Debug)]
struct Mapping {
    config: ExtAuthzConfig,
    /// Validated with the config, so it parses.
    anonymous: Option<EntityUid>,
}

impl From<&ExtAuthzConfig> for Mapping {
    fn from(config: &ExtAuthzConfig) -> Self {
        Self {
            anonymous: EntityUid::from_str(&config.anonymous_principal).ok(),
            config: config.clone(),
        }
    }
}

fn uid(type_name: &str, id: &str) -> proto::EntityUid {
    proto::EntityUid {
        r#type: type_name.to_string(),
        id: id.to_string(),
    }
}

fn value(v: V) -> proto::Value {
    proto::Value { value: Some(v) }
}

fn string(s: &str) -> proto::Value {
    value(V::StringValue(s.to_string()))
}

fn record(fields: impl IntoIterator<Item = (String, proto::Value)>) -> proto::Value {
    value(V::Record(proto::ValueRecord {
        fields: fields.into_iter().collect(),
    }))
}

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::Field(InvalidField {
        field: field.to_string(),
        message: message.into(),
    })
}

fn spiffe_of(peer: Option<&Peer>, field: &str) -> Result<Option<SpiffeId>, ApiError> {
    match peer.map(|p| p.principal.as_str()).filter(|p| !p.is_empty()) {
        None => Ok(None),
        Some(principal) => SpiffeId::parse(principal)
            .map(Some)
            .map_err(|e| invalid(field, format!("`{principal}` is not a SPIFFE ID: {e}"))),
    }
}

impl Mapping {
    /// The documented mapping from a `CheckRequest` to an `AuthorizeRequest`.
    /// Entities already loaded from disk are used as they are; the others
    /// are built from the request.
    fn to_request(
        &self,
        check: &CheckRequest,
        snapshot: &Snapshot,
    ) -> Result<proto::AuthorizeRequest, ApiError> {
        let c = &self.config;
        let attrs = check
            .attributes
            .as_ref()
            .ok_or_else(|| invalid("attributes", "is required"))?;
        let http = attrs
            .request
            .as_ref()
            .and_then(|r| r.http.as_ref())
            .ok_or_else(|| invalid("attributes.request.http", "is required"))?;
        if http.method.is_empty() {
            return Err(invalid("attributes.request.http.method", "is required"));
        }
        // Envoy sends the request target: the path with its query string.
        let (path, query) = match http.path.split_once('?') {
            Some((p, q)) => (p, q),
            None => (http.path.as_str(), http.query.as_str()),
        };
        let path = path.split('#').next().unwrap_or_default();
        let mut entities = Vec::new();
        let known = |u: &proto::EntityUid| {
            EntityTypeName::from_str(&u.r#type).is_ok_and(|t| {
                let uid = EntityUid::from_type_name_and_id(t, EntityId::new(&u.id));
                snapshot.entities.get(&uid).is_some()
            })
        };

        let principal = match spiffe_of(attrs.source.as_ref(), "attributes.source.principal")? {
            Some(spiffe) => {
                let principal = uid(&c.principal_type, &spiffe.id);
                if !known(&principal) {
                    entities.push(self.workload_entity(&principal, &spiffe));
                }
                principal
            }
            None => {
                let anonymous = self
                    .anonymous
                    .as_ref()
                    .ok_or_else(|| invalid("attributes.source.principal", "is required"))?;
                uid(
                    &anonymous.type_name().to_string(),
                    anonymous.id().unescaped(),
                )
            }
        };

        let destination = spiffe_of(
            attrs.destination.as_ref(),
            "attributes.destination.principal",
        )?;
        let service_id = match &destination {
            Some(d) if !d.namespace.is_empty() => format!("{}/{}", d.namespace, d.service_account),
            _ => host_without_port(&http.host).to_string(),
        };
        let service = uid(&c.service_type, &service_id);
        let resource_id = c
            .resource_id
            .replace("{host}", &http.host)
            .replace("{path}", path)
            .replace("{method}", &http.method)
            .replace("{service}", &service_id);
        let resource = uid(&c.resource_type, &resource_id);
        if !known(&resource) {
            entities.push(proto::Entity {
                uid: Some(resource.clone()),
                attrs: [
                    ("host".to_string(), string(&http.host)),
                    ("path".to_string(), string(path)),
                    ("service".to_string(), value(V::Entity(service.clone()))),
                ]
                .into(),
                parents: vec![service],
                tags: BTreeMap::new(),
            });
        }

        let action_id = c
            .routes
            .iter()
            .find(|r| {
                (r.method.is_empty() || r.method.eq_ignore_ascii_case(&http.method))
                    && path.starts_with(&r.path_prefix)
            })
            .map_or(http.method.as_str(), |r| r.action.as_str());

        let headers = c
            .headers
            .iter()
            .filter_map(|name| http.headers.get(name).map(|v| (name.clone(), string(v))));
        let mut context: BTreeMap<String, proto::Value> = [
            ("method".to_string(), string(&http.method)),
            ("path".to_string(), string(path)),
            ("query".to_string(), string(query)),
            ("host".to_string(), string(&http.host)),
            ("headers".to_string(), record(headers)),
            (
                "destination".to_string(),
                string(destination.as_ref().map_or("", |d| d.id.as_str())),
            ),
            (
                "context_extensions".to_string(),
                record(
                    attrs
                        .context_extensions
                        .iter()
                        .map(|(k, v)| (k.clone(), string(v))),
                ),
            ),
        ]
        .into();
        if let Some(ip) = source_ip(attrs.source.as_ref()) {
            context.insert(
                "source_ip".to_string(),
                value(V::Extension(proto::ExtensionValue {
                    r#fn: "ip".to_string(),
                    arg: ip.to_string(),
                })),
            );
        }
        Ok(proto::AuthorizeRequest {
            principal: Some(principal),
            action: Some(uid(&c.action_type, action_id)),
            resource: Some(resource),
            context,
            entities,
            request_id: http.id.clone(),
            ..Default::default()
        })
    }

    /// A workload named by its SPIFFE ID, in its namespace and trust domain.
    fn workload_entity(&self, principal: &proto::EntityUid, spiffe: &SpiffeId) -> proto::Entity {
        let c = &self.config;
        let trust_domain = uid(&c.trust_domain_type, &spiffe.trust_domain);
        let mut attrs: BTreeMap<String, proto::Value> = [
            ("spiffe_id".to_string(), string(&spiffe.id)),
            (
                "trust_domain".to_string(),
                value(V::Entity(trust_domain.clone())),
            ),
        ]
        .into();
        let mut parents = vec![trust_domain];
        if !spiffe.namespace.is_empty() {
            let namespace_id = c
                .namespace_id
                .replace("{trust_domain}", &spiffe.trust_domain)
                .replace("{namespace}", &spiffe.namespace);
            let namespace = uid(&c.namespace_type, &namespace_id);
            attrs.insert("namespace".into(), value(V::Entity(namespace.clone())));
            attrs.insert("service_account".into(), string(&spiffe.service_account));
            parents.push(namespace);
        }
        proto::Entity {
            uid: Some(principal.clone()),
            attrs,
            parents,
            tags: BTreeMap::new(),
        }
    }
}

fn host_without_port(host: &str) -> &str {
    // `[::1]:8080` keeps its brackets' contents; `a.b:80` drops the port.
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
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

impl ExtAuthzService {
    async fn check_call(
        &self,
        request: Request<CheckRequest>,
        span: &tracing::Span,
    ) -> Result<CheckResponse, ApiError> {
        let peer = request.extensions().get::<PeerFacts>().cloned();
        let call = self
            .inner
            .call_info(peer.as_ref(), request.metadata(), span);
        let snapshot = self.inner.snapshot()?;
        let authorize = self.mapping.to_request(request.get_ref(), &snapshot)?;
        let response = self
            .inner
            .decide_one(&snapshot, authorize, peer.as_ref(), call, span)
            .await?;
        let headers = vec![
            header(DECISION_ID_HEADER, &response.decision_id),
            header(REVISION_HEADER, &response.policy_revision),
        ];
        Ok(if response.decision == proto::Decision::Allow as i32 {
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
        })
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthzService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let metrics = self.inner.metrics();
        let _inflight = metrics.inflight();
        let span = spans::authorize(None);
        spans::continue_trace(&span, request.metadata());
        let timeout = self.inner.timeout(request.metadata());
        let call = async {
            let _permit = self.inner.admit()?;
            self.check_call(request, &span).await.map_err(Status::from)
        };
        match self.inner.within(timeout, call).await {
            Ok(response) => Ok(Response::new(response)),
            // Fail closed: Envoy gets a deny it can apply, not an error it
            // might be configured to let through.
            Err(status) => {
                spans::record_failure(&span, &status);
                metrics.request_error(status.code());
                tracing::warn!(code = ?status.code(), "ext_authz check denied on error: {}", status.message());
                Ok(Response::new(denied(
                    self.mapping.config.error_status,
                    Vec::new(),
                    "authorization error\n",
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_ports_from_hosts() {
        assert_eq!(host_without_port("shop.example:8080"), "shop.example");
        assert_eq!(host_without_port("shop.example"), "shop.example");
        assert_eq!(host_without_port("[::1]:8080"), "::1");
    }
}
