//! An LPM trie with an exact-match hash beside it (`weir_abi.h`): entries
//! of full prefix length live in the hash, every shorter one in the trie,
//! and the programs look in the hash first. A trie lookup walks the key's
//! bits; the hash does not, and most entries (pod addresses, single ports)
//! are full-length. ipcache and policy are both such pairs.

use crate::dataplane::{map_err, not_found, open_map};
use crate::error::Error;
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, MapData};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub(crate) struct LpmPair<K: aya::Pod, V: aya::Pod> {
    trie: Mutex<LpmTrie<MapData, K, V>>,
    trie_path: PathBuf,
    exact: Mutex<HashMap<MapData, Key<K>, V>>,
    exact_path: PathBuf,
    /// The prefix length of a key that fixes every bit.
    full_bits: u32,
}

impl<K: aya::Pod, V: aya::Pod> LpmPair<K, V> {
    pub(crate) fn open(root: &Path, trie: &str, exact: &str, full_bits: u32) -> Result<Self, Error> {
        let (trie_path, exact_path) = (root.join(trie), root.join(exact));
        let t = LpmTrie::try_from(open_map(root, trie)?).map_err(map_err(&trie_path, "check key/value sizes"))?;
        let e = HashMap::try_from(open_map(root, exact)?).map_err(map_err(&exact_path, "check key/value sizes"))?;
        Ok(LpmPair { trie: Mutex::new(t), trie_path, exact: Mutex::new(e), exact_path, full_bits })
    }

    pub(crate) fn insert(&self, key: &Key<K>, value: &V) -> Result<(), Error> {
        if key.prefix_len() == self.full_bits {
            return self.exact.lock().unwrap().insert(*key, value, 0).map_err(map_err(&self.exact_path, "update"));
        }
        self.trie.lock().unwrap().insert(key, value, 0).map_err(map_err(&self.trie_path, "update"))
    }

    /// Removes the entry of exactly this prefix; one that is not there is
    /// not an error.
    pub(crate) fn remove(&self, key: &Key<K>) -> Result<(), Error> {
        let (path, r) = if key.prefix_len() == self.full_bits {
            (&self.exact_path, self.exact.lock().unwrap().remove(key))
        } else {
            (&self.trie_path, self.trie.lock().unwrap().remove(key))
        };
        match r {
            Err(e) if !not_found(&e) => Err(map_err(path, "delete")(e)),
            _ => Ok(()),
        }
    }

    /// The longest prefix that holds `data`, as the programs find it.
    pub(crate) fn lookup(&self, data: K) -> Result<Option<V>, Error> {
        let key = Key::new(self.full_bits, data);
        match self.exact.lock().unwrap().get(&key, 0) {
            Ok(v) => return Ok(Some(v)),
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(map_err(&self.exact_path, "lookup")(e)),
        }
        match self.trie.lock().unwrap().get(&key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(map_err(&self.trie_path, "lookup")(e)),
        }
    }

    /// Every entry of both maps, unsorted.
    pub(crate) fn entries(&self) -> Result<Vec<(Key<K>, V)>, Error> {
        let mut out = Vec::new();
        for r in self.trie.lock().unwrap().iter() {
            out.push(r.map_err(map_err(&self.trie_path, "iterate"))?);
        }
        for r in self.exact.lock().unwrap().iter() {
            out.push(r.map_err(map_err(&self.exact_path, "iterate"))?);
        }
        Ok(out)
    }
}
