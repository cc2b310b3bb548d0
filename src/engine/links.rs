//! Time-bound grants: links of Cedar templates, read from `*.links.json`.
//!
//! A link fills a template's `?principal` / `?resource` slots and gets an
//! id of its own, the policy id that decisions name. It may carry a window,
//! `[not_before, expires_at)`: outside it the link does not apply. Windows
//! are judged per request against the time the request is decided at, so a
//! link expires on the second without a reload; the index checks them only
//! for links whose scope already matched (see `index.rs`), and reads the
//! clock only then ([`Clock`]).

use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::time::SystemTime;

use cedar_policy::{EntityUid, PolicyId, SlotId};
use serde::Deserialize;

/// When a link applies: from `not_before` (inclusive) until `expires_at`
/// (exclusive); an absent bound does not limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    pub not_before: Option<SystemTime>,
    pub expires_at: Option<SystemTime>,
}

/// Where `now` falls in a link's [`Window`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantState {
    /// Before `not_before`.
    Pending,
    /// Inside the window: the link applies.
    Active,
    /// At or after `expires_at`.
    Expired,
}

impl GrantState {
    /// The label of `cedar_pdp_grants{state}`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Expired => "expired",
        }
    }
}

impl Window {
    /// Whether either bound is set: the link's answer can change over time.
    pub fn is_bounded(&self) -> bool {
        self.not_before.is_some() || self.expires_at.is_some()
    }

    /// Where `now` falls.
    pub fn state(&self, now: SystemTime) -> GrantState {
        if self.not_before.is_some_and(|t| now < t) {
            GrantState::Pending
        } else if self.expires_at.is_some_and(|t| now >= t) {
            GrantState::Expired
        } else {
            GrantState::Active
        }
    }

    /// The first instant after `now` at which [`Window::state`] changes;
    /// `None` once it never will.
    pub fn next_change(&self, now: SystemTime) -> Option<SystemTime> {
        match self.state(now) {
            GrantState::Pending => self.not_before,
            GrantState::Active => self.expires_at,
            GrantState::Expired => None,
        }
    }
}

/// The instant one request is judged at. Read from the system clock at most
/// once, and only when a time-bound link's scope matched the request; a
/// request that touches none never reads it.
#[derive(Debug, Default)]
pub struct Clock(OnceCell<SystemTime>);

impl Clock {
    /// The system clock, read on first use.
    pub fn system() -> Self {
        Self(OnceCell::new())
    }

    /// A fixed instant: the time a request already read (so tokens, chain,
    /// server time and links agree), or a recorded decision's time (replay).
    pub fn at(t: SystemTime) -> Self {
        Self(OnceCell::from(t))
    }

    /// The instant, reading the system clock the first time.
    pub fn now(&self) -> SystemTime {
        *self.0.get_or_init(SystemTime::now)
    }

    /// Whether [`Clock::now`] has been asked (or the instant was given).
    pub fn was_read(&self) -> bool {
        self.0.get().is_some()
    }
}

/// How many links are in each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrantCounts {
    pub active: u64,
    pub pending: u64,
    pub expired: u64,
}

impl GrantCounts {
    /// The counts of `windows` at `now`.
    pub fn of<'a>(windows: impl IntoIterator<Item = &'a Window>, now: SystemTime) -> Self {
        let mut counts = Self::default();
        for w in windows {
            match w.state(now) {
                GrantState::Active => counts.active += 1,
                GrantState::Pending => counts.pending += 1,
                GrantState::Expired => counts.expired += 1,
            }
        }
        counts
    }
}

/// One entry of a `*.links.json` file, as written. Unknown fields are
/// refused: a misspelt `expires_at` must not become a standing grant.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkSpec {
    id: String,
    template: String,
    #[serde(default)]
    slots: BTreeMap<String, String>,
    #[serde(default)]
    not_before: Option<String>,
    #[serde(default)]
    expires_at: Option<String>,
}

/// A link read from a file, checked on its own; whether its template exists
/// and its slots fit is checked when it is linked.
#[derive(Debug)]
pub(super) struct ParsedLink {
    pub id: PolicyId,
    pub template: PolicyId,
    pub slots: HashMap<SlotId, EntityUid>,
    pub window: Window,
    /// Where the link's `id` sits in its file.
    pub line: usize,
    pub column: usize,
}

/// Why one entry of a links file is not a link.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum LinkError {
    #[error("invalid links file: {0} (expected a JSON array of links)")]
    Json(String),
    #[error("link has an empty `id`")]
    EmptyId,
    #[error("link `{id}` has an empty `template`")]
    EmptyTemplate { id: String },
    #[error("link `{id}`: unknown slot `{slot}` (expected `?principal` or `?resource`)")]
    UnknownSlot { id: String, slot: String },
    #[error("link `{id}`: slot `{slot}` is not an entity uid like `Type::\"id\"`: {message}")]
    BadEntity {
        id: String,
        slot: String,
        message: String,
    },
    #[error(
        "link `{id}`: `{field}` is `{value}`, not an RFC 3339 time in UTC like `2026-12-01T14:00:00Z`"
    )]
    BadTime {
        id: String,
        field: &'static str,
        value: String,
    },
    #[error("link `{id}`: `not_before` ({not_before}) is not before `expires_at` ({expires_at})")]
    EmptyWindow {
        id: String,
        not_before: String,
        expires_at: String,
    },
}

/// The links of one `*.links.json` file, each with its position in `text`,
/// or the problems found, each with its line and column.
pub(super) fn parse_file(text: &str) -> (Vec<ParsedLink>, Vec<(LinkError, usize, usize)>) {
    let specs: Vec<LinkSpec> = match serde_json::from_str(text) {
        Ok(specs) => specs,
        Err(e) => {
            return (
                Vec::new(),
                vec![(LinkError::Json(e.to_string()), e.line(), e.column())],
            );
        }
    };
    let mut links = Vec::with_capacity(specs.len());
    let mut problems = Vec::new();
    let mut search_from = 0;
    for spec in specs {
        let (offset, after) = locate(text, &spec.id, search_from);
        search_from = after;
        let (line, column) = super::source::line_column(text, offset);
        match check(spec) {
            Ok((id, template, slots, window)) => links.push(ParsedLink {
                id,
                template,
                slots,
                window,
                line,
                column,
            }),
            Err(e) => problems.push((e, line, column)),
        }
    }
    (links, problems)
}

/// Byte offset of the `"id"` value in `text`, searched from `from`, and
/// where the next search starts: the parser keeps no positions.
fn locate(text: &str, id: &str, from: usize) -> (usize, usize) {
    let needle = serde_json::to_string(id).unwrap_or_default();
    let from = from.min(text.len());
    match text.get(from..).and_then(|rest| rest.find(&needle)) {
        Some(at) => (from + at, from + at + needle.len()),
        None => (from, from),
    }
}

type Checked = (PolicyId, PolicyId, HashMap<SlotId, EntityUid>, Window);

fn check(spec: LinkSpec) -> Result<Checked, LinkError> {
    if spec.id.is_empty() {
        return Err(LinkError::EmptyId);
    }
    let id = spec.id;
    if spec.template.is_empty() {
        return Err(LinkError::EmptyTemplate { id });
    }
    let mut slots = HashMap::new();
    for (slot, value) in &spec.slots {
        let slot_id = match slot.as_str() {
            "?principal" => SlotId::principal(),
            "?resource" => SlotId::resource(),
            _ => {
                return Err(LinkError::UnknownSlot {
                    id,
                    slot: slot.clone(),
                });
            }
        };
        let uid = EntityUid::from_str(value).map_err(|e| LinkError::BadEntity {
            id: id.clone(),
            slot: slot.clone(),
            message: crate::error_chain::chain(&e),
        })?;
        slots.insert(slot_id, uid);
    }
    let time = |field: &'static str, value: &Option<String>| match value {
        None => Ok(None),
        Some(v) => humantime::parse_rfc3339(v)
            .map(Some)
            .map_err(|_| LinkError::BadTime {
                id: id.clone(),
                field,
                value: v.clone(),
            }),
    };
    let window = Window {
        not_before: time("not_before", &spec.not_before)?,
        expires_at: time("expires_at", &spec.expires_at)?,
    };
    if let (Some(from), Some(until)) = (window.not_before, window.expires_at)
        && from >= until
    {
        return Err(LinkError::EmptyWindow {
            id,
            not_before: spec.not_before.unwrap_or_default(),
            expires_at: spec.expires_at.unwrap_or_default(),
        });
    }
    Ok((
        PolicyId::new(&id),
        PolicyId::new(&spec.template),
        slots,
        window,
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use std::time::Duration;

    use super::*;

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn a_window_is_half_open() {
        let w = Window {
            not_before: Some(at("2026-12-01T14:00:00Z")),
            expires_at: Some(at("2026-12-01T14:05:00Z")),
        };
        let second = Duration::from_secs(1);
        assert_eq!(w.state(at("2026-12-01T13:59:59Z")), GrantState::Pending);
        assert_eq!(w.state(at("2026-12-01T14:00:00Z")), GrantState::Active);
        assert_eq!(
            w.state(at("2026-12-01T14:05:00Z") - second / 1000),
            GrantState::Active
        );
        assert_eq!(w.state(at("2026-12-01T14:05:00Z")), GrantState::Expired);
        assert_eq!(
            w.next_change(at("2026-12-01T13:00:00Z")),
            Some(at("2026-12-01T14:00:00Z"))
        );
        assert_eq!(
            w.next_change(at("2026-12-01T14:01:00Z")),
            Some(at("2026-12-01T14:05:00Z"))
        );
        assert_eq!(w.next_change(at("2026-12-01T15:00:00Z")), None);
        let standing = Window::default();
        assert!(!standing.is_bounded());
        assert_eq!(standing.state(SystemTime::now()), GrantState::Active);
        assert_eq!(standing.next_change(SystemTime::now()), None);
    }

    #[test]
    fn a_clock_reads_the_system_time_once_and_only_when_asked() {
        let clock = Clock::system();
        assert!(!clock.was_read());
        let first = clock.now();
        assert!(clock.was_read());
        assert_eq!(clock.now(), first, "one request, one instant");
        let fixed = at("2026-12-01T14:00:00Z");
        assert_eq!(Clock::at(fixed).now(), fixed);
    }

    #[test]
    fn links_parse_with_their_positions() {
        let text = r#"[
  {"id": "grant-7f3a", "template": "agent-may-read",
   "slots": {"?principal": "Agent::\"summarizer\"", "?resource": "Doc::\"q3-plan\""},
   "not_before": "2026-12-01T14:00:00Z", "expires_at": "2026-12-01T14:05:00Z"},
  {"id": "standing", "template": "agent-may-read", "slots": {"?principal": "Agent::\"a\""}}
]"#;
        let (links, problems) = parse_file(text);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(links.len(), 2);
        let first = &links[0];
        assert_eq!(first.id.to_string(), "grant-7f3a");
        assert_eq!(first.template.to_string(), "agent-may-read");
        assert_eq!((first.line, first.column), (2, 10));
        assert_eq!(
            first.slots[&SlotId::resource()].to_string(),
            r#"Doc::"q3-plan""#
        );
        assert_eq!(first.window.expires_at, Some(at("2026-12-01T14:05:00Z")));
        assert_eq!(links[1].line, 5);
        assert!(!links[1].window.is_bounded());
    }

    #[test]
    fn bad_links_say_what_is_wrong() {
        let one = |entry: &str| {
            let (links, problems) = parse_file(&format!("[{entry}]"));
            assert!(links.is_empty());
            assert_eq!(problems.len(), 1, "{problems:?}");
            problems[0].0.to_string()
        };
        assert!(one(r#"{"id": "", "template": "t"}"#).contains("empty `id`"));
        assert!(
            one(r#"{"id": "x", "template": "t", "slots": {"?owner": "A::\"a\""}}"#)
                .contains("unknown slot `?owner`")
        );
        assert!(
            one(r#"{"id": "x", "template": "t", "slots": {"?principal": "nope"}}"#)
                .contains("slot `?principal` is not an entity uid")
        );
        assert!(
            one(r#"{"id": "x", "template": "t", "expires_at": "tomorrow"}"#)
                .contains("`expires_at` is `tomorrow`, not an RFC 3339 time")
        );
        assert!(
            one(
                r#"{"id": "x", "template": "t", "not_before": "2026-12-01T14:05:00Z", "expires_at": "2026-12-01T14:05:00Z"}"#
            )
            .contains("is not before `expires_at`")
        );
        // A misspelt field is refused, not ignored.
        let (_, problems) = parse_file(r#"[{"id": "x", "template": "t", "expire_at": "x"}]"#);
        assert!(
            problems[0]
                .0
                .to_string()
                .contains("unknown field `expire_at`"),
            "{problems:?}"
        );
        let (_, problems) = parse_file("{\"id\": \"x\"}");
        assert!(problems[0].0.to_string().contains("expected a JSON array"));
    }

    #[test]
    fn grant_counts_follow_the_clock() {
        let now = at("2026-12-01T14:00:00Z");
        let hour = Duration::from_secs(3600);
        let windows = [
            Window {
                not_before: Some(now + hour),
                expires_at: None,
            },
            Window {
                not_before: None,
                expires_at: Some(now + hour),
            },
            Window {
                not_before: None,
                expires_at: Some(now - hour),
            },
            Window::default(),
        ];
        assert_eq!(
            GrantCounts::of(&windows, now),
            GrantCounts {
                active: 2,
                pending: 1,
                expired: 1
            }
        );
        assert_eq!(
            GrantCounts::of(&windows, now + 2 * hour),
            GrantCounts {
                active: 2,
                pending: 0,
                expired: 2
            }
        );
    }
}
