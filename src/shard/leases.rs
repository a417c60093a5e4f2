//! The Leases replicas split the shards with, read and written as pure
//! values: which replicas are live, who holds which shard, and what this
//! replica writes next. `membership` does the writing.
//!
//! Each replica keeps a Lease of its own (`<prefix>-replica-<identity>`)
//! renewed while it runs: the replicas with a current one are the live
//! ones [`super::plan`] splits between. Each shard is a Lease named with the
//! count (`<prefix>-shard-<i>-of-<count>`), since shard 3 of 8 is not shard
//! 3 of 16. All carry the label [`SET_LABEL`] so a replica watches only
//! its own set's Leases.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::ObjectMeta;

use super::Plan;

/// The label naming the set (the prefix) a Lease belongs to.
pub const SET_LABEL: &str = "grants.io/lease-set";

/// The Lease that says a replica is live, and for which count: replicas of
/// another `--shards` (a rolling update that changes it) are not counted in
/// this count's split, so nothing is handed to one that would not take it.
pub fn replica_lease(prefix: &str, count: u32, identity: &str) -> String {
    format!("{prefix}-replica-{identity}-of-{count}")
}

/// The Lease of shard `shard` of `count`.
pub fn shard_lease(prefix: &str, count: u32, shard: u32) -> String {
    format!("{prefix}-shard-{shard}-of-{count}")
}

/// What a Lease's name says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Replica { count: u32 },
    Shard { shard: u32, count: u32 },
}

fn kind(prefix: &str, name: &str) -> Option<Kind> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
    if let Some(replica) = rest.strip_prefix("replica-") {
        let (_, count) = replica.rsplit_once("-of-")?;
        return Some(Kind::Replica {
            count: count.parse().ok()?,
        });
    }
    let (shard, count) = rest.strip_prefix("shard-")?.split_once("-of-")?;
    Some(Kind::Shard {
        shard: shard.parse().ok()?,
        count: count.parse().ok()?,
    })
}

/// Who holds `lease` at `now`: its holder, unless it was released or ran
/// out (`renewTime + leaseDurationSeconds`, as a standby judges it).
pub fn holder(lease: &Lease, now: SystemTime) -> Option<&str> {
    let spec = lease.spec.as_ref()?;
    let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty())?;
    (now < expiry(lease)?).then_some(holder)
}

/// When `lease` runs out unless renewed.
pub fn expiry(lease: &Lease) -> Option<SystemTime> {
    let spec = lease.spec.as_ref()?;
    let renewed = SystemTime::from(spec.renew_time.as_ref()?.0);
    let seconds = u64::try_from(spec.lease_duration_seconds?).ok()?;
    Some(renewed + Duration::from_secs(seconds))
}

/// The shard Leases of a set, as seen at one moment.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct View {
    /// Identities with a current replica Lease.
    pub replicas: BTreeSet<String>,
    /// Current holders of this count's shards.
    pub holders: BTreeMap<u32, String>,
    /// Some shard Lease of another count is still held: replicas of an
    /// earlier `--shards` run, whose shards overlap these. Nothing is taken
    /// until they are gone.
    pub other_count_held: bool,
    /// The leader-election Lease of the same name is held: a replica run
    /// with `--leader-elect` writes for every grant. Sharded replicas then
    /// stop and give up every shard, whatever they hold.
    pub leader_held: bool,
}

impl View {
    pub fn of<'a>(
        leases: impl IntoIterator<Item = &'a Lease>,
        prefix: &str,
        count: u32,
        now: SystemTime,
    ) -> View {
        let mut view = View::default();
        for lease in leases {
            let name = lease.metadata.name.as_deref().unwrap_or_default();
            let (Some(kind), Some(holder)) = (kind(prefix, name), holder(lease, now)) else {
                continue;
            };
            match kind {
                Kind::Replica { count: c } if c == count => {
                    view.replicas.insert(holder.to_owned());
                }
                Kind::Replica { .. } => {}
                Kind::Shard { shard, count: c } if c == count && shard < count => {
                    view.holders.insert(shard, holder.to_owned());
                }
                Kind::Shard { count: c, .. } if c != count => view.other_count_held = true,
                // Not a shard of any count (someone else's Lease).
                Kind::Shard { .. } => {}
            }
        }
        view
    }

    /// Shards `me` holds.
    pub fn held_by(&self, me: &str) -> BTreeSet<u32> {
        let mine = self.holders.iter().filter(|(_, h)| *h == me);
        mine.map(|(s, _)| *s).collect()
    }
}

/// The writes one step makes, and what the controller runs with after it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Steps {
    /// Free shards to claim.
    pub acquire: BTreeSet<u32>,
    /// Held shards to give up: not this replica's, or handed over now that
    /// the controller no longer runs with them.
    pub release: BTreeSet<u32>,
    /// What the controller should run with: held, and neither released nor
    /// being handed over.
    pub serve: BTreeSet<u32>,
}

/// What to do about `plan`, given the view and the shards the controller
/// runs with now (`running`): a shard is handed over only once the
/// controller has stopped writing for it.
pub fn steps(view: &View, me: &str, plan: &Plan, running: &BTreeSet<u32>) -> Steps {
    let held = view.held_by(me);
    let leaving =
        |s: &u32| view.leader_held || plan.release.contains(s) || plan.give.contains_key(s);
    // Released only once the controller has stopped writing for them.
    let release: BTreeSet<u32> = held
        .iter()
        .filter(|s| leaving(s) && !running.contains(s))
        .copied()
        .collect();
    let acquire = if view.other_count_held || view.leader_held {
        BTreeSet::new()
    } else {
        let free = |s: &&u32| !view.holders.contains_key(s);
        plan.take.iter().filter(free).copied().collect()
    };
    let serve = held.iter().filter(|s| !leaving(s)).copied().collect();
    Steps {
        acquire,
        release,
        serve,
    }
}

/// How a Lease is held or given up.
#[derive(Debug, Clone)]
pub struct Holding<'a> {
    pub identity: &'a str,
    pub prefix: &'a str,
    pub duration: Duration,
}

impl Holding<'_> {
    /// `previous` (or a new Lease `name`) held by this replica from `now`.
    pub fn claim(&self, name: &str, previous: Option<&Lease>, now: SystemTime) -> Lease {
        let mut lease = previous.cloned().unwrap_or_else(|| self.fresh(name));
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let changed = spec.holder_identity.as_deref() != Some(self.identity);
        if changed {
            spec.holder_identity = Some(self.identity.to_owned());
            spec.acquire_time = Some(micro(now));
            if previous.is_some() {
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
        }
        spec.renew_time = Some(micro(now));
        spec.lease_duration_seconds = Some(seconds(self.duration));
        lease
    }

    /// `lease` given up: held by nobody, free at once.
    pub fn release(&self, lease: &Lease, now: SystemTime) -> Lease {
        let mut lease = lease.clone();
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = None;
        spec.renew_time = Some(micro(now));
        spec.lease_duration_seconds = Some(1);
        lease
    }

    /// Whether this replica should renew `lease` now: a third of the way
    /// before it runs out, as client-go renews.
    pub fn due(&self, lease: &Lease, now: SystemTime) -> bool {
        let renew_at = expiry(lease).map(|end| end - self.duration / 3);
        renew_at.is_none_or(|at| now >= at)
    }

    fn fresh(&self, name: &str) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some([(SET_LABEL.to_owned(), self.prefix.to_owned())].into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec::default()),
        }
    }
}

fn micro(t: SystemTime) -> MicroTime {
    MicroTime(jiff::Timestamp::try_from(t).unwrap_or(jiff::Timestamp::UNIX_EPOCH))
}

fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFIX: &str = "ugo";

    fn held(name: &str, holder: &str, renewed: SystemTime) -> Lease {
        let holding = Holding {
            identity: holder,
            prefix: PREFIX,
            duration: Duration::from_secs(15),
        };
        holding.claim(name, None, renewed)
    }

    #[test]
    fn names_say_what_a_lease_is() {
        assert_eq!(
            kind(PREFIX, &replica_lease(PREFIX, 64, "pod-of-a")),
            Some(Kind::Replica { count: 64 })
        );
        assert_eq!(
            kind(PREFIX, &shard_lease(PREFIX, 64, 7)),
            Some(Kind::Shard {
                shard: 7,
                count: 64
            })
        );
        for other in [
            "ugo",
            "ugo-x",
            "ugo-shard-1",
            "ugo-shard-a-of-4",
            "ugox-replica-a-of-4",
            "other-replica-a-of-4",
            "ugo-replica-a",
        ] {
            assert_eq!(kind(PREFIX, other), None, "{other}");
        }
    }

    #[test]
    fn a_view_counts_only_current_leases_of_its_count() {
        let now = SystemTime::now();
        let old = now - Duration::from_secs(20);
        let released = Holding {
            identity: "b",
            prefix: PREFIX,
            duration: Duration::from_secs(15),
        }
        .release(&held(&shard_lease(PREFIX, 4, 2), "b", now), now);
        let leases = [
            held(&replica_lease(PREFIX, 4, "a"), "a", now),
            held(&replica_lease(PREFIX, 4, "dead"), "dead", old),
            held(&replica_lease(PREFIX, 8, "of-another-count"), "b", now),
            held(&shard_lease(PREFIX, 4, 0), "a", now),
            held(&shard_lease(PREFIX, 4, 1), "dead", old),
            released,
            held(&shard_lease(PREFIX, 4, 9), "a", now),
            held("someone-else-entirely", "x", now),
        ];
        let view = View::of(&leases, PREFIX, 4, now);
        assert_eq!(view.replicas, BTreeSet::from(["a".to_owned()]));
        assert_eq!(view.holders, BTreeMap::from([(0, "a".to_owned())]));
        assert!(!view.other_count_held);
        let mut with_old_count = leases.to_vec();
        with_old_count.push(held(&shard_lease(PREFIX, 8, 2), "b", old));
        assert_eq!(
            View::of(&with_old_count, PREFIX, 4, now),
            view,
            "an old count's Lease that ran out holds nothing"
        );
        with_old_count.push(held(&shard_lease(PREFIX, 8, 1), "b", now));
        assert!(View::of(&with_old_count, PREFIX, 4, now).other_count_held);
    }

    fn set(shards: &[u32]) -> BTreeSet<u32> {
        shards.iter().copied().collect()
    }

    #[test]
    fn steps_hand_a_shard_over_only_once_the_controller_let_it_go() {
        let view = View {
            replicas: ["a", "b"].map(String::from).into(),
            holders: [(0, "a"), (1, "a"), (2, "b")]
                .map(|(s, h)| (s, h.to_owned()))
                .into(),
            other_count_held: false,
            leader_held: false,
        };
        let plan = Plan {
            take: set(&[3]),
            give: [(1, "b".to_owned())].into(),
            release: BTreeSet::new(),
        };
        // (running, release, serve)
        let cases: [(&[u32], &[u32], &[u32]); 3] =
            [(&[0, 1], &[], &[0]), (&[0], &[1], &[0]), (&[], &[1], &[0])];
        for (running, release, serve) in cases {
            let steps = steps(&view, "a", &plan, &set(running));
            assert_eq!(steps.release, set(release), "running {running:?}");
            assert_eq!(steps.serve, set(serve), "running {running:?}");
            assert_eq!(steps.acquire, set(&[3]), "shard 3 is free");
        }
    }

    #[test]
    fn steps_take_only_free_shards_and_nothing_while_another_count_is_held() {
        let mut view = View {
            replicas: ["a", "b"].map(String::from).into(),
            holders: [(2, "b".to_owned())].into(),
            other_count_held: false,
            leader_held: false,
        };
        let plan = Plan {
            take: set(&[1, 2]),
            give: BTreeMap::new(),
            release: set(&[5]),
        };
        let steps_now = steps(&view, "a", &plan, &BTreeSet::new());
        assert_eq!(steps_now.acquire, set(&[1]), "2 waits for b to let go");
        assert!(steps_now.release.is_empty(), "5 is not held by a");
        view.other_count_held = true;
        assert!(
            steps(&view, "a", &plan, &BTreeSet::new())
                .acquire
                .is_empty()
        );
        view.holders.insert(5, "a".into());
        let releasing = steps(&view, "a", &plan, &set(&[5]));
        assert!(releasing.release.is_empty(), "5 still runs");
        assert!(releasing.serve.is_empty());
        let released = steps(&view, "a", &plan, &BTreeSet::new());
        assert_eq!(released.release, set(&[5]));
    }

    /// A held leader Lease (a `--leader-elect` replica of a rolling update
    /// between modes) stops every sharded replica and frees its shards.
    #[test]
    fn steps_give_everything_up_while_the_leader_lease_is_held() {
        let view = View {
            replicas: ["a"].map(String::from).into(),
            holders: [(0, "a".to_owned())].into(),
            other_count_held: false,
            leader_held: true,
        };
        let plan = Plan {
            take: set(&[0, 1]),
            ..Plan::default()
        };
        let running = steps(&view, "a", &plan, &set(&[0]));
        assert!(running.serve.is_empty() && running.acquire.is_empty());
        assert!(running.release.is_empty(), "the controller still runs 0");
        assert_eq!(
            steps(&view, "a", &plan, &BTreeSet::new()).release,
            set(&[0])
        );
    }

    #[test]
    fn claims_renew_and_releases_are_what_a_standby_reads() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let holding = Holding {
            identity: "a",
            prefix: PREFIX,
            duration: Duration::from_secs(15),
        };
        let claimed = holding.claim("ugo-shard-0-of-4", None, t0);
        assert_eq!(holder(&claimed, t0), Some("a"));
        assert_eq!(
            holder(&claimed, t0 + Duration::from_secs(15)),
            None,
            "ran out"
        );
        assert_eq!(
            claimed
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SET_LABEL))
                .map(String::as_str),
            Some(PREFIX)
        );
        assert!(!holding.due(&claimed, t0 + Duration::from_secs(9)));
        assert!(holding.due(&claimed, t0 + Duration::from_secs(10)));
        let renewed = holding.claim(
            "ugo-shard-0-of-4",
            Some(&claimed),
            t0 + Duration::from_secs(10),
        );
        let spec = renewed.spec.clone().unwrap_or_default();
        assert_eq!(
            spec.acquire_time,
            claimed.spec.as_ref().and_then(|s| s.acquire_time.clone())
        );
        assert_eq!(spec.lease_transitions, None, "a renewal is no transition");
        let released = holding.release(&renewed, t0 + Duration::from_secs(11));
        assert_eq!(holder(&released, t0 + Duration::from_secs(11)), None);
        let other = Holding {
            identity: "b",
            ..holding
        };
        let taken = other.claim(
            "ugo-shard-0-of-4",
            Some(&released),
            t0 + Duration::from_secs(11),
        );
        assert_eq!(holder(&taken, t0 + Duration::from_secs(11)), Some("b"));
        assert_eq!(taken.spec.and_then(|s| s.lease_transitions), Some(1));
    }
}
