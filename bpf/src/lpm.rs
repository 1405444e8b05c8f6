//! An LPM trie with an exact-match hash beside it (`weir_abi.h`): entries
//! of full prefix length live in the hash, every shorter one in the trie,
//! and the programs look in the hash first. A trie lookup walks the key's
//! bits; the hash does not, and most entries (pod addresses, single ports)
//! are full-length. ipcache and policy are both such pairs.

use crate::dataplane::{map_err, not_found};
use crate::error::Error;
use crate::pinned::Pinned;
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, MapData};
use std::path::Path;

pub(crate) struct LpmPair<K: aya::Pod, V: aya::Pod> {
    trie: Pinned<LpmTrie<MapData, K, V>>,
    exact: Pinned<HashMap<MapData, Key<K>, V>>,
    /// The prefix length of a key that fixes every bit.
    full_bits: u32,
}

impl<K: aya::Pod, V: aya::Pod> LpmPair<K, V> {
    pub(crate) fn at(root: &Path, trie: &'static str, exact: &'static str, full_bits: u32) -> Self {
        LpmPair { trie: Pinned::at(root, trie), exact: Pinned::at(root, exact), full_bits }
    }

    pub(crate) fn insert(&self, key: &Key<K>, value: &V) -> Result<(), Error> {
        if key.prefix_len() == self.full_bits {
            return self.exact.get()?.insert(*key, value, 0).map_err(map_err(self.exact.path(), "update"));
        }
        self.trie.get()?.insert(key, value, 0).map_err(map_err(self.trie.path(), "update"))
    }

    /// Removes the entry of exactly this prefix; one that is not there is
    /// not an error.
    pub(crate) fn remove(&self, key: &Key<K>) -> Result<(), Error> {
        let (path, r) = if key.prefix_len() == self.full_bits {
            (self.exact.path(), self.exact.get()?.remove(key))
        } else {
            (self.trie.path(), self.trie.get()?.remove(key))
        };
        match r {
            Err(e) if !not_found(&e) => Err(map_err(path, "delete")(e)),
            _ => Ok(()),
        }
    }

    /// The longest prefix that holds `data`, as the programs find it.
    pub(crate) fn lookup(&self, data: K) -> Result<Option<V>, Error> {
        let key = Key::new(self.full_bits, data);
        match self.exact.get()?.get(&key, 0) {
            Ok(v) => return Ok(Some(v)),
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(map_err(self.exact.path(), "lookup")(e)),
        }
        match self.trie.get()?.get(&key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(map_err(self.trie.path(), "lookup")(e)),
        }
    }

    /// Every entry of both maps, unsorted.
    pub(crate) fn entries(&self) -> Result<Vec<(Key<K>, V)>, Error> {
        let mut out = Vec::new();
        for r in self.trie.get()?.iter() {
            out.push(r.map_err(map_err(self.trie.path(), "iterate"))?);
        }
        for r in self.exact.get()?.iter() {
            out.push(r.map_err(map_err(self.exact.path(), "iterate"))?);
        }
        Ok(out)
    }
}
