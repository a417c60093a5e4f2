//! Which grant runs next: the operator's own queue, ordered by deadline.
//!
//! Earliest-deadline-first meets every deadline whenever any order can, and
//! a deadline never starves: it only becomes more urgent. So:
//! - a revocation goes before anything else, in arrival order;
//! - a renewal that fell due goes by its deadline (its URL's expiry less the
//!   propagation budget), and is not started before its refresh time;
//! - other work (a new grant, a changed spec, a renew request) goes by
//!   arrival, ahead of renewals while they all have slack: while the
//!   request bound, serving renewals in deadline order, still ends each of
//!   those due or about to fall due more than `margin` before its deadline.
//!
//! Work for one grant coalesces; a grant never runs twice at once (work
//! that comes while it runs waits for the pass to end). Pure: the caller
//! says what time it is, and classifies grants (`Urgency`).

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::time::{Duration, SystemTime};

use super::forecast::{self, Rate, Renewal};

/// How soon a grant must run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    /// A revocation: before anything else.
    Revoke,
    /// A due renewal, with the last moment its new URL still reaches the
    /// pods in time.
    Renewal { deadline: SystemTime },
    /// Anything else, by arrival.
    Arrival,
}

impl Urgency {
    /// The more urgent of two kinds of work for the same grant.
    fn max(self, other: Urgency) -> Urgency {
        use Urgency::*;
        match (self, other) {
            (Revoke, _) | (_, Revoke) => Revoke,
            (Renewal { deadline: a }, Renewal { deadline: b }) => Renewal { deadline: a.min(b) },
            (r @ Renewal { .. }, Arrival) | (Arrival, r @ Renewal { .. }) => r,
            (Arrival, Arrival) => Arrival,
        }
    }
}

/// How fast the request bound serves renewals, and the slack a renewal
/// keeps ahead of other work.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    /// How fast the bound serves renewals.
    pub rate: Rate,
    /// A renewal with less slack than this goes before other work.
    pub margin: Duration,
}

/// How long a least slack is trusted without computing it again. Below the
/// margin it stays there while renewals are served at the bound's rate
/// (each one served gains the others what its time costs them), so other
/// work waits at most this long for a faster bound to be noticed. Above the
/// margin it is bounded from below meanwhile: it falls one second per
/// second, and each renewal counted since takes at most one renewal's time
/// from any other (with unit jobs, one more delays each later one by at
/// most one slot).
const SLACK_MAX_AGE: Duration = Duration::from_secs(5);

/// The least slack of the renewals ahead, as last computed.
#[derive(Debug, Clone, Copy)]
struct Slack {
    at: SystemTime,
    seconds: f64,
    /// Renewals counted since, which it did not include.
    added: u32,
}

/// A place in one of the ordered sets: (order, sequence, slot).
type Place = (SystemTime, u64, u32);

/// One grant's state in the queue.
#[derive(Debug)]
struct Entry<K> {
    key: K,
    /// Waiting to run, and where.
    ready: Option<(Urgency, Place)>,
    /// When it is looked at next if nothing else wakes it (its place among
    /// the timers), and the deadline of the renewal then due, if it is one.
    timer: Option<Place>,
    deadline: Option<SystemTime>,
    running: bool,
    /// Work that came while it ran.
    again: Option<Urgency>,
    /// Forgotten while it ran: dropped when the pass ends.
    forgotten: bool,
}

/// The queue of grants keyed by `K`.
#[derive(Debug)]
pub struct Queue<K> {
    pace: Pace,
    slots: HashMap<K, u32>,
    entries: Chunked<Option<Entry<K>>>,
    free: Vec<u32>,
    revocations: BTreeSet<Place>,
    renewals: BTreeSet<Place>,
    arrivals: BTreeSet<Place>,
    timers: BTreeSet<Place>,
    seq: u64,
    /// The least slack when last computed.
    slack: Option<Slack>,
}

impl<K: Clone + Eq + Hash> Queue<K> {
    pub fn new(pace: Pace) -> Self {
        Queue {
            pace,
            slots: HashMap::new(),
            entries: Chunked::default(),
            free: Vec::new(),
            revocations: BTreeSet::new(),
            renewals: BTreeSet::new(),
            arrivals: BTreeSet::new(),
            timers: BTreeSet::new(),
            seq: 0,
            slack: None,
        }
    }

    /// Work for `key`, ready now.
    pub fn wake(&mut self, key: &K, urgency: Urgency, now: SystemTime) {
        let slot = self.slot(key);
        let Some(entry) = self.entry_mut(slot) else {
            return;
        };
        if entry.running {
            // Forgotten meanwhile and back (deleted and created again under
            // the same name): the new grant's work outlives the old pass.
            entry.forgotten = false;
            entry.again = Some(entry.again.map_or(urgency, |u| u.max(urgency)));
            return;
        }
        let urgency = match entry.ready {
            // Work of the kind already waiting keeps its place: a grant
            // woken again and again is not sent to the back each time.
            Some((held, _)) if held.max(urgency) == held => return,
            Some((held, place)) => {
                entry.ready = None;
                self.set_of(held).remove(&place);
                held.max(urgency)
            }
            None => urgency,
        };
        self.make_ready(slot, urgency, now);
    }

    /// Looks at `key` again at `at` unless something wakes it sooner, for
    /// the renewal with `deadline` if it is one; this replaces any earlier
    /// request (the pass that asks saw the latest state).
    pub fn wake_at(&mut self, key: &K, at: Option<SystemTime>, deadline: Option<SystemTime>) {
        let slot = self.slot(key);
        self.seq += 1;
        let place = at.map(|at| (at, self.seq, slot));
        let Some(entry) = self.entry_mut(slot) else {
            return;
        };
        let old = std::mem::replace(&mut entry.timer, place);
        entry.deadline = deadline.filter(|_| place.is_some());
        if let Some(old) = old {
            self.timers.remove(&old);
        }
        if let Some(place) = place {
            self.timers.insert(place);
        }
        if deadline.is_some() {
            self.count_renewal();
        }
    }

    /// The next grant to run, marked running; None when nothing is ready.
    /// Timers that came due are classified by `urgency` first.
    pub fn pop(&mut self, now: SystemTime, urgency: impl Fn(&K) -> Urgency) -> Option<K> {
        self.fire_timers(now, urgency);
        let set = if !self.revocations.is_empty() {
            &mut self.revocations
        } else if self.arrivals.is_empty()
            || (!self.renewals.is_empty() && self.least_slack(now) < self.pace.margin.as_secs_f64())
        {
            &mut self.renewals
        } else {
            &mut self.arrivals
        };
        let (_, _, slot) = set.pop_first()?;
        let entry = self.entries.get_mut(slot as usize)?.as_mut()?;
        entry.ready = None;
        entry.running = true;
        Some(entry.key.clone())
    }

    /// The pass of `key` ended: work that came meanwhile is ready now.
    pub fn done(&mut self, key: &K, now: SystemTime) {
        let Some(&slot) = self.slots.get(key) else {
            return;
        };
        let Some(entry) = self.entry_mut(slot) else {
            return;
        };
        entry.running = false;
        if entry.forgotten {
            self.remove(slot);
            return;
        }
        if let Some(urgency) = entry.again.take() {
            self.make_ready(slot, urgency, now);
        }
    }

    /// `key` is gone: whatever waited for it is dropped (after its running
    /// pass, if any).
    pub fn forget(&mut self, key: &K) {
        let Some(&slot) = self.slots.get(key) else {
            return;
        };
        let running = self.entry(slot).is_some_and(|e| e.running);
        if !running {
            self.remove(slot);
            return;
        }
        let timer = self.entry_mut(slot).and_then(|entry| {
            entry.forgotten = true;
            entry.again = None;
            entry.timer.take()
        });
        if let Some(place) = timer {
            self.timers.remove(&place);
        }
    }

    /// When the next timer is due, if any.
    pub fn next_timer(&self) -> Option<SystemTime> {
        self.timers.first().map(|(at, _, _)| *at)
    }

    /// Grants waiting to run (not those running or only timed).
    #[cfg(test)]
    pub fn ready_len(&self) -> usize {
        self.revocations.len() + self.renewals.len() + self.arrivals.len()
    }

    /// The least slack, in seconds, of the renewals the bound is busy with
    /// from now if it serves them in deadline order, up to its first idle
    /// moment (a delay now is absorbed there): infinite with none or no
    /// bound.
    fn least_slack(&mut self, now: SystemTime) -> f64 {
        let Some(rate) = self.pace.rate.renewals_per_second() else {
            return f64::INFINITY;
        };
        if let Some(known) = self
            .slack
            .and_then(|c| c.bound(now, rate, self.pace.margin))
        {
            return known;
        }
        let mut ahead = self.busy_period(now, rate);
        let mut least = f64::INFINITY;
        forecast::serve_busy_period(&mut ahead, now, self.pace.rate, |_, slack| {
            least = least.min(slack);
        });
        self.slack = Some(Slack {
            at: now,
            seconds: least,
            added: 0,
        });
        least
    }

    /// The due renewals, and those timed to fall due before the bound could
    /// have served all taken so far: no later one is in the busy period
    /// that starts now.
    fn busy_period(&self, now: SystemTime, rate: f64) -> Vec<Renewal<()>> {
        let renewal = |eligible, deadline| Renewal {
            key: (),
            eligible,
            deadline,
        };
        let mut ahead: Vec<Renewal<()>> = self
            .renewals
            .iter()
            .map(|&(deadline, _, _)| renewal(now, deadline))
            .collect();
        for &(at, _, slot) in &self.timers {
            let busy_until = now + Duration::from_secs_f64(ahead.len() as f64 / rate);
            if at > busy_until {
                break;
            }
            if let Some(deadline) = self.entry(slot).and_then(|e| e.deadline) {
                ahead.push(renewal(at, deadline));
            }
        }
        ahead
    }

    fn count_renewal(&mut self) {
        if let Some(slack) = self.slack.as_mut() {
            slack.added = slack.added.saturating_add(1);
        }
    }

    fn fire_timers(&mut self, now: SystemTime, urgency: impl Fn(&K) -> Urgency) {
        while let Some(&(at, _, slot)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let Some(entry) = self.entry_mut(slot) else {
                continue;
            };
            entry.timer = None;
            entry.deadline = None;
            let key = entry.key.clone();
            let found = urgency(&key);
            self.wake(&key, found, now);
        }
    }

    fn make_ready(&mut self, slot: u32, urgency: Urgency, now: SystemTime) {
        self.seq += 1;
        let order = match urgency {
            Urgency::Renewal { deadline } => {
                self.count_due(deadline, now);
                deadline
            }
            Urgency::Revoke | Urgency::Arrival => now,
        };
        let place = (order, self.seq, slot);
        self.set_of(urgency).insert(place);
        if let Some(entry) = self.entry_mut(slot) {
            entry.ready = Some((urgency, place));
        }
    }

    /// A renewal with `deadline` fell due: the known least slack is no more
    /// than its own, served after every renewal due already, and it delays
    /// those after it by one renewal's time.
    fn count_due(&mut self, deadline: SystemTime, now: SystemTime) {
        let Some(rate) = self.pace.rate.renewals_per_second() else {
            return;
        };
        let behind = (self.renewals.len() + 1) as f64 / rate;
        let own = forecast::seconds(deadline, now) - behind;
        self.count_renewal();
        if let Some(slack) = self.slack.as_mut() {
            // The cached figure is as of `slack.at`; `bound` takes its age off.
            let age = forecast::seconds(now, slack.at).max(0.0);
            slack.seconds = slack.seconds.min(own + age);
        }
    }

    fn set_of(&mut self, urgency: Urgency) -> &mut BTreeSet<Place> {
        match urgency {
            Urgency::Revoke => &mut self.revocations,
            Urgency::Renewal { .. } => &mut self.renewals,
            Urgency::Arrival => &mut self.arrivals,
        }
    }

    /// The slot of `key`, made when it has none.
    fn slot(&mut self, key: &K) -> u32 {
        if let Some(&slot) = self.slots.get(key) {
            return slot;
        }
        let entry = Entry {
            key: key.clone(),
            ready: None,
            timer: None,
            deadline: None,
            running: false,
            again: None,
            forgotten: false,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                if let Some(place) = self.entries.get_mut(slot as usize) {
                    *place = Some(entry);
                }
                slot
            }
            None => u32::try_from(self.entries.push(Some(entry))).unwrap_or(u32::MAX),
        };
        self.slots.insert(key.clone(), slot);
        slot
    }

    fn remove(&mut self, slot: u32) {
        let Some(entry) = self.entries.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        if let Some((urgency, place)) = entry.ready {
            self.set_of(urgency).remove(&place);
        }
        if let Some(place) = entry.timer {
            self.timers.remove(&place);
        }
        self.slots.remove(&entry.key);
        self.free.push(slot);
    }

    fn entry(&self, slot: u32) -> Option<&Entry<K>> {
        self.entries.get(slot as usize)?.as_ref()
    }

    fn entry_mut(&mut self, slot: u32) -> Option<&mut Entry<K>> {
        self.entries.get_mut(slot as usize)?.as_mut()
    }
}

/// Entries per chunk of [`Chunked`].
const CHUNK: usize = 512;

/// A list that grows a chunk at a time: a growing queue never copies its
/// entries, and at most one chunk stands unused, where a doubling `Vec`
/// leaves up to half its capacity (an entry is over 100 bytes).
#[derive(Debug)]
struct Chunked<T> {
    chunks: Vec<Vec<T>>,
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Chunked { chunks: Vec::new() }
    }
}

impl<T> Chunked<T> {
    /// Appends `value`; its index.
    fn push(&mut self, value: T) -> usize {
        match self.chunks.last_mut() {
            Some(last) if last.len() < CHUNK => last.push(value),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(value);
                self.chunks.push(chunk);
            }
        }
        let in_last = self.chunks.last().map_or(0, Vec::len);
        (self.chunks.len() - 1) * CHUNK + in_last - 1
    }

    fn get(&self, i: usize) -> Option<&T> {
        self.chunks.get(i / CHUNK)?.get(i % CHUNK)
    }

    fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.chunks.get_mut(i / CHUNK)?.get_mut(i % CHUNK)
    }
}

impl Slack {
    /// What is known of the least slack at `now` without computing it
    /// again, if enough to decide against `margin`.
    fn bound(self, now: SystemTime, rate: f64, margin: Duration) -> Option<f64> {
        let age = now.duration_since(self.at).ok()?;
        if age >= SLACK_MAX_AGE {
            return None;
        }
        let margin = margin.as_secs_f64();
        if self.seconds < margin {
            return Some(self.seconds);
        }
        let lowest = self.seconds - age.as_secs_f64() - f64::from(self.added) / rate;
        (lowest >= margin).then_some(lowest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Indices run on across chunks, and each finds its value.
    #[test]
    fn a_chunked_list_indexes_across_chunks() {
        let mut list = Chunked::default();
        let n = 2 * CHUNK + 3;
        for v in 0..n {
            assert_eq!(list.push(v), v);
        }
        assert_eq!(list.chunks.len(), 3);
        assert!(list.chunks.iter().all(|c| c.capacity() == CHUNK));
        for v in [0, CHUNK - 1, CHUNK, n - 1] {
            assert_eq!(list.get(v), Some(&v));
        }
        assert_eq!(list.get(n), None);
        if let Some(v) = list.get_mut(CHUNK) {
            *v = 7;
        }
        assert_eq!(list.get(CHUNK), Some(&7));
    }

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    fn queue(rate: Option<f64>) -> Queue<&'static str> {
        Queue::new(pace(rate))
    }

    fn pace(rate: Option<f64>) -> Pace {
        Pace {
            rate: rate.and_then(Rate::per_second).unwrap_or(Rate::UNBOUNDED),
            margin: Duration::from_secs(10),
        }
    }

    fn renewal(deadline: u64) -> Urgency {
        Urgency::Renewal {
            deadline: at(deadline),
        }
    }

    fn drain(q: &mut Queue<&'static str>, now: SystemTime) -> Vec<&'static str> {
        let order: Vec<_> = std::iter::from_fn(|| q.pop(now, |_| Urgency::Arrival)).collect();
        for key in &order {
            q.done(key, now);
        }
        order
    }

    /// Revocations first; renewals with slack after other work, by
    /// deadline; a renewal without slack before it.
    #[test]
    fn orders_revocations_then_urgent_renewals_then_arrivals_then_renewals() {
        let now = at(1000);
        let mut q = queue(Some(1.0));
        q.wake(&"late-renewal", renewal(1500), now);
        q.wake(&"early-renewal", renewal(1200), now);
        q.wake(&"new-grant", Urgency::Arrival, now);
        q.wake(&"deleted", Urgency::Revoke, now);
        assert_eq!(
            drain(&mut q, now),
            ["deleted", "new-grant", "early-renewal", "late-renewal"]
        );

        // Five seconds to a deadline, with one renewal ahead at one a second.
        let mut q = queue(Some(1.0));
        q.wake(&"new-grant", Urgency::Arrival, now);
        q.wake(&"renewal", renewal(1005), now);
        assert_eq!(drain(&mut q, now), ["renewal", "new-grant"]);

        // Slack counts the renewals ahead: 20 of them at one a second leave
        // the last, 29 s from its deadline, 9 s: less than the margin.
        let mut q: Queue<String> = Queue::new(pace(Some(1.0)));
        for i in 0..20 {
            q.wake(&format!("r{i:02}"), renewal(1029), now);
        }
        q.wake(&"new".to_owned(), Urgency::Arrival, now);
        assert_eq!(q.pop(now, |_| Urgency::Arrival).as_deref(), Some("r00"));

        // Without a bound nothing is at risk: other work goes first.
        let mut q = queue(None);
        q.wake(&"renewal", renewal(1001), now);
        q.wake(&"new-grant", Urgency::Arrival, now);
        assert_eq!(drain(&mut q, now), ["new-grant", "renewal"]);
    }

    /// Work for one grant is one pass, at its most urgent; work that comes
    /// while it runs waits for the pass to end.
    #[test]
    fn coalesces_and_never_runs_a_grant_twice_at_once() {
        let now = at(0);
        let mut q = queue(Some(1.0));
        q.wake(&"g", Urgency::Arrival, now);
        q.wake(&"g", renewal(100), now);
        q.wake(&"other", Urgency::Arrival, now);
        assert_eq!(q.ready_len(), 2);
        assert_eq!(q.pop(now, |_| Urgency::Arrival), Some("other"));
        assert_eq!(q.pop(now, |_| Urgency::Arrival), Some("g"));
        q.wake(&"g", Urgency::Arrival, now);
        q.wake(&"g", Urgency::Revoke, now);
        assert_eq!(q.pop(now, |_| Urgency::Arrival), None, "g is running");
        q.done(&"g", now);
        assert_eq!(q.revocations.len(), 1, "the revocation that came meanwhile");
        assert_eq!(q.pop(now, |_| Urgency::Arrival), Some("g"));
        q.done(&"g", now);
        assert_eq!(q.pop(now, |_| Urgency::Arrival), None);
    }

    /// A timer wakes its grant at its time, classified then; a later
    /// request replaces it; a forgotten grant's timer never fires.
    #[test]
    fn timers_fire_at_their_time_and_the_latest_request_wins() {
        let mut q = queue(Some(1.0));
        q.wake_at(&"g", Some(at(50)), None);
        q.wake_at(&"g", Some(at(100)), Some(at(500)));
        assert_eq!(q.next_timer(), Some(at(100)));
        assert_eq!(q.pop(at(99), |_| renewal(500)), None);
        assert_eq!(q.pop(at(100), |_| renewal(500)), Some("g"));
        q.done(&"g", at(100));
        assert_eq!(q.next_timer(), None);

        q.wake_at(&"gone", Some(at(200)), None);
        q.forget(&"gone");
        assert_eq!(q.next_timer(), None);
        assert_eq!(q.pop(at(300), |_| Urgency::Arrival), None);

        // Forgotten while it runs: nothing comes back after the pass, not
        // the timer the pass asks for.
        q.wake(&"g", Urgency::Arrival, at(300));
        assert_eq!(q.pop(at(300), |_| Urgency::Arrival), Some("g"));
        q.wake(&"g", Urgency::Arrival, at(300));
        q.forget(&"g");
        q.wake_at(&"g", Some(at(400)), None);
        q.done(&"g", at(300));
        assert_eq!(q.next_timer(), None);
        assert_eq!(q.pop(at(300), |_| Urgency::Arrival), None);
        assert!(q.slots.is_empty());
    }

    /// Other work waits while the renewals of the busy period ahead, due
    /// now or timed to fall due in it, would end less than the margin
    /// before their deadlines; a timed renewal after an idle moment does
    /// not count.
    #[test]
    fn slack_covers_the_renewals_the_bound_is_busy_with() {
        let now = at(0);
        let mut q = queue(Some(1.0));
        // Due now: done at 1 s, 29 s early.
        q.wake(&"a", renewal(30), now);
        // Falls due at 0.5 s: done at 2 s, 9 s early.
        q.wake_at(&"b", Some(now + Duration::from_millis(500)), Some(at(11)));
        // After the bound is idle at 2 s: not counted.
        q.wake_at(&"c", Some(at(20)), Some(at(20)));
        assert_eq!(q.least_slack(now), 9.0);
        q.wake(&"new", Urgency::Arrival, now);
        assert_eq!(q.pop(now, |_| Urgency::Arrival), Some("a"));
        assert_eq!(queue(None).least_slack(now), f64::INFINITY);
    }

    /// A grant deleted and created again under its name while a pass of
    /// the old one runs gets its pass when that one ends.
    #[test]
    fn a_grant_created_again_while_its_old_pass_runs_is_not_lost() {
        let now = at(0);
        let mut q = queue(Some(1.0));
        q.wake(&"g", Urgency::Arrival, now);
        assert_eq!(q.pop(now, |_| Urgency::Arrival), Some("g"));
        q.forget(&"g");
        q.wake(&"g", Urgency::Arrival, now);
        q.wake_at(&"g", None, None);
        q.done(&"g", now);
        assert_eq!(q.pop(now, |_| Urgency::Arrival), Some("g"));
    }

    /// Woken again with work of the kind it waits with, a grant keeps its
    /// place; more urgent work moves it up. (The renewals have slack: other
    /// work goes first.)
    #[test]
    fn a_waiting_grant_woken_again_keeps_its_place() {
        let mut q = queue(Some(1.0));
        q.wake(&"first", Urgency::Arrival, at(0));
        q.wake(&"second", Urgency::Arrival, at(1));
        q.wake(&"first", Urgency::Arrival, at(2));
        assert_eq!(q.pop(at(3), |_| Urgency::Arrival), Some("first"));
        q.wake(&"a", renewal(100), at(3));
        q.wake(&"b", renewal(50), at(3));
        q.wake(&"a", renewal(200), at(4));
        q.wake(&"a", renewal(40), at(4));
        let order: Vec<_> = std::iter::from_fn(|| q.pop(at(5), |_| Urgency::Arrival)).collect();
        assert_eq!(order, ["second", "a", "b"]);
    }

    /// A renewal that falls due with little slack is weighed at once, not
    /// when the cached slack runs out.
    #[test]
    fn a_renewal_falling_due_short_of_slack_goes_before_other_work_at_once() {
        let now = at(0);
        let mut q = queue(Some(1.0));
        q.wake(&"far", renewal(100), now);
        q.wake(&"new", Urgency::Arrival, now);
        assert_eq!(q.pop(now, |_| Urgency::Arrival), Some("new"), "slack 99 s");
        q.done(&"new", now);
        q.wake(&"new", Urgency::Arrival, at(1));
        // A timer releases a renewal 4 s from its deadline.
        q.wake_at(&"near", Some(at(1)), None);
        let due = |k: &&str| match *k {
            "near" => renewal(5),
            _ => Urgency::Arrival,
        };
        assert_eq!(q.pop(at(1), due), Some("near"));
    }
}
