//! Shared CLI helpers: parsing durations, times and sizes the way DESIGN.md's CLI
//! conventions say, human-readable output, and progress bars that stay quiet off a terminal.

use anyhow::{anyhow, Result};
use indicatif::{ProgressBar, ProgressStyle};
use snapfleet_tabletdb::HybridTime;
use std::time::Duration;

/// `90s`, `5m`, `1h`, `7d`, `250ms`.
pub fn parse_duration(s: &str) -> Result<Duration> {
    humantime::parse_duration(s.trim())
        .map_err(|e| anyhow!("{s:?} is not a duration ({e}); use e.g. 90s, 5m, 1h, 7d"))
}

/// A hybrid time, an RFC 3339 timestamp, `now`, or `<duration> ago`.
pub fn parse_time(s: &str, now: HybridTime) -> Result<HybridTime> {
    let t = s.trim();
    if t == "now" {
        return Ok(now);
    }
    if let Some(d) = t.strip_suffix("ago") {
        return Ok(now.minus(parse_duration(d)?));
    }
    HybridTime::parse(t).ok_or_else(|| {
        anyhow!("{s:?} is not a time; use a hybrid time (a number), RFC 3339 (2026-11-28T14:01:59Z), or '5m ago'")
    })
}

/// `512MiB`, `2GB`, `1.5GiB`, `4096` (bytes).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| anyhow!("{s:?} is not a size; use e.g. 512MiB, 2GB, 4096"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        other => {
            return Err(anyhow!(
                "{s:?}: unknown size unit {other:?}; use B, KiB, MiB, GiB, TiB, kB, MB, GB, TB"
            ))
        }
    };
    Ok((n * mult as f64) as u64)
}

/// `200MiB/s` (bytes per second); `0` = unlimited.
pub fn parse_rate(s: &str) -> Result<u64> {
    parse_size(s.trim().trim_end_matches("/s"))
}

/// `1.5 GiB`, `12.0 MiB`, `512 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `1.23 s`, `2m 03s`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.2} s")
    } else {
        format!("{}m {:02}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

/// A progress bar on stderr (drawn only on a terminal).
pub fn bar(len: Option<u64>, unit: &str) -> ProgressBar {
    let pb = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    let tmpl = if len.is_some() {
        format!(
            "{{spinner}} {{msg}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{per_sec}}, ETA {{eta}})"
        )
    } else {
        format!("{{spinner}} {{msg}} {{pos}} {unit} ({{per_sec}}) {{elapsed}}")
    };
    pb.set_style(
        ProgressStyle::with_template(&tmpl)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_sizes() {
        let now = HybridTime::from_micros(10_000_000_000);
        assert_eq!(parse_time("now", now).unwrap(), now);
        assert_eq!(
            parse_time("5s ago", now).unwrap(),
            HybridTime::from_micros(10_000_000_000 - 5_000_000)
        );
        assert_eq!(parse_time("42", now).unwrap(), HybridTime(42));
        assert!(parse_time("soon", now).is_err());
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("2GB").unwrap(), 2_000_000_000);
        assert_eq!(parse_rate("200MiB/s").unwrap(), 200 << 20);
        assert_eq!(parse_rate("0").unwrap(), 0);
        assert!(parse_size("12 parsecs").is_err());
    }
}
