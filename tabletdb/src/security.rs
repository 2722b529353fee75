//! Mutual TLS and roles for tabletdb, with the same `snapfleet certs` CA and roles as the
//! coordinators ([`snapfleet_tls`]).
//!
//! Servers (master, nodes) serve with their node identity, require a client certificate
//! from the CA and check its role against the called method before any handler runs
//! ([`snapfleet_tls::allowed`] lists who may call what). Without certificates they
//! serve plaintext only on a loopback address unless the operator says `--insecure`.
//!
//! Clients: a process has one identity (its `--certs` directory), so the identity tabletdb
//! connections dial with is set once per process by [`use_client_tls`]; every client
//! connection made after that is TLS with it. (Passing it through every
//! call would thread one value through the client, the master's fan-out, the nodes'
//! heartbeats, the agents and the job drivers for no gain: there is never a second one.)

use crate::error::{Error, Result};
use snapfleet_tls::{AuthLayer, Tls};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use tonic::transport::{Endpoint, Server};
use tower::layer::util::{Identity, Stack};

/// This process's identity for tabletdb connections, and whether it is the node one.
static CLIENT_TLS: RwLock<Option<(Arc<Tls>, bool)>> = RwLock::new(None);

/// From now on, every tabletdb connection this process makes is mutual TLS with `tls`'s
/// identity: the node identity when `as_node` (masters, nodes, coordinator replicas), else
/// the client one (CLI, agents).
pub fn use_client_tls(tls: &Arc<Tls>, as_node: bool) {
    *CLIENT_TLS.write().unwrap_or_else(|e| e.into_inner()) = Some((tls.clone(), as_node));
}

/// An endpoint for `addr` (`host:port` or a URL) with this process's client identity
/// (`snapfleet_tls::endpoint`, as the coordinators' clients build theirs).
pub(crate) fn endpoint(addr: &str) -> Result<Endpoint> {
    let tls = CLIENT_TLS.read().unwrap_or_else(|e| e.into_inner()).clone();
    if tls.is_none() && addr.starts_with("https://") {
        return Err(Error::InvalidArgument(format!(
            "{addr} asks for TLS but no certificates were given: pass --certs DIR"
        )));
    }
    let (tls, as_node) = match &tls {
        Some((t, n)) => (Some(&**t), *n),
        None => (None, false),
    };
    snapfleet_tls::endpoint(addr, tls, as_node)
        .map_err(|e| Error::InvalidArgument(format!("bad address {addr:?}: {e}")))
}

/// The server builder both servers start from.
pub(crate) type Builder = Server<Stack<AuthLayer, Identity>>;

/// A server builder for `what` on `listen`: TLS with the node identity and the role check
/// when `tls`; without it plaintext, which is refused off loopback unless `insecure`.
pub(crate) fn server(
    what: &str,
    listen: SocketAddr,
    tls: Option<&Tls>,
    insecure: bool,
) -> Result<Builder> {
    let mut b = Server::builder();
    match tls {
        Some(t) => {
            let cfg = t
                .server_config()
                .map_err(|e| Error::InvalidArgument(format!("{what}: {e}")))?;
            b = b
                .tls_config(cfg)
                .map_err(|e| Error::InvalidArgument(format!("{what}: TLS: {e}")))?;
        }
        None if !insecure && !listen.ip().is_loopback() => {
            return Err(Error::InvalidArgument(format!(
                "refusing to serve the {what} in plaintext without roles on {listen}: pass \
                 --certs DIR (mutual TLS, `snapfleet certs init`), listen on loopback, or pass \
                 --insecure if the network is private"
            )))
        }
        None => {}
    }
    Ok(b.layer(AuthLayer {
        enforce: tls.is_some(),
    }))
}
