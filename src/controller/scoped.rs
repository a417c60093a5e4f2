//! Several namespaced watches as one watch stream for one cache.
//!
//! A cache (like a reflector store) replaces everything it holds at each `InitDone`, so
//! watch streams merged as they are would wipe each other's objects at every
//! (re)list, and one namespace's relist could not tell the store which of
//! its objects are gone. `merge` fills the store once, when every scope has
//! listed, and afterwards turns a scope's relist into applies plus deletes
//! of that scope's objects the relist no longer contains.

use std::collections::{HashMap, HashSet};

use futures::stream::{self, BoxStream, Stream, StreamExt};
use kube::runtime::watcher::{self, Event};

use super::cache::{Cache, Key, Keyed};

/// One watch per scope (a namespace), with the name of the scope its
/// objects belong to.
pub type Scoped<K> = (String, BoxStream<'static, watcher::Result<Event<K>>>);

/// Merges the watches of `scopes` into one stream for the writer of
/// `store`. `scope_of` names the scope an object's key belongs to: its
/// namespace, or for Namespace objects their name.
pub fn merge<K>(
    scopes: Vec<Scoped<K>>,
    store: Cache<K>,
    scope_of: fn(&Key) -> &str,
) -> impl Stream<Item = watcher::Result<Event<K>>> + Send + 'static
where
    K: Keyed + Clone + Send + Sync + 'static,
{
    let names: Vec<String> = scopes.iter().map(|(name, _)| name.clone()).collect();
    let tagged = scopes
        .into_iter()
        .enumerate()
        .map(|(i, (_, s))| s.map(move |event| (i, event)).boxed());
    let state = Merge {
        initial: Some(names.iter().map(|_| Initial::default()).collect()),
        relisting: names.iter().map(|_| None).collect(),
        names,
        store,
        scope_of,
    };
    stream::select_all(tagged)
        .scan(state, |state, (i, event)| {
            futures::future::ready(Some(state.handle(i, event)))
        })
        .flat_map(stream::iter)
}

/// What one scope has listed before the store was first filled.
struct Initial<K> {
    listed: bool,
    objects: HashMap<Key, K>,
}

impl<K> Default for Initial<K> {
    fn default() -> Self {
        Initial {
            listed: false,
            objects: HashMap::new(),
        }
    }
}

struct Merge<K> {
    names: Vec<String>,
    store: Cache<K>,
    scope_of: fn(&Key) -> &str,
    /// Until every scope has listed once; None afterwards.
    initial: Option<Vec<Initial<K>>>,
    /// The objects a scope's relist has shown so far, while it relists.
    relisting: Vec<Option<HashSet<Key>>>,
}

impl<K: Keyed + Clone> Merge<K> {
    fn handle(
        &mut self,
        i: usize,
        event: watcher::Result<Event<K>>,
    ) -> Vec<watcher::Result<Event<K>>> {
        let event = match event {
            Ok(event) => event,
            Err(e) => return vec![Err(e)],
        };
        match self.initial.as_mut() {
            Some(initial) => {
                let Some(scope) = initial.get_mut(i) else {
                    return Vec::new();
                };
                match event {
                    Event::Init => *scope = Initial::default(),
                    Event::InitApply(o) | Event::Apply(o) => {
                        scope.objects.insert(o.key(), o);
                    }
                    Event::Delete(o) => {
                        scope.objects.remove(&o.key());
                    }
                    Event::InitDone => scope.listed = true,
                }
                if initial.iter().all(|s| s.listed) {
                    return self.fill();
                }
                Vec::new()
            }
            None => self.steady(i, event),
        }
    }

    /// The store's one Init … InitDone: every scope's objects at once.
    fn fill(&mut self) -> Vec<watcher::Result<Event<K>>> {
        let initial = self.initial.take().unwrap_or_default();
        let mut out = vec![Ok(Event::Init)];
        for scope in initial {
            out.extend(scope.objects.into_values().map(|o| Ok(Event::InitApply(o))));
        }
        out.push(Ok(Event::InitDone));
        out
    }

    fn steady(&mut self, i: usize, event: Event<K>) -> Vec<watcher::Result<Event<K>>> {
        let Some(relisting) = self.relisting.get_mut(i) else {
            return Vec::new();
        };
        match event {
            Event::Init => {
                *relisting = Some(HashSet::new());
                Vec::new()
            }
            Event::InitApply(o) | Event::Apply(o) => {
                if let Some(seen) = relisting.as_mut() {
                    seen.insert(o.key());
                }
                vec![Ok(Event::Apply(o))]
            }
            Event::Delete(o) => {
                if let Some(seen) = relisting.as_mut() {
                    seen.remove(&o.key());
                }
                vec![Ok(Event::Delete(o))]
            }
            Event::InitDone => {
                let Some(seen) = relisting.take() else {
                    return Vec::new();
                };
                // The cache has applied every earlier event by now: its
                // writer applies each one before this stream is polled again.
                let name = self.names.get(i).map(String::as_str);
                self.store
                    .filter(|o| {
                        let key = o.key();
                        Some((self.scope_of)(&key)) == name && !seen.contains(&key)
                    })
                    .into_iter()
                    .map(|o| Ok(Event::Delete(o.as_ref().clone())))
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::cache;
    use futures::channel::mpsc;

    #[derive(Clone, Debug)]
    struct ConfigMap(Key);

    impl Keyed for ConfigMap {
        fn key(&self) -> Key {
            self.0.clone()
        }
    }

    fn cm(ns: &str, name: &str) -> ConfigMap {
        ConfigMap(Key::new(ns, name))
    }

    type Tx = mpsc::UnboundedSender<watcher::Result<Event<ConfigMap>>>;

    fn names(store: &Cache<ConfigMap>) -> Vec<String> {
        let mut n: Vec<String> = store.state().iter().map(|o| o.key().to_string()).collect();
        n.sort();
        n
    }

    /// Feeds events into watches of "a" and "b" and runs the merged stream
    /// through a cache until it has nothing more to say.
    struct Harness {
        a: Tx,
        b: Tx,
        store: Cache<ConfigMap>,
        out: BoxStream<'static, watcher::Result<Event<ConfigMap>>>,
    }

    impl Harness {
        fn new() -> Harness {
            let (a, ra) = mpsc::unbounded();
            let (b, rb) = mpsc::unbounded();
            let (store, writer) = cache::cache();
            let merged = merge(
                vec![("a".into(), ra.boxed()), ("b".into(), rb.boxed())],
                store.clone(),
                Key::namespace,
            );
            Harness {
                a,
                b,
                store,
                out: cache::reflect(writer, merged).boxed(),
            }
        }

        fn send(&self, tx: &Tx, events: Vec<Event<ConfigMap>>) {
            for e in events {
                assert!(tx.unbounded_send(Ok(e)).is_ok());
            }
        }

        /// Drains what is ready, as the controller would.
        fn drain(&mut self) -> usize {
            let mut n = 0;
            while let Some(Some(_)) = self.out.next().now_or_never() {
                n += 1;
            }
            n
        }
    }

    use futures::FutureExt;

    #[test]
    fn the_store_is_filled_once_every_namespace_has_listed() {
        let mut h = Harness::new();
        h.send(
            &h.a.clone(),
            vec![Event::Init, Event::InitApply(cm("a", "1")), Event::InitDone],
        );
        assert_eq!(h.drain(), 0, "nothing before b has listed");
        assert!(h.store.state().is_empty());
        // An object of a deleted while b still lists never reaches the store.
        h.send(&h.a.clone(), vec![Event::Apply(cm("a", "2"))]);
        h.send(&h.a.clone(), vec![Event::Delete(cm("a", "2"))]);
        h.send(
            &h.b.clone(),
            vec![Event::Init, Event::InitApply(cm("b", "1")), Event::InitDone],
        );
        h.drain();
        assert_eq!(names(&h.store), ["a/1", "b/1"]);
    }

    #[test]
    fn a_relist_of_one_namespace_keeps_the_others_and_drops_what_is_gone() {
        let mut h = Harness::new();
        for (tx, ns) in [(h.a.clone(), "a"), (h.b.clone(), "b")] {
            h.send(
                &tx,
                vec![
                    Event::Init,
                    Event::InitApply(cm(ns, "1")),
                    Event::InitApply(cm(ns, "2")),
                    Event::InitDone,
                ],
            );
        }
        h.drain();
        assert_eq!(names(&h.store), ["a/1", "a/2", "b/1", "b/2"]);
        // a relists after a watch gap: a/2 was deleted, a/3 created meanwhile.
        h.send(
            &h.a.clone(),
            vec![
                Event::Init,
                Event::InitApply(cm("a", "1")),
                Event::InitApply(cm("a", "3")),
                Event::InitDone,
            ],
        );
        h.drain();
        assert_eq!(names(&h.store), ["a/1", "a/3", "b/1", "b/2"]);
        h.send(&h.b.clone(), vec![Event::Delete(cm("b", "1"))]);
        h.drain();
        assert_eq!(names(&h.store), ["a/1", "a/3", "b/2"]);
    }
}
