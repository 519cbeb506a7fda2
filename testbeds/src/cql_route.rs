//! Where the CQL driver may connect: only to the node's loopback forward.
//!
//! A guest on QEMU's user-mode network advertises its own address (`10.0.2.15`) in
//! `system.local` and `system.peers`; the driver opens its pools to what nodes advertise. That
//! address is a private range outside this machine, so the host must never send traffic there:
//! every advertised address goes through [`LoopbackForward`].
//!
//! Invariants:
//! - The forward is a loopback address, or the client is not built.
//! - One node per testbed: the first address a node advertises is bound to the forward; any
//!   other address is refused (the driver then has no connection to it), never passed through.

use scylla::errors::TranslationError;
use scylla::policies::address_translator::{AddressTranslator, UntranslatedPeer};
use std::net::SocketAddr;
use std::sync::Mutex;

/// The address translator of a single-node testbed reached through `forward`.
#[derive(Debug)]
pub struct LoopbackForward {
    forward: SocketAddr,
    /// The address the node advertised first, bound to `forward`.
    bound: Mutex<Option<SocketAddr>>,
}

impl LoopbackForward {
    /// A translator to `forward`, which must be a loopback address.
    pub fn new(forward: SocketAddr) -> Option<Self> {
        forward.ip().is_loopback().then(|| Self {
            forward,
            bound: Mutex::new(None),
        })
    }

    /// The address to connect to for a node advertising `advertised`.
    pub fn route(&self, advertised: SocketAddr) -> Result<SocketAddr, TranslationError> {
        if advertised == self.forward {
            return Ok(self.forward);
        }
        let mut b = self.bound.lock().unwrap_or_else(|p| p.into_inner());
        match *b {
            None => {
                *b = Some(advertised);
                Ok(self.forward)
            }
            Some(a) if a == advertised => Ok(self.forward),
            Some(_) => Err(TranslationError::NoRuleForAddress(advertised)),
        }
    }
}

#[async_trait::async_trait]
impl AddressTranslator for LoopbackForward {
    async fn translate_address(
        &self,
        peer: &UntranslatedPeer,
    ) -> Result<SocketAddr, TranslationError> {
        self.route(peer.untranslated_address())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn the_guest_address_goes_to_the_forward_and_nothing_else_passes() {
        let t = LoopbackForward::new(a("127.0.0.1:25601")).expect("loopback");
        assert_eq!(
            t.route(a("10.0.2.15:9042")).ok(),
            Some(a("127.0.0.1:25601"))
        );
        assert_eq!(
            t.route(a("10.0.2.15:9042")).ok(),
            Some(a("127.0.0.1:25601"))
        );
        assert_eq!(
            t.route(a("127.0.0.1:25601")).ok(),
            Some(a("127.0.0.1:25601"))
        );
        // A second node (a peer of another cluster, a changed address) is refused.
        assert!(t.route(a("10.0.2.16:9042")).is_err());
        assert!(t.route(a("192.0.2.1:9042")).is_err());
    }

    #[test]
    fn only_a_loopback_forward_is_accepted() {
        assert!(LoopbackForward::new(a("10.0.2.15:9042")).is_none());
        assert!(LoopbackForward::new(a("[::1]:9042")).is_some());
    }
}
