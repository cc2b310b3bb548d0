//! Request entities cannot change what stored entities mean, over a real
//! socket: no grafting parents or attributes onto a stored entity through an
//! entity it names but does not define, and no request-defined actions.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use crate::common;

use cedar_pdp::grpc::proto::{self, Decision};
use common::{TestServer, metric, request};
use tonic::Code;

const POLICIES: &str = r#"
@id("admin-folders")
permit (principal, action == Action::"read", resource in Folder::"admins");

@id("admin-owners")
permit (principal, action == Action::"edit", resource)
when { resource.owner has admin && resource.owner.admin };

@id("admin-actions")
permit (principal, action in Action::"admin-actions", resource);

@id("own-level")
permit (principal, action == Action::"view", resource)
when { principal has level && principal.level > 3 };
"#;

/// `Doc::"d"` names a parent and an owner that no file defines.
const ENTITIES: &str = r#"[
  {"uid": {"type": "Doc", "id": "d"},
   "attrs": {"owner": {"__entity": {"type": "User", "id": "bob"}}},
   "parents": [{"type": "Folder", "id": "f"}]}
]"#;

fn with_entities(action: &str, entities: &str) -> proto::AuthorizeRequest {
    let mut req = request(("User", "u"), ("Action", action), ("Doc", "d"));
    req.entities_json = entities.into();
    req
}

#[tokio::test]
async fn request_entities_cannot_graft_onto_stored_ones() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.cedar"), POLICIES).unwrap();
    std::fs::write(dir.path().join("store.entities.json"), ENTITIES).unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client().await;

    let attempts = [
        // New ancestors for the stored document, through its undefined parent.
        (
            "read",
            r#"[{"uid": {"type": "Folder", "id": "f"}, "attrs": {}, "parents": [{"type": "Folder", "id": "admins"}]}]"#,
            r#"Folder::"f""#,
        ),
        // New attributes for the stored document's owner.
        (
            "edit",
            r#"[{"uid": {"type": "User", "id": "bob"}, "attrs": {"admin": true}, "parents": []}]"#,
            r#"User::"bob""#,
        ),
        // A new parent for the action itself.
        (
            "read",
            r#"[{"uid": {"type": "Action", "id": "read"}, "attrs": {}, "parents": [{"type": "Action", "id": "admin-actions"}]}]"#,
            r#"Action::"read""#,
        ),
    ];
    for (action, entities, named) in attempts {
        let err = client
            .authorize(with_entities(action, entities))
            .await
            .expect_err(entities);
        assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
        assert!(err.message().contains(named), "{}", err.message());
    }
    let refused = metric(
        server.admin_addr,
        "cedar_pdp_request_errors_total",
        &[("reason", "entity_conflict")],
    )
    .await;
    assert_eq!(refused, 3.0);

    // Entities of the request's own are still welcome.
    let mut own = with_entities(
        "view",
        r#"[{"uid": {"type": "User", "id": "u"}, "attrs": {"level": 5}, "parents": []}]"#,
    );
    own.principal = common::uid("User", "u");
    let resp = client.authorize(own).await.unwrap().into_inner();
    assert_eq!(resp.decision, Decision::Allow as i32, "{resp:?}");
    assert_eq!(resp.determining_policies, ["own-level"]);
}
