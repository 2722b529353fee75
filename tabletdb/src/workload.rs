//! Workload generators behind `snapfleet db load`: a bulk loader (many rows, set size and
//! rate, parallel batches) and the consistency workload (one writer appending counter keys
//! 1, 2, 3, … and logging each key's hybrid time, for `check-consistency`).

use crate::client::Client;
use crate::error::{Error, Result};
use crate::hlc::HybridTime;
use pb::value::Kind;
use rand::{Rng, SeedableRng};
use snapfleet_proto::tabletdb as pb;
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn col(name: &str, t: pb::DataType, nullable: bool) -> pb::Column {
    pb::Column {
        name: name.into(),
        data_type: t as i32,
        nullable,
    }
}

fn v(kind: Kind) -> pb::Value {
    pb::Value { kind: Some(kind) }
}

/// Schema of the bulk-load tables.
pub fn load_schema() -> pb::TableSchema {
    use pb::DataType as T;
    pb::TableSchema {
        columns: vec![
            col("id", T::Int8, false),
            col("grp", T::Int4, true),
            col("amount", T::Float8, true),
            col("name", T::Text, true),
            col("created", T::Timestamptz, true),
            col("payload", T::Bytea, true),
        ],
        primary_key: vec![0],
    }
}

/// Options of the bulk loader.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub db: String,
    pub tables: u32,
    pub table_prefix: String,
    pub tablets: u32,
    /// Total rows to write (over all tables); `None` = until `duration`.
    pub rows: Option<u64>,
    pub duration: Option<Duration>,
    /// Rows per second over all writers; `None` = as fast as possible.
    pub rate: Option<f64>,
    /// Approximate bytes per row (payload size).
    pub row_size: usize,
    pub batch: usize,
    pub concurrency: usize,
    /// Row ids start after this (to add rows to an existing load instead of overwriting).
    pub id_offset: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            db: "demo".into(),
            tables: 2,
            table_prefix: "load".into(),
            tablets: 0,
            rows: Some(10_000),
            duration: None,
            rate: None,
            row_size: 256,
            batch: 200,
            concurrency: 8,
            id_offset: 0,
        }
    }
}

/// Result of a load.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LoadReport {
    pub rows: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub rows_per_sec: f64,
    pub mb_per_sec: f64,
    pub last_ht: u64,
}

/// Live counters a caller can poll for a progress bar.
#[derive(Debug, Default)]
pub struct Progress {
    pub rows: AtomicU64,
    pub bytes: AtomicU64,
}

fn make_row(id: i64, row_size: usize, rng: &mut impl Rng) -> pb::Row {
    // Half random, half repetitive: compresses like real data, not like zeros or noise.
    let mut payload = vec![0u8; row_size];
    let half = row_size / 2;
    rng.fill(&mut payload[..half]);
    for (i, b) in payload[half..].iter_mut().enumerate() {
        *b = b"snapfleet-"[i % 10];
    }
    let now = chrono::Utc::now().timestamp_micros();
    pb::Row {
        values: vec![
            v(Kind::Int(id)),
            v(Kind::Int(rng.random_range(0..1000))),
            v(Kind::Float(rng.random_range(0.0..10_000.0))),
            v(Kind::Text(format!("row-{id}"))),
            v(Kind::TimestampMicros(now)),
            v(Kind::Bytes(payload)),
        ],
    }
}

/// Creates the load tables (if missing) and writes rows until the row count or duration is
/// reached. `progress` is updated as batches are acknowledged.
pub async fn run_load(
    client: Arc<Client>,
    opts: LoadOptions,
    progress: Arc<Progress>,
) -> Result<LoadReport> {
    if opts.rows.is_none() && opts.duration.is_none() {
        return Err(Error::InvalidArgument(
            "give a row count or a duration".into(),
        ));
    }
    client.create_database(&opts.db, true).await?;
    let tables: Vec<String> = (0..opts.tables.max(1))
        .map(|i| format!("{}_{i}", opts.table_prefix))
        .collect();
    for t in &tables {
        client
            .create_table(pb::CreateTableRequest {
                database: opts.db.clone(),
                name: t.clone(),
                schema: Some(load_schema()),
                num_tablets: opts.tablets,
                if_not_exists: true,
                for_restore: false,
                hidden: false,
                placement: vec![],
            })
            .await?;
    }
    let start = Instant::now();
    let next_id = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let last_ht = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..opts.concurrency.max(1) {
        let (client, opts, tables) = (client.clone(), opts.clone(), tables.clone());
        let (next_id, stop, progress, last_ht) = (
            next_id.clone(),
            stop.clone(),
            progress.clone(),
            last_ht.clone(),
        );
        workers.spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(w as u64 ^ 0x5eed);
            loop {
                if stop.load(Ordering::Relaxed) {
                    return Ok::<(), Error>(());
                }
                if let Some(d) = opts.duration {
                    if start.elapsed() >= d {
                        return Ok(());
                    }
                }
                let first = next_id.fetch_add(opts.batch as u64, Ordering::Relaxed);
                let mut n = opts.batch as u64;
                if let Some(total) = opts.rows {
                    if first >= total {
                        return Ok(());
                    }
                    n = n.min(total - first);
                }
                if let Some(rate) = opts.rate {
                    // Pace: the first row of this batch is due at first/rate seconds.
                    let due = Duration::from_secs_f64(first as f64 / rate.max(0.001));
                    if let Some(wait) = due.checked_sub(start.elapsed()) {
                        tokio::time::sleep(wait).await;
                    }
                }
                let table = &tables[(first / opts.batch as u64) as usize % tables.len()];
                let rows: Vec<pb::Row> = (0..n)
                    .map(|i| {
                        make_row(
                            (opts.id_offset + first + i) as i64 + 1,
                            opts.row_size,
                            &mut rng,
                        )
                    })
                    .collect();
                let bytes: u64 = rows
                    .iter()
                    .map(|r| prost::Message::encoded_len(r) as u64)
                    .sum();
                let ht = match client.put_rows(&opts.db, table, rows).await {
                    Ok(ht) => ht,
                    Err(e) => {
                        stop.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                };
                last_ht.fetch_max(ht.0, Ordering::Relaxed);
                progress.rows.fetch_add(n, Ordering::Relaxed);
                progress.bytes.fetch_add(bytes, Ordering::Relaxed);
            }
        });
    }
    let mut first_err = None;
    while let Some(r) = workers.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(Error::Unavailable(format!("load worker failed: {e}")));
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    let rows = progress.rows.load(Ordering::Relaxed);
    let bytes = progress.bytes.load(Ordering::Relaxed);
    Ok(LoadReport {
        rows,
        bytes,
        seconds: secs,
        rows_per_sec: rows as f64 / secs,
        mb_per_sec: bytes as f64 / secs / 1e6,
        last_ht: last_ht.load(Ordering::Relaxed),
    })
}

/// Name of the consistency workload's table.
pub const COUNTER_TABLE: &str = "counter";

/// Schema of the counter table.
pub fn counter_schema() -> pb::TableSchema {
    use pb::DataType as T;
    pb::TableSchema {
        columns: vec![
            col("k", T::Int8, false),
            col("written_at", T::Timestamptz, true),
            col("note", T::Text, true),
        ],
        primary_key: vec![0],
    }
}

/// Options of the consistency workload.
#[derive(Debug, Clone)]
pub struct CounterOptions {
    pub db: String,
    pub tablets: u32,
    /// Stop after this many keys (`None` = until `duration` or the stop signal).
    pub keys: Option<u64>,
    pub duration: Option<Duration>,
    /// Keys per second; `None` = as fast as one writer goes.
    pub rate: Option<f64>,
    /// Where each key's hybrid time is appended (`<key> <ht>` lines).
    pub log: PathBuf,
}

/// Result of a counter run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CounterReport {
    pub keys: u64,
    pub first_ht: u64,
    pub last_ht: u64,
    pub seconds: f64,
    pub log: PathBuf,
}

/// One writer appends keys 1, 2, 3, … (each its own write, so each key has its own hybrid
/// time, strictly increasing) and logs `key ht` after each acknowledgement.
pub async fn run_counter(
    client: &Client,
    opts: CounterOptions,
    stop: impl Future<Output = ()>,
    progress: &AtomicU64,
) -> Result<CounterReport> {
    client.create_database(&opts.db, true).await?;
    client
        .create_table(pb::CreateTableRequest {
            database: opts.db.clone(),
            name: COUNTER_TABLE.into(),
            schema: Some(counter_schema()),
            num_tablets: opts.tablets,
            if_not_exists: false,
            for_restore: false,
            hidden: false,
            placement: vec![],
        })
        .await
        .map_err(|e| match e {
            Error::AlreadyExists(_) => Error::AlreadyExists(format!(
                "table {COUNTER_TABLE} already exists in database {:?}; the counter workload \
                 needs a fresh one (drop it or use another database)",
                opts.db
            )),
            e => e,
        })?;
    let file = std::fs::File::create(&opts.log).map_err(|e| Error::io(&opts.log, e))?;
    let mut log = std::io::BufWriter::new(file);
    let start = Instant::now();
    let mut report = CounterReport {
        log: opts.log.clone(),
        ..Default::default()
    };
    tokio::pin!(stop);
    let mut k: u64 = 0;
    loop {
        if opts.keys.is_some_and(|n| k >= n) || opts.duration.is_some_and(|d| start.elapsed() >= d)
        {
            break;
        }
        if let Some(rate) = opts.rate {
            let due = Duration::from_secs_f64(k as f64 / rate.max(0.001));
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = &mut stop => break,
                }
            }
        }
        let key = k + 1;
        let row = pb::Row {
            values: vec![
                v(Kind::Int(key as i64)),
                v(Kind::TimestampMicros(chrono::Utc::now().timestamp_micros())),
                v(Kind::Text(format!("counter key {key}"))),
            ],
        };
        let ht = tokio::select! {
            r = client.put_rows(&opts.db, COUNTER_TABLE, vec![row]) => r?,
            _ = &mut stop => break,
        };
        // The key is durable now; record it before moving on.
        writeln!(log, "{key} {}", ht.0).map_err(|e| Error::io(&opts.log, e))?;
        log.flush().map_err(|e| Error::io(&opts.log, e))?;
        if key == 1 {
            report.first_ht = ht.0;
        }
        report.last_ht = ht.0;
        k = key;
        progress.store(k, Ordering::Relaxed);
    }
    report.keys = k;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Reads a counter log: `(key, ht)` in key order.
pub fn read_counter_log(path: &std::path::Path) -> Result<Vec<(u64, HybridTime)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let mut it = line.split_whitespace();
        let (Some(k), Some(ht), None) = (it.next(), it.next(), it.next()) else {
            return Err(Error::Corrupt {
                what: format!("counter log {}", path.display()),
                detail: format!("line {} is not `<key> <hybrid time>`", i + 1),
            });
        };
        let bad = || Error::Corrupt {
            what: format!("counter log {}", path.display()),
            detail: format!("line {} has a non-numeric field", i + 1),
        };
        out.push((
            k.parse().map_err(|_| bad())?,
            HybridTime(ht.parse().map_err(|_| bad())?),
        ));
    }
    Ok(out)
}
