//! `snapfleet import`: loads a SQL script — our own exports, or plain-format `pg_dump`
//! output for the supported column types — into a tabletdb database.
//!
//! Two streaming passes over the file. The first reads the schema: CREATE TABLE, and
//! primary keys added later by `ALTER TABLE … ADD … PRIMARY KEY` (pg_dump puts them after
//! the data). Then every table is created hidden, the second pass loads INSERT and COPY
//! data in batches, and only when everything loaded are the tables made visible. Any error
//! drops the hidden tables again: a table is never half-visible, the target never
//! half-changed. Statements that are not data or schema (functions, grants, owners,
//! sequences, indexes…) are skipped and listed as warnings; every error names its line.

use crate::quote;
use crate::script::{Item, ScriptReader};
use crate::{Error, Result};
use snapfleet_tabletdb::client::TableRoute;
use snapfleet_tabletdb::pb::{self, DataType};
use snapfleet_tabletdb::sql::{literal, primary_key_indexes, table_from_create, TableDef};
use snapfleet_tabletdb::{types, Client};
use sqlparser::ast::{SetExpr, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// What to import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub db: String,
    pub file: PathBuf,
    /// Rows per write batch.
    pub batch: usize,
}

/// What an import did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ImportReport {
    pub database: String,
    pub tables: Vec<(String, u64)>,
    pub rows: u64,
    pub statements: u64,
    /// Skipped statements, `line N: …`.
    pub warnings: Vec<String>,
}

fn script_err(line: usize, stmt: &str, message: impl std::fmt::Display) -> Error {
    let excerpt: String = stmt.chars().take(80).collect();
    let more = if stmt.chars().count() > 80 { "…" } else { "" };
    Error::Script {
        line,
        message: format!("{message}\n  in: {excerpt}{more}"),
    }
}

fn open(path: &Path) -> Result<Box<dyn BufRead>> {
    let f = std::fs::File::open(path).map_err(|e| Error::Read {
        path: path.to_path_buf(),
        source: e,
    })?;
    if path.extension().is_some_and(|e| e == "zst") {
        let dec = zstd::Decoder::new(f).map_err(|e| Error::Read {
            path: path.to_path_buf(),
            source: e,
        })?;
        Ok(Box::new(std::io::BufReader::with_capacity(1 << 20, dec)))
    } else {
        Ok(Box::new(std::io::BufReader::with_capacity(1 << 20, f)))
    }
}

/// The kind of statement, decided from its first words.
enum Kind {
    /// Session settings: skipped silently.
    Quiet,
    /// Not data or schema we keep: skipped with a warning.
    Skip,
    CreateTable,
    AddPrimaryKey,
    Insert,
    Copy,
    Other,
}

fn classify(stmt: &str) -> Kind {
    let up = stmt.to_ascii_uppercase();
    let w: Vec<&str> = up.split_whitespace().take(6).collect();
    let starts = |p: &[&str]| w.len() >= p.len() && w[..p.len()] == *p;
    if starts(&["SET"])
        || starts(&["BEGIN"])
        || starts(&["COMMIT"])
        || starts(&["START", "TRANSACTION"])
    {
        return Kind::Quiet;
    }
    if starts(&["SELECT"]) {
        return if up.contains("PG_CATALOG.SET_CONFIG") {
            Kind::Quiet
        } else {
            Kind::Skip
        };
    }
    if starts(&["CREATE", "TABLE"]) || starts(&["CREATE", "UNLOGGED", "TABLE"]) {
        return Kind::CreateTable;
    }
    if starts(&["ALTER", "TABLE"]) {
        return if up.contains("PRIMARY KEY") && up.contains(" ADD ") {
            Kind::AddPrimaryKey
        } else {
            Kind::Skip
        };
    }
    if starts(&["INSERT"]) {
        return Kind::Insert;
    }
    if starts(&["COPY"]) {
        return Kind::Copy;
    }
    if starts(&["CREATE", "KEYSPACE"]) || starts(&["USE"]) {
        return Kind::Other;
    }
    const SKIP: &[&str] = &[
        "CREATE", "ALTER", "GRANT", "REVOKE", "COMMENT", "DROP", "SECURITY", "REFRESH",
    ];
    if w.first().is_some_and(|f| SKIP.contains(f)) {
        return Kind::Skip;
    }
    Kind::Other
}

/// Splits an identifier list / qualified name, honouring double quotes: `public."A b"` →
/// [`public`, `A b`]; unquoted names fold to lower case as in PostgreSQL.
fn ident_parts(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut it = s.trim().chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '"' if quoted && it.peek() == Some(&'"') => {
                cur.push('"');
                it.next();
            }
            '"' => quoted = !quoted,
            '.' if !quoted => out.push(std::mem::take(&mut cur)),
            c if !quoted => cur.extend(c.to_lowercase()),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

fn table_name(s: &str) -> String {
    ident_parts(s).pop().unwrap_or_default()
}

/// `ALTER TABLE [ONLY] [IF EXISTS] name ADD [CONSTRAINT c] PRIMARY KEY (a, b)`.
fn parse_add_pk(stmt: &str) -> Option<(String, Vec<String>)> {
    let up = stmt.to_ascii_uppercase();
    let after = stmt[up.find("TABLE")? + 5..].trim_start();
    let mut rest = after;
    for kw in ["ONLY ", "IF EXISTS "] {
        if rest.to_ascii_uppercase().starts_with(kw) {
            rest = rest[kw.len()..].trim_start();
        }
    }
    // The (possibly qualified, quoted) name runs up to " ADD ".
    let add_at = up[up.len() - rest.len()..].find(" ADD ")? + (up.len() - rest.len());
    let name = stmt[up.len() - rest.len()..add_at].trim();
    let pk_at = up.find("PRIMARY KEY")? + "PRIMARY KEY".len();
    let open = stmt[pk_at..].find('(')? + pk_at;
    let close = stmt[open..].find(')')? + open;
    let cols = stmt[open + 1..close]
        .split(',')
        .map(|c| ident_parts(c).pop().unwrap_or_default())
        .collect();
    Some((table_name(name), cols))
}

/// `COPY name [(cols)] FROM stdin` → (table, columns).
fn parse_copy(stmt: &str) -> Option<(String, Vec<String>)> {
    let up = stmt.to_ascii_uppercase();
    let from = up.rfind(" FROM ")?;
    if up[from..].split_whitespace().nth(1)?.trim_end_matches(';') != "STDIN"
        || up[from..].split_whitespace().count() > 2
    {
        return None;
    }
    let head = stmt[4..from].trim();
    match head.find('(') {
        Some(open) => {
            let close = head.rfind(')')?;
            let cols = head[open + 1..close]
                .split(',')
                .map(|c| ident_parts(c).pop().unwrap_or_default())
                .collect();
            Some((table_name(&head[..open]), cols))
        }
        None => Some((table_name(head), vec![])),
    }
}

struct Target {
    def: TableDef,
    line: usize,
    route: Option<TableRoute>,
    rows: u64,
}

/// Imports `opts.file` into database `opts.db` (created if missing).
pub async fn import(
    client: &Client,
    opts: &ImportOptions,
    progress: &AtomicU64,
) -> Result<ImportReport> {
    let mut report = ImportReport {
        database: opts.db.clone(),
        ..Default::default()
    };
    // Pass 1: the schema.
    let mut tables: Vec<Target> = Vec::new();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    for item in ScriptReader::new(open(&opts.file)?) {
        let (line, text) = match item? {
            Item::Statement { line, text } => (line, text),
            Item::Meta { line, text } => {
                report
                    .warnings
                    .push(format!("line {line}: skipped psql meta-command {text}"));
                continue;
            }
            _ => continue,
        };
        report.statements += 1;
        match classify(&text) {
            Kind::CreateTable => {
                let stmts = Parser::parse_sql(&PostgreSqlDialect {}, &text).map_err(|e| {
                    script_err(line, &text, format!("cannot parse CREATE TABLE: {e}"))
                })?;
                let Some(Statement::CreateTable(ct)) = stmts.first() else {
                    return Err(script_err(line, &text, "expected CREATE TABLE"));
                };
                let def = table_from_create(ct, true).map_err(|e| script_err(line, &text, e))?;
                for i in &def.ignored {
                    report
                        .warnings
                        .push(format!("line {line}: table {}: ignored {i}", def.name));
                }
                if by_name.contains_key(&def.name) {
                    return Err(script_err(
                        line,
                        &text,
                        format!("table {:?} is created twice", def.name),
                    ));
                }
                by_name.insert(def.name.clone(), tables.len());
                tables.push(Target {
                    def,
                    line,
                    route: None,
                    rows: 0,
                });
            }
            Kind::AddPrimaryKey => {
                let (name, cols) = parse_add_pk(&text)
                    .ok_or_else(|| script_err(line, &text, "cannot read this ADD PRIMARY KEY"))?;
                let t = by_name.get(&name).map(|&i| &mut tables[i]).ok_or_else(|| {
                    script_err(
                        line,
                        &text,
                        format!("table {name:?} is not created earlier in the script"),
                    )
                })?;
                if !t.def.schema.primary_key.is_empty() {
                    return Err(script_err(
                        line,
                        &text,
                        format!("table {name:?} already has a primary key"),
                    ));
                }
                t.def.schema.primary_key = primary_key_indexes(&mut t.def.schema.columns, &cols)
                    .map_err(|e| script_err(line, &text, e))?;
            }
            Kind::Insert | Kind::Copy => {}
            Kind::Quiet => {}
            Kind::Skip => {
                let first: String = text
                    .split_whitespace()
                    .take(4)
                    .collect::<Vec<_>>()
                    .join(" ");
                report.warnings.push(format!(
                    "line {line}: skipped unsupported statement `{first} …`"
                ));
            }
            Kind::Other
                if text.starts_with("//")
                    || text.to_ascii_uppercase().contains("CREATE KEYSPACE") =>
            {
                return Err(script_err(
                    line,
                    &text,
                    "this is a CQL script; import reads SQL (export with --format sql)",
                ))
            }
            Kind::Other => {
                return Err(script_err(
                    line,
                    &text,
                    "unsupported statement (only schema and data are imported)",
                ))
            }
        }
    }
    if tables.is_empty() {
        return Err(Error::Script {
            line: 0,
            message: format!(
                "{} creates no table: nothing to import",
                opts.file.display()
            ),
        });
    }
    for t in &tables {
        if t.def.schema.primary_key.is_empty() {
            return Err(Error::Script {
                line: t.line,
                message: format!(
                    "table {:?} has no primary key; tabletdb tables need one (add PRIMARY KEY to the script)",
                    t.def.name
                ),
            });
        }
        types::check_schema(&t.def.schema).map_err(|e| Error::Script {
            line: t.line,
            message: format!("table {:?}: {e}", t.def.name),
        })?;
    }
    client.create_database(&opts.db, true).await?;
    let existing = client.tables(&opts.db).await?;
    if let Some(t) = tables
        .iter()
        .find(|t| existing.iter().any(|e| e.name == t.def.name))
    {
        return Err(Error::Db(snapfleet_tabletdb::Error::AlreadyExists(
            format!(
                "table {:?} in database {:?} (line {}); drop it or import into another database",
                t.def.name, opts.db, t.line
            ),
        )));
    }
    // Create hidden, load, then reveal; on any failure drop what was created.
    let result = load(client, opts, &mut tables, &by_name, &mut report, progress).await;
    let created: Vec<String> = tables
        .iter()
        .filter(|t| t.route.is_some())
        .map(|t| t.def.name.clone())
        .collect();
    match result {
        Ok(()) => {
            // Every table becomes visible in one catalog change: all or none.
            let ids = tables
                .iter()
                .map(|t| t.route.as_ref().expect("all created").info.table_id.clone())
                .collect();
            let activated = client
                .master()
                .activate_table(pb::ActivateTableRequest {
                    table_id: String::new(),
                    table_ids: ids,
                })
                .await;
            if let Err(s) = activated {
                for name in &created {
                    let _ = client.drop_table(&opts.db, name).await;
                }
                return Err(Error::Db(snapfleet_tabletdb::Error::Unavailable(format!(
                    "activating the imported tables failed: {}",
                    s.message()
                ))));
            }
            for t in &tables {
                report.tables.push((t.def.name.clone(), t.rows));
            }
            client.refresh().await?;
            Ok(report)
        }
        Err(e) => {
            for name in created {
                if let Err(de) = client.drop_table(&opts.db, &name).await {
                    tracing::warn!(table = %name, error = %de, "could not drop the hidden table after a failed import");
                }
            }
            Err(e)
        }
    }
}

async fn load(
    client: &Client,
    opts: &ImportOptions,
    tables: &mut [Target],
    by_name: &HashMap<String, usize>,
    report: &mut ImportReport,
    progress: &AtomicU64,
) -> Result<()> {
    for t in tables.iter_mut() {
        let info = client
            .create_table(pb::CreateTableRequest {
                database: opts.db.clone(),
                name: t.def.name.clone(),
                schema: Some(t.def.schema.clone()),
                num_tablets: t.def.tablets,
                if_not_exists: false,
                for_restore: false,
                hidden: true,
                placement: vec![],
            })
            .await?;
        t.route = Some(TableRoute {
            info,
            catalog_version: client.catalog().version,
        });
    }
    let batch = opts.batch.max(1);
    let mut pending: Vec<Vec<pb::RowOp>> = vec![Vec::new(); tables.len()];
    // The current COPY: (table index, column positions, start line).
    let mut copy: Option<(usize, Vec<usize>)> = None;
    let mut inflight: Inflight = Default::default();
    for item in ScriptReader::new(open(&opts.file)?) {
        match item? {
            Item::Statement { line, text } => match classify(&text) {
                Kind::Insert => {
                    let stmts = Parser::parse_sql(&PostgreSqlDialect {}, &text).map_err(|e| {
                        script_err(line, &text, format!("cannot parse INSERT: {e}"))
                    })?;
                    let Some(Statement::Insert(ins)) = stmts.into_iter().next() else {
                        return Err(script_err(line, &text, "expected INSERT"));
                    };
                    let name = table_name(&ins.table.to_string());
                    let ti = *by_name.get(&name).ok_or_else(|| {
                        script_err(
                            line,
                            &text,
                            format!("table {name:?} is not created by this script"),
                        )
                    })?;
                    let schema = &tables[ti].def.schema;
                    let cols = column_positions(
                        schema,
                        &ins.columns
                            .iter()
                            .map(|c| c.to_string())
                            .collect::<Vec<_>>(),
                    )
                    .map_err(|m| script_err(line, &text, m))?;
                    let Some(SetExpr::Values(values)) = ins.source.map(|s| *s.body) else {
                        return Err(script_err(line, &text, "only INSERT … VALUES is supported"));
                    };
                    for r in values.rows.iter() {
                        let exprs: &Vec<sqlparser::ast::Expr> = r;
                        if exprs.len() != cols.len() {
                            return Err(script_err(
                                line,
                                &text,
                                format!(
                                    "a row has {} values for {} columns",
                                    exprs.len(),
                                    cols.len()
                                ),
                            ));
                        }
                        let mut vals = vec![pb::Value::default(); schema.columns.len()];
                        for (e, &ci) in exprs.iter().zip(&cols) {
                            vals[ci] = literal(&schema.columns[ci], e)
                                .map_err(|er| script_err(line, &text, er))?;
                        }
                        pending[ti].push(pb::RowOp {
                            row: Some(pb::Row { values: vals }),
                            delete: false,
                        });
                    }
                    flush_if_full(
                        client,
                        tables,
                        &mut pending,
                        &mut inflight,
                        ti,
                        batch,
                        report,
                        progress,
                    )
                    .await?;
                }
                Kind::Copy => {
                    let (name, names) = parse_copy(&text).ok_or_else(|| {
                        script_err(
                            line,
                            &text,
                            "only `COPY table [(columns)] FROM stdin` in text format is supported",
                        )
                    })?;
                    let ti = *by_name.get(&name).ok_or_else(|| {
                        script_err(
                            line,
                            &text,
                            format!("table {name:?} is not created by this script"),
                        )
                    })?;
                    let cols = column_positions(&tables[ti].def.schema, &names)
                        .map_err(|m| script_err(line, &text, m))?;
                    copy = Some((ti, cols));
                }
                _ => {}
            },
            Item::CopyRow { line, text } => {
                let (ti, cols) = copy
                    .as_ref()
                    .expect("the reader only yields rows inside COPY");
                let ti = *ti;
                let schema = &tables[ti].def.schema;
                let fields: Vec<&str> = text.split('\t').collect();
                if fields.len() != cols.len() {
                    return Err(script_err(
                        line,
                        &text,
                        format!(
                            "COPY row has {} fields, expected {} (tab-separated)",
                            fields.len(),
                            cols.len()
                        ),
                    ));
                }
                let mut vals = vec![pb::Value::default(); schema.columns.len()];
                for (f, &ci) in fields.iter().zip(cols) {
                    let c = &schema.columns[ci];
                    if let Some(s) = quote::unescape_copy_field(f) {
                        let t = DataType::try_from(c.data_type).unwrap_or_default();
                        vals[ci] = types::parse_value(t, &s).map_err(|e| {
                            script_err(line, &text, format!("column {:?}: {e}", c.name))
                        })?;
                    }
                    types::check_value(c, &vals[ci], schema.primary_key.contains(&(ci as u32)))
                        .map_err(|e| script_err(line, &text, e))?;
                }
                pending[ti].push(pb::RowOp {
                    row: Some(pb::Row { values: vals }),
                    delete: false,
                });
                flush_if_full(
                    client,
                    tables,
                    &mut pending,
                    &mut inflight,
                    ti,
                    batch,
                    report,
                    progress,
                )
                .await?;
            }
            Item::CopyEnd { .. } => copy = None,
            Item::Meta { .. } => {}
        }
    }
    for ti in 0..tables.len() {
        flush_if_full(
            client,
            tables,
            &mut pending,
            &mut inflight,
            ti,
            1,
            report,
            progress,
        )
        .await?;
    }
    Ok(())
}

fn column_positions(
    schema: &pb::TableSchema,
    names: &[String],
) -> std::result::Result<Vec<usize>, String> {
    if names.is_empty() {
        return Ok((0..schema.columns.len()).collect());
    }
    names
        .iter()
        .map(|n| {
            let n = ident_parts(n).pop().unwrap_or_default();
            schema
                .columns
                .iter()
                .position(|c| c.name == n)
                .ok_or_else(|| format!("unknown column {n:?}"))
        })
        .collect()
}

type Inflight<'a> = futures::stream::FuturesUnordered<
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(usize, u64)>> + Send + 'a>>,
>;

/// Writes this many batches concurrently while the script is read on.
const MAX_INFLIGHT: usize = 8;

/// Sends table `ti`'s pending rows once `batch` have gathered (or, with `batch` 1, whatever
/// is left), keeping up to MAX_INFLIGHT writes in flight.
#[allow(clippy::too_many_arguments)]
async fn flush_if_full<'a>(
    client: &'a Client,
    tables: &mut [Target],
    pending: &mut [Vec<pb::RowOp>],
    inflight: &mut Inflight<'a>,
    ti: usize,
    batch: usize,
    report: &mut ImportReport,
    progress: &AtomicU64,
) -> Result<()> {
    if pending[ti].len() >= batch && !pending[ti].is_empty() {
        let ops = std::mem::take(&mut pending[ti]);
        let n = ops.len() as u64;
        let route = tables[ti].route.clone().expect("created before loading");
        inflight.push(Box::pin(async move {
            client.write_to(&route, ops).await?;
            Ok((ti, n))
        }));
    }
    while inflight.len() >= MAX_INFLIGHT || (batch == 1 && !inflight.is_empty()) {
        use futures::StreamExt;
        let Some(done) = inflight.next().await else {
            break;
        };
        let (t, n) = done?;
        tables[t].rows += n;
        report.rows += n;
        progress.fetch_add(n, Ordering::Relaxed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_headers() {
        assert_eq!(
            ident_parts("public.\"Odd \"\"Name\"\""),
            vec!["public", "Odd \"Name\""]
        );
        assert_eq!(table_name("Public.Orders"), "orders");
        assert_eq!(
            parse_add_pk("ALTER TABLE ONLY public.orders\n    ADD CONSTRAINT orders_pkey PRIMARY KEY (id, \"Line\")"),
            Some(("orders".into(), vec!["id".into(), "Line".into()]))
        );
        assert_eq!(
            parse_copy("COPY public.t (a, \"B\") FROM stdin"),
            Some(("t".into(), vec!["a".into(), "B".into()]))
        );
        assert_eq!(parse_copy("COPY t FROM stdin WITH (FORMAT csv)"), None);
        assert_eq!(
            quote::unescape_copy_field("a\\tb\\\\c"),
            Some("a\tb\\c".into())
        );
        assert_eq!(quote::unescape_copy_field("\\N"), None);
    }
}
