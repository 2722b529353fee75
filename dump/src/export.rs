//! `snapfleet export`: writes a database (or some tables) as a SQL or CQL script consistent
//! at one hybrid time. Rows stream from all tablets in parallel straight into the writer; no
//! table is ever held in memory.

use crate::quote::{self, ident};
use crate::{Error, Result};
use snapfleet_tabletdb::pb::{self, DataType};
use snapfleet_tabletdb::{Client, HybridTime};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Script dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// PostgreSQL: CREATE TABLE + COPY (or INSERT).
    Sql,
    /// Cassandra/YCQL: CREATE KEYSPACE/TABLE + INSERT.
    Cql,
}

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub db: String,
    /// Table names; empty = every table.
    pub tables: Vec<String>,
    /// Consistent-read time; `None` = now.
    pub at: Option<HybridTime>,
    pub format: Format,
    /// SQL only: batched INSERTs instead of COPY.
    pub inserts: bool,
    /// Rows per INSERT statement.
    pub insert_batch: usize,
}

/// Live counters for a progress bar.
#[derive(Debug, Default)]
pub struct Progress {
    pub rows: AtomicU64,
    pub bytes: AtomicU64,
}

/// What an export wrote.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ExportReport {
    pub database: String,
    pub read_ht: u64,
    pub tables: usize,
    pub rows: u64,
    pub bytes: u64,
}

fn col_type(c: &pb::Column) -> DataType {
    DataType::try_from(c.data_type).unwrap_or_default()
}

fn create_table(format: Format, t: &pb::TableInfo) -> String {
    let schema = t.schema.as_ref().expect("catalog tables have schemas");
    let mut s = format!("CREATE TABLE {} (\n", ident(&t.name));
    for c in &schema.columns {
        let ty = match format {
            Format::Sql => quote::pg_type(col_type(c)),
            Format::Cql => quote::cql_type(col_type(c)),
        };
        let not_null = if format == Format::Sql && !c.nullable {
            " NOT NULL"
        } else {
            ""
        };
        s.push_str(&format!("    {} {ty}{not_null},\n", ident(&c.name)));
    }
    let pk: Vec<String> = schema
        .primary_key
        .iter()
        .map(|&i| ident(&schema.columns[i as usize].name))
        .collect();
    match format {
        // CQL: the first key column is the partition key, like YCQL's hash column.
        Format::Cql if pk.len() > 1 => s.push_str(&format!(
            "    PRIMARY KEY (({}), {})\n);\n",
            pk[0],
            pk[1..].join(", ")
        )),
        _ => s.push_str(&format!("    PRIMARY KEY ({})\n);\n", pk.join(", "))),
    }
    s
}

/// Writes the export of `opts.db` to `out`.
pub async fn export(
    client: &Client,
    opts: &ExportOptions,
    out: &mut (dyn Write + Send),
    progress: &Progress,
) -> Result<ExportReport> {
    let all = client.tables(&opts.db).await?;
    let tables: Vec<pb::TableInfo> = if opts.tables.is_empty() {
        all
    } else {
        opts.tables
            .iter()
            .map(|n| {
                all.iter().find(|t| &t.name == n).cloned().ok_or_else(|| {
                    Error::Db(snapfleet_tabletdb::Error::NotFound(format!(
                        "table {n:?} in database {:?}",
                        opts.db
                    )))
                })
            })
            .collect::<Result<_>>()?
    };
    let read_ht = match opts.at {
        Some(t) => t,
        None => client.now().await?,
    };
    let mut report = ExportReport {
        database: opts.db.clone(),
        read_ht: read_ht.0,
        tables: tables.len(),
        ..Default::default()
    };
    let w = |out: &mut (dyn Write + Send), s: &str, report: &mut ExportReport| -> Result<()> {
        out.write_all(s.as_bytes()).map_err(Error::Write)?;
        report.bytes += s.len() as u64;
        progress.bytes.fetch_add(s.len() as u64, Ordering::Relaxed);
        Ok(())
    };
    let comment = match opts.format {
        Format::Sql => "--",
        Format::Cql => "//",
    };
    w(
        out,
        &format!(
            "{comment} snapfleet export of database {:?}, consistent at hybrid time {} ({})\n{comment} {} table(s)\n\n",
            opts.db,
            read_ht,
            read_ht.to_rfc3339(),
            tables.len()
        ),
        &mut report,
    )?;
    match opts.format {
        Format::Sql => w(
            out,
            "SET client_encoding = 'UTF8';\nSET standard_conforming_strings = on;\nSET TIME ZONE 'UTC';\n\n",
            &mut report,
        )?,
        Format::Cql => w(
            out,
            &format!(
                "CREATE KEYSPACE IF NOT EXISTS {} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}};\nUSE {};\n\n",
                ident(&opts.db),
                ident(&opts.db)
            ),
            &mut report,
        )?,
    }
    for t in &tables {
        let schema = t.schema.clone().expect("catalog tables have schemas");
        let types: Vec<DataType> = schema.columns.iter().map(col_type).collect();
        let cols = schema
            .columns
            .iter()
            .map(|c| ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        w(out, &create_table(opts.format, t), &mut report)?;
        w(out, "\n", &mut report)?;
        let copy = opts.format == Format::Sql && !opts.inserts;
        if copy {
            w(
                out,
                &format!("COPY {} ({cols}) FROM stdin;\n", ident(&t.name)),
                &mut report,
            )?;
        }
        let batch = opts.insert_batch.max(1);
        let mut pending = 0usize;
        let mut buf = String::new();
        let mut err: Option<Error> = None;
        client
            .scan_table(&opts.db, &t.name, Some(read_ht), |_, rows| {
                for rv in rows {
                    let row = rv.row.unwrap_or_default();
                    buf.clear();
                    match (opts.format, copy) {
                        (Format::Sql, true) => {
                            for (i, v) in row.values.iter().enumerate() {
                                if i > 0 {
                                    buf.push('\t');
                                }
                                quote::copy_field(types[i], v, &mut buf);
                            }
                            buf.push('\n');
                        }
                        (Format::Sql, false) => {
                            buf.push_str(if pending == 0 {
                                "INSERT INTO "
                            } else {
                                ",\n    ("
                            });
                            if pending == 0 {
                                buf.push_str(&format!("{} ({cols}) VALUES\n    (", ident(&t.name)));
                            }
                            let vals: Vec<String> = row
                                .values
                                .iter()
                                .enumerate()
                                .map(|(i, v)| quote::sql_literal(types[i], v))
                                .collect();
                            buf.push_str(&vals.join(", "));
                            buf.push(')');
                            pending += 1;
                            if pending == batch {
                                buf.push_str(";\n");
                                pending = 0;
                            }
                        }
                        (Format::Cql, _) => {
                            let vals: Vec<String> = row
                                .values
                                .iter()
                                .enumerate()
                                .map(|(i, v)| quote::cql_literal(types[i], v))
                                .collect();
                            buf.push_str(&format!(
                                "INSERT INTO {} ({cols}) VALUES ({});\n",
                                ident(&t.name),
                                vals.join(", ")
                            ));
                        }
                    }
                    if let Err(e) = w(out, &buf, &mut report) {
                        err = Some(e);
                        return Err(snapfleet_tabletdb::Error::Unavailable(
                            "export output failed".into(),
                        ));
                    }
                    report.rows += 1;
                    progress.rows.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
            .await
            .map_err(|e| err.take().unwrap_or(Error::Db(e)))?;
        if pending > 0 {
            w(out, ";\n", &mut report)?;
        }
        if copy {
            w(out, "\\.\n", &mut report)?;
        }
        w(out, "\n", &mut report)?;
    }
    out.flush().map_err(Error::Write)?;
    Ok(report)
}
