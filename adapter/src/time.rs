//! [`HybridTime`]: a point in a database's hybrid logical clock, as the adapter boundary
//! carries it: `physical microseconds << 12 | logical`, ordered like a number, serialised as
//! one (so it survives JSON in job notes and manifests unchanged).
//!
//! Kept here, dependency-free, rather than in `snapfleet_api`, so the boundary could be built
//! without touching the wire contract; moving it to `api` later is a `pub use`. This module
//! must never read a database's clock: `Database::now` does that. `wall_now` is for times an
//! operator means ("5m ago"), never for ordering writes.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const LOGICAL_BITS: u32 = 12;

/// A hybrid time: `(physical micros << 12) | logical`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct HybridTime(pub u64);

impl HybridTime {
    /// The smallest time; also "unset".
    pub const MIN: HybridTime = HybridTime(0);

    /// The hybrid time of a wall-clock instant (logical part 0); saturates.
    pub fn from_micros(micros: u64) -> Self {
        HybridTime(micros.min(u64::MAX >> LOGICAL_BITS) << LOGICAL_BITS)
    }

    /// Wall-clock microseconds since the Unix epoch.
    pub fn physical_micros(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }

    /// The wall-clock part as RFC 3339 (microseconds, UTC), for messages; the raw number if
    /// it is out of chrono's range.
    pub fn to_rfc3339(self) -> String {
        match chrono::DateTime::from_timestamp_micros(self.physical_micros() as i64) {
            Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            None => self.0.to_string(),
        }
    }

    /// This time moved back by a wall-clock duration (saturating at zero).
    pub fn minus(self, d: Duration) -> Self {
        HybridTime::from_micros(self.physical_micros().saturating_sub(d.as_micros() as u64))
    }

    /// This time moved forward by a wall-clock duration.
    pub fn plus(self, d: Duration) -> Self {
        HybridTime::from_micros(self.physical_micros().saturating_add(d.as_micros() as u64))
    }

    /// This machine's wall clock (logical part 0).
    pub fn wall_now() -> Self {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        HybridTime::from_micros(micros)
    }
}

impl fmt::Display for HybridTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_micros_and_moves_by_wall_time() {
        let t = HybridTime::from_micros(1_000_000);
        assert_eq!(t.0, 1_000_000 << 12);
        assert_eq!(t.physical_micros(), 1_000_000);
        assert_eq!(t.minus(Duration::from_secs(1)).physical_micros(), 0);
        assert_eq!(t.minus(Duration::from_secs(5)), HybridTime::MIN);
        assert_eq!(
            t.plus(Duration::from_micros(5)).physical_micros(),
            1_000_005
        );
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            (1_000_000u64 << 12).to_string()
        );
    }
}
