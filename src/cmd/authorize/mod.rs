//! `cedar-pdp authorize`: a small client that asks a running server for one
//! decision and prints it, over gRPC or (with `--authzen URL`) over the
//! AuthZEN API, so the two front-ends can be compared from the shell.

mod authzen;

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
    /// The server's config file, whose `[authzen]` mapping (namespace,
    /// action type, types) turns the Cedar names into AuthZEN ones; with
    /// `--authzen`, `CEDAR_PDP_CONFIG` when not given.
    #[arg(long, value_name = "FILE", requires = "authzen")]
    config: Option<PathBuf>,
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
    let answer = match args.authzen.clone() {
        Some(url) => {
            // Not clap's `env`: that would make the variable need `--authzen`.
            let path = args
                .config
                .clone()
                .or_else(|| std::env::var_os("CEDAR_PDP_CONFIG").map(PathBuf::from))
                .filter(|p| !p.as_os_str().is_empty());
            let config = match super::checked_config(path.as_deref()) {
                Ok(c) => c,
                Err(e) => return super::usage(&e),
            };
            runtime.block_on(authzen::call(&url, &config.authzen, args))
        }
        None => runtime.block_on(call(args)).map(Answer::from),
    };
    match answer {
        Ok(answer) => {
            println!("{}", if answer.allow { "ALLOW" } else { "DENY" });
            println!(
                "determining policies: {}",
                list_or_none(&answer.determining_policies)
            );
            for (policy_id, message) in &answer.errors {
                println!("error in `{policy_id}`: {message}");
            }
            println!("decision id: {}", answer.decision_id);
            println!("policy revision: {}", answer.policy_revision);
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

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".to_string()
    } else {
        items.join(", ")
    }
}

async fn call(args: AuthorizeArgs) -> Result<proto::AuthorizeResponse, String> {
    let request = proto::AuthorizeRequest {
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
    };
    let url = if args.addr.contains("://") {
        args.addr
    } else {
        format!("http://{}", args.addr)
    };
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
