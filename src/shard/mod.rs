//! The key space cut into virtual shards the way the apiserver cuts it, so
//! that replicas can split the grants between them on the apiserver's own
//! sharded list and watch (KEP-5866, `ShardedListAndWatch`, alpha in
//! Kubernetes 1.36).
//!
//! The apiserver hashes `object.metadata.uid` with 64-bit FNV-1a and sends a
//! watch only the objects whose hash lies in the ranges of its
//! `shardSelector`. A power-of-two count of shards makes every shard one
//! contiguous range of that hash, so any set of shards is a short list of
//! ranges. A server without the gate ignores the selector and sends
//! everything, and a custom resource's list never echoes it (its list type
//! has no `shardInfo`): whatever the server did, [`Shards::owns`] is what a
//! replica filters by.
//!
//! What a replica holds is decided by [`plan`]: a fair share each, moving as
//! few shards as it can when replicas come and go.

pub mod leases;
pub mod membership;

use std::collections::{BTreeMap, BTreeSet};

/// The most shards a split may have: each is a Lease.
pub const MAX_SHARDS: u32 = 1024;

/// The shards a Secret's `grants.io/shard` label counts in: the finest
/// split `--shards` allows, so every shard of any count is a whole set of
/// label values, and a Secret keeps its label when the count changes.
pub const LABEL_SHARDS: u32 = MAX_SHARDS;

/// The `grants.io/shard` label of the Secret of the grant with this uid.
pub fn label_value(uid: &str) -> String {
    finest().of(uid).to_string()
}

fn finest() -> Shards {
    Shards {
        bits: LABEL_SHARDS.trailing_zeros(),
    }
}

/// The field the apiserver hashes for a grant's shard.
pub const FIELD: &str = "object.metadata.uid";

/// 64-bit FNV-1a of `value`'s bytes: the hash the apiserver computes of a
/// shard selector's field (Go's `hash/fnv` `New64a`), taken as it is stored.
pub fn hash(value: &str) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    value.bytes().fold(OFFSET_BASIS, |h, byte| {
        (h ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

/// `--shards` is not a power of two from 1 to [`MAX_SHARDS`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the shard count must be a power of two from 1 to {MAX_SHARDS}, not {0}")]
pub struct InvalidShardCount(pub u32);

/// A power-of-two number of shards; shard `i` holds the hashes whose top
/// bits are `i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shards {
    /// log2 of the count.
    bits: u32,
}

/// The shards a replica runs the controller for, of one count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owned {
    pub shards: Shards,
    pub owned: BTreeSet<u32>,
}

impl Owned {
    /// Whether the object with this uid is in these shards.
    pub fn contains(&self, uid: &str) -> bool {
        self.shards.owns(&self.owned, uid)
    }

    /// The `shardSelector` for these shards.
    pub fn selection(&self) -> Selection {
        self.shards.selection(&self.owned)
    }

    /// The `grants.io/shard` label values of these shards' Secrets
    /// ([`label_value`]), lowest first.
    pub fn label_values(&self) -> Vec<u32> {
        let per = LABEL_SHARDS / self.shards.count();
        self.owned
            .iter()
            .filter(|s| **s < self.shards.count())
            .flat_map(|s| s * per..(s + 1) * per)
            .collect()
    }
}

/// What a replica's watch selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every shard: no selector.
    All,
    /// No shard: the replica watches nothing.
    Nothing,
    /// The `shardSelector` naming the replica's shards.
    Ranges(String),
}

impl Shards {
    pub fn new(count: u32) -> Result<Self, InvalidShardCount> {
        if count.is_power_of_two() && count <= MAX_SHARDS {
            Ok(Shards {
                bits: count.trailing_zeros(),
            })
        } else {
            Err(InvalidShardCount(count))
        }
    }

    pub fn count(&self) -> u32 {
        1 << self.bits
    }

    /// The shard of an object with this uid.
    pub fn of(&self, uid: &str) -> u32 {
        self.of_hash(hash(uid))
    }

    fn of_hash(&self, hash: u64) -> u32 {
        // A shift by 64 is not defined: one shard holds every hash.
        hash.checked_shr(64 - self.bits).unwrap_or(0) as u32
    }

    /// Whether `owned` holds the object with this uid: the check a replica
    /// makes of every object, since a server may have ignored the selector.
    pub fn owns(&self, owned: &BTreeSet<u32>, uid: &str) -> bool {
        owned.contains(&self.of(uid))
    }

    /// The hashes of `shard`, from its first to one past its last. The last
    /// shard ends at 2^64, past any `u64`.
    pub fn range(&self, shard: u32) -> (u128, u128) {
        let width = 1u128 << (64 - self.bits);
        (u128::from(shard) * width, (u128::from(shard) + 1) * width)
    }

    /// The selector naming `owned` (shards of this count; others are
    /// ignored), neighbours merged into one range.
    pub fn selection(&self, owned: &BTreeSet<u32>) -> Selection {
        let mut ranges: Vec<(u128, u128)> = Vec::new();
        for shard in owned.iter().filter(|s| **s < self.count()) {
            let (start, end) = self.range(*shard);
            match ranges.last_mut() {
                Some(last) if last.1 == start => last.1 = end,
                _ => ranges.push((start, end)),
            }
        }
        match ranges.as_slice() {
            [] => Selection::Nothing,
            [(0, end)] if *end == 1u128 << 64 => Selection::All,
            _ => Selection::Ranges(
                ranges
                    .iter()
                    .map(|(start, end)| {
                        format!("shardRange({FIELD}, '{}', '{}')", hex(*start), hex(*end))
                    })
                    .collect::<Vec<_>>()
                    .join(" || "),
            ),
        }
    }
}

/// A bound as the apiserver's parser takes it: `0x` and 16 lowercase hex
/// digits, or `0x10000000000000000` for 2^64.
fn hex(bound: u128) -> String {
    format!("0x{bound:016x}")
}

/// What one replica should do about its shards. Shard numbers mean ranges
/// of one count only (shard 3 of 8 is not shard 3 of 16): whatever names a
/// shard's Lease must name the count too.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Shards that are this replica's to hold: free now, or once the
    /// replica named in its `give` hands them over.
    pub take: BTreeSet<u32>,
    /// Shards this replica holds beyond its share, each with the replica
    /// that takes it: handed over once that replica is ready for it.
    pub give: BTreeMap<u32, String>,
    /// Shards this replica holds that nobody takes from it: not shards of
    /// this count, or all it holds when it is not among the live replicas.
    pub release: BTreeSet<u32>,
}

/// This replica's part in a fair split of `count` shards between the live
/// `replicas`, given who holds what now; every live replica computes the
/// same split from the same view. Each replica's share is `count / n`; the
/// `count % n` one more go to the replicas that hold the most now (ties by
/// name), so that as few shards as possible move. A replica keeps what it
/// holds up to its share, lowest shards first; the rest (free, held by a
/// replica no longer live, or held beyond a share) go to the replicas below
/// their share, in name order, lowest shards first.
pub fn plan(
    count: u32,
    me: &str,
    replicas: &BTreeSet<String>,
    holders: &BTreeMap<u32, String>,
) -> Plan {
    let mine = holders.iter().filter(|(_, h)| *h == me).map(|(s, _)| *s);
    if !replicas.contains(me) {
        return Plan {
            release: mine.collect(),
            ..Plan::default()
        };
    }
    let share = shares(count, replicas, holders);
    let mut kept: BTreeMap<&str, u32> = BTreeMap::new();
    // Shards that move: with the replica that holds them now, if live.
    let mut moving: Vec<(u32, Option<&str>)> = Vec::new();
    for shard in 0..count {
        let holder = holders.get(&shard).map(String::as_str);
        match holder.filter(|h| share.contains_key(h)) {
            Some(h) if kept.get(h).copied().unwrap_or(0) < share[h] => {
                *kept.entry(h).or_default() += 1;
            }
            live => moving.push((shard, live)),
        }
    }
    let mut plan = Plan {
        release: mine.filter(|s| *s >= count).collect(),
        ..Plan::default()
    };
    let mut moving = moving.into_iter();
    for (replica, want) in &share {
        let below = want.saturating_sub(kept.get(replica).copied().unwrap_or(0));
        for (shard, from) in moving.by_ref().take(below as usize) {
            if *replica == me {
                plan.take.insert(shard);
            }
            if from == Some(me) {
                plan.give.insert(shard, (*replica).to_owned());
            }
        }
    }
    plan
}

/// Each live replica's share of `count` shards: `count / n`, and one more
/// for the `count % n` that hold the most now (ties by name).
fn shares<'a>(
    count: u32,
    replicas: &'a BTreeSet<String>,
    holders: &BTreeMap<u32, String>,
) -> BTreeMap<&'a str, u32> {
    let n = replicas.len() as u32;
    let mut held: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, h) in holders.iter().filter(|(s, _)| **s < count) {
        *held.entry(h.as_str()).or_default() += 1;
    }
    let mut by_holding: Vec<&str> = replicas.iter().map(String::as_str).collect();
    // Stable: ties stay in name order.
    by_holding.sort_by_key(|r| std::cmp::Reverse(held.get(r).copied().unwrap_or(0)));
    by_holding
        .iter()
        .enumerate()
        .map(|(i, r)| (*r, count / n + u32::from((i as u32) < count % n)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Go's `hash/fnv` golden values for FNV-1a 64 (fnv_test.go), which the
    /// apiserver's `sharding.HashField` prints as 16 hex digits.
    #[test]
    fn hashes_as_go_fnv1a_64() {
        for (input, want) in [
            ("", 0xcbf29ce484222325u64),
            ("a", 0xaf63dc4c8601ec8c),
            ("ab", 0x089c4407b545986a),
            ("abc", 0xe71fa2190541574b),
        ] {
            assert_eq!(hash(input), want, "{input:?}");
        }
    }

    /// A Secret's label lies in its grant's shard at every count, so a
    /// replica selecting its shards' label values sees exactly its grants'
    /// Secrets.
    #[test]
    fn a_label_value_lies_in_its_grants_shard_at_every_count() {
        let uids: Vec<String> = (0..200).map(|i| format!("uid-{i}")).collect();
        for count in [1, 2, 8, 64, MAX_SHARDS] {
            let shards = Shards::new(count).expect("a power of two");
            for shard in [0, count / 2, count - 1] {
                let owned = Owned {
                    shards,
                    owned: BTreeSet::from([shard]),
                };
                let values = owned.label_values();
                assert_eq!(values.len() as u32, LABEL_SHARDS / count);
                for uid in &uids {
                    let label: u32 = label_value(uid).parse().expect("a number");
                    assert_eq!(
                        values.contains(&label),
                        owned.contains(uid),
                        "{uid} of {count}"
                    );
                }
            }
        }
        let beyond = Owned {
            shards: Shards::new(4).expect("a power of two"),
            owned: BTreeSet::from([1, 9]),
        };
        assert_eq!(beyond.label_values(), (256..512).collect::<Vec<_>>());
    }

    #[test]
    fn takes_only_a_power_of_two_up_to_the_maximum() {
        for good in [1, 2, 64, MAX_SHARDS] {
            assert_eq!(Shards::new(good).map(|s| s.count()), Ok(good));
        }
        for bad in [0, 3, 48, 2 * MAX_SHARDS] {
            assert_eq!(Shards::new(bad), Err(InvalidShardCount(bad)));
        }
    }

    /// A shard is the top bits of the hash, so shard i of n lies in the
    /// i-th n-th of the hash space, the range the selector names for it.
    #[test]
    fn a_shard_is_its_hashes_top_bits() {
        let four = Shards::new(4).expect("valid");
        // "abc" hashes to 0xe71f…: the last quarter (hash_test.go's example).
        assert_eq!(four.of("abc"), 3);
        assert_eq!(four.of("a"), 2);
        assert_eq!(Shards::new(1).expect("valid").of("abc"), 0);
        let sixty_four = Shards::new(64).expect("valid");
        for uid in ["", "a", "abc", "6f1c2b3a-1d2e-4f5a-9b8c-00000000123f"] {
            let (start, end) = sixty_four.range(sixty_four.of(uid));
            let h = u128::from(hash(uid));
            assert!(start <= h && h < end, "{uid:?}");
        }
    }

    #[test]
    fn names_owned_shards_as_merged_ranges() {
        let four = Shards::new(4).expect("valid");
        let set = |s: &[u32]| s.iter().copied().collect::<BTreeSet<u32>>();
        let ranges = |s: &str| Selection::Ranges(s.to_owned());
        for (owned, want) in [
            (set(&[]), Selection::Nothing),
            (set(&[0, 1, 2, 3]), Selection::All),
            (
                set(&[0, 1]),
                ranges(
                    "shardRange(object.metadata.uid, '0x0000000000000000', '0x8000000000000000')",
                ),
            ),
            (
                set(&[3]),
                ranges(
                    "shardRange(object.metadata.uid, '0xc000000000000000', '0x10000000000000000')",
                ),
            ),
            (
                set(&[0, 2, 3]),
                ranges(
                    "shardRange(object.metadata.uid, '0x0000000000000000', '0x4000000000000000') || \
                     shardRange(object.metadata.uid, '0x8000000000000000', '0x10000000000000000')",
                ),
            ),
            // A shard of another count is not ours to name.
            (set(&[9]), Selection::Nothing),
        ] {
            assert_eq!(four.selection(&owned), want, "{owned:?}");
        }
    }

    fn replicas(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    fn held(pairs: &[(u32, &str)]) -> BTreeMap<u32, String> {
        pairs.iter().map(|(s, h)| (*s, (*h).to_owned())).collect()
    }

    /// Every live replica's plan, carried out at once: who holds what
    /// afterwards. A replica that is gone lost its shards when its Leases
    /// lapsed. A shard is handed only to the replica whose plan takes it,
    /// and nobody takes a shard somebody still holds.
    fn settle(
        count: u32,
        live: &BTreeSet<String>,
        holders: &BTreeMap<u32, String>,
    ) -> BTreeMap<u32, String> {
        let plans: BTreeMap<&String, Plan> = live
            .iter()
            .map(|r| (r, plan(count, r, live, holders)))
            .collect();
        let mut after = holders.clone();
        after.retain(|_, h| live.contains(h));
        for (replica, plan) in &plans {
            for shard in &plan.release {
                assert_eq!(after.remove(shard).as_ref(), Some(*replica));
            }
            for (shard, to) in &plan.give {
                assert!(
                    plans[to].take.contains(shard),
                    "{shard} given to {to}, who does not take it"
                );
                assert_eq!(after.remove(shard).as_ref(), Some(*replica));
            }
        }
        for (replica, plan) in &plans {
            for shard in &plan.take {
                let before = after.insert(*shard, (*replica).clone());
                assert!(
                    before.is_none(),
                    "shard {shard} taken while {before:?} holds it"
                );
            }
        }
        after
    }

    fn counts(holders: &BTreeMap<u32, String>) -> Vec<usize> {
        let mut n: BTreeMap<&String, usize> = BTreeMap::new();
        for h in holders.values() {
            *n.entry(h).or_default() += 1;
        }
        n.into_values().collect()
    }

    /// How many shards changed hands between two splits.
    fn moved(before: &BTreeMap<u32, String>, after: &BTreeMap<u32, String>) -> usize {
        after
            .iter()
            .filter(|(s, h)| before.get(s) != Some(h))
            .count()
    }

    #[test]
    fn splits_fairly_in_one_round_and_moves_only_what_it_must() {
        let three = replicas(&["a", "b", "c"]);
        let start = settle(64, &three, &BTreeMap::new());
        assert_eq!((start.len(), counts(&start)), (64, vec![22, 21, 21]));
        assert_eq!(settle(64, &three, &start), start, "a settled split stays");

        // "c" goes: only its 21 shards move, and the two left hold 32 each.
        let two = replicas(&["a", "b"]);
        let after = settle(64, &two, &start);
        assert_eq!((after.len(), counts(&after)), (64, vec![32, 32]));
        assert_eq!(moved(&start, &after), 21);

        // "d" comes: "a" and "b" hand it their excess, each named for it.
        let with_d = replicas(&["a", "b", "d"]);
        let a = plan(64, "a", &with_d, &after);
        assert!(a.take.is_empty() && a.release.is_empty());
        assert_eq!(a.give.len(), 32 - 22);
        assert!(a.give.values().all(|to| to == "d"));
        let joined = settle(64, &with_d, &after);
        assert_eq!((joined.len(), counts(&joined)), (64, vec![22, 21, 21]));
        assert_eq!(moved(&after, &joined), 21);
        assert_eq!(settle(64, &with_d, &joined), joined);
    }

    /// The extra shard of an uneven split stays with a replica that holds
    /// it, rather than following the replicas' names.
    #[test]
    fn an_uneven_split_keeps_the_extra_shard_where_it_is() {
        let before = held(&[(0, "b"), (1, "b"), (2, "c"), (3, "d")]);
        let after = settle(4, &replicas(&["a", "b", "c"]), &before);
        assert_eq!(after, held(&[(0, "b"), (1, "b"), (2, "c"), (3, "a")]));
    }

    #[test]
    fn lets_go_of_what_is_not_its_to_hold() {
        // Not among the live replicas: it releases all it holds.
        let holders = held(&[(0, "x"), (1, "a")]);
        let x = plan(4, "x", &replicas(&["a"]), &holders);
        assert_eq!(x.release, BTreeSet::from([0]));
        assert!(x.take.is_empty() && x.give.is_empty());
        assert_eq!(
            plan(4, "a", &replicas(&["a"]), &holders).take,
            BTreeSet::from([0, 2, 3])
        );
        // A shard of another count (after the count was lowered).
        let a = plan(4, "a", &replicas(&["a"]), &held(&[(9, "a")]));
        assert_eq!(a.release, BTreeSet::from([9]));
        assert_eq!(a.take, BTreeSet::from([0, 1, 2, 3]));
        let gone = plan(4, "a", &BTreeSet::new(), &holders);
        assert_eq!(gone.release, BTreeSet::from([1]));
    }
}
