//! `snapfleet export`: a database as a SQL (PostgreSQL) or CQL script, consistent at one
//! hybrid time; `-o x.sql.zst` compresses.

use crate::db::{connect, MasterArg};
use crate::util::{bar, human_bytes, human_duration, parse_time};
use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use snapfleet_dump::export::{export, ExportOptions, Format, Progress};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Copy, Clone, ValueEnum)]
pub enum FormatArg {
    Sql,
    Cql,
}

#[derive(Args)]
pub struct ExportArgs {
    #[command(flatten)]
    m: MasterArg,
    #[arg(long)]
    db: String,
    /// Comma-separated table names (default: all).
    #[arg(long, value_delimiter = ',')]
    tables: Vec<String>,
    /// Consistent-read time (hybrid time, RFC 3339, or "5m ago"); default now.
    #[arg(long)]
    at: Option<String>,
    #[arg(long, value_enum, default_value = "sql")]
    format: FormatArg,
    /// Batched INSERT statements instead of COPY (SQL only).
    #[arg(long)]
    inserts: bool,
    /// Rows per INSERT statement.
    #[arg(long, default_value_t = 100)]
    insert_batch: usize,
    /// Output file (`-` or absent = stdout); a `.zst` suffix compresses with zstd.
    #[arg(short = 'o', long)]
    output: Option<PathBuf>,
}

pub async fn run(a: ExportArgs, json: bool) -> Result<()> {
    let client = connect(&a.m).await?;
    let at = match &a.at {
        Some(t) => Some(parse_time(t, client.now().await?)?),
        None => None,
    };
    let opts = ExportOptions {
        db: a.db.clone(),
        tables: a.tables.clone(),
        at,
        format: match a.format {
            FormatArg::Sql => Format::Sql,
            FormatArg::Cql => Format::Cql,
        },
        inserts: a.inserts,
        insert_batch: a.insert_batch,
    };
    let to_stdout = a.output.as_ref().is_none_or(|p| p.as_os_str() == "-");
    if json && to_stdout {
        anyhow::bail!("--json prints the report on stdout: give the script a file with -o");
    }
    let mut out: Box<dyn Write + Send> = if to_stdout {
        Box::new(std::io::BufWriter::with_capacity(
            1 << 20,
            std::io::stdout(),
        ))
    } else {
        let path = a.output.clone().expect("checked");
        let f =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let w = std::io::BufWriter::with_capacity(1 << 20, f);
        if path.extension().is_some_and(|e| e == "zst") {
            Box::new(zstd::Encoder::new(w, 3)?.auto_finish())
        } else {
            Box::new(w)
        }
    };
    let progress = Arc::new(Progress::default());
    let pb = bar(None, "rows");
    pb.set_message("exporting");
    let ticker = {
        let (pb, p) = (pb.clone(), progress.clone());
        tokio::spawn(async move {
            loop {
                pb.set_position(p.rows.load(Ordering::Relaxed));
                pb.set_message(format!(
                    "exporting ({})",
                    human_bytes(p.bytes.load(Ordering::Relaxed))
                ));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let start = Instant::now();
    let r = export(&client, &opts, &mut *out, &progress).await;
    ticker.abort();
    pb.finish_and_clear();
    let r = r.with_context(|| format!("exporting database {:?}", a.db))?;
    drop(out);
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        eprintln!(
            "exported {} tables, {} rows ({}) of {:?} at hybrid time {} in {} ({:.0} rows/s, {:.1} MB/s)",
            r.tables,
            r.rows,
            human_bytes(r.bytes),
            r.database,
            r.read_ht,
            human_duration(start.elapsed()),
            r.rows as f64 / secs,
            r.bytes as f64 / secs / 1e6
        );
    }
    Ok(())
}
