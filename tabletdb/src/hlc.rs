//! Hybrid logical clock. A [`HybridTime`] packs wall-clock microseconds and a 12-bit logical
//! counter into one `u64`, so it orders like a number and survives JSON. Every write takes
//! its time from the node's [`Hlc`]; every message carries the sender's time so causally
//! later events always get larger times across nodes.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const LOGICAL_BITS: u32 = 12;

/// How far ahead of our wall clock a time from the network may be.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_millis(500);

/// A point in hybrid time: `(physical micros << 12) | logical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HybridTime(pub u64);

impl HybridTime {
    /// The smallest time; also means "unset" in requests.
    pub const MIN: HybridTime = HybridTime(0);
    /// The largest time ("latest").
    pub const MAX: HybridTime = HybridTime(u64::MAX);

    /// The hybrid time of a wall-clock instant (logical part 0); saturates past year 2112.
    pub fn from_micros(micros: u64) -> Self {
        HybridTime(micros.min(u64::MAX >> LOGICAL_BITS) << LOGICAL_BITS)
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

    /// This machine's wall clock as a hybrid time (logical part 0), for times an operator
    /// means ("5m ago", a window's start), not for ordering writes: that is [`Hlc`]'s job.
    pub fn wall_now() -> Self {
        HybridTime::from_micros(wall_micros())
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
            .filter(|&m| m <= u64::MAX >> LOGICAL_BITS)
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
            let next = phys.max(last.saturating_add(1));
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

    /// Observes a time from a trusted source (our own metadata, a restore's source
    /// cluster): later `now()` calls return larger times.
    pub fn update(&self, seen: HybridTime) {
        self.last.fetch_max(seen.0, Ordering::AcqRel);
    }

    /// Observes a time that came over the network. A time further ahead of this machine's
    /// wall clock than [`MAX_CLOCK_SKEW`] is refused instead of dragging every clock in the
    /// cluster into the future (which would also move the history cut-off and drop history).
    pub fn update_remote(&self, seen: HybridTime) -> Result<(), String> {
        let limit = HybridTime::from_micros(wall_micros()).plus(MAX_CLOCK_SKEW);
        if seen > limit && seen > self.peek() {
            return Err(format!(
                "hybrid time {seen} ({}) is more than {} ms ahead of this clock ({}); check the \
                 sender's clock (NTP) or the time you asked for",
                seen.to_rfc3339(),
                MAX_CLOCK_SKEW.as_millis(),
                self.peek().to_rfc3339()
            ));
        }
        self.update(seen);
        Ok(())
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
        // Remote times far ahead are refused; u64::MAX never overflows now().
        let c = Hlc::new();
        assert!(c.update_remote(HybridTime(u64::MAX)).is_err());
        assert!(c.update_remote(c.peek()).is_ok());
        c.update(HybridTime(u64::MAX));
        assert_eq!(c.now(), HybridTime(u64::MAX));
        assert!(HybridTime::parse("2200-01-01T00:00:00Z").is_none());
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
