//! `cedar-pdp authorize`: a small client that asks a running server for one
//! decision and prints it, over gRPC or (with `--authzen URL`) over the
//! AuthZEN API, so the two front-ends can be compared from the shell; or,
//! with `--policies DIR`, decides it offline, with no server.

mod authzen;
mod offline;

use std::path::PathBuf;
use std::str::FromStr;

use clap::Args;

use super::Exit;
use crate::grpc::proto::{self, authorizer_client::AuthorizerClient};

/// Flags of `authorize`.
#[derive(Debug, Args)]
pub(super) struct AuthorizeArgs {
    /// Server address, `host:port` or a URL.
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: String,
    /// Principal, e.g. `Mesh::Workload::"spiffe://example.org/ns/a/sa/b"`.
    #[arg(long)]
    principal: String,
    /// Action, e.g. `Mesh::Action::"call"`.
    #[arg(long)]
    action: String,
    /// Resource, e.g. `Mesh::Service::"payments"`.
    #[arg(long)]
    resource: String,
    /// Context as a Cedar JSON object.
    #[arg(long, value_name = "JSON")]
    context: Option<String>,
    /// A Cedar JSON entities file sent with the request.
    #[arg(long, value_name = "FILE")]
    entities: Option<PathBuf>,
    /// Your own id for the request, echoed back.
    #[arg(long, default_value = "")]
    request_id: String,
    /// Ask over AuthZEN instead: the base URL of the server's AuthZEN
    /// listener, e.g. `http://127.0.0.1:8180`. `--addr` is then unused.
    #[arg(long, value_name = "URL")]
    authzen: Option<String>,
    /// Decide offline, with no server: load this policy directory as the
    /// server would, and evaluate through the same pipeline.
    #[arg(long, value_name = "DIR", conflicts_with = "authzen")]
    policies: Option<PathBuf>,
    /// How to print the answer.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// The server's config file: with `--authzen`, its `[authzen]` mapping
    /// (namespace, action type, types) turns the Cedar names into AuthZEN
    /// ones; with `--policies`, its load and limit settings apply. With
    /// either, `CEDAR_PDP_CONFIG` when not given.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// How `authorize` prints its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

/// A decision, whichever API it came through.
#[derive(Debug)]
struct Answer {
    allow: bool,
    determining_policies: Vec<String>,
    /// `(policy id, message)`.
    errors: Vec<(String, String)>,
    decision_id: String,
    policy_revision: String,
    /// Why a deny is one; empty for an allow.
    why: String,
}

impl From<proto::AuthorizeResponse> for Answer {
    fn from(r: proto::AuthorizeResponse) -> Self {
        Self {
            allow: r.decision == proto::Decision::Allow as i32,
            determining_policies: r.determining_policies,
            errors: r
                .errors
                .into_iter()
                .map(|e| (e.policy_id, e.message))
                .collect(),
            decision_id: r.decision_id,
            policy_revision: r.policy_revision,
            why: r.why,
        }
    }
}

/// Asks for the decision: 0 allow, 2 deny (a result, as the Cedar CLI has
/// it), 1 when there is no answer.
pub(super) fn run(args: AuthorizeArgs) -> Exit {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cedar-pdp: cannot start the runtime: {e}");
            return Exit::Failure;
        }
    };
    if args.config.is_some() && args.authzen.is_none() && args.policies.is_none() {
        eprintln!("cedar-pdp: `--config` applies with `--authzen` or `--policies`");
        return Exit::Usage;
    }
    // Not clap's `env`: that would make the variable need a mode flag.
    let config_path = args
        .config
        .clone()
        .or_else(|| std::env::var_os("CEDAR_PDP_CONFIG").map(PathBuf::from))
        .filter(|p| !p.as_os_str().is_empty());
    let format = args.format;
    let answer = match (args.authzen.clone(), args.policies.clone()) {
        (Some(url), _) => {
            let config = match super::checked_config(config_path.as_deref()) {
                Ok(c) => c,
                Err(e) => return super::usage(&e),
            };
            runtime.block_on(authzen::call(&url, &config.authzen, args))
        }
        (None, Some(dir)) => {
            let config = match super::checked_config(config_path.as_deref()) {
                Ok(c) => c,
                Err(e) => return super::usage(&e),
            };
            request(args).and_then(|r| offline::decide(&dir, &config, r))
        }
        (None, None) => runtime.block_on(call(args)).map(Answer::from),
    };
    match answer {
        Ok(answer) => {
            print(&answer, format);
            if answer.allow {
                Exit::Success
            } else {
                Exit::Deny
            }
        }
        Err(e) => {
            eprintln!("cedar-pdp: {e}");
            Exit::Failure
        }
    }
}

fn print(answer: &Answer, format: Format) {
    match format {
        Format::Text => {
            println!("{}", if answer.allow { "ALLOW" } else { "DENY" });
            println!(
                "determining policies: {}",
                list_or_none(&answer.determining_policies)
            );
            if !answer.why.is_empty() {
                println!("why: {}", answer.why);
            }
            for (policy_id, message) in &answer.errors {
                println!("error in `{policy_id}`: {message}");
            }
            if answer.decision_id.is_empty() {
                println!("decision id: (none: decided offline, not recorded)");
            } else {
                println!("decision id: {}", answer.decision_id);
            }
            println!("policy revision: {}", answer.policy_revision);
        }
        Format::Json => {
            let errors: Vec<serde_json::Value> = answer
                .errors
                .iter()
                .map(|(policy_id, message)| {
                    serde_json::json!({"policy_id": policy_id, "message": message})
                })
                .collect();
            let json = serde_json::json!({
                "decision": if answer.allow { "allow" } else { "deny" },
                "determining_policies": answer.determining_policies,
                "errors": errors,
                "why": answer.why,
                "decision_id": answer.decision_id,
                "policy_revision": answer.policy_revision,
            });
            println!("{json}");
        }
    }
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".to_string()
    } else {
        items.join(", ")
    }
}

/// The request the flags describe.
fn request(args: AuthorizeArgs) -> Result<proto::AuthorizeRequest, String> {
    Ok(proto::AuthorizeRequest {
        principal: Some(parse_uid("--principal", &args.principal)?),
        action: Some(parse_uid("--action", &args.action)?),
        resource: Some(parse_uid("--resource", &args.resource)?),
        context_json: args.context.unwrap_or_default(),
        entities_json: match &args.entities {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?,
            None => String::new(),
        },
        request_id: args.request_id,
        ..Default::default()
    })
}

async fn call(args: AuthorizeArgs) -> Result<proto::AuthorizeResponse, String> {
    let url = if args.addr.contains("://") {
        args.addr.clone()
    } else {
        format!("http://{}", args.addr)
    };
    let request = request(args)?;
    let mut client = AuthorizerClient::connect(url.clone())
        .await
        .map_err(|e| format!("cannot connect to `{url}`: {e}"))?;
    client
        .authorize(request)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| format!("request failed: {:?}: {}", s.code(), s.message()))
}

fn parse_uid(flag: &str, text: &str) -> Result<proto::EntityUid, String> {
    let uid = cedar_policy::EntityUid::from_str(text)
        .map_err(|e| format!("`{flag}`: `{text}` is not an entity like `User::\"alice\"`: {e}"))?;
    Ok(proto::EntityUid {
        r#type: uid.type_name().to_string(),
        id: uid.id().unescaped().to_string(),
    })
}
