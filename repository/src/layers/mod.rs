//! Behaviour added to an object store by wrapping it, the object_store way (`throttle.rs`,
//! `limit.rs`): retries, bandwidth limits, an observer of each attempt (for adaptive rates),
//! and fault injection for tests. Each layer is an
//! `ObjectStore` around an `Arc<dyn ObjectStore>`, so they stack in any order.
//!
//! Layers must never change what a successful call returns; they only delay, repeat or fail.

pub mod aimd;
pub mod durable;
pub mod faults;
pub mod observe;
pub mod ratelimit;
pub mod retry;

pub use aimd::{fmt_rate, AdaptiveRate, AimdConfig};
pub use durable::DurableLocal;
pub use faults::{FaultConfig, FaultStore};
pub use observe::{ObserveStore, StoreObserver};
pub use ratelimit::{Rate, RateLimitStore};
pub use retry::{RetryConfig, RetryStore};
