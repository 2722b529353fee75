//! Talking to a coordinator group from outside (CLI, agents): a `Leader` holds the replica
//! addresses, follows "not leader; leader is N at ADDR" redirects, moves on to the next
//! replica when one is down, and retries until a deadline. Only the two failures that say
//! "this replica cannot take the request" are retried (redirect, unavailable); any other
//! status goes back to the caller unchanged.

use crate::tls::Tls;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Whether a job state as the coordinator reports it (`JobInfo.state`) is final.
pub fn job_state_is_terminal(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "cancelled")
}

/// Replica addresses plus the last known leader.
pub struct Leader {
    addrs: Vec<String>,
    hint: Mutex<Option<String>>,
    channels: Mutex<HashMap<String, Channel>>,
    tls: Option<Arc<Tls>>,
    /// How long `call` keeps trying through elections and dead replicas.
    pub patience: Duration,
}

/// A status's message with the chain of errors under it (tonic puts the TLS or connect
/// failure there and says only "transport error" in the message).
fn detail(s: &Status) -> String {
    let mut out = s.message().to_string();
    let mut e: Option<&dyn std::error::Error> = std::error::Error::source(s);
    while let Some(x) = e {
        let t = x.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        e = x.source();
    }
    out
}

/// Whether a failure is the TLS handshake's (wrong CA, wrong role, TLS against plaintext):
/// retrying elsewhere cannot help.
fn is_tls_failure(detail: &str) -> bool {
    let d = detail.to_ascii_lowercase();
    [
        "certificate",
        "handshake",
        "unknownissuer",
        "invalidcontenttype",
        "corrupt message",
        "alert",
    ]
    .iter()
    .any(|k| d.contains(k))
}

/// The leader address in a "not leader; leader is N at ADDR" message.
fn redirect(status: &Status) -> Option<String> {
    if status.code() != Code::FailedPrecondition {
        return None;
    }
    let rest = status.message().strip_prefix("not leader; leader is ")?;
    Some(rest.split_once(" at ")?.1.trim().to_string())
}

impl Leader {
    /// `addrs`: one or more replicas, comma-separated or as separate items.
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(addrs: I) -> Self {
        let addrs: Vec<String> = addrs
            .into_iter()
            .flat_map(|a| {
                a.as_ref()
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .collect::<Vec<_>>()
            })
            .filter(|s| !s.is_empty())
            .collect();
        Self {
            addrs,
            hint: Mutex::new(None),
            channels: Mutex::new(HashMap::new()),
            tls: None,
            patience: Duration::from_secs(30),
        }
    }

    /// Dial over mutual TLS with the client identity of `tls` (None: plaintext).
    pub fn with_tls(mut self, tls: Option<Arc<Tls>>) -> Self {
        self.tls = tls;
        self
    }

    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    fn channel(&self, addr: &str) -> Result<Channel, Status> {
        let mut map = self.channels.lock().expect("poisoned");
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let ch = crate::tls::endpoint(addr, self.tls.as_deref(), false)
            .map_err(|e| Status::invalid_argument(format!("coordinator address {addr:?}: {e}")))?
            .connect_timeout(Duration::from_secs(2))
            // A request (until its response headers: a watch stream is not cut) may take a
            // minute at most; a dead connection is noticed by HTTP/2 pings in ~30 s.
            .timeout(Duration::from_secs(60))
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .tcp_nodelay(true)
            .connect_lazy();
        map.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    /// Calls `f` on the leader's channel, following redirects and skipping dead replicas
    /// until `patience` runs out.
    pub async fn call<T, F, Fut>(&self, mut f: F) -> Result<T, Status>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>> + Send + 'static,
        T: Send + 'static,
    {
        if self.addrs.is_empty() {
            return Err(Status::invalid_argument(
                "no coordinator address: pass --coordinator HOST:PORT or set SNAPFLEET_COORDINATOR",
            ));
        }
        let deadline = tokio::time::Instant::now() + self.patience;
        let mut next = 0usize;
        loop {
            let hint = self.hint.lock().expect("poisoned").clone();
            let addr = match hint {
                Some(h) => h,
                None => {
                    let a = self.addrs[next % self.addrs.len()].clone();
                    next += 1;
                    a
                }
            };
            let result = match self.channel(&addr) {
                Ok(ch) => f(ch).await,
                Err(e) => return Err(e),
            };
            match result {
                Ok(v) => {
                    *self.hint.lock().expect("poisoned") = Some(addr);
                    return Ok(v);
                }
                Err(s) => {
                    if let Some(leader) = redirect(&s) {
                        *self.hint.lock().expect("poisoned") = Some(leader);
                    } else if s.code() == Code::Unavailable {
                        let d = detail(&s);
                        if is_tls_failure(&d) {
                            return Err(Status::unauthenticated(format!(
                                "TLS with the coordinator at {addr} failed ({d}): check --certs \
                                 (the coordinators' CA must have signed your certificate, and \
                                 --certs is needed exactly when the coordinators run with it)"
                            )));
                        }
                        *self.hint.lock().expect("poisoned") = None;
                        self.channels.lock().expect("poisoned").remove(&addr);
                    } else {
                        return Err(s);
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(Status::unavailable(format!(
                            "no coordinator leader reachable at {} within {:?} (last answer: {}); \
                             check that a majority of replicas is running, and that --certs \
                             matches how they run (TLS or not)",
                            self.addrs.join(","),
                            self.patience,
                            detail(&s)
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_redirects() {
        let s = Status::failed_precondition("not leader; leader is 2 at 127.0.0.1:7001");
        assert_eq!(redirect(&s).as_deref(), Some("127.0.0.1:7001"));
        assert_eq!(redirect(&Status::failed_precondition("lease lost")), None);
        assert_eq!(
            redirect(&Status::unavailable("not leader; leader is 2 at x")),
            None
        );
    }

    #[test]
    fn splits_address_lists() {
        let l = Leader::new(["a:1,b:2", " c:3 "]);
        assert_eq!(l.addrs(), &["a:1", "b:2", "c:3"]);
    }
}
