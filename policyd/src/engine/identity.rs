//! Label identities: one number per (namespace, pod labels), stable for the
//! life of the process and across restarts when seeded.

use super::selector::Labels;
use super::{ID_FIRST_CIDR, ID_FIRST_LABEL};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Default, Clone)]
pub struct IdentityAllocator {
    /// The label sets are the store's own (shared), not copies.
    by_ns: HashMap<String, HashMap<Arc<Labels>, Slot>>,
    next: u32,
    live: usize,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    id: u32,
    /// Compile generation that assigned the identity, saw its last pod go,
    /// or (in use) found it at a collection: unused ones are kept for a
    /// while so a pod recreated with the same labels (rollout of one
    /// replica, scale to zero and back) gets its number back.
    last_used: u64,
}

impl IdentityAllocator {
    pub fn new() -> Self {
        IdentityAllocator { by_ns: HashMap::new(), next: ID_FIRST_LABEL, live: 0 }
    }

    pub fn get(&self, ns: &str, labels: &Labels) -> Option<u32> {
        self.by_ns.get(ns).and_then(|m| m.get(labels)).map(|s| s.id)
    }

    /// The identity of (ns, labels), assigning the next free number if new.
    pub fn assign(&mut self, ns: &str, labels: &Arc<Labels>, generation: u64) -> u32 {
        if let Some(slot) = self.by_ns.get_mut(ns).and_then(|m| m.get_mut(&**labels)) {
            slot.last_used = generation;
            return slot.id;
        }
        let id = self.fresh();
        self.by_ns.entry(ns.to_string()).or_default().insert(labels.clone(), Slot { id, last_used: generation });
        self.live += 1;
        id
    }

    /// Mark an identity used in this generation.
    pub fn touch(&mut self, id: &super::IdentityLabels, generation: u64) {
        if let Some(slot) = self.by_ns.get_mut(&id.namespace).and_then(|m| m.get_mut(&*id.labels)) {
            slot.last_used = generation;
        }
    }

    /// Take a number from a previous run. Ignored when the labels already
    /// have a number or the number is taken or out of the label range.
    pub fn seed(&mut self, ns: &str, labels: &Arc<Labels>, id: u32) -> bool {
        if !(ID_FIRST_LABEL..ID_FIRST_CIDR).contains(&id) || self.get(ns, labels).is_some() || self.in_use(id) {
            return false;
        }
        self.by_ns.entry(ns.to_string()).or_default().insert(labels.clone(), Slot { id, last_used: 0 });
        self.live += 1;
        if id >= self.next {
            self.next = id + 1;
        }
        true
    }

    fn in_use(&self, id: u32) -> bool {
        self.by_ns.values().any(|m| m.values().any(|s| s.id == id))
    }

    fn fresh(&mut self) -> u32 {
        if self.next < ID_FIRST_CIDR {
            self.next += 1;
            return self.next - 1;
        }
        // Label space exhausted (16M numbers handed out in one run): reuse
        // the lowest number nobody holds now.
        let mut used: Vec<u32> = self.by_ns.values().flat_map(|m| m.values().map(|s| s.id)).collect();
        used.sort_unstable();
        let mut cand = ID_FIRST_LABEL;
        for u in used {
            if u == cand {
                cand += 1;
            } else if u > cand {
                break;
            }
        }
        cand
    }

    /// Forget the oldest half of the identities not `in_use` once they
    /// outnumber those in use (and `floor`). The ones in use are marked
    /// used in `generation` first, so only those of another generation go.
    pub fn collect_garbage<'a>(
        &mut self,
        in_use: impl ExactSizeIterator<Item = &'a super::IdentityLabels>,
        generation: u64,
        floor: usize,
    ) {
        let unused = self.live.saturating_sub(in_use.len());
        if unused <= floor.max(in_use.len()) {
            return;
        }
        for id in in_use {
            self.touch(id, generation);
        }
        let mut ages: Vec<u64> = self
            .by_ns
            .values()
            .flat_map(|m| m.values().filter(|s| s.last_used < generation).map(|s| s.last_used))
            .collect();
        ages.sort_unstable();
        let drop = unused - unused / 2;
        let cutoff = ages.get(drop.saturating_sub(1)).copied().unwrap_or(0);
        let mut removed = 0;
        for m in self.by_ns.values_mut() {
            m.retain(|_, s| {
                let gone = s.last_used < generation && s.last_used <= cutoff;
                removed += gone as usize;
                !gone
            });
        }
        self.by_ns.retain(|_, m| !m.is_empty());
        self.live -= removed;
    }
}
