//! Replay: recorded decisions evaluated again, one record at a time.
//!
//! A record carries what its evaluation saw (see `docs/audit.md`): the uids,
//! the context as evaluated, the request's entities and a batch's shared
//! entities (inline, or by SHA-256 in a side file beside the log). With the
//! policy set it names, that reproduces the decision; with a candidate set
//! (`--policies`), it shows what a change would have decided differently.
//!
//! Records stream: one line is held at a time, and snapshots are kept per
//! revision (a log holds few).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{EntityId, EntityTypeName, EntityUid};
use serde::Serialize;
use serde_json::Value as Json;

use crate::config::OnForbidError;
use crate::decision_log::{SIDE_DIR_SUFFIX, chain};
use crate::engine::Clock;
use crate::engine::{Decision, Query, Scratch, SharedEntities};
use crate::policy_store::{LoadOptions, Snapshot, build, load_dir, read_dir};

/// Why replay cannot run at all.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read `{path}`: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot load the policies in `{dir}`: {message}")]
    Policies { dir: String, message: String },
}

/// What one decision was, or is now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// `allow` or `deny`.
    pub decision: String,
    pub determining_policies: Vec<String>,
    /// `policy_id: message`, sorted.
    pub errors: Vec<String>,
    /// Set when the request could not be evaluated now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

impl Verdict {
    fn of(decision: &Decision) -> Self {
        Self {
            decision: if decision.allow { "allow" } else { "deny" }.to_string(),
            determining_policies: decision.determining_policies.clone(),
            errors: decision
                .errors
                .iter()
                .map(|e| format!("{}: {}", e.policy_id, e.message))
                .collect(),
            failure: None,
        }
    }

    fn recorded(record: &Json) -> Option<Self> {
        let strings = |v: &Json| -> Option<Vec<String>> {
            v.as_array()?
                .iter()
                .map(|s| s.as_str().map(str::to_string))
                .collect()
        };
        let mut errors: Vec<String> = record["errors"]
            .as_array()?
            .iter()
            .map(|e| {
                Some(format!(
                    "{}: {}",
                    e["policy_id"].as_str()?,
                    e["message"].as_str()?
                ))
            })
            .collect::<Option<_>>()?;
        errors.sort();
        let mut determining_policies = strings(&record["determining_policies"])?;
        determining_policies.sort();
        Some(Self {
            decision: record["decision"].as_str()?.to_string(),
            determining_policies,
            errors,
            failure: None,
        })
    }
}

/// A decision that came out differently.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub decision_id: String,
    pub seq: Option<u64>,
    pub old: Verdict,
    pub new: Verdict,
}

/// How a decision changed, flips first: a reviewer reads those before the
/// changes of reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Allowed then, denied (or refused) now.
    AllowToDeny,
    /// Denied then, allowed now.
    DenyToAllow,
    /// The same decision, for other reasons: other determining policies,
    /// other errors, or a refusal where there was a deny.
    ReasonOnly,
}

impl Difference {
    /// Whether the decision flipped, or only its reasons changed.
    pub fn change(&self) -> Change {
        match (self.old.decision.as_str(), self.new.decision.as_str()) {
            ("allow", "deny") => Change::AllowToDeny,
            ("deny", "allow") => Change::DenyToAllow,
            _ => Change::ReasonOnly,
        }
    }
}

/// The counts of a replay, in the order a summary gives them: flips, then
/// changes of reason only.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Records read.
    pub replayed: u64,
    /// Allowed then, denied or refused now.
    pub allow_to_deny: u64,
    /// Denied then, allowed now.
    pub deny_to_allow: u64,
    /// The same decision, with other determining policies or errors.
    pub reason_only: u64,
    /// Every difference: the flips and the reason-only changes.
    pub differ: u64,
    /// Records that cannot be evaluated again (refusals, masked values, a
    /// revision that cannot be rebuilt).
    pub not_replayable: u64,
}

impl Tally {
    /// Counts one replayed record.
    pub fn count(&mut self, replayed: &Replayed) {
        self.replayed += 1;
        match replayed {
            Replayed::Same => {}
            Replayed::Differs(d) => {
                self.differ += 1;
                match d.change() {
                    Change::AllowToDeny => self.allow_to_deny += 1,
                    Change::DenyToAllow => self.deny_to_allow += 1,
                    Change::ReasonOnly => self.reason_only += 1,
                }
            }
            Replayed::NotReplayable(_) => self.not_replayable += 1,
        }
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "replayed {} decisions: {} allow -> deny, {} deny -> allow, {} reason only, {} not replayable",
            self.replayed,
            self.allow_to_deny,
            self.deny_to_allow,
            self.reason_only,
            self.not_replayable
        )
    }
}

/// What replaying one record gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Replayed {
    Same,
    Differs(Box<Difference>),
    /// The record cannot be evaluated again, and why.
    NotReplayable(String),
}

/// Which policies records are evaluated against.
#[derive(Debug)]
pub enum PolicySource {
    /// One candidate set, for every record (impact analysis).
    Candidate(Arc<Snapshot>),
    /// The revision each record names, rebuilt from `dir`: its files as
    /// they are when they hash to that revision, or the recorded git
    /// commit when `dir` is in a checkout (provenance).
    Recorded { dir: PathBuf, load: LoadOptions },
}

/// Replays records against a [`PolicySource`].
#[derive(Debug)]
pub struct Replayer {
    source: PolicySource,
    on_forbid_error: OnForbidError,
    /// Snapshots by revision digest; `Err` when one cannot be rebuilt.
    revisions: HashMap<String, Result<Arc<Snapshot>, String>>,
    /// The last side file read, by digest: batch items share one.
    side: Option<(String, Arc<Vec<Json>>)>,
}

/// The digest part of a revision (`sha256:0123…` of `sha256:0123…+git:…`).
fn digest_of(revision: &str) -> &str {
    revision.split('+').next().unwrap_or(revision)
}

/// Loads the policy directory at `dir`.
pub fn load(dir: &Path, load: &LoadOptions) -> Result<Snapshot, ReplayError> {
    load_dir(dir, load).map_err(|e| ReplayError::Policies {
        dir: dir.display().to_string(),
        message: e.to_string(),
    })
}

impl Replayer {
    /// A replayer over `source`; `on_forbid_error` must be the server's.
    pub fn new(source: PolicySource, on_forbid_error: OnForbidError) -> Self {
        Self {
            source,
            on_forbid_error,
            revisions: HashMap::new(),
            side: None,
        }
    }

    /// Evaluates `record` (from the log file `log`) again and compares.
    pub fn replay(&mut self, record: &Json, log: &Path) -> Replayed {
        match self.try_replay(record, log) {
            Ok(r) => r,
            Err(reason) => Replayed::NotReplayable(reason),
        }
    }

    fn try_replay(&mut self, record: &Json, log: &Path) -> Result<Replayed, String> {
        if record.get("error").is_some_and(|e| !e.is_null()) {
            return Err("the request was refused: no decision to reproduce".to_string());
        }
        if record["replayable"] == Json::Bool(false) {
            return Err("masking hid a value the evaluation saw".to_string());
        }
        if record.get("entities").is_none() {
            return Err("written before records carried their entities".to_string());
        }
        let old = Verdict::recorded(record).ok_or("the record's outcome is malformed")?;
        let snapshot = self.snapshot(record)?;
        let uid = |field: &str| -> Result<EntityUid, String> {
            let v = &record[field];
            let (Some(t), Some(id)) = (v["type"].as_str(), v["id"].as_str()) else {
                return Err(format!("`{field}` is not an entity uid"));
            };
            let t = EntityTypeName::from_str(t).map_err(|e| format!("`{field}.type`: {e}"))?;
            Ok(EntityUid::from_type_name_and_id(t, EntityId::new(id)))
        };
        let Json::Object(context) = record["context"].clone() else {
            return Err("`context` is not an object".to_string());
        };
        let entities = self.entities(&record["entities"], log)?;
        let mut properties = Vec::new();
        for offered in record["properties"].as_array().into_iter().flatten() {
            let t = offered["uid"]["type"].as_str().unwrap_or_default();
            let t =
                EntityTypeName::from_str(t).map_err(|e| format!("`properties.uid.type`: {e}"))?;
            let id = EntityId::new(offered["uid"]["id"].as_str().unwrap_or_default());
            let attrs = offered["attrs"].as_object().cloned().unwrap_or_default();
            properties.push((EntityUid::from_type_name_and_id(t, id), attrs));
        }
        let query = Query {
            principal: uid("principal")?,
            action: uid("action")?,
            resource: uid("resource")?,
            context,
            entities: entities.as_ref().clone(),
            properties,
        };
        let shared = match record.get("shared_entities") {
            None | Some(Json::Null) => None,
            Some(set) => {
                let json = self.entities(set, log)?;
                Some(SharedEntities::parse(
                    &snapshot.engine,
                    json.as_ref().clone(),
                ))
            }
        };
        // Time-bound template links are judged at the time the decision was
        // made, not now: a grant that has since expired still explains it.
        let clock = record["timestamp"]
            .as_str()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            .map_or_else(Clock::system, Clock::at);
        let new = match shared {
            Some(Err(e)) => failed(&e.to_string()),
            Some(Ok(shared)) => Self::decide(
                &snapshot,
                query,
                Scratch::new(self.on_forbid_error)
                    .at(clock)
                    .shared(Some(&shared)),
            ),
            None => Self::decide(
                &snapshot,
                query,
                Scratch::new(self.on_forbid_error).at(clock),
            ),
        };
        if new == old {
            return Ok(Replayed::Same);
        }
        Ok(Replayed::Differs(Box::new(Difference {
            decision_id: record["decision_id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            seq: record["seq"].as_u64(),
            old,
            new,
        })))
    }

    fn decide(snapshot: &Snapshot, query: Query, mut scratch: Scratch<'_>) -> Verdict {
        match snapshot.engine.decide(query, &mut scratch) {
            Ok(decision) => {
                let mut v = Verdict::of(&decision);
                v.errors.sort();
                v
            }
            Err(e) => failed(&e.to_string()),
        }
    }

    /// An entity set as recorded: inline, or `{"sha256"}` in a side file.
    fn entities(&mut self, set: &Json, log: &Path) -> Result<Arc<Vec<Json>>, String> {
        match set {
            Json::Array(items) => Ok(Arc::new(items.clone())),
            Json::Object(map) => {
                let Some(digest) = map.get("sha256").and_then(Json::as_str) else {
                    return Err("an entity set is neither inline nor a digest".to_string());
                };
                if let Some((d, json)) = &self.side
                    && d == digest
                {
                    return Ok(Arc::clone(json));
                }
                let path = side_file(log, digest);
                let bytes = std::fs::read(&path)
                    .map_err(|e| format!("side file `{}`: {e}", path.display()))?;
                let found = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
                if found != digest {
                    return Err(format!(
                        "side file `{}` does not match its digest",
                        path.display()
                    ));
                }
                let json: Vec<Json> = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("side file `{}`: {e}", path.display()))?;
                let json = Arc::new(json);
                self.side = Some((digest.to_string(), Arc::clone(&json)));
                Ok(json)
            }
            _ => Err("an entity set is neither inline nor a digest".to_string()),
        }
    }

    fn snapshot(&mut self, record: &Json) -> Result<Arc<Snapshot>, String> {
        let (dir, load) = match &self.source {
            PolicySource::Candidate(snapshot) => return Ok(Arc::clone(snapshot)),
            PolicySource::Recorded { dir, load } => (dir.clone(), load.clone()),
        };
        let revision = record["policy_revision"].as_str().unwrap_or_default();
        let digest = digest_of(revision).to_string();
        let commit = record["policy_commit"].as_str().map(str::to_string);
        self.revisions
            .entry(digest.clone())
            .or_insert_with(|| rebuild(&dir, &load, &digest, commit.as_deref()).map(Arc::new))
            .clone()
    }
}

fn failed(message: &str) -> Verdict {
    Verdict {
        decision: "deny".to_string(),
        determining_policies: Vec::new(),
        errors: Vec::new(),
        failure: Some(message.to_string()),
    }
}

/// Where the side file of `digest` beside `log` is: rotated files
/// (`decisions.log.3`) share the live file's (`decisions.log.entities/`).
pub fn side_file(log: &Path, digest: &str) -> PathBuf {
    let beside = |log: &Path| {
        let mut dir = log.as_os_str().to_os_string();
        dir.push(SIDE_DIR_SUFFIX);
        PathBuf::from(dir).join(format!("{digest}.json"))
    };
    let own = beside(log);
    let rotated = log
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()));
    if own.exists() || !rotated {
        return own;
    }
    beside(&log.with_extension(""))
}

/// The snapshot of revision `digest`: `dir` as it is when it hashes to it,
/// else `commit`'s tree of `dir`, checked against it.
fn rebuild(
    dir: &Path,
    load: &LoadOptions,
    digest: &str,
    commit: Option<&str>,
) -> Result<Snapshot, String> {
    if let Ok(sources) = read_dir(dir)
        && digest_of(&sources.revision()) == digest
    {
        return build(sources, load, 1).map_err(|e| e.to_string());
    }
    let Some(commit) = commit else {
        return Err(format!(
            "revision `{digest}` is not the one in `{}`, and no git commit was recorded",
            dir.display()
        ));
    };
    let tmp = tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
    checkout(dir, commit, &tmp.0).map_err(|e| format!("git commit `{commit}`: {e}"))?;
    let snapshot = load_dir(&tmp.0, load).map_err(|e| e.to_string())?;
    if digest_of(&snapshot.revision) != digest {
        return Err(format!(
            "git commit `{commit}` does not hash to revision `{digest}` (the files were changed from the commit)"
        ));
    }
    Ok(snapshot)
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> io::Result<TempDir> {
    let dir = std::env::temp_dir().join(format!("cedar-pdp-replay-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir(&dir)?;
    Ok(TempDir(dir))
}

/// Writes the tree of `commit` under `dir`'s place in its repository to
/// `out`, with gix: no `git` binary.
fn checkout(dir: &Path, commit: &str, out: &Path) -> Result<(), String> {
    let repo = gix::discover(dir).map_err(|e| e.to_string())?;
    let id = gix::ObjectId::from_hex(commit.as_bytes()).map_err(|e| e.to_string())?;
    let tree = repo
        .find_commit(id)
        .map_err(|e| e.to_string())?
        .tree()
        .map_err(|e| e.to_string())?;
    let workdir = repo.workdir().ok_or("a bare repository")?;
    let workdir = std::fs::canonicalize(workdir).map_err(|e| e.to_string())?;
    let here = std::fs::canonicalize(dir).map_err(|e| e.to_string())?;
    let prefix = here.strip_prefix(&workdir).map_err(|e| e.to_string())?;
    let tree = if prefix.as_os_str().is_empty() {
        tree
    } else {
        tree.lookup_entry_by_path(prefix)
            .map_err(|e| e.to_string())?
            .ok_or("the policy directory is not in that commit")?
            .object()
            .map_err(|e| e.to_string())?
            .try_into_tree()
            .map_err(|e| e.to_string())?
    };
    write_tree(&tree, out, 0)
}

fn write_tree(tree: &gix::Tree<'_>, out: &Path, depth: usize) -> Result<(), String> {
    if depth > crate::policy_store::MAX_DEPTH {
        return Err("the tree is too deep".to_string());
    }
    for entry in tree.iter() {
        let entry = entry.map_err(|e| e.to_string())?;
        let name = entry.filename().to_string();
        if name.contains('/') || name == ".." || name == "." {
            return Err(format!("a tree entry named `{name}`"));
        }
        let path = out.join(&name);
        let mode = entry.mode();
        if mode.is_tree() {
            std::fs::create_dir(&path).map_err(|e| e.to_string())?;
            let sub = entry
                .object()
                .map_err(|e| e.to_string())?
                .try_into_tree()
                .map_err(|e| e.to_string())?;
            write_tree(&sub, &path, depth + 1)?;
        } else if mode.is_blob() {
            let blob = entry.object().map_err(|e| e.to_string())?;
            std::fs::write(&path, &blob.data).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// One record of a log, with where it is.
#[derive(Debug)]
pub struct Entry {
    pub file: PathBuf,
    pub line: u64,
    pub record: Json,
}

/// Streams the decision records of `files` (checkpoints and head files are
/// skipped), file by file.
pub fn records(files: &[PathBuf]) -> impl Iterator<Item = Result<Entry, ReplayError>> + '_ {
    files.iter().flat_map(|path| FileRecords::open(path))
}

/// The records of one file; an error ends it.
struct FileRecords {
    path: PathBuf,
    reader: Option<BufReader<File>>,
    error: Option<ReplayError>,
    line: u64,
}

impl FileRecords {
    fn open(path: &Path) -> Self {
        let (reader, error) = match File::open(path) {
            Ok(f) => (Some(BufReader::with_capacity(256 * 1024, f)), None),
            Err(source) => (
                None,
                Some(ReplayError::Io {
                    path: path.display().to_string(),
                    source,
                }),
            ),
        };
        Self {
            path: path.to_path_buf(),
            reader,
            error,
            line: 0,
        }
    }
}

impl Iterator for FileRecords {
    type Item = Result<Entry, ReplayError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.error.take() {
            return Some(Err(e));
        }
        let reader = self.reader.as_mut()?;
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(source) => {
                    self.reader = None;
                    return Some(Err(ReplayError::Io {
                        path: self.path.display().to_string(),
                        source,
                    }));
                }
            }
            self.line += 1;
            if buf.last() == Some(&b'\n') {
                buf.pop();
            }
            let record = match chain::parse_line(&buf) {
                chain::Line::Record(r) => r.json,
                // Records of logs from before the chain replay too.
                chain::Line::Unchained => match serde_json::from_slice::<Json>(&buf) {
                    Ok(json) if json.get("decision_id").is_some() => json,
                    _ => continue,
                },
                _ => continue,
            };
            return Some(Ok(Entry {
                file: self.path.clone(),
                line: self.line,
                record,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    /// A decision a grant allowed replays the same after the grant
    /// expired: links are judged at the record's time, not now.
    #[test]
    fn links_are_judged_at_the_recorded_time() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("t.cedar"),
            r#"@id("t") permit (principal == ?principal, action, resource);"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("g.links.json"),
            r#"[{"id": "grant", "template": "t", "slots": {"?principal": "User::\"a\""},
                 "not_before": "2020-01-01T00:00:00Z", "expires_at": "2020-01-02T00:00:00Z"}]"#,
        )
        .unwrap();
        let snapshot = Arc::new(load(dir.path(), &LoadOptions::default()).unwrap());
        let mut replayer = Replayer::new(PolicySource::Candidate(snapshot), OnForbidError::Deny);
        let record = |timestamp: &str| {
            serde_json::json!({
                "timestamp": timestamp,
                "principal": {"type": "User", "id": "a"},
                "action": {"type": "Action", "id": "read"},
                "resource": {"type": "Doc", "id": "d"},
                "context": {}, "entities": [],
                "decision": "allow", "determining_policies": ["grant"], "errors": [],
            })
        };
        let log = Path::new("decisions.log");
        let inside = record("2020-01-01T12:00:00.000000Z");
        assert_eq!(replayer.replay(&inside, log), Replayed::Same);
        let after = record("2020-01-02T00:00:00.000000Z");
        let Replayed::Differs(d) = replayer.replay(&after, log) else {
            unreachable!("an allow after expiry replays as a deny");
        };
        assert_eq!(d.new.decision, "deny");
    }

    fn verdict(decision: &str, policies: &[&str], failure: Option<&str>) -> Verdict {
        Verdict {
            decision: decision.to_string(),
            determining_policies: policies.iter().map(ToString::to_string).collect(),
            errors: Vec::new(),
            failure: failure.map(str::to_string),
        }
    }

    fn differs(old: Verdict, new: Verdict) -> Replayed {
        Replayed::Differs(Box::new(Difference {
            decision_id: "d".to_string(),
            seq: None,
            old,
            new,
        }))
    }

    #[test]
    fn a_summary_counts_flips_apart_from_reason_only_changes() {
        let mut tally = Tally::default();
        let allow = |p: &[&str]| verdict("allow", p, None);
        let deny = |p: &[&str]| verdict("deny", p, None);
        for replayed in [
            Replayed::Same,
            differs(allow(&["a"]), deny(&["f"])),
            // A refusal now is a deny now.
            differs(allow(&["a"]), verdict("deny", &[], Some("bad"))),
            differs(deny(&[]), allow(&["a"])),
            differs(deny(&[]), deny(&["f"])),
            differs(allow(&["a"]), allow(&["b"])),
            differs(deny(&["f"]), verdict("deny", &[], Some("bad"))),
            Replayed::NotReplayable("masked".to_string()),
        ] {
            tally.count(&replayed);
        }
        assert_eq!(
            tally,
            Tally {
                replayed: 8,
                allow_to_deny: 2,
                deny_to_allow: 1,
                reason_only: 3,
                differ: 6,
                not_replayable: 1,
            }
        );
        assert_eq!(
            tally.to_string(),
            "replayed 8 decisions: 2 allow -> deny, 1 deny -> allow, 3 reason only, 1 not replayable"
        );
        // JSON keeps the same order: flips first.
        let json = serde_json::to_string(&tally).unwrap();
        let at = |key: &str| json.find(key).unwrap();
        assert!(at("allow_to_deny") < at("deny_to_allow"), "{json}");
        assert!(at("deny_to_allow") < at("reason_only"), "{json}");
    }
}
