//! Checks that make restores trustworthy: `check_consistency` (the counter workload's
//! invariant: exactly the keys written at or before T, no gap, no extra) and
//! `table_checksum` (an order-independent digest of a table's rows, to compare a source at T
//! with its restored copy).

use crate::client::Client;
use crate::error::{Error, Result};
use crate::hlc::HybridTime;
use crate::workload::{read_counter_log, COUNTER_TABLE};
use pb::value::Kind;
use prost::Message;
use snapfleet_proto::tabletdb as pb;
use std::path::Path;

/// Outcome of a consistency check.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ConsistencyReport {
    /// The cut: keys written at or before this time must be present, later ones absent.
    pub at: u64,
    /// The time the database was read at.
    pub read_at: u64,
    pub keys_seen: u64,
    /// Keys the cut requires (from the counter log, or the largest key seen without one).
    pub keys_expected: u64,
    pub missing: u64,
    pub extra: u64,
    pub duplicate: u64,
    /// Keys whose stored version time differs from the logged one.
    pub version_mismatch: u64,
    pub first_problems: Vec<String>,
    pub ok: bool,
}

/// Verifies the counter table of `db` against the cut `at`, reading at `read_at` (default
/// `at`). With the writer's log, the expected keys are exactly those logged at or before
/// `at`; without it, keys 1..=max seen must all be there and none may be newer than `at`.
pub async fn check_consistency(
    client: &Client,
    db: &str,
    at: HybridTime,
    read_at: Option<HybridTime>,
    log: Option<&Path>,
) -> Result<ConsistencyReport> {
    let read_at = read_at.unwrap_or(at);
    let mut seen: Vec<(u64, u64)> = Vec::new();
    let mut report = ConsistencyReport {
        at: at.0,
        read_at: read_at.0,
        ..Default::default()
    };
    client
        .scan_table(db, COUNTER_TABLE, Some(read_at), |_, rows| {
            for rv in rows {
                let k = match rv
                    .row
                    .as_ref()
                    .and_then(|r| r.values.first())
                    .and_then(|v| v.kind.as_ref())
                {
                    Some(Kind::Int(k)) if *k > 0 => *k as u64,
                    _ => {
                        return Err(Error::Corrupt {
                            what: format!("table {COUNTER_TABLE}"),
                            detail: "a row without a positive integer key".into(),
                        })
                    }
                };
                seen.push((k, rv.version_ht));
            }
            Ok(())
        })
        .await?;
    seen.sort_unstable();
    report.keys_seen = seen.len() as u64;
    let note = |report: &mut ConsistencyReport, msg: String| {
        if report.first_problems.len() < 10 {
            report.first_problems.push(msg);
        }
    };
    for w in seen.windows(2) {
        if w[0].0 == w[1].0 {
            report.duplicate += 1;
        }
    }
    for &(k, ht) in &seen {
        if ht > at.0 {
            report.extra += 1;
            note(
                &mut report,
                format!("key {k} has version {ht}, newer than the cut {at}"),
            );
        }
    }
    match log {
        Some(path) => {
            let logged = read_counter_log(path)?;
            let expected: Vec<(u64, HybridTime)> =
                logged.into_iter().filter(|(_, ht)| *ht <= at).collect();
            report.keys_expected = expected.len() as u64;
            // Merge two sorted lists.
            let (mut i, mut j) = (0, 0);
            while i < expected.len() || j < seen.len() {
                match (expected.get(i), seen.get(j)) {
                    (Some(&(ek, eht)), Some(&(sk, sht))) if ek == sk => {
                        if eht.0 != sht {
                            report.version_mismatch += 1;
                            note(
                                &mut report,
                                format!("key {ek}: logged at {eht}, stored at {sht}"),
                            );
                        }
                        i += 1;
                        j += 1;
                    }
                    (Some(&(ek, _)), Some(&(sk, _))) if ek < sk => {
                        report.missing += 1;
                        note(
                            &mut report,
                            format!("key {ek} (written before the cut) is missing"),
                        );
                        i += 1;
                    }
                    (Some(_), Some(&(sk, sht))) | (None, Some(&(sk, sht))) => {
                        if sht <= at.0 {
                            report.extra += 1;
                            note(
                                &mut report,
                                format!("key {sk} is present but was not logged before the cut"),
                            );
                        }
                        j += 1;
                    }
                    (Some(&(ek, _)), None) => {
                        report.missing += 1;
                        note(
                            &mut report,
                            format!("key {ek} (written before the cut) is missing"),
                        );
                        i += 1;
                    }
                    (None, None) => break,
                }
            }
        }
        None => {
            let max = seen.last().map(|s| s.0).unwrap_or(0);
            report.keys_expected = max;
            let distinct = seen.len() as u64 - report.duplicate;
            if distinct < max {
                report.missing = max - distinct;
                let mut expect = 1;
                for &(k, _) in &seen {
                    while expect < k {
                        note(&mut report, format!("key {expect} is missing (gap)"));
                        expect += 1;
                    }
                    expect = k + 1;
                }
            }
        }
    }
    report.ok = report.missing == 0
        && report.extra == 0
        && report.duplicate == 0
        && report.version_mismatch == 0;
    Ok(report)
}

/// An order-independent digest of a table's rows.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TableChecksum {
    pub table: String,
    pub rows: u64,
    pub bytes: u64,
    /// Hex of (wrapping sum, xor) of each row's BLAKE3 prefix.
    pub digest: String,
}

/// Digest of `table` in `db` as of `at` (latest when `None`). Rows only, not versions.
pub async fn table_checksum(
    client: &Client,
    db: &str,
    table: &str,
    at: Option<HybridTime>,
) -> Result<TableChecksum> {
    let (mut rows, mut bytes, mut sum, mut xor) = (0u64, 0u64, 0u64, 0u64);
    client
        .scan_table(db, table, at, |_, batch| {
            for rv in batch {
                let enc = rv.row.unwrap_or_default().encode_to_vec();
                let h = blake3::hash(&enc);
                let x = u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"));
                sum = sum.wrapping_add(x);
                xor ^= x;
                rows += 1;
                bytes += enc.len() as u64;
            }
            Ok(())
        })
        .await?;
    Ok(TableChecksum {
        table: table.to_string(),
        rows,
        bytes,
        digest: format!("{sum:016x}{xor:016x}"),
    })
}
