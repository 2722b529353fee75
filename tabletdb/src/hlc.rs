//! Hybrid logical clock. A [`HybridTime`] packs wall-clock microseconds and a 12-bit logical
//! counter into one `u64`, so it orders like a number and survives JSON. Every write takes
//! its time from the node's [`Hlc`]; every message carries the sender's time so causally
//! later events always get larger times across nodes.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const LOGICAL_BITS: u32 = 12;

/// A point in hybrid time: `(physical micros << 12) | logical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HybridTime(pub u64);

impl HybridTime {
    /// The smallest time; also means "unset" in requests.
    pub const MIN: HybridTime = HybridTime(0);
    /// The largest time ("latest").
    pub const MAX: HybridTime = HybridTime(u64::MAX);

    /// The hybrid time of a wall-clock instant (logical part 0).
    pub fn from_micros(micros: u64) -> Self {
        HybridTime(micros << LOGICAL_BITS)
    }

    /// Wall-clock microseconds since the Unix epoch.
    pub fn physical_micros(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }

    /// The logical counter.
    pub fn logical(self) -> u64 {
        self.0 & ((1 << LOGICAL_BITS) - 1)
    }

    /// This time moved back by a wall-clock duration (saturating at zero).
    pub fn minus(self, d: Duration) -> Self {
        HybridTime::from_micros(self.physical_micros().saturating_sub(d.as_micros() as u64))
    }

    /// This time moved forward by a wall-clock duration.
    pub fn plus(self, d: Duration) -> Self {
        HybridTime::from_micros(self.physical_micros() + d.as_micros() as u64)
    }

    /// RFC 3339 rendering of the physical part (UTC, microseconds).
    pub fn to_rfc3339(self) -> String {
        let micros = self.physical_micros() as i64;
        match chrono::DateTime::from_timestamp_micros(micros) {
            Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            None => format!("{}", self.0),
        }
    }

    /// Parses a hybrid time number or an RFC 3339 timestamp.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        if let Ok(n) = s.parse::<u64>() {
            return Some(HybridTime(n));
        }
        chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .and_then(|t| u64::try_from(t.timestamp_micros()).ok())
            .map(HybridTime::from_micros)
    }
}

impl fmt::Display for HybridTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

fn wall_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A node's hybrid logical clock; lock-free, shared by all its tablets.
#[derive(Debug, Default)]
pub struct Hlc {
    last: AtomicU64,
}

impl Hlc {
    pub fn new() -> Self {
        Self::default()
    }

    /// A new, strictly increasing hybrid time.
    pub fn now(&self) -> HybridTime {
        let phys = HybridTime::from_micros(wall_micros()).0;
        let mut last = self.last.load(Ordering::Acquire);
        loop {
            let next = phys.max(last + 1);
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return HybridTime(next),
                Err(actual) => last = actual,
            }
        }
    }

    /// The clock's current reading without advancing it.
    pub fn peek(&self) -> HybridTime {
        HybridTime(
            self.last
                .load(Ordering::Acquire)
                .max(HybridTime::from_micros(wall_micros()).0),
        )
    }

    /// Observes a time from another process: later `now()` calls return larger times.
    pub fn update(&self, seen: HybridTime) {
        self.last.fetch_max(seen.0, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_strictly_increasing_and_update_moves_it() {
        let c = Hlc::new();
        let a = c.now();
        let b = c.now();
        assert!(b > a);
        let future = HybridTime(b.0 + (10_000_000 << 12));
        c.update(future);
        assert!(c.now() > future);
    }

    #[test]
    fn parse_number_and_rfc3339() {
        assert_eq!(HybridTime::parse("42"), Some(HybridTime(42)));
        let t = HybridTime::parse("2026-01-02T03:04:05Z").unwrap();
        assert_eq!(t.logical(), 0);
        assert_eq!(t.to_rfc3339(), "2026-01-02T03:04:05.000000Z");
        assert!(HybridTime::parse("yesterday-ish").is_none());
    }
}
