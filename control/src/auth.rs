//! Who may change the cluster.
//!
//! Rules, in order:
//! 1. A token is configured: the call must carry `authorization: Bearer <token>`
//!    (compared in constant time), from any peer; otherwise UNAUTHENTICATED.
//! 2. No token is configured: operator mutations (SetPolicy, Drain, Undrain,
//!    SetContainer) are accepted only from a loopback peer; otherwise
//!    PERMISSION_DENIED. Node calls (Register, ReportLoad, WatchSteering) are open,
//!    so a cluster without a token still forms; they cannot change the policy.
//!
//! Read-only operator calls are always open.

use std::net::SocketAddr;

use tonic::metadata::MetadataMap;
use tonic::Status;

/// Which rule of the module docs applies to a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallClass {
    /// An operator call that changes the cluster.
    OperatorMutation,
    /// A node-facing call.
    Node,
}

/// The token a control plane requires, if any.
#[derive(Default)]
pub struct Authorizer {
    /// Read at every call, replaced by a reload of `larder control --config` ([`Authorizer::set_token`]).
    token: std::sync::RwLock<Option<String>>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("token", &self.token().as_ref().map(|_| "<set>"))
            .finish()
    }
}

fn constant_time_equal(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Authorizer {
    pub fn new(token: Option<String>) -> Authorizer {
        Authorizer {
            token: std::sync::RwLock::new(token),
        }
    }

    fn token(&self) -> std::sync::RwLockReadGuard<'_, Option<String>> {
        // Replaced whole: a panic elsewhere cannot leave it half-written.
        self.token
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The token the next call is checked against (`None`: changes only from loopback).
    pub fn set_token(&self, token: Option<String>) {
        *self
            .token
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = token;
    }

    /// Applies the rules to one call: its class, its peer and its `authorization` header.
    pub fn check(
        &self,
        class: CallClass,
        peer: Option<SocketAddr>,
        authorization: Option<&str>,
    ) -> Result<(), Status> {
        match self.token().as_ref() {
            Some(token) => {
                let presented = authorization
                    .and_then(|value| value.strip_prefix("Bearer "))
                    .ok_or_else(|| {
                        Status::unauthenticated("missing `authorization: Bearer <token>`")
                    })?;
                if constant_time_equal(presented.trim().as_bytes(), token.as_bytes()) {
                    Ok(())
                } else {
                    Err(Status::unauthenticated("wrong bearer token"))
                }
            }
            None if class == CallClass::Node => Ok(()),
            None => match peer {
                Some(peer) if peer.ip().is_loopback() => Ok(()),
                Some(peer) => Err(Status::permission_denied(format!(
                    "no token is configured: changes are accepted only from loopback, not {peer}"
                ))),
                None => Err(Status::permission_denied(
                    "no token is configured and the peer address is unknown",
                )),
            },
        }
    }

    /// [`Authorizer::check`] for a tonic request.
    pub fn check_request<T>(
        &self,
        class: CallClass,
        request: &tonic::Request<T>,
    ) -> Result<(), Status> {
        self.check(
            class,
            request.remote_addr(),
            authorization(request.metadata()),
        )
    }
}

fn authorization(metadata: &MetadataMap) -> Option<&str> {
    metadata
        .get("authorization")
        .and_then(|value| value.to_str().ok())
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    fn peer(address: &str) -> Option<SocketAddr> {
        Some(address.parse().expect("socket address"))
    }

    #[test]
    fn without_token_mutations_only_from_loopback() {
        let open = Authorizer::new(None);
        let mutation = CallClass::OperatorMutation;
        assert!(open.check(mutation, peer("127.0.0.1:5000"), None).is_ok());
        assert!(open.check(mutation, peer("[::1]:5000"), None).is_ok());
        let remote = open
            .check(mutation, peer("10.1.2.3:5000"), None)
            .unwrap_err();
        assert_eq!(remote.code(), Code::PermissionDenied);
        assert_eq!(
            open.check(mutation, None, None).unwrap_err().code(),
            Code::PermissionDenied
        );
        assert!(open
            .check(CallClass::Node, peer("10.1.2.3:5000"), None)
            .is_ok());
    }

    #[test]
    fn with_token_every_peer_needs_it() {
        let guarded = Authorizer::new(Some("s3cret".into()));
        for class in [CallClass::OperatorMutation, CallClass::Node] {
            for address in ["127.0.0.1:1", "10.1.2.3:1"] {
                let missing = guarded.check(class, peer(address), None).unwrap_err();
                assert_eq!(missing.code(), Code::Unauthenticated);
                let wrong = guarded
                    .check(class, peer(address), Some("Bearer nope"))
                    .unwrap_err();
                assert_eq!(wrong.code(), Code::Unauthenticated);
                let scheme = guarded
                    .check(class, peer(address), Some("Basic s3cret"))
                    .unwrap_err();
                assert_eq!(scheme.code(), Code::Unauthenticated);
                assert!(guarded
                    .check(class, peer(address), Some("Bearer s3cret"))
                    .is_ok());
            }
        }
    }
}
