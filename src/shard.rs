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

use std::collections::{BTreeMap, BTreeSet};

/// The most shards `--shards` accepts: a Lease each.
pub const MAX_SHARDS: u32 = 1024;

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

/// What one replica should do about its shards.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Shards nobody live holds that are this replica's to take.
    pub take: BTreeSet<u32>,
    /// Shards this replica holds beyond its share: to hand over once the
    /// replica that takes each is ready.
    pub give: BTreeSet<u32>,
}

/// This replica's part in a fair split of `count` shards between the live
/// `replicas` (sorted identities; `me` among them), given who holds what
/// now. Each replica's share is `count / n`, and the first `count % n` in
/// order take one more. A replica keeps what it holds up to its share;
/// free shards (unheld, or held by a replica no longer live) go to the
/// replicas below their share, in replica order, lowest shards first. So a
/// replica coming or going moves only the shards it must, and every live
/// replica computes the same split from the same view.
pub fn plan(
    count: u32,
    me: &str,
    replicas: &BTreeSet<String>,
    holders: &BTreeMap<u32, String>,
) -> Plan {
    let n = replicas.len() as u32;
    if n == 0 || !replicas.contains(me) {
        return Plan::default();
    }
    let share = |i: u32| count / n + u32::from(i < count % n);
    // How many shards each live replica keeps of those it holds.
    let mut kept: BTreeMap<&str, u32> = BTreeMap::new();
    let mut free: Vec<u32> = Vec::new();
    let mut give = BTreeSet::new();
    for shard in 0..count {
        match holders.get(&shard).filter(|h| replicas.contains(*h)) {
            Some(holder) => {
                let index = replicas.iter().position(|r| r == holder).unwrap_or(0) as u32;
                let held = kept.entry(holder.as_str()).or_default();
                if *held < share(index) {
                    *held += 1;
                } else if holder == me {
                    give.insert(shard);
                }
            }
            None => free.push(shard),
        }
    }
    let mut take = BTreeSet::new();
    let mut free = free.into_iter();
    for (index, replica) in replicas.iter().enumerate() {
        let held = kept.get(replica.as_str()).copied().unwrap_or(0);
        let wanted = share(index as u32).saturating_sub(held);
        let got = free.by_ref().take(wanted as usize);
        if replica == me {
            take.extend(got);
        } else {
            // Another replica's: pass over them.
            got.for_each(drop);
        }
    }
    Plan { take, give }
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

    /// Every replica's plan, applied: who holds what afterwards.
    fn settle(
        count: u32,
        live: &BTreeSet<String>,
        holders: &BTreeMap<u32, String>,
    ) -> BTreeMap<u32, String> {
        let mut after: BTreeMap<u32, String> = holders
            .iter()
            .filter(|(_, h)| live.contains(*h))
            .map(|(s, h)| (*s, h.clone()))
            .collect();
        let plans: Vec<(String, Plan)> = live
            .iter()
            .map(|r| (r.clone(), plan(count, r, live, holders)))
            .collect();
        for (replica, plan) in &plans {
            for shard in &plan.give {
                after.remove(shard);
            }
            for shard in &plan.take {
                assert!(
                    after.insert(*shard, replica.clone()).is_none(),
                    "shard {shard} taken twice"
                );
            }
        }
        after
    }

    fn shares(holders: &BTreeMap<u32, String>) -> BTreeMap<String, usize> {
        let mut n = BTreeMap::new();
        for h in holders.values() {
            *n.entry(h.clone()).or_default() += 1;
        }
        n
    }

    #[test]
    fn splits_fairly_and_moves_only_what_it_must() {
        let three = replicas(&["a", "b", "c"]);
        let start = settle(64, &three, &BTreeMap::new());
        assert_eq!(start.len(), 64);
        assert_eq!(
            shares(&start).into_values().collect::<Vec<_>>(),
            [22, 21, 21]
        );

        // "c" goes: only its shards move, and the two left split 32/32.
        let two = replicas(&["a", "b"]);
        let after = settle(64, &two, &start);
        assert_eq!(after.len(), 64);
        assert_eq!(shares(&after).into_values().collect::<Vec<_>>(), [32, 32]);
        for (shard, holder) in &start {
            if holder != "c" {
                assert_eq!(after.get(shard), Some(holder), "shard {shard} moved");
            }
        }

        // "d" comes: the others give up their excess first, then it takes.
        let with_d = replicas(&["a", "b", "d"]);
        let plan_a = plan(64, "a", &with_d, &after);
        assert_eq!(plan_a.give.len(), 32 - 22);
        assert!(plan_a.take.is_empty());
        let given = settle(64, &with_d, &after);
        let taken = settle(64, &with_d, &given);
        assert_eq!(taken.len(), 64);
        assert_eq!(
            shares(&taken).into_values().collect::<Vec<_>>(),
            [22, 21, 21]
        );
        assert_eq!(settle(64, &with_d, &taken), taken, "a settled split stays");
    }

    #[test]
    fn a_replica_not_live_plans_nothing() {
        let holders = BTreeMap::from([(0, "x".to_owned())]);
        assert_eq!(plan(4, "x", &replicas(&["a"]), &holders), Plan::default());
        assert_eq!(plan(4, "a", &BTreeSet::new(), &holders), Plan::default());
        let one = plan(1, "a", &replicas(&["a"]), &holders);
        assert_eq!(one.take, BTreeSet::from([0]));
    }
}
