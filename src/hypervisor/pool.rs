//! Connections by URI, opened on first use and shared afterwards.
//!
//! Invariant: at most one connection per URI per process, so every module that needs a host
//! (group resolution, snapshot, release of a manifest naming other URIs) sees the same one.

use super::{Host, HvResult};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

type Opener = Box<dyn Fn(&str) -> HvResult<Arc<dyn Host>> + Send + Sync>;

/// Connections by URI (see module docs).
pub struct Pool {
    opener: Opener,
    open: Mutex<BTreeMap<String, Arc<dyn Host>>>,
}

impl Pool {
    /// A pool that opens connections with `opener`.
    pub(crate) fn new(opener: Opener) -> Self {
        Self {
            opener,
            open: Mutex::new(BTreeMap::new()),
        }
    }

    /// A pool that opens real libvirt connections.
    pub fn libvirt() -> Self {
        Self::new(Box::new(|uri| {
            super::libvirt::LibvirtHost::open(uri).map(|h| Arc::new(h) as Arc<dyn Host>)
        }))
    }

    /// The connection to `uri`, opened now if it is not open yet.
    pub fn get(&self, uri: &str) -> HvResult<Arc<dyn Host>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = open.get(uri) {
            return Ok(h.clone());
        }
        let h = (self.opener)(uri)?;
        open.insert(uri.to_string(), h.clone());
        Ok(h)
    }

    /// A connection to each of `uris`, in their order.
    pub(crate) fn get_all(&self, uris: &[String]) -> HvResult<Vec<Arc<dyn Host>>> {
        uris.iter().map(|u| self.get(u)).collect()
    }
}

/// The hosts a command works on: the pool that connects to them and the URIs named on the
/// command line (`--connect`, else the default URI).
pub struct Ctx {
    /// Shared connections.
    pub pool: Pool,
    /// The URIs to resolve groups on.
    pub uris: Vec<String>,
}

impl Ctx {
    /// A connection to every URI, opened on first use.
    pub fn hosts(&self) -> HvResult<Vec<Arc<dyn Host>>> {
        self.pool.get_all(&self.uris)
    }
}
