//! The test file format, and parsing every test file of a policy directory
//! (read by the policy store's one reader).
//!
//! A file is YAML (`*.test.yaml`, `*.test.yml`) or JSON (`*.test.json`); both
//! are read by one YAML 1.2 parser, of which JSON is a subset, so a problem in
//! either is located as `file:line:column`.

use std::collections::HashSet;
use std::fmt;
use std::path::{Component, Path};
use std::str::FromStr;
use std::time::SystemTime;

use std::collections::BTreeMap;

use cedar_policy::EntityUid;
use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use serde_saphyr::Spanned;

use crate::engine::SourceProblem;
use crate::identity::{PeerFacts, SpiffeId, UnixPeer};
use crate::pipeline::{Context, DecisionRequest, DelegationHop, Reason, Uid, Workload};
use crate::policy_store::{LoadError, TestFiles, read_dir};

/// Suffix a fixture must not have: the loader would also load it as the
/// directory's own entities.
const ENTITIES_SUFFIX: &str = ".entities.json";

/// Every test file of one policy directory, parsed.
#[derive(Clone, Debug)]
pub struct Suite {
    /// Sorted by path.
    pub files: Vec<TestFile>,
}

impl Suite {
    /// How many cases the suite holds.
    pub fn case_count(&self) -> usize {
        self.files.iter().map(|f| f.cases.len()).sum()
    }
}

/// One test file.
#[derive(Clone, Debug)]
pub struct TestFile {
    /// Relative to the policy directory, with `/` separators.
    pub rel: String,
    pub cases: Vec<Case>,
}

/// One named request and what it must decide.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    /// 1-based line of the case in its file.
    pub line: usize,
    /// The request as the API takes it, with the file's fixture entities
    /// before the case's own.
    pub request: DecisionRequest,
    /// What the transport proved about the caller, as the server would
    /// have it from a client certificate or a Unix socket.
    pub caller: PeerFacts,
    /// The server's time the case is judged at (`at`); `None`: when it runs.
    pub at: Option<SystemTime>,
    pub expect: Expect,
}

/// What a case expects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expect {
    pub allow: bool,
    /// When given, the request must be refused with this reason (and is
    /// then a deny).
    pub refused: Option<Reason>,
    /// When given, exactly these policies (in any order) must determine it.
    pub determining_policies: Option<Vec<String>>,
    /// When given, exactly this many errors, each matched by one entry.
    pub errors: Option<Vec<ExpectedError>>,
}

/// An expected evaluation error: the policy that failed, a substring of the
/// message, or both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedError {
    pub policy_id: Option<String>,
    pub message: Option<String>,
}

impl ExpectedError {
    /// Whether `actual` is the error this entry describes.
    pub fn matches(&self, actual: &crate::engine::PolicyError) -> bool {
        self.policy_id
            .as_ref()
            .is_none_or(|p| *p == actual.policy_id)
            && self
                .message
                .as_ref()
                .is_none_or(|m| actual.message.contains(m.as_str()))
    }
}

impl fmt::Display for ExpectedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.policy_id, &self.message) {
            (Some(p), Some(m)) => write!(f, "{p}: …{m}…"),
            (Some(p), None) => write!(f, "{p}"),
            (None, Some(m)) => write!(f, "…{m}…"),
            (None, None) => write!(f, "any"),
        }
    }
}

// ---- The file format, as serde reads it. ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    #[serde(default)]
    fixtures: Vec<Spanned<String>>,
    cases: Vec<Spanned<CaseSpec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseSpec {
    name: Spanned<String>,
    principal: Spanned<UidSpec>,
    action: Spanned<UidSpec>,
    resource: Spanned<UidSpec>,
    #[serde(default)]
    context: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    entities: Vec<serde_json::Value>,
    #[serde(default)]
    workload: Option<WorkloadSpec>,
    #[serde(default)]
    caller: Option<Spanned<CallerSpec>>,
    /// The chain, as the API takes it; `verified: true` stands in for a
    /// verified token, which a test file cannot carry.
    #[serde(default)]
    delegation: Vec<HopSpec>,
    #[serde(default)]
    purpose: String,
    /// RFC 3339 in UTC: the server's time for this case, so a case about a
    /// time-bound grant or an expiring chain keeps its answer as time passes.
    #[serde(default)]
    at: Option<Spanned<String>>,
    expect: Spanned<ExpectSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HopSpec {
    delegator: UidSpec,
    #[serde(default)]
    scopes: Vec<String>,
    /// RFC 3339.
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    purpose: String,
    #[serde(default)]
    verified: bool,
}

/// `workload` as the API takes it: labels are a map.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkloadSpec {
    #[serde(default)]
    spiffe_id: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    service_account: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// What the transport would prove: a client certificate's SPIFFE ID, or a
/// Unix socket peer's credentials.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallerSpec {
    #[serde(default)]
    spiffe_id: Option<String>,
    #[serde(default)]
    uid: Option<u32>,
    #[serde(default)]
    gid: Option<u32>,
    #[serde(default)]
    pid: Option<i32>,
}

impl CallerSpec {
    fn to_peer(&self) -> Result<PeerFacts, String> {
        let spiffe = match &self.spiffe_id {
            Some(id) => {
                Some(SpiffeId::parse(id).map_err(|e| format!("`caller.spiffe_id` `{id}`: {e}"))?)
            }
            None => None,
        };
        let unix = match (self.uid, self.gid, self.pid) {
            (None, None, None) => None,
            (Some(uid), Some(gid), pid) => Some(UnixPeer { uid, gid, pid }),
            _ => return Err("`caller`: a Unix peer needs both `uid` and `gid`".into()),
        };
        if spiffe.is_none() && unix.is_none() {
            return Err("`caller` needs `spiffe_id`, or `uid` and `gid`".into());
        }
        Ok(PeerFacts {
            addr: None,
            spiffe,
            unix,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectSpec {
    #[serde(default)]
    decision: Option<DecisionSpec>,
    /// A stable reason (`binding_mismatch`, `invalid_request`, ...).
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    determining_policies: Option<Vec<String>>,
    #[serde(default)]
    errors: Option<Vec<ErrorSpec>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum DecisionSpec {
    Allow,
    Deny,
}

/// `Type::"id"`, or `{type, id}` as the API takes it.
enum UidSpec {
    Cedar(String),
    Parts { type_name: String, id: String },
}

impl<'de> Deserialize<'de> for UidSpec {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct UidVisitor;
        impl<'de> Visitor<'de> for UidVisitor {
            type Value = UidSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"an entity uid: `Type::"id"` or {type, id}"#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<UidSpec, E> {
                Ok(UidSpec::Cedar(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UidSpec, A::Error> {
                let (mut type_name, mut id) = (None, None);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "type" => type_name = Some(map.next_value::<String>()?),
                        "id" => id = Some(map.next_value::<String>()?),
                        other => {
                            return Err(de::Error::unknown_field(other, &["type", "id"]));
                        }
                    }
                }
                Ok(UidSpec::Parts {
                    type_name: type_name.ok_or_else(|| de::Error::missing_field("type"))?,
                    id: id.ok_or_else(|| de::Error::missing_field("id"))?,
                })
            }
        }
        d.deserialize_any(UidVisitor)
    }
}

impl UidSpec {
    /// The uid as the API takes it; its type is checked here, so a bad one
    /// is reported at its line.
    fn to_uid(&self) -> Result<Uid, String> {
        match self {
            Self::Cedar(text) => EntityUid::from_str(text)
                .map(|u| Uid::new(u.type_name().to_string(), u.id().unescaped()))
                .map_err(|e| format!("`{text}` is not an entity uid like `User::\"alice\"`: {e}")),
            Self::Parts { type_name, id } => {
                let uid = Uid::new(type_name, id);
                uid.parse("").map_err(|e| {
                    format!("`{type_name}` is not a Cedar entity type: {}", e.message)
                })?;
                Ok(uid)
            }
        }
    }
}

/// A policy id, or `{policy, message}` where `message` is a substring.
enum ErrorSpec {
    Policy(String),
    Parts {
        policy: Option<String>,
        message: Option<String>,
    },
}

impl<'de> Deserialize<'de> for ErrorSpec {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ErrorVisitor;
        impl<'de> Visitor<'de> for ErrorVisitor {
            type Value = ErrorSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a policy id, or {policy, message}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ErrorSpec, E> {
                Ok(ErrorSpec::Policy(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ErrorSpec, A::Error> {
                let (mut policy, mut message) = (None, None);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "policy" => policy = Some(map.next_value::<String>()?),
                        "message" => message = Some(map.next_value::<String>()?),
                        other => {
                            return Err(de::Error::unknown_field(other, &["policy", "message"]));
                        }
                    }
                }
                if policy.is_none() && message.is_none() {
                    return Err(de::Error::custom(
                        "an expected error needs `policy`, `message` or both",
                    ));
                }
                Ok(ErrorSpec::Parts { policy, message })
            }
        }
        d.deserialize_any(ErrorVisitor)
    }
}

impl From<ErrorSpec> for ExpectedError {
    fn from(spec: ErrorSpec) -> Self {
        match spec {
            ErrorSpec::Policy(p) => Self {
                policy_id: Some(p),
                message: None,
            },
            ErrorSpec::Parts { policy, message } => Self {
                policy_id: policy,
                message,
            },
        }
    }
}

// ---- Reading a directory. ----

/// Reads the policy directory at `root` and parses its test files; see
/// [`parse_suite`].
pub fn read_suite(root: &Path) -> Result<Suite, LoadError> {
    parse_suite(&mut read_dir(root)?.tests())
}

/// Parses every test file of `tests`, and the fixtures they name (read
/// through `tests`, by the directory's rules). Reports every malformed file
/// at once, as `file:line:column`.
pub fn parse_suite(tests: &mut TestFiles) -> Result<Suite, LoadError> {
    // Owned, since fixtures are read through `tests` while these are parsed.
    let texts: Vec<(String, String)> = tests
        .files()
        .map(|(rel, text)| (rel.to_string(), text.to_string()))
        .collect();
    let mut problems = Vec::new();
    let mut files = Vec::new();
    for (rel, text) in &texts {
        if let Some(file) = parse_file(rel, text, tests, &mut problems)? {
            files.push(file);
        }
    }
    if !problems.is_empty() {
        return Err(LoadError::Invalid(problems));
    }
    Ok(Suite { files })
}

fn problem(file: &str, line: u64, column: u64, message: impl Into<String>) -> SourceProblem {
    SourceProblem {
        file: file.to_string(),
        line: usize::try_from(line.max(1)).unwrap_or(usize::MAX),
        column: usize::try_from(column.max(1)).unwrap_or(usize::MAX),
        message: message.into(),
    }
}

/// Parses one test file. A malformed file adds to `problems` and yields
/// `None`; only an unreadable fixture is an error of its own.
fn parse_file(
    rel: &str,
    text: &str,
    tests: &mut TestFiles,
    problems: &mut Vec<SourceProblem>,
) -> Result<Option<TestFile>, LoadError> {
    let spec: FileSpec = match serde_saphyr::from_str(text) {
        Ok(spec) => spec,
        Err(e) => {
            let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
            problems.push(problem(rel, line, column, yaml_message(&e)));
            return Ok(None);
        }
    };
    let before = problems.len();

    let mut fixture_entities = Vec::new();
    for fixture in &spec.fixtures {
        let at = &fixture.referenced;
        let mut bad =
            |message: String| problems.push(problem(rel, at.line(), at.column(), message));
        let name = &fixture.value;
        if name.ends_with(ENTITIES_SUFFIX) {
            bad(format!(
                "fixture `{name}` ends in `{ENTITIES_SUFFIX}`, so it would also load as the \
                 directory's own entities; name it `*.fixture.json`"
            ));
            continue;
        }
        let Some(fixture_rel) = join_inside(rel, name) else {
            bad(format!(
                "fixture `{name}` is not a relative path inside the policy directory"
            ));
            continue;
        };
        let Some(fixture_text) = tests.fixture(&fixture_rel)? else {
            bad(format!("fixture `{name}` does not exist"));
            continue;
        };
        match serde_json::from_str::<Vec<serde_json::Value>>(&fixture_text) {
            Ok(entities) => fixture_entities.extend(entities),
            Err(e) => problems.push(problem(
                &fixture_rel,
                e.line() as u64,
                e.column() as u64,
                format!("not a JSON array of Cedar entities: {e}"),
            )),
        }
    }

    if spec.cases.is_empty() {
        problems.push(problem(rel, 1, 1, "`cases` is empty"));
    }
    let mut names = HashSet::new();
    let mut cases = Vec::new();
    for case in spec.cases {
        let at = case.referenced;
        let case = case.value;
        let name = case.name.value;
        if name.trim().is_empty() {
            problems.push(problem(
                rel,
                case.name.referenced.line(),
                case.name.referenced.column(),
                "a case name must not be empty",
            ));
        } else if !names.insert(name.clone()) {
            problems.push(problem(
                rel,
                case.name.referenced.line(),
                case.name.referenced.column(),
                format!("duplicate case name `{name}`"),
            ));
        }
        let mut uid = |field: &str, spec: &Spanned<UidSpec>| match spec.value.to_uid() {
            Ok(uid) => Some(uid),
            Err(message) => {
                problems.push(problem(
                    rel,
                    spec.referenced.line(),
                    spec.referenced.column(),
                    format!("`{field}`: {message}"),
                ));
                None
            }
        };
        let principal = uid("principal", &case.principal);
        let action = uid("action", &case.action);
        let resource = uid("resource", &case.resource);
        let (Some(principal), Some(action), Some(resource)) = (principal, action, resource) else {
            continue;
        };
        let mut entities = fixture_entities.clone();
        entities.extend(case.entities);
        let caller = match case
            .caller
            .as_ref()
            .map(|c| (c.value.to_peer(), &c.referenced))
        {
            None => PeerFacts::default(),
            Some((Ok(peer), _)) => peer,
            Some((Err(message), at)) => {
                problems.push(problem(rel, at.line(), at.column(), message));
                continue;
            }
        };
        let expect_at = case.expect.referenced;
        let expect = case.expect.value;
        let refused = match expect.error.as_deref() {
            None => None,
            Some(name) => match Reason::ALL.into_iter().find(|r| r.as_str() == name) {
                Some(reason) => Some(reason),
                None => {
                    let known: Vec<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
                    problems.push(problem(
                        rel,
                        expect_at.line(),
                        expect_at.column(),
                        format!(
                            "`expect.error`: unknown reason `{name}`; one of {}",
                            known.join(", ")
                        ),
                    ));
                    continue;
                }
            },
        };
        let allow = match (expect.decision, refused) {
            (Some(DecisionSpec::Allow), Some(_)) => {
                problems.push(problem(
                    rel,
                    expect_at.line(),
                    expect_at.column(),
                    "a refused request is a deny: `expect.error` cannot go with `decision: allow`",
                ));
                continue;
            }
            (None, None) => {
                problems.push(problem(
                    rel,
                    expect_at.line(),
                    expect_at.column(),
                    "`expect` needs `decision` (allow or deny) or `error` (a reason)",
                ));
                continue;
            }
            (decision, _) => matches!(decision, Some(DecisionSpec::Allow)),
        };
        let workload = case.workload.map(|w| Workload {
            spiffe_id: w.spiffe_id,
            namespace: w.namespace,
            service_account: w.service_account,
            labels: w
                .labels
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
        });
        let mut delegation = Vec::new();
        let mut bad_hop = false;
        for (i, hop) in case.delegation.into_iter().enumerate() {
            let expires_at = match hop.expires_at.as_deref().map(humantime::parse_rfc3339) {
                None => None,
                Some(Ok(t)) => Some(t),
                Some(Err(e)) => {
                    problems.push(problem(
                        rel,
                        at.line(),
                        at.column(),
                        format!("`delegation[{i}].expires_at`: not an RFC 3339 time in UTC: {e}"),
                    ));
                    bad_hop = true;
                    continue;
                }
            };
            match hop.delegator.to_uid() {
                Ok(delegator) => delegation.push(DelegationHop {
                    delegator,
                    scopes: hop.scopes,
                    expires_at,
                    purpose: hop.purpose,
                    verified: hop.verified,
                }),
                Err(e) => {
                    problems.push(problem(
                        rel,
                        at.line(),
                        at.column(),
                        format!("`delegation[{i}].delegator`: {e}"),
                    ));
                    bad_hop = true;
                }
            }
        }
        if bad_hop {
            continue;
        }
        let at_time = match &case.at {
            None => None,
            Some(t) => match humantime::parse_rfc3339(&t.value) {
                Ok(t) => Some(t),
                Err(e) => {
                    problems.push(problem(
                        rel,
                        t.referenced.line(),
                        t.referenced.column(),
                        format!("`at`: `{}` is not an RFC 3339 time in UTC: {e}", t.value),
                    ));
                    continue;
                }
            },
        };
        cases.push(Case {
            name,
            line: usize::try_from(at.line().max(1)).unwrap_or(usize::MAX),
            request: DecisionRequest {
                principal: Some(principal),
                action: Some(action),
                resource: Some(resource),
                context: Context::Record(case.context),
                entities,
                workload,
                delegation,
                purpose: case.purpose,
                ..DecisionRequest::default()
            },
            caller,
            at: at_time,
            expect: Expect {
                allow,
                refused,
                determining_policies: expect.determining_policies.map(|mut p| {
                    p.sort_unstable();
                    p
                }),
                errors: expect
                    .errors
                    .map(|e| e.into_iter().map(ExpectedError::from).collect()),
            },
        });
    }
    if problems.len() > before {
        return Ok(None);
    }
    Ok(Some(TestFile {
        rel: rel.to_string(),
        cases,
    }))
}

/// The parser's message, without its location (we print ours) or snippet.
fn yaml_message(e: &serde_saphyr::Error) -> String {
    let rendered = e.without_snippet().to_string();
    // The message may end in ` at line L, column C`; the caller prints it first.
    match rendered.rfind(" at line ") {
        Some(i) if rendered[i..].contains("column") => rendered[..i].to_string(),
        _ => rendered,
    }
}

/// `name` relative to the folder of `file` (both relative to the policy
/// directory), or `None` when it is absolute or climbs out of the directory.
fn join_inside(file: &str, name: &str) -> Option<String> {
    let mut parts: Vec<String> = file.split('/').map(str::to_string).collect();
    parts.pop();
    for component in Path::new(name).components() {
        match component {
            Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_paths_stay_inside_the_directory() {
        assert_eq!(
            join_inside("a.test.yaml", "s.fixture.json").as_deref(),
            Some("s.fixture.json")
        );
        assert_eq!(
            join_inside("sub/a.test.yaml", "../s.fixture.json").as_deref(),
            Some("s.fixture.json")
        );
        assert_eq!(
            join_inside("sub/a.test.yaml", "./x/s.fixture.json").as_deref(),
            Some("sub/x/s.fixture.json")
        );
        assert_eq!(join_inside("a.test.yaml", "../s.fixture.json"), None);
        assert_eq!(join_inside("a.test.yaml", "/etc/passwd"), None);
    }
}
