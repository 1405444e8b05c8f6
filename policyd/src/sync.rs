//! Writes what the engine wants into the pinned maps, as a difference.
//!
//! Order is make-before-break, so no flow allowed both before and after an
//! update is dropped while it is applied:
//! 1. new and changed ipcache, ipBlock-class and policy entries;
//! 2. endpoint entries: identity, isolation and READY (a pod is only
//!    isolated once its allow entries are in; it only becomes READY, and its
//!    CNI ADD only returns, once everything it needs is in);
//! 3. removal of entries nobody wants any more;
//! 4. a new policy generation, when anything above was written: every
//!    established flow is judged again on its next packet, against maps
//!    that no longer hold anything removed. Earlier, a flow re-judged
//!    between the bump and a removal would be stamped current while an old
//!    allow still stood, and keep it.
//!
//! What the maps hold is read back at start, so a restarted policyd neither
//! flushes nor re-adds: it removes only what the current state no longer
//! wants.
//!
//! A partial [`Desired`] (a compile slice, [`Desired::pending`]) leaves the
//! pending endpoints' policy, ipBlock and endpoint entries as they are.
//!
//! The differences themselves are computed here too: [`diff_maps`] (a merge
//! walk over two sorted maps) for what is written against what is wanted,
//! and [`DesiredDiff`] between two compiles. Policy entries come per
//! endpoint ([`ByEndpoint`]): an endpoint whose entries are the very ones
//! last written (the engine hands an unchanged endpoint's entries on
//! shared) is skipped without a walk.

use crate::engine::by_endpoint::{EndpointKeyed, Shard};
use crate::engine::{ByEndpoint, CidrKey, Desired, EndpointState, IpcacheEntry, PolicyMatch, PolicyValue};
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::sync::Arc;
use weir_bpf::{abi, Dataplane};

/// Entries to write and keys to delete to turn one map into another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapDiff<K, V> {
    pub upsert: Vec<(K, V)>,
    pub remove: Vec<K>,
}

impl<K, V> Default for MapDiff<K, V> {
    /// Nothing to write, nothing to delete.
    fn default() -> Self {
        MapDiff { upsert: Vec::new(), remove: Vec::new() }
    }
}

impl<K, V> MapDiff<K, V> {
    pub fn is_empty(&self) -> bool {
        self.upsert.is_empty() && self.remove.is_empty()
    }
    pub fn len(&self) -> usize {
        self.upsert.len() + self.remove.len()
    }
}

/// Merge walk over two sorted maps.
pub fn diff_maps<K: Ord + Clone, V: Eq + Clone>(old: &BTreeMap<K, V>, new: &BTreeMap<K, V>) -> MapDiff<K, V> {
    let mut d = MapDiff::default();
    diff_sorted(old.iter(), new.iter(), &mut d);
    d
}

/// Per endpoint: endpoints holding the same shared entries on both sides
/// are skipped unseen, the others merge-walked.
pub fn diff_by_endpoint<K: EndpointKeyed, V: Eq + Clone>(
    old: &ByEndpoint<K, V>,
    new: &ByEndpoint<K, V>,
) -> MapDiff<K, V> {
    let mut d = MapDiff::default();
    let (mut a, mut b) = (old.shards().peekable(), new.shards().peekable());
    let empty = Shard::<K, V>::default();
    loop {
        let (sa, sb) = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some((ea, _)), Some((eb, _))) if ea == eb => (a.next().unwrap().1, b.next().unwrap().1),
            (Some((ea, _)), Some((eb, _))) if ea < eb => (a.next().unwrap().1, &empty),
            (Some(_), None) => (a.next().unwrap().1, &empty),
            _ => (&empty, b.next().unwrap().1),
        };
        if !Arc::ptr_eq(sa, sb) {
            diff_sorted(sa.iter().map(|(k, v)| (k, v)), sb.iter().map(|(k, v)| (k, v)), &mut d);
        }
    }
    d
}

/// Merge walk over two sorted sequences of entries, into `d`.
fn diff_sorted<'a, K: Ord + Clone + 'a, V: Eq + Clone + 'a>(
    old: impl Iterator<Item = (&'a K, &'a V)>,
    new: impl Iterator<Item = (&'a K, &'a V)>,
    d: &mut MapDiff<K, V>,
) {
    let (mut a, mut b) = (old.peekable(), new.peekable());
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some((k, _)), None) => {
                d.remove.push((*k).clone());
                a.next();
            }
            (None, Some((k, v))) => {
                d.upsert.push(((*k).clone(), (*v).clone()));
                b.next();
            }
            (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                std::cmp::Ordering::Less => {
                    d.remove.push((*ka).clone());
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    d.upsert.push(((*kb).clone(), (*vb).clone()));
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    if va != vb {
                        d.upsert.push(((*kb).clone(), (*vb).clone()));
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
}

/// What changes between two compiles, map by map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredDiff {
    pub ipcache: MapDiff<IpNet, IpcacheEntry>,
    pub endpoints: MapDiff<u32, EndpointState>,
    pub policy: MapDiff<PolicyMatch, PolicyValue>,
    pub cidr: MapDiff<CidrKey, u32>,
}

impl DesiredDiff {
    /// What changes from `old` to `new`.
    pub fn between(old: &Desired, new: &Desired) -> DesiredDiff {
        let ipcache = match Arc::ptr_eq(&old.ipcache, &new.ipcache) {
            true => MapDiff::default(),
            false => diff_maps(&old.ipcache, &new.ipcache),
        };
        DesiredDiff {
            ipcache,
            endpoints: diff_maps(&old.endpoints, &new.endpoints),
            policy: diff_by_endpoint(&old.policy, &new.policy),
            cidr: diff_maps(&old.cidr, &new.cidr),
        }
    }

    pub fn len(&self) -> usize {
        self.ipcache.len() + self.endpoints.len() + self.policy.len() + self.cidr.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The map contents this process believes are written.
#[derive(Debug, Default)]
pub struct Sync {
    ipcache: BTreeMap<IpNet, IpcacheEntry>,
    /// Per endpoint, as written.
    policy: BTreeMap<u32, BTreeMap<PolicyMatch, PolicyValue>>,
    /// Endpoints whose written entries are exactly these (a compile's
    /// shards, shared with the engine): the next compile handing on the
    /// same shard changed nothing there.
    applied: BTreeMap<u32, Shard<PolicyMatch, PolicyValue>>,
    /// The compile's ipcache the written one is exactly (shared with the
    /// engine, which hands it on unchanged while nothing it reads moves).
    applied_ipcache: Option<Arc<BTreeMap<IpNet, IpcacheEntry>>>,
    cidr: BTreeMap<CidrKey, u32>,
    revision: u64,
    /// Something was written and no policy generation followed yet (a sync
    /// that failed half way, or whose bump failed): the next sync bumps
    /// even if it finds nothing left to write.
    gen_pending: bool,
}

/// What one sync wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncStats {
    pub upserts: usize,
    pub removals: usize,
    pub endpoints_programmed: usize,
    pub revision: u64,
    /// The policy generation this sync started, when it wrote anything.
    pub policy_gen: Option<u32>,
}

impl Sync {
    /// Start from what the maps hold now (entries a previous policyd wrote).
    pub fn from_maps(dp: &Dataplane) -> Result<Sync, weir_bpf::Error> {
        let mut s = Sync::default();
        for (net, v) in dp.ipcache_entries()? {
            s.ipcache.insert(net, from_abi_ipcache(&v));
        }
        for (m, v) in dp.policy_entries()? {
            s.policy.entry(m.endpoint).or_default().insert(m, PolicyValue::from_abi(&v));
        }
        for (endpoint, direction, net, class) in dp.cidr_entries()? {
            s.cidr.insert(CidrKey { endpoint, direction, net }, class);
        }
        s.revision = dp.endpoints()?.iter().map(|(_, e)| e.revision).max().unwrap_or(0);
        Ok(s)
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Entries currently believed written, per map (for metrics).
    pub fn sizes(&self) -> [(&'static str, usize); 3] {
        let policy = self.policy.values().map(|m| m.len()).sum();
        [("ipcache", self.ipcache.len()), ("policy", policy), ("cidr", self.cidr.len())]
    }

    /// Bring the maps to `desired`. On error the maps hold a mix that is
    /// still safe (allows were added before isolation; removals come last)
    /// and the next call retries the rest.
    pub fn apply(&mut self, dp: &Dataplane, desired: &Desired) -> Result<SyncStats, weir_bpf::Error> {
        check_room(desired)?;
        let result = self.apply_checked(dp, desired);
        match &result {
            // Every endpoint's entries, and the ipcache, are now the
            // compile's own.
            Ok(_) => {
                self.applied = desired.policy.shards().map(|(e, s)| (e, s.clone())).collect();
                self.applied_ipcache = Some(desired.ipcache.clone());
            }
            // What was written is recorded entry by entry; which shards
            // match it is no longer known.
            Err(_) => {
                self.applied.clear();
                self.applied_ipcache = None;
            }
        }
        result
    }

    /// The policy entries to write and remove: per endpoint, skipping those
    /// whose shard is the one last applied.
    fn diff_policy(&self, desired: &Desired) -> MapDiff<PolicyMatch, PolicyValue> {
        let mut d = MapDiff::default();
        let empty = BTreeMap::new();
        for (ep, shard) in desired.policy.shards() {
            if self.applied.get(&ep).is_some_and(|a| Arc::ptr_eq(a, shard)) {
                continue;
            }
            let written = self.policy.get(&ep).unwrap_or(&empty);
            diff_sorted(written.iter(), shard.iter().map(|(k, v)| (k, v)), &mut d);
        }
        for (ep, written) in &self.policy {
            if desired.policy.shard(*ep).is_none() {
                d.remove.extend(written.keys().copied());
            }
        }
        d
    }

    fn apply_checked(&mut self, dp: &Dataplane, desired: &Desired) -> Result<SyncStats, weir_bpf::Error> {
        self.revision += 1;
        let mut stats = SyncStats { revision: self.revision, ..Default::default() };
        let ipcache = match self.applied_ipcache.as_ref().is_some_and(|a| Arc::ptr_eq(a, &desired.ipcache)) {
            true => MapDiff::default(),
            false => diff_maps(&self.ipcache, &desired.ipcache),
        };
        let mut policy = self.diff_policy(desired);
        let mut cidr = diff_maps(&self.cidr, &desired.cidr);
        // Not compiled in this slice: what they hold stays until they are.
        policy.remove.retain(|k| !desired.pending.contains(&k.endpoint));
        cidr.remove.retain(|k| !desired.pending.contains(&k.endpoint));

        // 1. make
        self.gen_pending |= !(ipcache.is_empty() && policy.is_empty() && cidr.is_empty());
        for (net, e) in &ipcache.upsert {
            dp.set_ipcache(*net, &to_abi_ipcache(e))?;
            self.ipcache.insert(*net, *e);
        }
        for (k, v) in &cidr.upsert {
            dp.set_cidr(k.endpoint, k.direction, k.net, *v)?;
            self.cidr.insert(*k, *v);
        }
        for (k, v) in &policy.upsert {
            dp.set_policy(k, &v.to_abi())?;
            self.policy.entry(k.endpoint).or_default().insert(*k, *v);
        }
        stats.upserts = ipcache.upsert.len() + cidr.upsert.len() + policy.upsert.len();

        // 2. endpoints: compared with the map itself, not with memory: CNI
        // ADD (re)writes an entry as not READY whenever a pod interface
        // (possibly reusing an ifindex) appears.
        for (&ifindex, want) in &desired.endpoints {
            let Some(have) = dp.endpoint(ifindex)? else {
                continue; // CNI DEL removed it (or ADD rolled back): nothing to program
            };
            let flags = endpoint_flags(want) | (have.flags & abi::EP_OPEN_UNTIL_READY);
            if have.identity == want.identity && have.flags == flags {
                continue;
            }
            // Read-modify-write: the pod's MAC and addresses are CNI ADD's.
            // The flow log's flag changes no verdict: no new generation.
            if have.identity != want.identity || (have.flags ^ flags) & !abi::EP_LOG_ALLOW != 0 {
                self.gen_pending = true;
            }
            dp.set_endpoint(
                ifindex,
                &abi::Endpoint { identity: want.identity, flags, revision: self.revision, ..have },
            )?;
            stats.endpoints_programmed += 1;
        }

        // 3. break
        for k in &policy.remove {
            dp.remove_policy(k)?;
            if let Some(written) = self.policy.get_mut(&k.endpoint) {
                written.remove(k);
                if written.is_empty() {
                    self.policy.remove(&k.endpoint);
                }
            }
        }
        for k in &cidr.remove {
            dp.remove_cidr(k.endpoint, k.direction, k.net)?;
            self.cidr.remove(k);
        }
        for net in &ipcache.remove {
            dp.remove_ipcache(*net)?;
            self.ipcache.remove(net);
        }
        stats.removals = ipcache.remove.len() + cidr.remove.len() + policy.remove.len();

        // 4. after the removals, never before (see the module's doc)
        if self.gen_pending {
            stats.policy_gen = Some(dp.bump_policy_gen()?);
            self.gen_pending = false;
        }
        Ok(stats)
    }
}

fn endpoint_flags(e: &EndpointState) -> u32 {
    let mut f = abi::EP_READY;
    if e.ingress_isolated {
        f |= abi::EP_INGRESS_ISOLATED;
    }
    if e.egress_isolated {
        f |= abi::EP_EGRESS_ISOLATED;
    }
    if e.ingress_tiered {
        f |= abi::EP_INGRESS_TIERED;
    }
    if e.egress_tiered {
        f |= abi::EP_EGRESS_TIERED;
    }
    if e.ingress_audited {
        f |= abi::EP_INGRESS_AUDITED;
    }
    if e.egress_audited {
        f |= abi::EP_EGRESS_AUDITED;
    }
    if e.log_allow {
        f |= abi::EP_LOG_ALLOW;
    }
    f
}

fn to_abi_ipcache(e: &IpcacheEntry) -> abi::IpcacheValue {
    abi::IpcacheValue {
        identity: e.identity,
        endpoint: e.endpoint,
        flags: if e.service { abi::IPCACHE_SERVICE } else { 0 },
        pad: 0,
    }
}

fn from_abi_ipcache(v: &abi::IpcacheValue) -> IpcacheEntry {
    IpcacheEntry { identity: v.identity, endpoint: v.endpoint, service: v.flags & abi::IPCACHE_SERVICE != 0 }
}

/// Whether `desired` fits the maps, checked before any write: a compile
/// that cannot fit fails whole, naming the count and the limit, and leaves
/// the maps as they were, instead of failing part way with the kernel's
/// E2BIG ("Argument list too long"). Each LPM pair's exact-match side (full
/// prefixes) and trie side have a capacity of their own. What pending
/// endpoints keep in the maps comes on top, so fitting is necessary, not
/// sufficient.
pub fn check_room(desired: &Desired) -> Result<(), weir_bpf::Error> {
    // Either side of a pair holds the pair's whole count when that fits:
    // then nothing is split and counted (no walk over every policy key on
    // each sync).
    if desired.ipcache.len() <= abi::IPCACHE_MAX as usize
        && desired.policy.len() <= abi::POLICY_MAX as usize
        && desired.cidr.len() <= abi::CIDR_MAX as usize
        && desired.endpoints.len() <= abi::ENDPOINTS_MAX as usize
    {
        return Ok(());
    }
    let full_ips = desired.ipcache.keys().filter(|n| n.prefix_len() == n.max_prefix_len()).count();
    let exact_policy = desired.policy.keys().filter(|k| k.encode().prefix_len() == abi::POLICY_FULL_BITS).count();
    let needs = [
        ("addresses in the ipcache (every pod and Service address of the cluster)", full_ips, abi::IPCACHE_MAX),
        ("prefixes in the ipcache", desired.ipcache.len() - full_ips, abi::IPCACHE_MAX),
        ("policy entries of one port (or every port)", exact_policy, abi::POLICY_MAX),
        ("policy entries of a port range", desired.policy.len() - exact_policy, abi::POLICY_MAX),
        ("ipBlock prefixes", desired.cidr.len(), abi::CIDR_MAX),
        ("endpoints", desired.endpoints.len(), abi::ENDPOINTS_MAX),
    ];
    for (what, n, max) in needs {
        if n > max as usize {
            return Err(weir_bpf::Error::Invalid {
                field: "map capacity",
                msg: format!(
                    "{n} {what} do not fit the dataplane's {max} (weir_abi.h); nothing was written and the maps keep \
                     the previous revision. The cluster is larger than this build of Weir can hold"
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod room_tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn addresses(n: usize) -> Desired {
        let mut d = Desired::default();
        for i in 0..n as u32 {
            let net = IpNet::new(Ipv4Addr::from(0x0a00_0000 + i).into(), 32).unwrap();
            Arc::make_mut(&mut d.ipcache).insert(net, IpcacheEntry { identity: 256, endpoint: 0, service: false });
        }
        d
    }

    /// A cluster past the ipcache's capacity is refused before any write,
    /// naming the count and the limit (it once failed part way, E2BIG).
    #[test]
    fn a_compile_that_cannot_fit_is_refused_with_the_count_and_the_limit() {
        let max = abi::IPCACHE_MAX as usize;
        assert!(check_room(&addresses(max)).is_ok(), "exactly full fits");
        let e = check_room(&addresses(max + 1)).unwrap_err().to_string();
        assert!(e.contains(&format!("{} addresses in the ipcache", max + 1)), "{e}");
        assert!(e.contains(&format!("dataplane's {max}")), "{e}");
        // prefixes live in the trie beside: they do not count against addresses
        let mut d = addresses(max);
        Arc::make_mut(&mut d.ipcache)
            .insert("10.128.0.0/9".parse().unwrap(), IpcacheEntry { identity: 2, endpoint: 0, service: false });
        assert!(check_room(&d).is_ok());
    }
}
