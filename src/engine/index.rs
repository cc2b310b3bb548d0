//! Slices a policy set by scope, so a request evaluates only the policies
//! whose scope can match it.
//!
//! Cedar checks a policy's scope before its conditions, and a scope check
//! never errors, so a policy whose scope does not match the request is never
//! determining and never reports an error. Evaluating only the matching
//! policies therefore gives the same decision, reasons and errors as
//! evaluating the whole set.
//!
//! Each policy sits in exactly one bucket per scope part (principal, action,
//! resource): keyed by the entity of `==`, the entity of `in` (or `is .. in`),
//! the type of `is`, or a catch-all bucket when the part is unconstrained.
//! A lookup reads the buckets of the request's entity, its ancestors and its
//! type for the part with the fewest candidates, then checks the other two
//! parts of each candidate exactly.
//!
//! Cedar evaluates a `PolicySet`, and building one costs about a microsecond
//! per policy, so the set of each distinct candidate list is built once and
//! kept in [`SetCache`]: a fixed table of [`ArcSwapOption`] slots, so a
//! request never takes a lock. A lookup hashes the candidate list to two
//! slots and compares their keys: two atomic loads. A miss builds the set and
//! stores it in one of the two slots (an empty one first), replacing what was
//! there; so memory stays bounded by the table's size under any stream of
//! distinct request shapes, and a hot shape is evicted only when two others
//! land on both its slots. Other choices, and why not:
//! - Precomputing sets when the snapshot is built (say per action bucket)
//!   would make each set a superset of the exact candidates: with the
//!   multi-tenant sets of `benches/policy_scaling.rs` (one action, many
//!   tenants) every request would evaluate every tenant's policies.
//! - `quick_cache` (already a dependency) takes a shard's `RwLock` on every
//!   `get`; `arc-swap` is already a dependency too, and never blocks a reader.
//! - A lock-free map (`papaya`, `scc`) would be a new dependency, and still
//!   needs an eviction policy to stay bounded.
//!
//! Template links are indexed like static policies, by their filled scope.
//! A time-bound link also keeps its window: after the scope check, a
//! candidate with a window is kept only while the request's time is inside
//! it. So a request pays for windows only when a time-bound link's scope
//! matched it (then it reads the clock, once, through [`Clock`]); the
//! candidate list, and so the set built for it, differs by which links are
//! in their window, and [`Candidates::changes_at`] says when that next
//! changes, for the decision cache.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use cedar_policy::{
    ActionConstraint, EntityTypeName, EntityUid, Policy, PolicyId, PolicySet, PolicySetError,
    PrincipalConstraint, ResourceConstraint, Template,
};

use super::decision::InactiveGrant;
use super::links::{Clock, GrantState, Window};

/// A principal or resource scope.
#[derive(Clone, Debug)]
enum EntityScope {
    Any,
    Eq(EntityUid),
    In(EntityUid),
    Is(EntityTypeName),
    IsIn(EntityTypeName, EntityUid),
}

impl From<PrincipalConstraint> for EntityScope {
    fn from(c: PrincipalConstraint) -> Self {
        match c {
            PrincipalConstraint::Any => Self::Any,
            PrincipalConstraint::Eq(e) => Self::Eq(e),
            PrincipalConstraint::In(e) => Self::In(e),
            PrincipalConstraint::Is(t) => Self::Is(t),
            PrincipalConstraint::IsIn(t, e) => Self::IsIn(t, e),
        }
    }
}

impl From<ResourceConstraint> for EntityScope {
    fn from(c: ResourceConstraint) -> Self {
        match c {
            ResourceConstraint::Any => Self::Any,
            ResourceConstraint::Eq(e) => Self::Eq(e),
            ResourceConstraint::In(e) => Self::In(e),
            ResourceConstraint::Is(t) => Self::Is(t),
            ResourceConstraint::IsIn(t, e) => Self::IsIn(t, e),
        }
    }
}

impl EntityScope {
    /// Cedar's `in`: the entity itself or one of its ancestors.
    fn matches(&self, target: &Target<'_>) -> bool {
        match self {
            Self::Any => true,
            Self::Eq(e) => e == target.uid,
            Self::In(e) => target.is_in(e),
            Self::Is(t) => t == target.uid.type_name(),
            Self::IsIn(t, e) => t == target.uid.type_name() && target.is_in(e),
        }
    }
}

fn action_matches(scope: &ActionConstraint, target: &Target<'_>) -> bool {
    match scope {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(e) => e == target.uid,
        ActionConstraint::In(es) => es.iter().any(|e| target.is_in(e)),
    }
}

/// A request's principal, action or resource, with every ancestor it has in
/// the entities the request is evaluated against.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    pub uid: &'a EntityUid,
    pub ancestors: &'a [EntityUid],
}

impl Target<'_> {
    fn is_in(&self, e: &EntityUid) -> bool {
        e == self.uid || self.ancestors.contains(e)
    }

    /// Every entity an `in` scope may name to match this target.
    fn in_keys(&self) -> impl Iterator<Item = &EntityUid> {
        std::iter::once(self.uid).chain(self.ancestors)
    }
}

/// Policy slots by scope key, for one scope part.
#[derive(Debug, Default)]
struct Buckets {
    any: Vec<u32>,
    eq: HashMap<EntityUid, Vec<u32>>,
    is_in: HashMap<EntityUid, Vec<u32>>,
    is: HashMap<EntityTypeName, Vec<u32>>,
}

impl Buckets {
    fn insert(&mut self, scope: &EntityScope, slot: u32) {
        match scope {
            EntityScope::Any => self.any.push(slot),
            EntityScope::Eq(e) => self.eq.entry(e.clone()).or_default().push(slot),
            EntityScope::In(e) | EntityScope::IsIn(_, e) => {
                self.is_in.entry(e.clone()).or_default().push(slot);
            }
            EntityScope::Is(t) => self.is.entry(t.clone()).or_default().push(slot),
        }
    }

    /// The buckets that may hold a policy matching `target`. A slot appears
    /// in at most one of them.
    fn lookup<'s>(&'s self, target: &Target<'_>) -> Vec<&'s [u32]> {
        let mut out = vec![self.any.as_slice()];
        out.extend(self.eq.get(target.uid).map(Vec::as_slice));
        out.extend(self.is.get(target.uid.type_name()).map(Vec::as_slice));
        out.extend(
            target
                .in_keys()
                .filter_map(|e| self.is_in.get(e))
                .map(Vec::as_slice),
        );
        out
    }
}

/// Policy slots by action scope. A policy with `action in [a, b]` sits in
/// the bucket of each listed action.
#[derive(Debug, Default)]
struct ActionBuckets {
    any: Vec<u32>,
    eq: HashMap<EntityUid, Vec<u32>>,
    is_in: HashMap<EntityUid, Vec<u32>>,
}

impl ActionBuckets {
    fn insert(&mut self, scope: &ActionConstraint, slot: u32) {
        match scope {
            ActionConstraint::Any => self.any.push(slot),
            ActionConstraint::Eq(e) => self.eq.entry(e.clone()).or_default().push(slot),
            ActionConstraint::In(es) => {
                for e in es {
                    let bucket = self.is_in.entry(e.clone()).or_default();
                    // `in [a, a]` would list the slot twice.
                    if bucket.last() != Some(&slot) {
                        bucket.push(slot);
                    }
                }
            }
        }
    }

    /// May name one slot more than once (`in [a, b]` with both matching).
    fn lookup<'s>(&'s self, target: &Target<'_>) -> Vec<&'s [u32]> {
        let mut out = vec![self.any.as_slice()];
        out.extend(self.eq.get(target.uid).map(Vec::as_slice));
        out.extend(
            target
                .in_keys()
                .filter_map(|e| self.is_in.get(e))
                .map(Vec::as_slice),
        );
        out
    }
}

#[derive(Debug)]
struct Indexed {
    policy: Policy,
    /// The policy's condition, scope included, as Cedar's evaluator takes
    /// it: built once here, where Cedar's `Authorizer` builds it per call.
    condition: cedar_policy_core::ast::Expr,
    principal: EntityScope,
    action: ActionConstraint,
    resource: EntityScope,
    /// Every entity the policy names, scope included.
    literals: Box<[EntityUid]>,
    /// A time-bound link's window; `None` for everything else.
    window: Option<Window>,
}

/// A policy set sliced by scope; see the module docs.
#[derive(Debug)]
pub struct PolicyIndex {
    policies: Vec<Indexed>,
    principal: Buckets,
    action: ActionBuckets,
    resource: Buckets,
    /// The templates of the indexed links, to link them again into the
    /// sets built for candidates.
    templates: HashMap<PolicyId, Template>,
    /// Sets already built, by candidate slots; see the module docs.
    sets: SetCache,
}

/// Slots of the [`SetCache`] table, a power of two: at most this many
/// candidate sets are kept per snapshot.
const SET_CACHE_SLOTS: usize = 4096;

/// Candidate sets already built, in a fixed table of slots read without a
/// lock; see the module docs.
struct SetCache {
    slots: Box<[ArcSwapOption<CachedSet>]>,
    /// Keyed per snapshot, so no request stream can aim at chosen slots.
    hasher: RandomState,
}

struct CachedSet {
    key: Box<[u32]>,
    set: Arc<PolicySet>,
}

impl std::fmt::Debug for SetCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetCache")
            .field("slots", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl SetCache {
    fn new() -> Self {
        Self {
            slots: (0..SET_CACHE_SLOTS)
                .map(|_| ArcSwapOption::empty())
                .collect(),
            hasher: RandomState::new(),
        }
    }

    /// The two slots `key` may sit in.
    fn slots_of(&self, key: &[u32]) -> [usize; 2] {
        let hash = self.hasher.hash_one(key);
        let mask = SET_CACHE_SLOTS as u64 - 1;
        // Truncation is the point: two slot numbers from one hash.
        [(hash & mask) as usize, ((hash >> 32) & mask) as usize]
    }

    /// The set kept for `key`, or the one `build` makes, which is then kept.
    fn get_or_build(&self, key: &[u32], build: impl FnOnce() -> PolicySet) -> Arc<PolicySet> {
        let slots = self.slots_of(key);
        for &i in &slots {
            if let Some(cached) = self.slots[i].load().as_deref()
                && *cached.key == *key
            {
                return Arc::clone(&cached.set);
            }
        }
        let set = Arc::new(build());
        let [first, second] = slots;
        let target = if self.slots[first].load().is_none() || self.slots[second].load().is_some() {
            first
        } else {
            second
        };
        // Racing misses may both store; the last one wins, and both sets
        // are the same policies.
        self.slots[target].store(Some(Arc::new(CachedSet {
            key: key.into(),
            set: Arc::clone(&set),
        })));
        set
    }

    /// How many sets are kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.load().is_some()).count()
    }
}

impl PolicyIndex {
    /// Indexes every policy of `set`, static or linked; `windows` holds the
    /// time-bound links' windows. Fails only when a link cannot be linked
    /// again from its template, which [`Candidates::policy_set`] relies on.
    pub fn new(
        set: &PolicySet,
        windows: &HashMap<PolicyId, Window>,
    ) -> Result<Self, Box<PolicySetError>> {
        let mut index = Self {
            policies: Vec::with_capacity(set.num_of_policies()),
            principal: Buckets::default(),
            action: ActionBuckets::default(),
            resource: Buckets::default(),
            templates: set
                .templates()
                .map(|t| (t.id().clone(), t.clone()))
                .collect(),
            sets: SetCache::new(),
        };
        // INVARIANT: every link is linked once here; the candidate sets
        // repeat exactly this, so they cannot fail later.
        let mut links = PolicySet::new();
        for (slot, policy) in (0u32..).zip(set.policies()) {
            let mut literals = policy.entity_literals();
            if let Some(filled) = policy.template_links() {
                copy_policy(&mut links, policy, &index.templates)?;
                // The slots' entities are named by the link as literals are.
                literals.extend(filled.into_values());
            }
            let indexed = Indexed {
                principal: policy.principal_constraint().into(),
                action: policy.action_constraint(),
                resource: policy.resource_constraint().into(),
                literals: literals.into(),
                window: windows.get(policy.id()).copied().filter(Window::is_bounded),
                condition: policy.as_ref().condition(),
                policy: policy.clone(),
            };
            index.principal.insert(&indexed.principal, slot);
            index.action.insert(&indexed.action, slot);
            index.resource.insert(&indexed.resource, slot);
            index.policies.push(indexed);
        }
        Ok(index)
    }

    /// How many policies are indexed.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// Whether no policy is indexed.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The policies whose scope matches the request and, for time-bound
    /// links, whose window holds `clock`'s time; in set order. The clock is
    /// read only when a time-bound link's scope matched.
    pub fn candidates(
        &self,
        principal: Target<'_>,
        action: Target<'_>,
        resource: Target<'_>,
        clock: &Clock,
    ) -> Candidates<'_> {
        let parts = [
            self.principal.lookup(&principal),
            self.action.lookup(&action),
            self.resource.lookup(&resource),
        ];
        let size = |b: &Vec<&[u32]>| b.iter().map(|s| s.len()).sum::<usize>();
        let buckets = parts.into_iter().min_by_key(size).unwrap_or_default();
        let mut changes_at: Option<SystemTime> = None;
        let mut slots: Vec<u32> = Vec::new();
        let mut inactive: Vec<InactiveGrant> = Vec::new();
        for &slot in buckets.into_iter().flatten() {
            let p = &self.policies[slot as usize];
            // Buckets key `is .. in` by entity only, so every part is
            // checked, the bucketed one included.
            let matches = p.principal.matches(&principal)
                && action_matches(&p.action, &action)
                && p.resource.matches(&resource);
            if !matches {
                continue;
            }
            if let Some(window) = &p.window {
                let now = clock.now();
                if let Some(next) = window.next_change(now) {
                    changes_at = Some(changes_at.map_or(next, |c| c.min(next)));
                }
                let state = window.state(now);
                if state != GrantState::Active {
                    // Why a deny may be one: a grant that would match.
                    inactive.push(InactiveGrant {
                        policy_id: p.policy.id().to_string(),
                        state,
                        at: match state {
                            GrantState::Pending => window.not_before,
                            _ => window.expires_at,
                        },
                    });
                    continue;
                }
            }
            slots.push(slot);
        }
        slots.sort_unstable();
        slots.dedup();
        inactive.sort_by(|a, b| a.policy_id.cmp(&b.policy_id));
        inactive.dedup();
        Candidates {
            index: self,
            slots,
            changes_at,
            inactive,
        }
    }
}

/// Adds `policy` to `set`: a static policy as it is, a link by linking its
/// template (from `templates`, added to `set` the first time) under the
/// link's own id with the same slot values.
pub(super) fn copy_policy(
    set: &mut PolicySet,
    policy: &Policy,
    templates: &HashMap<PolicyId, Template>,
) -> Result<(), Box<PolicySetError>> {
    let (Some(template), Some(filled)) = (policy.template_id(), policy.template_links()) else {
        return set.add(policy.clone()).map_err(Box::new);
    };
    if set.template(template).is_none()
        && let Some(t) = templates.get(template)
    {
        set.add_template(t.clone())?;
    }
    set.link(template.clone(), policy.id().clone(), filled)
        .map_err(Box::new)
}

/// The policies a request must evaluate; see [`PolicyIndex::candidates`].
#[derive(Debug)]
pub struct Candidates<'a> {
    index: &'a PolicyIndex,
    slots: Vec<u32>,
    changes_at: Option<SystemTime>,
    inactive: Vec<InactiveGrant>,
}

impl<'a> Candidates<'a> {
    /// How many policies matched.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no policy matched.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The next instant a time-bound link whose scope matched enters or
    /// leaves its window: from then on the candidates may differ. `None`
    /// when no such link can change.
    pub fn changes_at(&self) -> Option<SystemTime> {
        self.changes_at
    }

    /// The grants whose scope matched outside their window.
    pub fn take_inactive(&mut self) -> Vec<InactiveGrant> {
        std::mem::take(&mut self.inactive)
    }

    /// The matching policies.
    pub fn policies(&self) -> impl Iterator<Item = &'a Policy> + '_ {
        self.slots
            .iter()
            .map(|&s| &self.index.policies[s as usize].policy)
    }

    /// Each candidate with its condition, for Cedar's evaluator.
    pub fn conditions(
        &self,
    ) -> impl Iterator<Item = (&'a Policy, &'a cedar_policy_core::ast::Expr)> + '_ {
        self.slots.iter().map(|&s| {
            let indexed = &self.index.policies[s as usize];
            (&indexed.policy, &indexed.condition)
        })
    }

    /// Every entity the matching policies name.
    pub fn literals(&self) -> impl Iterator<Item = &'a EntityUid> + '_ {
        self.slots
            .iter()
            .flat_map(|&s| self.index.policies[s as usize].literals.iter())
    }

    /// The matching policies as a set of their own, built once per distinct
    /// set of candidates.
    pub fn policy_set(&self) -> Arc<PolicySet> {
        self.index.sets.get_or_build(&self.slots, || {
            let mut set = PolicySet::new();
            for p in self.policies() {
                // Ids come from one valid set, so they are unique, and every
                // link was linked this way when the index was built (see
                // `PolicyIndex::new`): this cannot fail.
                let _ = copy_policy(&mut set, p, &self.index.templates);
            }
            set
        })
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    #[expect(clippy::unwrap_used, reason = "test input is valid")]
    fn uid(s: &str) -> EntityUid {
        EntityUid::from_str(s).unwrap()
    }

    fn ids(
        index: &PolicyIndex,
        p: &str,
        pa: &[&str],
        a: &str,
        aa: &[&str],
        r: &str,
    ) -> Vec<String> {
        let (p, a, r) = (uid(p), uid(a), uid(r));
        let pa: Vec<_> = pa.iter().map(|s| uid(s)).collect();
        let aa: Vec<_> = aa.iter().map(|s| uid(s)).collect();
        let c = index.candidates(
            Target {
                uid: &p,
                ancestors: &pa,
            },
            Target {
                uid: &a,
                ancestors: &aa,
            },
            Target {
                uid: &r,
                ancestors: &[],
            },
            &Clock::system(),
        );
        c.policies()
            .filter_map(|p| p.annotation("id").map(ToString::to_string))
            .collect()
    }

    #[test]
    #[expect(clippy::unwrap_used, reason = "test input is valid")]
    fn picks_policies_by_scope() {
        let set = PolicySet::from_str(
            r#"
            @id("any") permit(principal, action, resource);
            @id("eq") permit(principal == U::"a", action == Action::"read", resource);
            @id("in") permit(principal in G::"g", action, resource == R::"r");
            @id("is") forbid(principal is U, action in [Action::"all"], resource);
            @id("isin") permit(principal is V in G::"g", action, resource);
            @id("other") permit(principal == U::"b", action, resource);
            "#,
        )
        .unwrap();
        let index = PolicyIndex::new(&set, &HashMap::new()).unwrap();
        assert_eq!(index.len(), 6);
        let mut got = ids(
            &index,
            r#"U::"a""#,
            &[r#"G::"g""#],
            r#"Action::"read""#,
            &[r#"Action::"all""#],
            r#"R::"r""#,
        );
        got.sort();
        assert_eq!(got, ["any", "eq", "in", "is"]);
        let got = ids(
            &index,
            r#"V::"v""#,
            &[],
            r#"Action::"write""#,
            &[],
            r#"R::"s""#,
        );
        assert_eq!(got, ["any"]);
        let mut got = ids(
            &index,
            r#"V::"v""#,
            &[r#"G::"g""#],
            r#"Action::"write""#,
            &[],
            r#"R::"s""#,
        );
        got.sort();
        assert_eq!(got, ["any", "isin"]);
    }

    #[test]
    #[expect(clippy::unwrap_used, reason = "test input is valid")]
    fn builds_each_candidate_set_once() {
        let set = PolicySet::from_str(
            r#"permit(principal == U::"a", action, resource);
               permit(principal == U::"b", action, resource);"#,
        )
        .unwrap();
        let index = PolicyIndex::new(&set, &HashMap::new()).unwrap();
        let (a, b, act, r) = (
            uid(r#"U::"a""#),
            uid(r#"U::"b""#),
            uid(r#"Action::"x""#),
            uid(r#"R::"r""#),
        );
        let target = |u| Target {
            uid: u,
            ancestors: &[],
        };
        let for_a = index
            .candidates(target(&a), target(&act), target(&r), &Clock::system())
            .policy_set();
        let again = index
            .candidates(target(&a), target(&act), target(&r), &Clock::system())
            .policy_set();
        let for_b = index
            .candidates(target(&b), target(&act), target(&r), &Clock::system())
            .policy_set();
        assert!(Arc::ptr_eq(&for_a, &again));
        assert_eq!(for_a.num_of_policies(), 1);
        assert_eq!(for_b.num_of_policies(), 1);
        assert_ne!(
            for_a.policies().next().unwrap().id(),
            for_b.policies().next().unwrap().id()
        );
    }

    #[test]
    #[expect(clippy::unwrap_used, reason = "test input is valid")]
    fn links_apply_inside_their_window_and_only_they_read_the_clock() {
        use std::time::Duration;
        let mut set = PolicySet::new();
        let template = "permit (principal == ?principal, action, resource);";
        set.add_template(Template::parse(Some(PolicyId::new("t")), template).unwrap())
            .unwrap();
        let plain = r#"permit (principal == U::"b", action, resource);"#;
        set.add(Policy::parse(Some(PolicyId::new("plain")), plain).unwrap())
            .unwrap();
        let vals = |who: &str| HashMap::from([(cedar_policy::SlotId::principal(), uid(who))]);
        set.link(
            PolicyId::new("t"),
            PolicyId::new("grant"),
            vals(r#"U::"a""#),
        )
        .unwrap();
        set.link(
            PolicyId::new("t"),
            PolicyId::new("standing"),
            vals(r#"U::"a""#),
        )
        .unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let minute = Duration::from_secs(60);
        let windows = HashMap::from([
            (
                PolicyId::new("grant"),
                Window {
                    not_before: Some(t0),
                    expires_at: Some(t0 + minute),
                },
            ),
            (PolicyId::new("standing"), Window::default()),
        ]);
        let index = PolicyIndex::new(&set, &windows).unwrap();
        let (a, b, act, r) = (
            uid(r#"U::"a""#),
            uid(r#"U::"b""#),
            uid(r#"Action::"x""#),
            uid(r#"R::"r""#),
        );
        let target = |u| Target {
            uid: u,
            ancestors: &[],
        };
        let at = |who, clock: &Clock| {
            let c = index.candidates(target(who), target(&act), target(&r), clock);
            let ids: Vec<String> = c.policies().map(|p| p.id().to_string()).collect();
            let set = c.policy_set();
            assert_eq!(set.num_of_policies(), ids.len());
            (ids, c.changes_at())
        };
        // No time-bound link matches `b`: the clock is never read.
        let clock = Clock::system();
        assert_eq!(at(&b, &clock), (vec!["plain".to_string()], None));
        assert!(!clock.was_read());
        // For `a`, the window decides, and says when it next changes.
        let before = at(&a, &Clock::at(t0 - minute));
        assert_eq!(before, (vec!["standing".to_string()], Some(t0)));
        let inside = at(&a, &Clock::at(t0 + minute / 2));
        assert_eq!(inside.0, ["grant", "standing"]);
        assert_eq!(inside.1, Some(t0 + minute));
        let after = at(&a, &Clock::at(t0 + minute));
        assert_eq!(after, (vec!["standing".to_string()], None));
        // The built set evaluates the link under its own id.
        let c = index.candidates(target(&a), target(&act), target(&r), &Clock::at(t0));
        let set = c.policy_set();
        let request = cedar_policy::Request::new(
            a.clone(),
            act.clone(),
            r.clone(),
            cedar_policy::Context::empty(),
            None,
        )
        .unwrap();
        let response = cedar_policy::Authorizer::new().is_authorized(
            &request,
            &set,
            &cedar_policy::Entities::empty(),
        );
        let mut reasons: Vec<String> = response
            .diagnostics()
            .reason()
            .map(ToString::to_string)
            .collect();
        reasons.sort();
        assert_eq!(reasons, ["grant", "standing"]);
    }

    #[test]
    fn the_set_cache_stays_bounded_under_distinct_shapes() {
        let cache = SetCache::new();
        let built = std::cell::Cell::new(0);
        let build = || {
            built.set(built.get() + 1);
            PolicySet::new()
        };
        for i in 0..(4 * SET_CACHE_SLOTS as u32) {
            cache.get_or_build(&[i, i + 1], build);
        }
        assert_eq!(built.get(), 4 * SET_CACHE_SLOTS);
        assert!(cache.len() <= SET_CACHE_SLOTS);
        // Most slots fill: two choices per key spread them out.
        assert!(cache.len() > SET_CACHE_SLOTS / 2, "{}", cache.len());
        // The latest shape is kept, and found again without a build.
        let last = 4 * SET_CACHE_SLOTS as u32 - 1;
        let again = cache.get_or_build(&[last, last + 1], build);
        assert_eq!(built.get(), 4 * SET_CACHE_SLOTS);
        assert!(Arc::ptr_eq(
            &again,
            &cache.get_or_build(&[last, last + 1], || unreachable!("kept"))
        ));
    }

    #[test]
    #[expect(clippy::unwrap_used, reason = "test input is valid")]
    fn concurrent_lookups_get_the_set_of_their_own_key() {
        let text: String = (0..64)
            .map(|i| format!("@id(\"p{i}\") permit(principal == U::\"u{i}\", action, resource);\n"))
            .collect();
        let set = PolicySet::from_str(&text).unwrap();
        let index = PolicyIndex::new(&set, &HashMap::new()).unwrap();
        let (act, r) = (uid(r#"Action::"x""#), uid(r#"R::"r""#));
        std::thread::scope(|scope| {
            for t in 0..4 {
                let (index, act, r) = (&index, &act, &r);
                scope.spawn(move || {
                    for round in 0..200 {
                        let i = (round * 7 + t) % 64;
                        let p = uid(&format!(r#"U::"u{i}""#));
                        let target = |u| Target {
                            uid: u,
                            ancestors: &[],
                        };
                        let got = index
                            .candidates(target(&p), target(act), target(r), &Clock::system())
                            .policy_set();
                        let ids: Vec<_> = got
                            .policies()
                            .filter_map(|p| p.annotation("id").map(str::to_string))
                            .collect();
                        assert_eq!(ids, [format!("p{i}")]);
                    }
                });
            }
        });
    }
}
