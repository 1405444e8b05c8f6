//! Reader of the `weir_events` ring buffer: one [`abi::Event`] per drop and,
//! with `CFG_EVENTS_ALLOW`, per newly allowed flow.

use crate::abi;
use crate::error::Error;
use aya::maps::{MapData, RingBuf};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::PathBuf;

pub struct EventReader {
    ring: RingBuf<MapData>,
    path: PathBuf,
}

impl EventReader {
    pub(crate) fn open(path: PathBuf) -> Result<Self, Error> {
        let data = MapData::from_pin(&path).map_err(|source| Error::Map {
            path: path.clone(),
            op: "open",
            source: Box::new(source),
        })?;
        let map = aya::maps::Map::RingBuf(data);
        let ring = RingBuf::try_from(map).map_err(|source| Error::Map {
            path: path.clone(),
            op: "open ring buffer",
            source: Box::new(source),
        })?;
        Ok(EventReader { ring, path })
    }

    /// The next event, or None when the ring is empty (poll [`Self::as_raw_fd`]
    /// for readability to wait). Not an Iterator: None means "not yet", not "done".
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<abi::Event> {
        let item = self.ring.next()?;
        if item.len() < std::mem::size_of::<abi::Event>() {
            log::warn!("short record ({} bytes) in {}", item.len(), self.path.display());
            return None;
        }
        // SAFETY: the record holds a struct weir_event; read unaligned.
        Some(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const abi::Event) })
    }

    /// Everything currently queued.
    pub fn drain(&mut self) -> Vec<abi::Event> {
        let mut v = Vec::new();
        while let Some(e) = self.next() {
            v.push(e);
        }
        v
    }
}

impl AsRawFd for EventReader {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_fd().as_raw_fd()
    }
}
