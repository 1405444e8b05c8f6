//! Map entries kept per endpoint. Each local endpoint's entries are one
//! sorted, shared slice, handed unchanged from compile to compile while
//! the endpoint's inputs do not change. So a compile that touches a few
//! endpoints neither copies nor diffs the others' entries: with cluster
//! policies selecting every pod, one endpoint holds thousands of entries,
//! and a node holds hundreds of thousands.

use super::{CidrKey, PolicyMatch};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A map key that belongs to one endpoint (its host veth ifindex) and
/// sorts by it first, so the entries of one endpoint are contiguous.
pub trait EndpointKeyed: Ord + Copy {
    fn endpoint(&self) -> u32;
}

impl EndpointKeyed for PolicyMatch {
    fn endpoint(&self) -> u32 {
        self.endpoint
    }
}

impl EndpointKeyed for CidrKey {
    fn endpoint(&self) -> u32 {
        self.endpoint
    }
}

/// One endpoint's entries, sorted by key.
pub type Shard<K, V> = Arc<Vec<(K, V)>>;

/// A sorted map of entries, stored per endpoint. Iterates in key order,
/// like the `BTreeMap` it stands for; equal content compares equal,
/// however it was built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ByEndpoint<K, V> {
    /// Never holds an empty shard.
    shards: BTreeMap<u32, Shard<K, V>>,
    len: usize,
}

impl<K, V> Default for ByEndpoint<K, V> {
    fn default() -> Self {
        ByEndpoint { shards: BTreeMap::new(), len: 0 }
    }
}

impl<K: EndpointKeyed, V> ByEndpoint<K, V> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every entry, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        self.shards.values().flat_map(|s| s.iter().map(|(k, v)| (k, v)))
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> + '_ {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.iter().map(|(_, v)| v)
    }

    /// The entries from `from` on, in key order.
    pub fn range_from(&self, from: K) -> impl Iterator<Item = (&K, &V)> + '_ {
        let ep = from.endpoint();
        self.shards.range(ep..).flat_map(move |(e, s)| {
            let start = if *e == ep { s.partition_point(|(k, _)| *k < from) } else { 0 };
            s[start..].iter().map(|(k, v)| (k, v))
        })
    }

    pub fn get(&self, k: &K) -> Option<&V> {
        let s = self.shards.get(&k.endpoint())?;
        s.binary_search_by(|(x, _)| x.cmp(k)).ok().map(|i| &s[i].1)
    }

    /// Each endpoint's entries, by endpoint.
    pub fn shards(&self) -> impl Iterator<Item = (u32, &Shard<K, V>)> + '_ {
        self.shards.iter().map(|(e, s)| (*e, s))
    }

    pub fn shard(&self, endpoint: u32) -> Option<&Shard<K, V>> {
        self.shards.get(&endpoint)
    }

    /// Set an endpoint's entries (sorted, all of that endpoint), replacing
    /// what it had.
    pub fn set_shard(&mut self, endpoint: u32, shard: Shard<K, V>) {
        debug_assert!(shard.windows(2).all(|w| w[0].0 < w[1].0), "a shard is sorted, without duplicates");
        debug_assert!(shard.iter().all(|(k, _)| k.endpoint() == endpoint), "a shard holds one endpoint's keys");
        self.len -= self.shards.get(&endpoint).map_or(0, |s| s.len());
        if shard.is_empty() {
            self.shards.remove(&endpoint);
        } else {
            self.len += shard.len();
            self.shards.insert(endpoint, shard);
        }
    }
}

impl<'a, K: EndpointKeyed, V> IntoIterator for &'a ByEndpoint<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = Box<dyn Iterator<Item = (&'a K, &'a V)> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl<K: EndpointKeyed, V> FromIterator<(K, V)> for ByEndpoint<K, V> {
    /// As `BTreeMap` collects: of equal keys the last wins.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let sorted: BTreeMap<K, V> = iter.into_iter().collect();
        let mut out = ByEndpoint::default();
        let mut current: Option<(u32, Vec<(K, V)>)> = None;
        for (k, v) in sorted {
            match &mut current {
                Some((ep, entries)) if *ep == k.endpoint() => entries.push((k, v)),
                _ => {
                    if let Some((ep, entries)) = current.take() {
                        out.set_shard(ep, Arc::new(entries));
                    }
                    current = Some((k.endpoint(), vec![(k, v)]));
                }
            }
        }
        if let Some((ep, entries)) = current {
            out.set_shard(ep, Arc::new(entries));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Direction;

    fn key(endpoint: u32, identity: u32) -> PolicyMatch {
        PolicyMatch { endpoint, identity, direction: Direction::Ingress, protocol: None, port: None }
    }

    /// It behaves as the sorted map it stands for, whichever way it is built.
    #[test]
    fn it_is_a_sorted_map_split_by_endpoint() {
        let pairs = [(key(7, 300), 1), (key(3, 400), 2), (key(7, 256), 3), (key(3, 400), 4), (key(9, 0), 5)];
        let reference: BTreeMap<PolicyMatch, u32> = pairs.iter().copied().collect();
        let collected: ByEndpoint<PolicyMatch, u32> = pairs.iter().copied().collect();
        // Built a shard at a time, in any order.
        let mut by_shard = ByEndpoint::default();
        for ep in [9, 3, 7] {
            let shard: Vec<_> = reference.iter().filter(|(k, _)| k.endpoint == ep).map(|(k, v)| (*k, *v)).collect();
            by_shard.set_shard(ep, Arc::new(shard));
        }
        for m in [&collected, &by_shard] {
            assert_eq!(
                m.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>(),
                reference.clone().into_iter().collect::<Vec<_>>()
            );
            assert_eq!(m.len(), reference.len());
            assert_eq!(m.get(&key(3, 400)), Some(&4));
            assert_eq!(m.get(&key(3, 401)), None);
            assert_eq!(
                m.range_from(key(3, 401)).map(|(k, _)| *k).collect::<Vec<_>>(),
                [key(7, 256), key(7, 300), key(9, 0)]
            );
            assert_eq!(m.range_from(key(7, 256)).count(), 3);
        }
        assert_eq!(collected, by_shard);
        assert_eq!(collected.shards().map(|(e, s)| (e, s.len())).collect::<Vec<_>>(), [(3, 1), (7, 2), (9, 1)]);

        // An empty shard removes the endpoint; equality stays by content.
        let mut m = collected.clone();
        m.set_shard(7, Arc::new(Vec::new()));
        m.set_shard(9, Arc::new(Vec::new()));
        assert!(m.shard(9).is_none());
        assert_eq!(m.len(), 1);
        assert_eq!(m, [(key(3, 400), 4)].into_iter().collect());
        // The original kept its entries: shards are shared, never changed in place.
        assert_eq!(collected.len(), 4);
    }
}
