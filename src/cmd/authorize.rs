//! `cedar-pdp authorize`: a small client that asks a running server for one
//! decision and prints it.

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
    match runtime.block_on(call(args)) {
        Ok(response) => {
            let allow = response.decision == proto::Decision::Allow as i32;
            println!("{}", if allow { "ALLOW" } else { "DENY" });
            println!(
                "determining policies: {}",
                list_or_none(&response.determining_policies)
            );
            for e in &response.errors {
                println!("error in `{}`: {}", e.policy_id, e.message);
            }
            println!("decision id: {}", response.decision_id);
            println!("policy revision: {}", response.policy_revision);
            if allow { Exit::Success } else { Exit::Deny }
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
