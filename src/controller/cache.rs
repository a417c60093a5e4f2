//! The operator's own caches of grants, Secrets, namespaces and issuers: one map
//! from an object's key to what the operator keeps of it, filled from a
//! watch.
//!
//! kube-runtime's reflector store needs each cached value to carry a whole
//! `ObjectMeta` (360 bytes before any string) and keys each entry by an
//! `ObjectRef` that copies the name and namespace again. With tens of
//! thousands of grants, that was most of the operator's memory; here a value
//! keeps only what the controller reads, and the key is one shared string
//! that the dispatch queue reuses.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use futures::{Stream, TryStreamExt};
use kube::runtime::watcher;
use tokio::sync::watch;

/// An object's key: `namespace/name`, or `name` for a cluster-scoped
/// object, in one shared string (neither part may contain a slash).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(Arc<str>);

impl Key {
    /// The key of `name` in `namespace`.
    pub fn new(namespace: &str, name: &str) -> Key {
        Key(format!("{namespace}/{name}").into())
    }

    /// The key of the cluster-scoped object `name`.
    pub fn cluster(name: &str) -> Key {
        Key(name.into())
    }

    /// The namespace, empty for a cluster-scoped object.
    pub fn namespace(&self) -> &str {
        self.0.split_once('/').map_or("", |(ns, _)| ns)
    }

    /// The name.
    pub fn name(&self) -> &str {
        self.0.split_once('/').map_or(&self.0, |(_, name)| name)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Borrow<str> for Key {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// A uid as a cache keeps it: a UUID in its canonical form (what the
/// apiserver generates) in 16 bytes, any other string as it is. A Secret's
/// entry names two uids; as strings they were a fifth of it.
#[derive(Clone, PartialEq, Eq)]
pub enum Uid {
    Uuid([u8; 16]),
    Other(Box<str>),
}

impl Uid {
    pub fn new(uid: &str) -> Uid {
        uuid_bytes(uid).map_or_else(|| Uid::Other(uid.into()), Uid::Uuid)
    }
}

/// The 16 bytes of a UUID written as lowercase 8-4-4-4-12 hex, the one
/// form `Uid` writes back; None for any other string.
fn uuid_bytes(uid: &str) -> Option<[u8; 16]> {
    let b = uid.as_bytes();
    let dashes = [8, 13, 18, 23];
    if b.len() != 36 || dashes.iter().any(|&i| b[i] != b'-') {
        return None;
    }
    let mut digits = b.iter().filter(|&&c| c != b'-').map(|&c| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    });
    let mut out = [0u8; 16];
    for byte in &mut out {
        *byte = (digits.next()?? << 4) | digits.next()??;
    }
    Some(out)
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Uid::Other(other) => f.write_str(other),
            Uid::Uuid(b) => {
                for (i, byte) in b.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        f.write_str("-")?;
                    }
                    write!(f, "{byte:02x}")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_string(), f)
    }
}

/// What a cache holds: values that know their key (cached values keep it,
/// and hand out a clone of the shared string).
pub trait Keyed {
    fn key(&self) -> Key;
}

type Map<V> = HashMap<Key, Arc<V>>;

impl Keyed for crate::api::ClusterGrantIssuer {
    fn key(&self) -> Key {
        Key::cluster(self.metadata.name.as_deref().unwrap_or_default())
    }
}

impl Keyed for kube::api::PartialObjectMeta<k8s_openapi::api::core::v1::Namespace> {
    fn key(&self) -> Key {
        Key::cluster(self.metadata.name.as_deref().unwrap_or_default())
    }
}

/// The read side of a cache: cheap to clone, shared by every reader.
pub struct Cache<V> {
    map: Arc<RwLock<Map<V>>>,
    ready: watch::Receiver<bool>,
}

impl<V> Clone for Cache<V> {
    fn clone(&self) -> Self {
        Cache {
            map: self.map.clone(),
            ready: self.ready.clone(),
        }
    }
}

/// The write side: applies one watch's events.
pub struct Writer<V> {
    map: Arc<RwLock<Map<V>>>,
    /// A (re)list in progress: it replaces the map when done, as a list
    /// also drops the objects deleted while the watch was away.
    buffer: Option<Map<V>>,
    ready: watch::Sender<bool>,
}

/// An empty cache and its writer.
pub fn cache<V>() -> (Cache<V>, Writer<V>) {
    let map = Arc::new(RwLock::new(HashMap::new()));
    let (ready, listed) = watch::channel(false);
    (
        Cache {
            map: map.clone(),
            ready: listed,
        },
        Writer {
            map,
            buffer: None,
            ready,
        },
    )
}

impl<V> Cache<V> {
    /// The object under `key`.
    pub fn get(&self, key: &str) -> Option<Arc<V>> {
        self.read(|map| map.get(key).cloned())
    }

    /// The object `name` in `namespace`.
    pub fn get_in(&self, namespace: &str, name: &str) -> Option<Arc<V>> {
        self.get(&format!("{namespace}/{name}"))
    }

    /// Every object, in no order.
    pub fn state(&self) -> Vec<Arc<V>> {
        self.read(|map| map.values().cloned().collect())
    }

    /// Every object that matches `pred`.
    pub fn filter(&self, pred: impl Fn(&V) -> bool) -> Vec<Arc<V>> {
        self.read(|map| map.values().filter(|v| pred(v)).cloned().collect())
    }

    /// Resolves once the first list is in, or when the writer is gone
    /// (its watch ended: shutdown).
    pub async fn wait_until_ready(&self) {
        let _ = self.ready.clone().wait_for(|listed| *listed).await;
    }

    fn read<T>(&self, f: impl FnOnce(&Map<V>) -> T) -> T {
        // A panic while the lock was held left the map whole: each write
        // is one insert, remove or swap.
        f(&self.map.read().unwrap_or_else(PoisonError::into_inner))
    }
}

impl<V: Keyed> Writer<V> {
    /// Applies `event`, as a reflector would.
    pub fn apply(&mut self, event: &watcher::Event<V>)
    where
        V: Clone,
    {
        use watcher::Event;
        match event {
            Event::Apply(v) => {
                self.write().insert(v.key(), Arc::new(v.clone()));
            }
            Event::Delete(v) => {
                self.write().remove(&v.key());
            }
            Event::Init => self.buffer = Some(HashMap::new()),
            Event::InitApply(v) => {
                let buffer = self.buffer.get_or_insert_default();
                buffer.insert(v.key(), Arc::new(v.clone()));
            }
            Event::InitDone => {
                let listed = self.buffer.take().unwrap_or_default();
                *self.write() = listed;
                self.ready.send_replace(true);
            }
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Map<V>> {
        self.map.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `events` with each applied to the cache before it is passed on: who
/// reads an event finds the cache already showing it.
pub fn reflect<V, S>(
    mut writer: Writer<V>,
    events: S,
) -> impl Stream<Item = watcher::Result<watcher::Event<V>>> + use<V, S>
where
    V: Keyed + Clone,
    S: Stream<Item = watcher::Result<watcher::Event<V>>>,
{
    events.inspect_ok(move |event| writer.apply(event))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{FutureExt, StreamExt};
    use watcher::Event::*;

    #[derive(Clone, Debug, PartialEq)]
    struct Obj(Key, u32);

    impl Keyed for Obj {
        fn key(&self) -> Key {
            self.0.clone()
        }
    }

    fn obj(name: &str, v: u32) -> Obj {
        Obj(Key::new("ns", name), v)
    }

    fn names(cache: &Cache<Obj>) -> Vec<(String, u32)> {
        let mut all: Vec<_> = cache
            .state()
            .iter()
            .map(|o| (o.0.name().to_owned(), o.1))
            .collect();
        all.sort();
        all
    }

    #[test]
    fn a_key_names_its_namespace_and_name() {
        let key = Key::new("ns", "g");
        assert_eq!(
            (key.namespace(), key.name(), key.as_str()),
            ("ns", "g", "ns/g")
        );
        let cluster = Key::cluster("issuer");
        assert_eq!((cluster.namespace(), cluster.name()), ("", "issuer"));
    }

    /// A canonical UUID is kept in 16 bytes and written back as it came;
    /// anything else is kept as it is.
    #[test]
    fn a_uid_comes_back_as_it_was_given() {
        let uuid = "6f1c2b3a-1d2e-4f5a-9b8c-00000000123f";
        let cases = [
            (uuid, true),
            ("6F1C2B3A-1D2E-4F5A-9B8C-00000000123F", false),
            ("6f1c2b3a1d2e4f5a9b8c00000000123f", false),
            ("6f1c2b3a-1d2e-4f5a-9b8c-00000000123g", false),
            ("6f1c2b3a-1d2e-4f5a-9b8c-00000000123", false),
            ("grant-uid", false),
            ("", false),
        ];
        for (given, compact) in cases {
            let uid = Uid::new(given);
            assert_eq!(matches!(uid, Uid::Uuid(_)), compact, "{given}");
            assert_eq!(uid.to_string(), given);
            assert_eq!(uid, Uid::new(given), "{given}");
        }
        assert_ne!(
            Uid::new(uuid),
            Uid::new("6F1C2B3A-1D2E-4F5A-9B8C-00000000123F")
        );
        assert_ne!(
            Uid::new(uuid),
            Uid::new("6f1c2b3a-1d2e-4f5a-9b8c-000000001230")
        );
        assert_ne!(Uid::new("grant-uid"), Uid::new(uuid));
    }

    /// A list replaces the cache when it is done, dropping what it no
    /// longer shows; until then readers see the cache as it was.
    #[test]
    fn applies_watch_events_as_a_reflector() {
        let (cache, mut writer) = cache();
        assert!(cache.wait_until_ready().now_or_never().is_none());
        for e in [Init, InitApply(obj("a", 1)), InitApply(obj("b", 1))] {
            writer.apply(&e);
        }
        assert!(names(&cache).is_empty());
        writer.apply(&InitDone);
        assert!(cache.wait_until_ready().now_or_never().is_some());
        assert_eq!(names(&cache), [("a".into(), 1), ("b".into(), 1)]);
        writer.apply(&Apply(obj("a", 2)));
        writer.apply(&Delete(obj("b", 1)));
        assert_eq!(cache.get("ns/a").map(|o| o.1), Some(2));
        assert_eq!(cache.get_in("ns", "b"), None);
        for e in [Init, InitApply(obj("c", 1))] {
            writer.apply(&e);
        }
        assert_eq!(names(&cache), [("a".into(), 2)]);
        writer.apply(&InitDone);
        assert_eq!(names(&cache), [("c".into(), 1)]);
        assert_eq!(cache.filter(|o| o.1 == 1).len(), 1);
    }

    /// Readers of the reflected stream find each event in the cache.
    #[test]
    fn the_reflected_stream_shows_events_already_applied() {
        let (cache, writer) = cache();
        let events = futures::stream::iter([Ok(Init), Ok(InitApply(obj("a", 1))), Ok(InitDone)]);
        let mut stream = std::pin::pin!(reflect(writer, events));
        while let Some(Some(event)) = stream.next().now_or_never() {
            if matches!(event, Ok(InitDone)) {
                assert_eq!(names(&cache), [("a".into(), 1)]);
            }
        }
        assert!(cache.wait_until_ready().now_or_never().is_some());
    }

    /// A cache whose writer is gone does not keep its readers waiting.
    #[test]
    fn a_dropped_writer_releases_the_readers() {
        let (cache, writer) = cache::<Obj>();
        drop(writer);
        assert!(cache.wait_until_ready().now_or_never().is_some());
    }
}
