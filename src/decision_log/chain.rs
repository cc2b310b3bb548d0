//! The hash chain and its signed checkpoints.
//!
//! Every record carries `seq` (one more than the record before it, across
//! rotation and restart) and `prev_hash` (the `hash` of the record before it;
//! [`GENESIS`] for seq 1). Its `hash` is the SHA-256 of its canonical JSON
//! (see `canonical`) without the `hash` member, which is written last on the
//! line: `{...canonical record...,"hash":"<hex>"}`. A checker can strip that
//! member from the line and hash the rest, byte for byte.
//!
//! A checkpoint is a line `{"checkpoint":{hash,instance,key_id,seq,
//! timestamp},"signature":<base64>}`: an Ed25519 signature over the
//! canonical JSON of the `checkpoint` object, which names the last record
//! written before it. Two more marks have the same shape: `start`, the
//! first line of every file, names the record before the file
//! (`prev_seq`, `prev_hash`; 0 and [`GENESIS`] at the chain's beginning),
//! and `gap` names records the writer linked but could not write
//! (`first_seq`..`last_seq`, and `hash`, the last one's). Every mark names
//! the log's `instance`, so one replica's log never passes for another's.
//!
//! The request path serializes a record once, canonically, without `seq`
//! and `prev_hash` ([`Body`]); the writer thread, which alone knows the
//! order, splices them in at their sorted places and hashes the result.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use ring::signature::{self, Ed25519KeyPair, KeyPair as _};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};
use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};

use super::canonical::{self, key_order};
use super::fsync;
use super::record::{DecisionRecord, EntitySet};

/// The `prev_hash` of the first record of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The members the writer adds, in canonical order between the others.
const PREV_HASH: &str = "prev_hash";
const SEQ: &str = "seq";
const HASH: &str = "hash";

/// `,"hash":"` + 64 hex digits + `"}`: how every record line ends.
const HASH_SUFFIX_LEN: usize = 9 + 64 + 2;

/// A record serialized canonically, without the members the writer adds:
/// three runs of comma-separated members, split where `prev_hash` and `seq`
/// belong.
#[derive(Debug)]
pub struct Body {
    bytes: Vec<u8>,
    cuts: [usize; 2],
    /// Side files the record names: digest and contents.
    pub(super) side: Vec<(String, Arc<Vec<u8>>)>,
}

impl Body {
    /// Serializes `record` canonically.
    pub fn of(record: &DecisionRecord) -> Result<Self, serde_json::Error> {
        let value = serde_json::to_value(record)?;
        let Json::Object(map) = value else {
            return Err(serde::ser::Error::custom("a record is a JSON object"));
        };
        let mut bytes = Vec::with_capacity(512);
        let mut cuts = [0usize; 2];
        let mut segment = 0;
        let mut segment_start = 0;
        for (key, value) in canonical::sorted(&map) {
            // The writer's own members are never taken from the record.
            if [PREV_HASH, SEQ, HASH].contains(&key) {
                continue;
            }
            while segment < 2 && key_order(key, [PREV_HASH, SEQ][segment]).is_gt() {
                cuts[segment] = bytes.len();
                segment_start = bytes.len();
                segment += 1;
            }
            if bytes.len() > segment_start {
                bytes.push(b',');
            }
            canonical::member(key, value, &mut bytes)?;
        }
        while segment < 2 {
            cuts[segment] = bytes.len();
            segment += 1;
        }
        let side = [&record.entities, &record.shared_entities]
            .into_iter()
            .flatten()
            .filter_map(|set| match set {
                EntitySet::Stored { sha256, bytes } => Some((sha256.clone(), Arc::clone(bytes))),
                EntitySet::Inline(_) => None,
            })
            .collect();
        Ok(Self { bytes, cuts, side })
    }

    /// About the bytes its line (and its side files) will take.
    pub(super) fn len(&self) -> usize {
        self.bytes.len() + 180 + self.side.iter().map(|(_, b)| b.len()).sum::<usize>()
    }
}

/// The last record of a chain: what the next one links to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
}

impl Head {
    /// The head of an empty chain.
    pub fn genesis() -> Self {
        Self {
            seq: 0,
            hash: GENESIS.to_string(),
        }
    }
}

/// The writer's end of the chain.
#[derive(Debug)]
pub struct Chain {
    head: Head,
    line: Vec<u8>,
}

impl Chain {
    /// A chain whose next record follows `head`.
    pub fn new(head: Head) -> Self {
        Self {
            head,
            line: Vec::with_capacity(1024),
        }
    }

    /// The last record linked.
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// The next record's line, `\n` included: `body` with `seq` and
    /// `prev_hash` spliced in, and its hash appended.
    pub fn link(&mut self, body: &Body) -> &[u8] {
        let seq = self.head.seq + 1;
        let line = &mut self.line;
        line.clear();
        line.push(b'{');
        let (a, rest) = body.bytes.split_at(body.cuts[0]);
        let (b, c) = rest.split_at(body.cuts[1] - body.cuts[0]);
        let prev = format!("\"{PREV_HASH}\":\"{}\"", self.head.hash);
        let seq_member = format!("\"{SEQ}\":{seq}");
        let mut first = true;
        for piece in [a, prev.as_bytes(), b, seq_member.as_bytes(), c] {
            if piece.is_empty() {
                continue;
            }
            if !first {
                line.push(b',');
            }
            line.extend_from_slice(piece);
            first = false;
        }
        line.push(b'}');
        let hash = hex::encode(Sha256::digest(&line[..]));
        line.pop();
        line.extend_from_slice(format!(",\"{HASH}\":\"{hash}\"}}\n").as_bytes());
        self.head = Head { seq, hash };
        &self.line
    }
}

/// Why a signing or public key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("`{path}` holds no {what} PEM block: {detail}")]
    Pem {
        path: String,
        what: &'static str,
        detail: String,
    },
    #[error("`{path}` is not an Ed25519 {what}: {detail}")]
    NotEd25519 {
        path: String,
        what: &'static str,
        detail: String,
    },
}

fn read_key(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// A key's id, as checkpoints name it: the first 16 hex digits of the
/// SHA-256 of its raw 32-byte public key.
fn key_id(public: &[u8]) -> String {
    hex::encode(Sha256::digest(public))[..16].to_string()
}

/// What signs checkpoints: `decision_log.signing_key`.
#[derive(Debug)]
pub struct Signer {
    key: Ed25519KeyPair,
    key_id: String,
}

impl Signer {
    /// Reads an Ed25519 private key in PKCS#8 PEM (`openssl genpkey
    /// -algorithm ed25519`).
    pub fn from_pem_file(path: &Path) -> Result<Self, KeyError> {
        let pem = read_key(path)?;
        let der = PrivatePkcs8KeyDer::from_pem_slice(&pem).map_err(|e| KeyError::Pem {
            path: path.display().to_string(),
            what: "`PRIVATE KEY`",
            detail: e.to_string(),
        })?;
        let key =
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der()).map_err(|e| {
                KeyError::NotEd25519 {
                    path: path.display().to_string(),
                    what: "private key",
                    detail: e.to_string(),
                }
            })?;
        let key_id = key_id(key.public_key().as_ref());
        Ok(Self { key, key_id })
    }

    /// The id checkpoints name this key by.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// A signed checkpoint line for `head`, `\n` included.
    pub fn checkpoint(&self, head: &Head, timestamp: &str, instance: &str) -> Vec<u8> {
        let body = json!({
            "seq": head.seq,
            "hash": head.hash,
            "timestamp": timestamp,
            "instance": instance,
        });
        mark_line(Some(self), CHECKPOINT, body)
    }
}

const CHECKPOINT: &str = "checkpoint";
/// The first line of every file.
pub(super) const START: &str = "start";
/// Records linked but never written.
pub(super) const GAP: &str = "gap";

/// The line of a mark (`start`, `gap`, `checkpoint`), `\n` included:
/// `body` in canonical JSON under `tag`, signed when there is a `signer`.
pub(super) fn mark_line(signer: Option<&Signer>, tag: &str, mut body: Json) -> Vec<u8> {
    if let Some(signer) = signer {
        body["key_id"] = Json::String(signer.key_id.clone());
    }
    // INVARIANT: strings and integers always serialize.
    let signed = canonical::to_vec(&body).unwrap_or_default();
    let mut line = Vec::with_capacity(signed.len() + 120);
    line.extend_from_slice(format!("{{\"{tag}\":").as_bytes());
    line.extend_from_slice(&signed);
    if let Some(signer) = signer {
        let signature = signer.key.sign(&signed);
        let signature = base64::engine::general_purpose::STANDARD.encode(signature.as_ref());
        line.extend_from_slice(format!(",\"signature\":\"{signature}\"").as_bytes());
    }
    line.extend_from_slice(b"}\n");
    line
}

/// A new log's instance id: a UUIDv7, so ids sort by when logs began.
pub(super) fn new_instance() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A key checkpoints are verified with: `log verify --public-key`.
#[derive(Clone, Debug)]
pub struct PublicKey {
    raw: Vec<u8>,
    key_id: String,
}

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): the key's
/// 32 bytes follow it.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

impl PublicKey {
    /// Reads an Ed25519 public key in SPKI PEM (`openssl pkey -pubout`).
    pub fn from_pem_file(path: &Path) -> Result<Self, KeyError> {
        let pem = read_key(path)?;
        let der = SubjectPublicKeyInfoDer::from_pem_slice(&pem).map_err(|e| KeyError::Pem {
            path: path.display().to_string(),
            what: "`PUBLIC KEY`",
            detail: e.to_string(),
        })?;
        let raw = der
            .strip_prefix(&ED25519_SPKI_PREFIX[..])
            .filter(|raw| raw.len() == 32)
            .ok_or_else(|| KeyError::NotEd25519 {
                path: path.display().to_string(),
                what: "public key",
                detail: "the key is of another algorithm".to_string(),
            })?
            .to_vec();
        let key_id = key_id(&raw);
        Ok(Self { raw, key_id })
    }

    /// The id checkpoints signed by this key carry.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Whether `signature` is this key's over `message`.
    pub(crate) fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        signature::UnparsedPublicKey::new(&signature::ED25519, &self.raw)
            .verify(message, signature)
            .is_ok()
    }
}

/// One line of a decision log, understood.
#[derive(Debug)]
pub(crate) enum Line {
    Record(RecordLine),
    Checkpoint(CheckpointLine),
    /// The first line of a file.
    Start(Mark),
    /// Records the writer linked but could not write.
    Gap(Mark),
    /// The `.head` file's one line, and the log's instance if it names one.
    Head(Head, Option<String>),
    /// JSON without chain members: a record from before the chain, or one
    /// written by hand.
    Unchained,
    /// Not JSON, or not the shape of any line the writer writes.
    Invalid(String),
}

/// A record's chain members, and whether its hash holds.
#[derive(Debug)]
pub(crate) struct RecordLine {
    pub seq: u64,
    pub prev_hash: String,
    pub hash: String,
    /// The hash is the SHA-256 of the line without its `hash` member.
    pub hash_ok: bool,
    /// The whole record.
    pub json: Json,
}

/// A checkpoint, with the bytes its signature covers.
#[derive(Debug)]
pub(crate) struct CheckpointLine {
    pub head: Head,
    pub key_id: String,
    /// `None` in checkpoints written before instances.
    pub instance: Option<String>,
    pub signed: Vec<u8>,
    pub signature: Option<Vec<u8>>,
}

/// A `start` or `gap` mark: its members, and the bytes its signature
/// covers.
#[derive(Debug)]
pub(crate) struct Mark {
    pub body: Json,
    pub key_id: Option<String>,
    pub signed: Vec<u8>,
    pub signature: Option<Vec<u8>>,
}

impl Mark {
    pub(crate) fn seq(&self, key: &str) -> Option<u64> {
        self.body.get(key).and_then(Json::as_u64)
    }

    pub(crate) fn text(&self, key: &str) -> Option<&str> {
        self.body.get(key).and_then(Json::as_str)
    }

    /// The chain position it names: `prev_*` of a start, `last_seq` and
    /// `hash` of a gap.
    pub(crate) fn names(&self, seq: &str, hash: &str) -> Option<Head> {
        let h = self.text(hash).filter(|h| is_hex64(h))?;
        Some(Head {
            seq: self.seq(seq)?,
            hash: h.to_string(),
        })
    }
}

fn signature_of(map: &serde_json::Map<String, Json>) -> Option<Vec<u8>> {
    map.get("signature")
        .and_then(Json::as_str)
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Parses one line (without its `\n`).
pub(crate) fn parse_line(bytes: &[u8]) -> Line {
    let json: Json = match serde_json::from_slice(bytes) {
        Ok(json) => json,
        Err(e) => return Line::Invalid(format!("not JSON: {e}")),
    };
    let Json::Object(map) = &json else {
        return Line::Invalid("not a JSON object".to_string());
    };
    if let Some(head) = map.get("chain_head") {
        let instance = head["instance"].as_str().map(str::to_string);
        return match head_of(head) {
            Some(head) => Line::Head(head, instance),
            None => Line::Invalid("a `chain_head` without `seq` and `hash`".to_string()),
        };
    }
    if let Some(cp) = map.get(CHECKPOINT) {
        let Some(head) = head_of(cp) else {
            return Line::Invalid("a checkpoint without `seq` and `hash`".to_string());
        };
        let key_id = cp["key_id"].as_str().unwrap_or_default().to_string();
        return Line::Checkpoint(CheckpointLine {
            head,
            key_id,
            instance: cp["instance"].as_str().map(str::to_string),
            signed: canonical::to_vec(cp).unwrap_or_default(),
            signature: signature_of(map),
        });
    }
    for (tag, wrap) in [(START, Line::Start as fn(Mark) -> Line), (GAP, Line::Gap)] {
        if let Some(body) = map.get(tag) {
            if !body.is_object() {
                return Line::Invalid(format!("a `{tag}` that is not an object"));
            }
            return wrap(Mark {
                key_id: body["key_id"].as_str().map(str::to_string),
                signed: canonical::to_vec(body).unwrap_or_default(),
                signature: signature_of(map),
                body: body.clone(),
            });
        }
    }
    let (Some(seq), Some(prev_hash), Some(hash)) = (
        map.get(SEQ).and_then(Json::as_u64),
        map.get(PREV_HASH).and_then(Json::as_str),
        map.get(HASH).and_then(Json::as_str),
    ) else {
        return if map.contains_key(SEQ) || map.contains_key(HASH) {
            Line::Invalid("chain members `seq`, `prev_hash`, `hash` are malformed".to_string())
        } else {
            Line::Unchained
        };
    };
    let hash_ok = is_hex64(hash) && hashed_part(bytes).is_some_and(|h| h == hash);
    Line::Record(RecordLine {
        seq,
        prev_hash: prev_hash.to_string(),
        hash: hash.to_string(),
        hash_ok,
        json,
    })
}

/// The SHA-256 of a record line without its trailing `hash` member, if it
/// ends with one.
fn hashed_part(line: &[u8]) -> Option<String> {
    let cut = line.len().checked_sub(HASH_SUFFIX_LEN)?;
    let (head, suffix) = line.split_at(cut);
    if !suffix.starts_with(b",\"hash\":\"") || !suffix.ends_with(b"\"}") {
        return None;
    }
    let mut hasher = Sha256::new();
    hasher.update(head);
    hasher.update(b"}");
    Some(hex::encode(hasher.finalize()))
}

fn head_of(value: &Json) -> Option<Head> {
    let seq = value.get(SEQ)?.as_u64()?;
    let hash = value.get(HASH)?.as_str().filter(|h| is_hex64(h))?;
    Some(Head {
        seq,
        hash: hash.to_string(),
    })
}

/// The `.head` file beside a log: the chain head as of the last sync.
pub(crate) fn head_path(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_os_string();
    name.push(".head");
    PathBuf::from(name)
}

/// Writes `head` to `path` durably: a temporary file, fsynced, renamed over
/// it, and the directory fsynced.
pub(super) fn write_head(path: &Path, head: &Head, instance: &str) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let line = format!(
        "{{\"chain_head\":{{\"hash\":\"{}\",\"instance\":{},\"seq\":{}}}}}\n",
        head.hash,
        Json::String(instance.to_string()),
        head.seq
    );
    {
        let mut file = File::create(&tmp)?;
        io::Write::write_all(&mut file, line.as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    fsync::dir(path)
}

/// Where a resumed chain stands.
#[derive(Debug)]
pub(super) struct Resumed {
    pub head: Head,
    /// The log's last line is a checkpoint of `head`.
    pub covered: bool,
    /// The log's instance, from its `.head` file or its live file's start;
    /// `None`: a new log, or one from before instances.
    pub instance: Option<String>,
}

impl Resumed {
    /// A new chain.
    pub(super) fn genesis() -> Self {
        Self {
            head: Head::genesis(),
            covered: false,
            instance: None,
        }
    }
}

/// Why an existing log cannot be continued.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error("cannot read `{path}`: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "the last line of `{path}` is not a decision record ({reason}); its chain cannot be continued: move the file aside"
    )]
    NotARecord { path: String, reason: String },
    #[error(
        "the last record of `{path}` (seq {seq}) does not match its hash: the log was changed since it was written; move the file aside and check it with `cedar-pdp log verify`"
    )]
    Tampered { path: String, seq: u64 },
}

/// The chain head of the log at `path`, to continue it: from the last line
/// of the live file (or of `path.1`, when rotation left the live file
/// empty) and the `.head` file, whichever is further on. A last line cut
/// off by a crash (no `\n`) is removed first: it was never a whole record.
pub(super) fn resume(path: &Path) -> Result<Resumed, ResumeError> {
    let io_error = |source| ResumeError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut from_log = match tail(path, true).map_err(io_error)? {
        Some(last) => Some(interpret(path, &last)?),
        None => None,
    };
    if from_log.is_none() {
        let mut rotated = path.as_os_str().to_os_string();
        rotated.push(".1");
        let rotated = PathBuf::from(rotated);
        if let Some(last) = tail(&rotated, false).map_err(io_error)? {
            from_log = Some(interpret(&rotated, &last)?);
        }
    }
    let from_log = from_log.flatten();
    let head_file = head_path(path);
    let mut instance = first_start(path).map_err(io_error)?;
    let from_head = match std::fs::read(&head_file) {
        Ok(bytes) => match parse_line(bytes.trim_ascii_end()) {
            Line::Head(head, named) => {
                instance = instance.or(named);
                Some(head)
            }
            _ => {
                tracing::warn!(file = %head_file.display(), "decision log head file is unreadable; ignored");
                None
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(ResumeError::Io {
                path: head_file.display().to_string(),
                source,
            });
        }
    };
    let mut resumed = match (from_log, from_head) {
        (Some(log), Some(head)) if head.seq > log.head.seq => {
            tracing::warn!(
                log_seq = log.head.seq,
                head_seq = head.seq,
                "the decision log ends before its last synced record: records were removed; the chain continues after them, so `log verify` shows the gap"
            );
            Resumed {
                head,
                ..Resumed::genesis()
            }
        }
        (Some(log), _) => log,
        (None, Some(head)) => Resumed {
            head,
            ..Resumed::genesis()
        },
        (None, None) => Resumed::genesis(),
    };
    resumed.instance = instance;
    Ok(resumed)
}

/// The instance the start line of the live file names (or of `path.1`,
/// when rotation left the live file empty).
fn first_start(path: &Path) -> io::Result<Option<String>> {
    let mut rotated = path.as_os_str().to_os_string();
    rotated.push(".1");
    for file in [path.to_path_buf(), PathBuf::from(rotated)] {
        match start_of(&file)? {
            None => continue,
            Some(Line::Start(mark)) => return Ok(mark.text("instance").map(str::to_string)),
            Some(_) => return Ok(None),
        }
    }
    Ok(None)
}

/// The first line of the file at `path`, understood; `None` when it is
/// missing or empty.
fn start_of(path: &Path) -> io::Result<Option<Line>> {
    // A pipe or a device has no first line to read back (and opening a
    // FIFO to read would wait for a writer).
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut line = Vec::new();
    match File::open(path) {
        Ok(f) => {
            io::BufRead::read_until(&mut io::BufReader::new(f.take(64 * 1024)), b'\n', &mut line)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    }
    Ok((!line.is_empty()).then(|| parse_line(line.trim_ascii_end())))
}

/// When the file at `path` started, from its start line.
pub(super) fn started_at(path: &Path) -> Option<std::time::SystemTime> {
    match start_of(path).ok()?? {
        Line::Start(mark) => humantime::parse_rfc3339(mark.text("timestamp")?).ok(),
        _ => None,
    }
}

/// What a log's last line says about its chain; `None` for a record from
/// before the chain (a new chain starts).
fn interpret(path: &Path, last: &[u8]) -> Result<Option<Resumed>, ResumeError> {
    match parse_line(last) {
        Line::Checkpoint(cp) => Ok(Some(Resumed {
            head: cp.head,
            covered: true,
            instance: None,
        })),
        Line::Record(r) if r.hash_ok => Ok(Some(Resumed {
            head: Head {
                seq: r.seq,
                hash: r.hash,
            },
            ..Resumed::genesis()
        })),
        // A start or gap last: the chain goes on from what it names.
        Line::Start(mark) | Line::Gap(mark) => {
            let named = mark
                .names("prev_seq", "prev_hash")
                .or_else(|| mark.names("last_seq", "hash"));
            match named {
                Some(head) => Ok(Some(Resumed {
                    head,
                    ..Resumed::genesis()
                })),
                None => Err(ResumeError::NotARecord {
                    path: path.display().to_string(),
                    reason: "a start or gap line that names no record".to_string(),
                }),
            }
        }
        Line::Record(r) => Err(ResumeError::Tampered {
            path: path.display().to_string(),
            seq: r.seq,
        }),
        Line::Unchained => {
            tracing::warn!(file = %path.display(), "the decision log holds records from before the hash chain; a new chain starts at seq 1");
            Ok(None)
        }
        Line::Head(..) => Err(ResumeError::NotARecord {
            path: path.display().to_string(),
            reason: "a chain head".to_string(),
        }),
        Line::Invalid(reason) => Err(ResumeError::NotARecord {
            path: path.display().to_string(),
            reason,
        }),
    }
}

/// The last whole line of the file at `path` (without `\n`), `None` when
/// it has none or does not exist. With `repair`, a trailing fragment
/// without `\n` is cut off the file.
fn tail(path: &Path, repair: bool) -> io::Result<Option<Vec<u8>>> {
    const CHUNK: u64 = 64 * 1024;
    let mut file = match OpenOptions::new().read(true).write(repair).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let mut start = len;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let last_nl = buf.iter().rposition(|b| *b == b'\n');
        if let Some(end) = last_nl {
            let begin = buf[..end].iter().rposition(|b| *b == b'\n');
            if begin.is_some() || start == 0 {
                let whole_end = start + end as u64 + 1;
                if whole_end < len {
                    if !repair {
                        return Err(io::Error::other("the file ends in a cut-off line"));
                    }
                    tracing::warn!(
                        file = %path.display(),
                        bytes = len - whole_end,
                        "decision log: removing a last line cut off by a crash"
                    );
                    file.set_len(whole_end)?;
                    file.sync_all()?;
                }
                let line = buf[begin.map_or(0, |b| b + 1)..end].to_vec();
                return Ok(Some(line));
            }
        } else if start == 0 {
            // No whole line: the file is one fragment, or empty.
            if len > 0 {
                if !repair {
                    return Err(io::Error::other("the file ends in a cut-off line"));
                }
                tracing::warn!(file = %path.display(), bytes = len, "decision log: removing a line cut off by a crash");
                file.set_len(0)?;
                file.sync_all()?;
            }
            return Ok(None);
        }
        let from = start.saturating_sub(CHUNK);
        let mut chunk = vec![0u8; usize::try_from(start - from).unwrap_or(0)];
        file.seek(SeekFrom::Start(from))?;
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&buf);
        buf = chunk;
        start = from;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]
    use super::*;

    fn record() -> DecisionRecord {
        super::super::record::tests::record(json!({"b": 1, "a": [true]}))
    }

    #[test]
    fn a_linked_line_is_canonical_and_hashes_without_its_hash() {
        let body = Body::of(&record()).unwrap();
        let mut chain = Chain::new(Head::genesis());
        let line = chain.link(&body).to_vec();
        let text = std::str::from_utf8(&line).unwrap().trim_end();
        let mut value: Json = serde_json::from_str(text).unwrap();
        let hash = value["hash"].as_str().unwrap().to_string();
        value.as_object_mut().unwrap().remove("hash");
        // The line without `hash` is exactly the canonical form.
        let canonical = canonical::to_vec(&value).unwrap();
        assert_eq!(hex::encode(Sha256::digest(&canonical)), hash);
        assert_eq!(value["seq"], 1);
        assert_eq!(value["prev_hash"], GENESIS);
        let Line::Record(r) = parse_line(text.as_bytes()) else {
            panic!("a record");
        };
        assert!(r.hash_ok);

        // The next one links to it; an edit breaks the hash.
        let next = chain.link(&body).to_vec();
        let Line::Record(n) = parse_line(next.trim_ascii_end()) else {
            panic!("a record");
        };
        assert_eq!((n.seq, n.prev_hash.as_str()), (2, hash.as_str()));
        let edited = String::from_utf8(next).unwrap().replace("deny", "allow");
        let Line::Record(e) = parse_line(edited.trim_end().as_bytes()) else {
            panic!("a record");
        };
        assert!(!e.hash_ok);
    }

    #[test]
    fn a_torn_last_line_is_removed_and_the_chain_resumes_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.log");
        let mut chain = Chain::new(Head::genesis());
        let body = Body::of(&record()).unwrap();
        let mut text = chain.link(&body).to_vec();
        let whole = text.len();
        text.extend_from_slice(&chain.link(&body)[..40]);
        std::fs::write(&path, &text).unwrap();
        let resumed = resume(&path).unwrap();
        assert_eq!(resumed.head.seq, 1);
        assert!(!resumed.covered);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), whole as u64);

        // A head file further on wins: records after the log's end were lost.
        write_head(
            &head_path(&path),
            &Head {
                seq: 9,
                hash: GENESIS.into(),
            },
            "test",
        )
        .unwrap();
        assert_eq!(resume(&path).unwrap().head.seq, 9);
    }
}
