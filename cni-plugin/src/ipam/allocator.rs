//! The host-local allocation algorithm, free of I/O: the same round-robin
//! walk as the reference plugin (start after `last_reserved_ip.<set>`, wrap
//! through every range of the set, skip each range's gateway), so a store
//! shared with it evolves the same way whichever plugin allocates.

use crate::error::{code, CniError, Result};
use crate::ip::{self, Range, RangeSet};
use crate::request::RequestedIp;
use std::net::IpAddr;

/// What the allocator needs from a reservation store.
pub trait Store {
    /// Claim `ip` for (id, ifname); `Ok(false)` when already taken. Records
    /// `ip` as the last reservation of range set `set`.
    fn reserve(&mut self, id: &str, ifname: &str, ip: IpAddr, set: usize) -> Result<bool>;
    fn last_reserved(&self, set: usize) -> Option<IpAddr>;
    fn get_by_id(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>>;
    /// Remove every reservation of (id, ifname); returns the addresses freed.
    fn release_by_id(&mut self, id: &str, ifname: &str) -> Result<Vec<IpAddr>>;
    fn release(&mut self, ip: IpAddr) -> Result<()>;
}

/// The reference plugin's RangeIter: every allocatable address of a set once,
/// beginning after `last` when the set holds it.
pub struct Walk<'a> {
    set: &'a RangeSet,
    idx: usize,
    cur: Option<IpAddr>,
    start: Option<IpAddr>,
}

impl<'a> Walk<'a> {
    pub fn new(set: &'a RangeSet, last: Option<IpAddr>) -> Self {
        match last.and_then(|l| set.ranges.iter().position(|r| r.contains(l)).map(|i| (i, l))) {
            Some((idx, l)) => Walk { set, idx, cur: Some(l), start: None },
            None => Walk { set, idx: 0, cur: None, start: None },
        }
    }
}

impl Iterator for Walk<'_> {
    type Item = IpAddr;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let r: &Range = &self.set.ranges[self.idx];
            match self.cur {
                None => {
                    self.cur = Some(r.start);
                    self.start = Some(r.start);
                }
                Some(cur) => {
                    let next = if cur == r.end {
                        self.idx = (self.idx + 1) % self.set.ranges.len();
                        self.set.ranges[self.idx].start
                    } else {
                        ip::add(cur, 1)
                    };
                    self.cur = Some(next);
                    match self.start {
                        None => self.start = Some(next),
                        Some(s) if s == next => return None,
                        Some(_) => {}
                    }
                }
            }
            let r = &self.set.ranges[self.idx];
            let cur = self.cur.expect("set above");
            if cur != r.gateway {
                return Some(cur);
            }
        }
    }
}

fn describe(set: &RangeSet) -> String {
    set.ranges.iter().map(|r| format!("{}-{}", r.start, r.end)).collect::<Vec<_>>().join(", ")
}

/// The spec forbids two addresses of one range set for one attachment.
fn refuse_duplicate(store: &dyn Store, set: &RangeSet, set_idx: usize, id: &str, ifname: &str) -> Result<()> {
    for have in store.get_by_id(id, ifname)? {
        if set.contains(have) {
            return Err(CniError::new(
                code::DUPLICATE_ALLOCATION,
                format!(
                    "{have} is already allocated to container {id} interface {ifname} in ipam.ranges[{set_idx}]; \
                     run DEL for it before ADD again"
                ),
            ));
        }
    }
    Ok(())
}

/// Reserve one address of range set `set_idx` for (id, ifname).
pub fn allocate(store: &mut dyn Store, set: &RangeSet, set_idx: usize, id: &str, ifname: &str) -> Result<IpAddr> {
    refuse_duplicate(store, set, set_idx, id, ifname)?;
    let last = store.last_reserved(set_idx);
    for candidate in Walk::new(set, last) {
        if store.reserve(id, ifname, candidate, set_idx)? {
            return Ok(candidate);
        }
    }
    Err(CniError::new(
        code::POOL_EXHAUSTED,
        format!(
            "no free address in ipam.ranges[{set_idx}] ({}): every address is reserved; \
             delete unused pods, run GC, or widen the range",
            describe(set)
        ),
    ))
}

/// Reserve exactly the requested address in range set `set_idx` (which
/// holds it), as host-local does for a static address: never the gateway,
/// never one already reserved.
pub fn reserve_requested(
    store: &mut dyn Store,
    set: &RangeSet,
    set_idx: usize,
    id: &str,
    ifname: &str,
    want: &RequestedIp,
) -> Result<IpAddr> {
    refuse_duplicate(store, set, set_idx, id, ifname)?;
    let a = want.addr;
    if set.ranges.iter().any(|r| r.gateway == a) {
        return Err(CniError::new(
            code::ADDRESS_UNAVAILABLE,
            format!("{}: {a} is the gateway of ipam.ranges[{set_idx}]; ask for another address", want.field),
        ));
    }
    if !store.reserve(id, ifname, a, set_idx)? {
        return Err(CniError::new(
            code::ADDRESS_UNAVAILABLE,
            format!(
                "{}: {a} is already reserved in ipam.ranges[{set_idx}] by another attachment; ask for a free \
                 address, or delete the pod holding it",
                want.field
            ),
        ));
    }
    Ok(a)
}

/// Which requested address goes to which range set: each must lie inside
/// one set, at most one per set. Pure, checked before anything is reserved.
pub fn assign_requested<'a>(sets: &[RangeSet], requested: &'a [RequestedIp]) -> Result<Vec<Option<&'a RequestedIp>>> {
    let mut out: Vec<Option<&RequestedIp>> = vec![None; sets.len()];
    for want in requested {
        let Some(i) = sets.iter().position(|s| s.contains(want.addr)) else {
            let all: Vec<String> = sets.iter().enumerate().map(|(i, s)| format!("[{i}] {}", describe(s))).collect();
            return Err(CniError::new(
                code::ADDRESS_UNAVAILABLE,
                format!(
                    "{}: {} is outside every range of ipam.ranges ({}); ask for an address inside one, or none",
                    want.field,
                    want.addr,
                    all.join("; ")
                ),
            ));
        };
        if let Some(first) = out[i] {
            return Err(CniError::new(
                code::ADDRESS_UNAVAILABLE,
                format!(
                    "{}: {} and {} ({}) both lie in ipam.ranges[{i}], which gives one address per attachment; \
                     ask for one address per range set (per family)",
                    want.field, want.addr, first.addr, first.field
                ),
            ));
        }
        out[i] = Some(want);
    }
    Ok(out)
}

/// One address per range set, all or nothing: the requested one where the
/// runtime asked for one, the next free one elsewhere.
pub fn allocate_all(
    store: &mut dyn Store,
    sets: &[RangeSet],
    id: &str,
    ifname: &str,
    requested: &[RequestedIp],
) -> Result<Vec<IpAddr>> {
    let wanted = assign_requested(sets, requested)?;
    let mut got = Vec::new();
    for (i, set) in sets.iter().enumerate() {
        let one = match wanted[i] {
            Some(want) => reserve_requested(store, set, i, id, ifname, want),
            None => allocate(store, set, i, id, ifname),
        };
        match one {
            Ok(a) => got.push(a),
            Err(e) => {
                for a in got {
                    let _ = store.release(a);
                }
                return Err(e);
            }
        }
    }
    Ok(got)
}

#[cfg(test)]
pub mod fake {
    use super::*;
    use std::collections::BTreeMap;

    /// In-memory store with the disk store's semantics.
    #[derive(Default, Debug)]
    pub struct FakeStore {
        pub taken: BTreeMap<u128, (IpAddr, String, String)>,
        pub last: BTreeMap<usize, IpAddr>,
    }

    impl Store for FakeStore {
        fn reserve(&mut self, id: &str, ifname: &str, ip: IpAddr, set: usize) -> Result<bool> {
            let k = crate::ip::to_u128(ip) | ((ip.is_ipv6() as u128) << 127);
            if self.taken.contains_key(&k) {
                return Ok(false);
            }
            self.taken.insert(k, (ip, id.into(), ifname.into()));
            self.last.insert(set, ip);
            Ok(true)
        }
        fn last_reserved(&self, set: usize) -> Option<IpAddr> {
            self.last.get(&set).copied()
        }
        fn get_by_id(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
            Ok(self.taken.values().filter(|(_, i, f)| i == id && f == ifname).map(|(a, _, _)| *a).collect())
        }
        fn release_by_id(&mut self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
            let gone = self.get_by_id(id, ifname)?;
            self.taken.retain(|_, (_, i, f)| !(i == id && f == ifname));
            Ok(gone)
        }
        fn release(&mut self, ip: IpAddr) -> Result<()> {
            self.taken.retain(|_, (a, _, _)| *a != ip);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeStore;
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn range(subnet: &str, start: &str, end: &str, gw: &str) -> Range {
        Range {
            subnet: subnet.parse().unwrap(),
            start: start.parse().unwrap(),
            end: end.parse().unwrap(),
            gateway: gw.parse().unwrap(),
        }
    }

    fn set24() -> RangeSet {
        RangeSet { ranges: vec![range("10.0.0.0/24", "10.0.0.1", "10.0.0.254", "10.0.0.1")] }
    }

    #[test]
    fn first_address_skips_the_gateway_then_round_robins() {
        let mut s = FakeStore::default();
        let set = set24();
        assert_eq!(allocate(&mut s, &set, 0, "a", "eth0").unwrap().to_string(), "10.0.0.2");
        assert_eq!(allocate(&mut s, &set, 0, "b", "eth0").unwrap().to_string(), "10.0.0.3");
        s.release_by_id("a", "eth0").unwrap();
        // Round robin: .2 is free again but the walk continues after .3.
        assert_eq!(allocate(&mut s, &set, 0, "c", "eth0").unwrap().to_string(), "10.0.0.4");
    }

    #[test]
    fn walk_wraps_across_ranges_and_ends() {
        let set = RangeSet {
            ranges: vec![
                range("10.0.0.0/24", "10.0.0.10", "10.0.0.11", "10.0.0.1"),
                range("10.0.1.0/24", "10.0.1.1", "10.0.1.2", "10.0.1.1"),
            ],
        };
        let all: Vec<String> = Walk::new(&set, Some("10.0.0.11".parse().unwrap())).map(|a| a.to_string()).collect();
        assert_eq!(all, ["10.0.1.2", "10.0.0.10", "10.0.0.11"]);
    }

    #[test]
    fn exhaustion_is_reported_with_the_range() {
        let set = RangeSet { ranges: vec![range("10.0.0.0/30", "10.0.0.1", "10.0.0.2", "10.0.0.1")] };
        let mut s = FakeStore::default();
        allocate(&mut s, &set, 0, "a", "eth0").unwrap();
        let e = allocate(&mut s, &set, 0, "b", "eth0").unwrap_err();
        assert_eq!(e.code, code::POOL_EXHAUSTED);
        assert!(e.msg.contains("ipam.ranges[0]"), "{}", e.msg);
    }

    #[test]
    fn duplicate_allocation_is_refused() {
        let mut s = FakeStore::default();
        allocate(&mut s, &set24(), 0, "a", "eth0").unwrap();
        assert_eq!(allocate(&mut s, &set24(), 0, "a", "eth0").unwrap_err().code, code::DUPLICATE_ALLOCATION);
    }

    #[test]
    fn allocate_all_is_all_or_nothing() {
        let v6full = RangeSet { ranges: vec![range("fd00::/126", "fd00::1", "fd00::1", "fd00::1")] };
        let mut s = FakeStore::default();
        let e = allocate_all(&mut s, &[set24(), v6full], "a", "eth0", &[]).unwrap_err();
        assert_eq!(e.code, code::POOL_EXHAUSTED);
        assert!(s.taken.is_empty());
    }

    fn want(a: &str, field: &str) -> RequestedIp {
        RequestedIp { addr: a.parse().unwrap(), field: field.into() }
    }

    fn v6set() -> RangeSet {
        RangeSet { ranges: vec![range("fd00::/64", "fd00::1", "fd00::ff", "fd00::1")] }
    }

    #[test]
    fn requested_addresses_are_reserved_exactly_and_the_rest_allocated() {
        let mut s = FakeStore::default();
        let got = allocate_all(&mut s, &[set24(), v6set()], "a", "eth0", &[want("fd00::42", "runtimeConfig.ips[0]")])
            .unwrap();
        assert_eq!(got, ["10.0.0.2".parse::<IpAddr>().unwrap(), "fd00::42".parse().unwrap()]);
        // As host-local: a static reservation moves the set's round robin.
        assert_eq!(s.last_reserved(1), Some("fd00::42".parse().unwrap()));
        let got =
            allocate_all(&mut s, &[set24(), v6set()], "b", "eth0", &[want("10.0.0.200", "CNI_ARGS IP=")]).unwrap();
        assert_eq!(got[0].to_string(), "10.0.0.200");
        assert_eq!(got[1].to_string(), "fd00::43");
    }

    #[test]
    fn a_requested_address_outside_taken_or_the_gateway_fails_and_reserves_nothing() {
        let sets = [set24(), v6set()];
        let mut s = FakeStore::default();
        allocate_all(&mut s, &sets, "a", "eth0", &[want("10.0.0.9", "CNI_ARGS IP=")]).unwrap();
        let before = s.taken.len();
        let cases = [
            (vec![want("10.0.1.9", "CNI_ARGS IP=")], "CNI_ARGS IP=: 10.0.1.9 is outside every range of ipam.ranges ([0] 10.0.0.1-10.0.0.254; [1] fd00::1-fd00::ff)"),
            (vec![want("fd00::5", "runtimeConfig.ips[0]"), want("10.0.0.9", "runtimeConfig.ips[1]")], "runtimeConfig.ips[1]: 10.0.0.9 is already reserved in ipam.ranges[0]"),
            (vec![want("10.0.0.1", "args.cni.ips[0]")], "args.cni.ips[0]: 10.0.0.1 is the gateway of ipam.ranges[0]"),
            (vec![want("10.0.0.5", "CNI_ARGS IP= (item 1)"), want("10.0.0.6", "CNI_ARGS IP= (item 2)")], "CNI_ARGS IP= (item 2): 10.0.0.6 and 10.0.0.5 (CNI_ARGS IP= (item 1)) both lie in ipam.ranges[0]"),
        ];
        for (req, msg) in cases {
            let e = allocate_all(&mut s, &sets, "b", "eth0", &req).unwrap_err();
            assert_eq!(e.code, code::ADDRESS_UNAVAILABLE);
            assert!(e.msg.starts_with(msg), "{}", e.msg);
            assert_eq!(s.taken.len(), before, "{req:?} left a reservation");
        }
    }

    #[test]
    fn one_attachment_cannot_request_a_second_address_of_a_set() {
        let mut s = FakeStore::default();
        allocate(&mut s, &set24(), 0, "a", "eth0").unwrap();
        let e = allocate_all(&mut s, &[set24()], "a", "eth0", &[want("10.0.0.50", "CNI_ARGS IP=")]).unwrap_err();
        assert_eq!(e.code, code::DUPLICATE_ALLOCATION);
    }

    proptest! {
        /// Any interleaving of allocations and releases never hands out an
        /// address twice, never the gateway, never outside the set, and fails
        /// only when the set is really full.
        #[test]
        fn allocations_are_unique_and_in_range(ops in proptest::collection::vec((any::<bool>(), 0u8..40), 1..200),
                                               v6 in any::<bool>()) {
            let set = if v6 {
                RangeSet { ranges: vec![range("fd00::/64", "fd00::5", "fd00::14", "fd00::7"), range("fd01::/64", "fd01::1", "fd01::8", "fd01::1")] }
            } else {
                RangeSet { ranges: vec![range("10.0.0.0/24", "10.0.0.5", "10.0.0.20", "10.0.0.7"), range("10.0.1.0/29", "10.0.1.1", "10.0.1.6", "10.0.1.1")] }
            };
            let mut s = FakeStore::default();
            let mut live: HashSet<u8> = HashSet::new();
            for (add, who) in ops {
                let id = format!("c{who}");
                if add && !live.contains(&who) {
                    match allocate(&mut s, &set, 0, &id, "eth0") {
                        Ok(a) => {
                            prop_assert!(set.contains(a));
                            prop_assert!(set.ranges.iter().all(|r| r.gateway != a));
                            live.insert(who);
                        }
                        Err(e) => {
                            prop_assert_eq!(e.code, code::POOL_EXHAUSTED);
                            prop_assert_eq!(s.taken.len() as u128, set.capacity());
                        }
                    }
                } else if !add {
                    s.release_by_id(&id, "eth0").unwrap();
                    live.remove(&who);
                }
                prop_assert_eq!(s.taken.len(), live.len());
            }
        }
    }
}
