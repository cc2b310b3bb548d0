//! `cedar-pdp log verify`: checks a decision log's chain, from its files.
//!
//! Files are put in chain order by the `seq` of their first record, so
//! rotated files can be given in any order. Then one pass, streaming, checks
//! that each file begins with a start line naming the record before it (the
//! genesis, for the first, unless its beginning was rotated away), that
//! each record's `seq` follows the last, that its `prev_hash` is the last
//! one's `hash`, that its `hash` holds, that each checkpoint names the
//! record before it, that every mark carries a good signature and the same
//! instance, and that a torn line is followed by the gap mark that
//! accounts for it. The first problem ends the check; it is classified
//! (edited, deleted, reordered, inserted) by a second look at the lines
//! after it.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::chain::{self, GENESIS, Head, Line, PublicKey, RecordLine};

/// Where a line is: `file:line`, 1-based.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loc {
    pub file: String,
    pub line: u64,
}

impl std::fmt::Display for Loc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// What a verification found wrong first.
#[derive(Debug, PartialEq, Eq)]
pub struct Problem {
    /// The seq at fault: the record's own, or the one expected there.
    pub seq: Option<u64>,
    pub at: Loc,
    pub kind: ProblemKind,
    pub detail: String,
}

/// The kinds of tampering and damage a check tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    /// A record's contents no longer match its hash.
    Edited,
    /// Records are missing from the chain.
    Deleted,
    /// A record is out of its place.
    Reordered,
    /// A record, or a line, that the chain does not account for.
    Inserted,
    /// A record links to a predecessor that is not the one before it.
    Relinked,
    /// A checkpoint that does not verify or does not match the chain.
    Checkpoint,
}

impl ProblemKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Edited => "edited",
            Self::Deleted => "deleted",
            Self::Reordered => "reordered",
            Self::Inserted => "inserted",
            Self::Relinked => "relinked",
            Self::Checkpoint => "bad checkpoint",
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: ", self.at)?;
        if let Some(seq) = self.seq {
            write!(f, "seq {seq}: ")?;
        }
        write!(f, "{} ({})", self.detail, self.kind.as_str())
    }
}

/// Why a log did not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read `{path}`: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("no decision records in the files given")]
    NoRecords,
    #[error("{0}")]
    Broken(Box<Problem>),
    /// The last line is not a checkpoint: cut, or the writer crashed.
    #[error(
        "the log does not end with a signed checkpoint: {records} records follow {}; it was cut, or its writer crashed (`--allow-unsigned-tail` accepts this after a crash){}",
        .last_checkpoint.as_ref().map_or("the start, with no checkpoint at all".to_string(), |l| format!("the last checkpoint, at {l}")),
        .cut.as_ref().map_or(String::new(), |l| format!("; the last line, {l}, is cut off"))
    )]
    UnsignedTail {
        records: u64,
        last_checkpoint: Option<Loc>,
        cut: Option<Loc>,
    },
}

/// How to verify.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// Keys checkpoints may be signed with; none: signatures are not checked.
    pub keys: Vec<PublicKey>,
    /// Accept records after the last checkpoint (recovery after a crash).
    pub allow_unsigned_tail: bool,
    /// The log's beginning was rotated away (or predates start lines): the
    /// first file may start after the genesis.
    pub start_rotated: bool,
    /// The instance the log must be; `None`: the one its first mark names.
    pub instance: Option<String>,
}

/// What a log that verified holds.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verified {
    pub records: u64,
    pub checkpoints: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// Records after the last checkpoint (only with `allow_unsigned_tail`).
    pub unsigned_tail: u64,
    /// A cut-off last line was ignored (only with `allow_unsigned_tail`).
    pub cut: Option<Loc>,
    /// The instance its marks name; `None` for a log from before instances.
    pub instance: Option<String>,
    /// Records the writer linked but could not write, as its gap marks
    /// say: first and last seq of each run.
    pub gaps: Vec<(u64, u64)>,
}

/// A file, and where its chain starts.
struct Part {
    path: PathBuf,
    name: String,
    first_seq: u64,
}

/// Reads `path` line by line: each line without its `\n`, and whether it
/// had one.
fn lines(path: &Path) -> Result<impl Iterator<Item = io::Result<(Vec<u8>, bool)>>, VerifyError> {
    let file = File::open(path).map_err(|source| VerifyError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    Ok(std::iter::from_fn(move || {
        let mut buf = Vec::new();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => None,
            Ok(_) => {
                let ended = buf.last() == Some(&b'\n');
                if ended {
                    buf.pop();
                }
                Some(Ok((buf, ended)))
            }
            Err(e) => Some(Err(e)),
        }
    }))
}

/// Verifies the log made of `files`.
pub fn verify(files: &[PathBuf], options: &VerifyOptions) -> Result<Verified, VerifyError> {
    let io_error = |path: &Path| {
        let path = path.display().to_string();
        move |source| VerifyError::Io { path, source }
    };
    let mut parts = Vec::new();
    let mut heads = Vec::new();
    for path in files {
        let name = path.display().to_string();
        let mut first_seq = None;
        for (n, line) in lines(path)?.enumerate() {
            let (bytes, _) = line.map_err(io_error(path))?;
            match chain::parse_line(&bytes) {
                Line::Head(head, instance) if n == 0 => {
                    heads.push((
                        head,
                        instance,
                        Loc {
                            file: name.clone(),
                            line: 1,
                        },
                    ));
                    break;
                }
                Line::Start(mark) if n == 0 => {
                    if let Some(prev) = mark.seq("prev_seq") {
                        first_seq = Some(prev + 1);
                        break;
                    }
                }
                Line::Record(r) => {
                    first_seq = Some(r.seq);
                    break;
                }
                _ => {}
            }
        }
        // A file without records sorts first, so its lines are reported.
        if heads.last().is_none_or(|(_, _, at)| at.file != name) {
            parts.push(Part {
                path: path.clone(),
                name,
                first_seq: first_seq.unwrap_or(0),
            });
        }
    }
    parts.sort_by_key(|p| p.first_seq);
    let mut check = Check {
        options,
        parts: &parts,
        heads,
        last: None,
        verified: Verified::default(),
        since_checkpoint: 0,
        last_checkpoint: None,
        ends_with_checkpoint: false,
        started: false,
        torn: None,
    };
    for (index, part) in parts.iter().enumerate() {
        let last_part = index + 1 == parts.len();
        for (n, line) in lines(&part.path)?.enumerate() {
            let (bytes, ended) = line.map_err(io_error(&part.path))?;
            let at = Loc {
                file: part.name.clone(),
                line: n as u64 + 1,
            };
            if !ended {
                if last_part {
                    check.verified.cut = Some(at);
                    break;
                }
                return Err(check.problem(
                    None,
                    at,
                    ProblemKind::Deleted,
                    "the line is cut off, in a file that is not the newest",
                ));
            }
            check.line(&bytes, at, index, n)?;
        }
        check.untorn()?;
    }
    check.end()
}

/// The state of one pass.
struct Check<'a> {
    options: &'a VerifyOptions,
    parts: &'a [Part],
    /// Heads from `.head` files, the instance each names, and where they
    /// were given.
    heads: Vec<(Head, Option<String>, Loc)>,
    /// The last record that checked out: its seq, hash and place.
    last: Option<(u64, String, Loc)>,
    verified: Verified,
    since_checkpoint: u64,
    last_checkpoint: Option<Loc>,
    ends_with_checkpoint: bool,
    /// A start line was seen: every later file must have one.
    started: bool,
    /// A line that is no line the writer writes whole, waiting for the gap
    /// mark that accounts for it.
    torn: Option<(Loc, String)>,
}

impl Check<'_> {
    fn problem(
        &self,
        seq: Option<u64>,
        at: Loc,
        kind: ProblemKind,
        detail: impl Into<String>,
    ) -> VerifyError {
        VerifyError::Broken(Box::new(Problem {
            seq,
            at,
            kind,
            detail: detail.into(),
        }))
    }

    fn expected(&self) -> Option<u64> {
        self.last.as_ref().map(|(seq, _, _)| seq + 1)
    }

    fn line(&mut self, bytes: &[u8], at: Loc, part: usize, n: usize) -> Result<(), VerifyError> {
        let line = chain::parse_line(bytes);
        if !matches!(line, Line::Gap(_)) {
            self.untorn()?;
        }
        if n == 0
            && !matches!(line, Line::Start(_))
            && (self.started || (part == 0 && !self.options.start_rotated))
        {
            let detail = if part == 0 {
                "the log does not begin with a start line: its oldest records were removed, or it was written before start lines (`--start-rotated` accepts a log whose beginning was rotated away)"
            } else {
                "the file does not begin with a start line: its beginning was removed"
            };
            return Err(self.problem(self.expected(), at, ProblemKind::Deleted, detail));
        }
        match line {
            Line::Record(r) => self.record(r, at, part, n),
            Line::Checkpoint(cp) => self.checkpoint(cp, at),
            Line::Start(mark) if n == 0 => self.start(&mark, at, part),
            Line::Start(_) => Err(self.problem(
                self.expected(),
                at,
                ProblemKind::Inserted,
                "a start line inside a file",
            )),
            Line::Gap(mark) => self.gap(&mark, at),
            Line::Unchained => Err(self.problem(
                self.expected(),
                at,
                ProblemKind::Inserted,
                "a record without `seq`, `prev_hash` and `hash`: not written into this chain",
            )),
            Line::Head(..) => Err(self.problem(
                self.expected(),
                at,
                ProblemKind::Inserted,
                "a chain head inside a log file",
            )),
            // Only a gap mark right after it can account for it.
            Line::Invalid(reason) => {
                self.torn = Some((at, reason));
                Ok(())
            }
        }
    }

    /// Fails on a torn line that no gap mark followed.
    fn untorn(&mut self) -> Result<(), VerifyError> {
        match self.torn.take() {
            None => Ok(()),
            Some((at, reason)) => Err(self.problem(
                self.expected(),
                at,
                ProblemKind::Inserted,
                format!("not a decision record or mark: {reason}"),
            )),
        }
    }

    /// Whether a mark's signature holds (when keys are given): a problem
    /// naming `what` when not.
    fn signed(
        &self,
        key_id: &str,
        signed: &[u8],
        signature: Option<&[u8]>,
        seq: Option<u64>,
        at: &Loc,
        what: &str,
    ) -> Result<(), VerifyError> {
        if self.options.keys.is_empty() {
            return Ok(());
        }
        let Some(key) = self.options.keys.iter().find(|k| k.key_id() == key_id) else {
            return Err(self.problem(
                seq,
                at.clone(),
                ProblemKind::Checkpoint,
                format!("{what} signed by key `{key_id}`, which is none of the keys given"),
            ));
        };
        if !signature.is_some_and(|s| key.verifies(signed, s)) {
            return Err(self.problem(
                seq,
                at.clone(),
                ProblemKind::Checkpoint,
                format!("the signature of the {what} does not verify: it was forged or edited"),
            ));
        }
        Ok(())
    }

    /// Holds a mark's instance to the log's: the first one named (or the
    /// one asked for) is the log's.
    fn same_instance(
        &mut self,
        named: Option<&str>,
        seq: Option<u64>,
        at: &Loc,
        what: &str,
    ) -> Result<(), VerifyError> {
        let ours = self
            .verified
            .instance
            .clone()
            .or_else(|| self.options.instance.clone());
        match (named, ours) {
            (Some(named), Some(ours)) if named != ours => Err(self.problem(
                seq,
                at.clone(),
                ProblemKind::Inserted,
                format!("the {what} is of instance `{named}`, the log of instance `{ours}`: another log's lines"),
            )),
            (Some(named), _) => {
                // A `.head` file given beside the log must be this log's.
                if let Some((_, Some(head), head_at)) =
                    self.heads.iter().find(|(_, h, _)| h.as_deref().is_some_and(|h| h != named))
                {
                    return Err(self.problem(
                        None,
                        head_at.clone(),
                        ProblemKind::Inserted,
                        format!("the chain head is of instance `{head}`, the log of instance `{named}`: the log is another replica's"),
                    ));
                }
                self.verified.instance = Some(named.to_string());
                Ok(())
            }
            (None, Some(ours)) => Err(self.problem(
                seq,
                at.clone(),
                ProblemKind::Inserted,
                format!("the {what} names no instance, in a log of instance `{ours}`"),
            )),
            (None, None) => Ok(()),
        }
    }

    /// A mark's signature (when keys are given) and instance hold.
    fn mark_holds(
        &mut self,
        mark: &chain::Mark,
        expected: Option<u64>,
        at: &Loc,
        what: &str,
    ) -> Result<(), VerifyError> {
        let key_id = mark.key_id.clone().unwrap_or_default();
        let signature = mark.signature.as_deref();
        self.signed(&key_id, &mark.signed, signature, expected, at, what)?;
        self.same_instance(mark.text("instance"), expected, at, what)
    }

    /// A file's start line: it names the record before the file.
    fn start(&mut self, mark: &chain::Mark, at: Loc, part: usize) -> Result<(), VerifyError> {
        let expected = self.expected();
        self.mark_holds(mark, expected, &at, "start line")?;
        let Some(prev) = mark.names("prev_seq", "prev_hash") else {
            return Err(self.problem(
                expected,
                at,
                ProblemKind::Inserted,
                "a start line without `prev_seq` and `prev_hash`",
            ));
        };
        self.started = true;
        match self.last.clone() {
            None => {
                let genesis = prev.seq == 0 && prev.hash == GENESIS;
                if !genesis && part == 0 && !self.options.start_rotated {
                    return Err(self.problem(
                        Some(prev.seq + 1),
                        at,
                        ProblemKind::Deleted,
                        format!("the log begins after seq {}: the files before it were rotated away or deleted (`--start-rotated` accepts a log whose beginning was rotated away)", prev.seq),
                    ));
                }
                self.verified.first_seq = prev.seq + 1;
                self.last = Some((prev.seq, prev.hash, at));
            }
            Some((last_seq, last_hash, last_at)) => {
                if prev.seq > last_seq {
                    let missing = if prev.seq == last_seq + 1 {
                        format!("seq {prev_seq} is missing", prev_seq = prev.seq)
                    } else {
                        format!("seqs {} to {} are missing", last_seq + 1, prev.seq)
                    };
                    return Err(self.problem(Some(last_seq + 1), at, ProblemKind::Deleted, format!("the file starts after seq {}, but the one before ends at seq {last_seq}, at {last_at}: {missing}", prev.seq)));
                }
                if prev.seq != last_seq || prev.hash != last_hash {
                    return Err(self.problem(Some(prev.seq), at, ProblemKind::Relinked, format!("the start line names seq {} and another hash than the record before it, seq {last_seq} at {last_at}", prev.seq)));
                }
            }
        }
        Ok(())
    }

    /// A gap mark: records from `first_seq` to `last_seq` were linked but
    /// not written; the chain goes on from `last_seq`'s `hash`. Those of
    /// them written before the tear were checked as any.
    fn gap(&mut self, mark: &chain::Mark, at: Loc) -> Result<(), VerifyError> {
        let expected = self.expected();
        self.mark_holds(mark, expected, &at, "gap mark")?;
        let (Some(first), Some(last)) = (mark.seq("first_seq"), mark.names("last_seq", "hash"))
        else {
            return Err(self.problem(
                expected,
                at,
                ProblemKind::Inserted,
                "a gap mark without `first_seq`, `last_seq` and `hash`",
            ));
        };
        let Some((seq, hash, _)) = self.last.clone() else {
            return Err(self.problem(
                expected,
                at,
                ProblemKind::Inserted,
                "a gap mark before any record",
            ));
        };
        let fits = first <= seq + 1 && seq <= last.seq && (seq < last.seq || hash == last.hash);
        if !fits {
            return Err(self.problem(
                expected,
                at,
                ProblemKind::Relinked,
                format!("the gap mark accounts for seqs {first} to {}, but the chain stands at seq {seq}", last.seq),
            ));
        }
        self.torn = None;
        if last.seq > seq {
            self.verified.gaps.push((seq + 1, last.seq));
        }
        self.ends_with_checkpoint = false;
        self.last = Some((last.seq, last.hash, at));
        Ok(())
    }

    fn record(&mut self, r: RecordLine, at: Loc, part: usize, n: usize) -> Result<(), VerifyError> {
        let seq = r.seq;
        match self.last.clone() {
            None => {
                if seq == 1 && r.prev_hash != GENESIS {
                    return Err(self.problem(
                        Some(seq),
                        at,
                        ProblemKind::Relinked,
                        "the first record of a chain must link to the genesis hash",
                    ));
                }
                if !r.hash_ok {
                    return Err(self.problem(
                        Some(seq),
                        at,
                        ProblemKind::Edited,
                        "the record does not match its hash",
                    ));
                }
                self.verified.first_seq = seq;
            }
            Some((last_seq, last_hash, last_at)) => {
                let expected = last_seq + 1;
                if seq <= last_seq {
                    let first = self.find(&[seq], (0, 0)).into_iter().next().flatten();
                    let before = first.map_or(String::new(), |(l, _)| format!(" (at {l})"));
                    return Err(self.problem(
                        Some(seq),
                        at,
                        ProblemKind::Inserted,
                        format!("seq {seq} already appeared{before}, and seq {last_seq} came last, at {last_at}: a record was inserted, or copied"),
                    ));
                }
                if !r.hash_ok {
                    return Err(self.problem(
                        Some(seq),
                        at,
                        ProblemKind::Edited,
                        "the record does not match its hash",
                    ));
                }
                if seq == expected && r.prev_hash != last_hash {
                    return Err(self.problem(
                        Some(seq),
                        at,
                        ProblemKind::Relinked,
                        format!("`prev_hash` is not the hash of seq {last_seq} at {last_at}: one of the two was replaced"),
                    ));
                }
                if seq > expected {
                    return Err(self.out_of_place(&r, at, expected, (part, n + 1)));
                }
            }
        }
        for (head, _, head_at) in &self.heads {
            if head.seq == seq && head.hash != r.hash {
                return Err(self.problem(
                    Some(seq),
                    at,
                    ProblemKind::Relinked,
                    format!("the chain head at {head_at} has another hash for this seq: the record was replaced since it was synced"),
                ));
            }
        }
        self.verified.records += 1;
        self.verified.last_seq = seq;
        self.since_checkpoint += 1;
        self.ends_with_checkpoint = false;
        self.last = Some((seq, r.hash, at));
        Ok(())
    }

    /// A sound record whose seq skips ahead: the one expected is later
    /// (reordered, or this one was inserted), or nowhere (deleted).
    fn out_of_place(
        &self,
        r: &RecordLine,
        at: Loc,
        expected: u64,
        from: (usize, usize),
    ) -> VerifyError {
        let mut found = self.find(&[expected, r.seq - 1], from).into_iter();
        let (want, before) = (found.next().flatten(), found.next().flatten());
        match want {
            None => {
                let missing = if r.seq - 1 == expected {
                    format!("seq {expected} is missing before it")
                } else {
                    format!("seqs {expected} to {} are missing before it", r.seq - 1)
                };
                self.problem(Some(r.seq), at, ProblemKind::Deleted, missing)
            }
            Some((later, _)) => {
                let links = before.is_some_and(|(_, hash)| hash == r.prev_hash);
                if links {
                    self.problem(
                        Some(r.seq),
                        at,
                        ProblemKind::Reordered,
                        format!("out of order: seq {expected} comes after it, at {later}"),
                    )
                } else {
                    self.problem(
                        Some(r.seq),
                        at,
                        ProblemKind::Inserted,
                        format!("not part of the chain: seq {expected} follows at {later}, and no record links it in"),
                    )
                }
            }
        }
    }

    /// The first record with each of `seqs` from line `from.1` of part
    /// `from.0` on: where it is, and its hash.
    fn find(&self, seqs: &[u64], from: (usize, usize)) -> Vec<Option<(Loc, String)>> {
        let mut found: Vec<Option<(Loc, String)>> = vec![None; seqs.len()];
        for (index, part) in self.parts.iter().enumerate().skip(from.0) {
            let Ok(lines) = lines(&part.path) else {
                continue;
            };
            let skip = if index == from.0 { from.1 } else { 0 };
            for (n, line) in lines.enumerate().skip(skip) {
                let Ok((bytes, _)) = line else { break };
                if let Line::Record(r) = chain::parse_line(&bytes) {
                    for (slot, seq) in found.iter_mut().zip(seqs) {
                        if slot.is_none() && r.seq == *seq {
                            let at = Loc {
                                file: part.name.clone(),
                                line: n as u64 + 1,
                            };
                            *slot = Some((at, r.hash.clone()));
                        }
                    }
                }
                if found.iter().all(Option::is_some) {
                    return found;
                }
            }
        }
        found
    }

    fn checkpoint(&mut self, cp: chain::CheckpointLine, at: Loc) -> Result<(), VerifyError> {
        let seq = Some(cp.head.seq);
        self.signed(
            &cp.key_id,
            &cp.signed,
            cp.signature.as_deref(),
            seq,
            &at,
            "checkpoint",
        )?;
        self.same_instance(cp.instance.as_deref(), seq, &at, "checkpoint")?;
        match &self.last {
            None => {
                return Err(self.problem(
                    seq,
                    at,
                    ProblemKind::Checkpoint,
                    "a checkpoint before any record",
                ));
            }
            Some((last_seq, last_hash, last_at)) => {
                if cp.head.seq != *last_seq || cp.head.hash != *last_hash {
                    let detail = if cp.head.seq == *last_seq {
                        format!(
                            "signs another hash than that of seq {last_seq} at {last_at}: the record was replaced"
                        )
                    } else {
                        format!(
                            "signs seq {}, but the record before it is seq {last_seq} at {last_at}",
                            cp.head.seq
                        )
                    };
                    return Err(self.problem(seq, at, ProblemKind::Checkpoint, detail));
                }
            }
        }
        self.verified.checkpoints += 1;
        self.since_checkpoint = 0;
        self.last_checkpoint = Some(at);
        self.ends_with_checkpoint = true;
        Ok(())
    }

    fn end(mut self) -> Result<Verified, VerifyError> {
        let Some((last_seq, _, last_at)) = self.last.clone().filter(|_| self.verified.records > 0)
        else {
            return Err(VerifyError::NoRecords);
        };
        if let (Some(asked), None) = (&self.options.instance, &self.verified.instance) {
            return Err(self.problem(None, last_at, ProblemKind::Inserted, format!("the log names no instance, not `{asked}`: it was written before instances, or its marks were removed")));
        }
        for (head, _, head_at) in &self.heads {
            if head.seq > last_seq {
                let missing = if head.seq == last_seq + 1 {
                    format!("seq {} is missing", head.seq)
                } else {
                    format!("seqs {} to {} are missing", last_seq + 1, head.seq)
                };
                return Err(self.problem(
                    Some(last_seq + 1),
                    last_at,
                    ProblemKind::Deleted,
                    format!("the chain head at {head_at} says seq {} was written, but the log ends here: {missing} (the tail was cut)", head.seq),
                ));
            }
        }
        if !self.ends_with_checkpoint || self.verified.cut.is_some() {
            if !self.options.allow_unsigned_tail {
                return Err(VerifyError::UnsignedTail {
                    records: self.since_checkpoint,
                    last_checkpoint: self.last_checkpoint,
                    cut: self.verified.cut,
                });
            }
            self.verified.unsigned_tail = self.since_checkpoint;
        }
        Ok(self.verified)
    }
}
