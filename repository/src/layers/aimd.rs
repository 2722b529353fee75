//! Adaptive send rate: when the object store throttles (503 SlowDown, 429, timeouts), the
//! agent halves its own rate (multiplicative decrease, down to a floor) and, once the store
//! has been quiet for a while, raises it step by step (additive increase) until it is back
//! at the budget the coordinator gave it — TCP's AIMD, applied to the repository's token
//! bucket. [`Aimd`] is the pure state machine (time is an argument); [`AdaptiveRate`] wires
//! it to the store: it observes every store attempt (a `StoreObserver` in the repository's
//! layer stack) and writes the rate the bandwidth layer paces to.
//!
//! It must never go above the coordinator's budget, never below the floor, and never turn
//! throttling into a failed task: the retry layer keeps retrying while the rate comes down.

use super::{Rate, StoreObserver};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Tuning of the adaptive rate.
#[derive(Clone, Debug)]
pub struct AimdConfig {
    /// Factor applied to the rate on throttling.
    pub decrease: f64,
    /// The rate never goes below this (bytes/s).
    pub floor: u64,
    /// Throttling answers closer together than this lower the rate once (many streams hit
    /// the same overload at once).
    pub hold: Duration,
    /// No throttling for this long before each additive step.
    pub quiet: Duration,
    /// An additive step is the ceiling (budget, or the rate before throttling began when
    /// the budget is unlimited) divided by this.
    pub steps: u64,
    /// The rate assumed before the first decrease when neither a budget nor a measured
    /// rate is known.
    pub unmeasured: u64,
}

impl Default for AimdConfig {
    fn default() -> Self {
        AimdConfig {
            decrease: 0.5,
            floor: 256 << 10,
            hold: Duration::from_secs(1),
            quiet: Duration::from_secs(2),
            steps: 10,
            unmeasured: 64 << 20,
        }
    }
}

/// What a call changed, for logging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Lowered to this rate (bytes/s).
    Lowered(u64),
    /// Raised by one step to this rate.
    Raised(u64),
    /// Back at the budget: no longer lowered.
    Restored,
}

#[derive(Clone, Copy, Debug)]
struct Lowered {
    rate: u64,
    /// Where probing stops when the budget is unlimited: the rate before throttling.
    ceiling: u64,
}

/// Throughput over ~1 s windows, smoothed; idle gaps are not counted as slow windows.
#[derive(Clone, Copy, Debug)]
struct Meter {
    start: Option<Instant>,
    bytes: u64,
    rate: u64,
}

impl Meter {
    const WINDOW: Duration = Duration::from_secs(1);
    const IDLE: Duration = Duration::from_secs(5);

    fn add(&mut self, now: Instant, bytes: u64) {
        let Some(start) = self.start else {
            self.start = Some(now);
            self.bytes = bytes;
            return;
        };
        let elapsed = now.saturating_duration_since(start);
        if elapsed < Self::WINDOW {
            self.bytes += bytes;
            return;
        }
        if elapsed <= Self::IDLE {
            let sample = (self.bytes as f64 / elapsed.as_secs_f64()) as u64;
            self.rate = if self.rate == 0 {
                sample
            } else {
                (self.rate + sample) / 2
            };
        } else {
            self.rate = 0; // idle for a while: what was measured before is stale
        }
        self.start = Some(now);
        self.bytes = bytes;
    }
}

/// The AIMD state machine: budget in, rate out (bytes/s, 0 = unlimited).
#[derive(Clone, Debug)]
pub struct Aimd {
    cfg: AimdConfig,
    budget: u64,
    lowered: Option<Lowered>,
    last_decrease: Option<Instant>,
    last_throttle: Option<Instant>,
    last_increase: Option<Instant>,
    meter: Meter,
    throttled: u64,
}

impl Aimd {
    pub fn new(cfg: AimdConfig) -> Self {
        Aimd {
            cfg,
            budget: 0,
            lowered: None,
            last_decrease: None,
            last_throttle: None,
            last_increase: None,
            meter: Meter {
                start: None,
                bytes: 0,
                rate: 0,
            },
            throttled: 0,
        }
    }

    /// The rate to pace to: the budget, or less while lowered (0 = unlimited).
    pub fn rate(&self) -> u64 {
        match (self.lowered, self.budget) {
            (None, b) => b,
            (Some(l), 0) => l.rate,
            (Some(l), b) => l.rate.min(b),
        }
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Whether the rate is below the budget because of throttling.
    pub fn is_lowered(&self) -> bool {
        self.lowered.is_some()
    }

    /// Throttling answers seen so far.
    pub fn throttled(&self) -> u64 {
        self.throttled
    }

    /// Measured throughput (bytes/s, 0 = not measured yet).
    pub fn measured(&self) -> u64 {
        self.meter.rate
    }

    /// The coordinator's budget changed (0 = unlimited). A lowered rate stays lowered but
    /// never above the new budget; at or above it, it is simply the budget again.
    pub fn set_budget(&mut self, budget: u64) -> Option<Change> {
        self.budget = budget;
        match self.lowered {
            Some(l) if budget > 0 && l.rate >= budget => {
                self.lowered = None;
                Some(Change::Restored)
            }
            _ => None,
        }
    }

    /// The store throttled a request at `now`.
    pub fn on_throttle(&mut self, now: Instant) -> Option<Change> {
        self.throttled += 1;
        self.last_throttle = Some(now);
        if let Some(t) = self.last_decrease {
            if now.saturating_duration_since(t) < self.cfg.hold {
                return None;
            }
        }
        let measured = self.meter.rate;
        let current = match self.rate() {
            0 if measured > 0 => measured,
            0 => self.cfg.unmeasured,
            r if measured > 0 => r.min(measured),
            r => r,
        };
        let ceiling = match self.lowered {
            Some(l) => l.ceiling,
            None => current.max(self.cfg.floor),
        };
        let rate = ((current as f64 * self.cfg.decrease) as u64).max(self.cfg.floor);
        self.lowered = Some(Lowered { rate, ceiling });
        self.last_decrease = Some(now);
        Some(Change::Lowered(self.rate()))
    }

    /// `bytes` went through at `now`: measures, and probes upwards once the store has been
    /// quiet long enough.
    pub fn on_transfer(&mut self, now: Instant, bytes: u64) -> Option<Change> {
        self.meter.add(now, bytes);
        self.tick(now)
    }

    /// One additive step if due (quiet since the last throttling and the last step).
    pub fn tick(&mut self, now: Instant) -> Option<Change> {
        let l = self.lowered?;
        let quiet = |t: Option<Instant>| {
            t.is_none_or(|t| now.saturating_duration_since(t) >= self.cfg.quiet)
        };
        if !quiet(self.last_throttle) || !quiet(self.last_increase) {
            return None;
        }
        let ceiling = if self.budget > 0 {
            self.budget
        } else {
            l.ceiling
        };
        let step = (ceiling / self.cfg.steps.max(1)).max(64 << 10);
        self.last_increase = Some(now);
        let rate = l.rate.saturating_add(step);
        if rate >= ceiling {
            self.lowered = None;
            Some(Change::Restored)
        } else {
            self.lowered = Some(Lowered { rate, ..l });
            Some(Change::Raised(rate))
        }
    }
}

/// What an agent saw of throttling since the last report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThrottleReport {
    /// Throttling answers from the store.
    pub throttled: u64,
    /// The lowest rate it went down to (bytes/s; 0 = never lowered).
    pub lowest_rate: u64,
}

/// The agent's adaptive rate: one per process, shared by every repository it opens.
#[derive(Debug)]
pub struct AdaptiveRate {
    aimd: Mutex<Aimd>,
    /// What the bandwidth layer paces to.
    rate: Rate,
    unreported: AtomicU64,
    /// Lowest rate since the last report (u64::MAX = not lowered).
    lowest: AtomicU64,
}

impl AdaptiveRate {
    pub fn new(cfg: AimdConfig) -> Self {
        AdaptiveRate {
            aimd: Mutex::new(Aimd::new(cfg)),
            rate: Rate::default(),
            unreported: AtomicU64::new(0),
            lowest: AtomicU64::new(u64::MAX),
        }
    }

    /// The rate for the repository's bandwidth layer.
    pub fn layer_rate(&self) -> Rate {
        self.rate.clone()
    }

    /// The coordinator's budget for this agent (bytes/s, 0 = unlimited).
    pub fn set_budget(&self, budget: u64) {
        let mut a = self.aimd.lock().expect("aimd lock");
        if a.budget() == budget {
            return;
        }
        let change = a.set_budget(budget);
        self.apply(&a, change, None);
    }

    /// The rate paced to now (bytes/s, 0 = unlimited).
    pub fn current(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    /// Throttling seen since the previous call (each answer is reported once, by whichever
    /// task finishes next).
    pub fn take_report(&self) -> ThrottleReport {
        let throttled = self.unreported.swap(0, Ordering::Relaxed);
        let lowest = self.lowest.swap(u64::MAX, Ordering::Relaxed);
        ThrottleReport {
            throttled,
            lowest_rate: if lowest == u64::MAX { 0 } else { lowest },
        }
    }

    fn apply(&self, a: &Aimd, change: Option<Change>, op: Option<(&str, String)>) {
        let rate = a.rate();
        self.rate.store(rate, Ordering::Relaxed);
        match change {
            Some(Change::Lowered(r)) => {
                self.lowest.fetch_min(r, Ordering::Relaxed);
                let (op, error) = op.unwrap_or_default();
                warn!(
                    op,
                    %error,
                    throttled = a.throttled(),
                    rate_bytes = r,
                    "the object store is throttling: rate lowered to {}",
                    fmt_rate(r)
                );
            }
            Some(Change::Raised(r)) => {
                tracing::debug!(
                    rate_bytes = r,
                    "no throttling lately: rate raised to {}",
                    fmt_rate(r)
                )
            }
            Some(Change::Restored) => info!(
                budget = %fmt_rate(a.budget()),
                throttled = a.throttled(),
                "no throttling lately: rate back at the budget"
            ),
            None => {}
        }
    }
}

impl StoreObserver for AdaptiveRate {
    fn transferred(&self, bytes: u64) {
        let mut a = self.aimd.lock().expect("aimd lock");
        let change = a.on_transfer(Instant::now(), bytes);
        if change.is_some() {
            self.apply(&a, change, None);
        }
    }

    fn throttled(&self, op: &'static str, error: &crate::object_store::Error) {
        self.unreported.fetch_add(1, Ordering::Relaxed);
        let mut a = self.aimd.lock().expect("aimd lock");
        let change = a.on_throttle(Instant::now());
        self.apply(&a, change, Some((op, error.to_string())));
    }
}

/// `12.5 MiB/s`, `unlimited` for 0.
pub fn fmt_rate(bytes_per_sec: u64) -> String {
    if bytes_per_sec == 0 {
        return "unlimited".into();
    }
    format!("{:.1} MiB/s", bytes_per_sec as f64 / (1u64 << 20) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn cfg() -> AimdConfig {
        AimdConfig {
            floor: MIB,
            ..Default::default()
        }
    }

    #[test]
    fn throttling_halves_the_rate_once_per_hold_and_never_below_the_floor() {
        let t0 = Instant::now();
        let mut a = Aimd::new(cfg());
        a.set_budget(64 * MIB);
        assert_eq!(a.rate(), 64 * MIB);
        assert_eq!(a.on_throttle(t0), Some(Change::Lowered(32 * MIB)));
        // A burst of answers to the same overload: one decrease.
        assert_eq!(a.on_throttle(t0 + Duration::from_millis(300)), None);
        assert_eq!(a.rate(), 32 * MIB);
        assert_eq!(
            a.on_throttle(t0 + Duration::from_millis(1100)),
            Some(Change::Lowered(16 * MIB))
        );
        for i in 2..20 {
            a.on_throttle(t0 + Duration::from_secs(i));
        }
        assert_eq!(a.rate(), MIB, "the floor holds");
        assert_eq!(a.throttled(), 21);
    }

    #[test]
    fn quiet_periods_raise_the_rate_step_by_step_up_to_the_budget() {
        let t0 = Instant::now();
        let mut a = Aimd::new(cfg());
        a.set_budget(100 * MIB);
        a.on_throttle(t0);
        assert_eq!(a.rate(), 50 * MIB);
        // Not quiet long enough yet.
        assert_eq!(a.tick(t0 + Duration::from_secs(1)), None);
        let mut t = t0 + Duration::from_secs(2);
        assert_eq!(a.tick(t), Some(Change::Raised(60 * MIB)));
        // One step per quiet period, not per call.
        assert_eq!(a.tick(t + Duration::from_millis(500)), None);
        let mut last = None;
        for _ in 0..10 {
            t += Duration::from_secs(2);
            last = a.tick(t).or(last);
            assert!(a.rate() <= 100 * MIB, "never above the budget");
        }
        assert_eq!(last, Some(Change::Restored));
        assert!(!a.is_lowered());
        assert_eq!(a.rate(), 100 * MIB);
        // Throttled again while probing: down again from where it was.
        a.on_throttle(t + Duration::from_secs(1));
        assert_eq!(a.rate(), 50 * MIB);
    }

    #[test]
    fn budget_changes_cap_a_lowered_rate() {
        let t0 = Instant::now();
        let mut a = Aimd::new(cfg());
        a.set_budget(40 * MIB);
        a.on_throttle(t0);
        assert_eq!(a.rate(), 20 * MIB);
        // More budget (other agents finished): the lowered rate stays until it probes up.
        a.set_budget(80 * MIB);
        assert_eq!(a.rate(), 20 * MIB);
        assert_eq!(
            a.tick(t0 + Duration::from_secs(2)),
            Some(Change::Raised(28 * MIB))
        );
        // Less budget than the lowered rate: the budget wins, and nothing is lowered.
        assert_eq!(a.set_budget(10 * MIB), Some(Change::Restored));
        assert_eq!(a.rate(), 10 * MIB);
        assert!(!a.is_lowered());
        // A throttled agent with a budget sends at most half of it.
        a.on_throttle(t0 + Duration::from_secs(3));
        assert_eq!(a.rate(), 5 * MIB);
        a.set_budget(0);
        assert_eq!(
            a.rate(),
            5 * MIB,
            "unlimited budget: the lowered rate holds"
        );
    }

    #[test]
    fn an_unlimited_budget_is_lowered_from_the_measured_rate_and_restored_to_unlimited() {
        let t0 = Instant::now();
        let mut a = Aimd::new(cfg());
        assert_eq!(a.rate(), 0);
        // 40 MiB/s measured over a few windows.
        for i in 0..=40 {
            a.on_transfer(t0 + Duration::from_millis(100 * i), 4 * MIB);
        }
        let m = a.measured();
        assert!(m > 30 * MIB && m < 50 * MIB, "{m}");
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(a.on_throttle(t1), Some(Change::Lowered(m / 2)));
        // Probing up by a tenth of the pre-throttling rate until back there: unlimited.
        let mut t = t1;
        for _ in 0..20 {
            t += Duration::from_secs(2);
            a.tick(t);
        }
        assert!(!a.is_lowered());
        assert_eq!(a.rate(), 0);
        // After an idle spell the old measurement is forgotten.
        a.on_transfer(t + Duration::from_secs(60), MIB);
        assert_eq!(a.measured(), 0);
        // Nothing measured and no budget: start from the assumed rate.
        let mut b = Aimd::new(cfg());
        assert_eq!(b.on_throttle(t0), Some(Change::Lowered(32 * MIB)));
    }

    #[test]
    fn the_adaptive_rate_feeds_the_bandwidth_layer_and_reports_once() {
        let r = AdaptiveRate::new(cfg());
        r.set_budget(8 * MIB);
        assert_eq!(r.layer_rate().load(Ordering::Relaxed), 8 * MIB);
        let e = crate::object_store::Error::Generic {
            store: "S3",
            source: "503 SlowDown".into(),
        };
        r.throttled("put", &e);
        r.throttled("put", &e);
        assert_eq!(r.current(), 4 * MIB);
        assert_eq!(
            r.take_report(),
            ThrottleReport {
                throttled: 2,
                lowest_rate: 4 * MIB
            }
        );
        assert_eq!(r.take_report(), ThrottleReport::default());
    }
}
