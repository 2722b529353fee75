//! A small SQL subset for looking at and seeding data, parsed with `sqlparser`
//! (PostgreSQL dialect): CREATE/DROP DATABASE, CREATE TABLE … [WITH (tablets = N)],
//! DROP TABLE, INSERT … VALUES, SELECT */columns/count(*) FROM t [WHERE col = lit AND …]
//! [LIMIT n], DELETE FROM t [WHERE …], SHOW TABLES. Reads are consistent cuts at one
//! hybrid time (latest, or `--at`).

use crate::client::{Client, TableRoute};
use crate::error::{Error, Result};
use crate::hlc::HybridTime;
use crate::types;
use snapfleet_proto::tabletdb as pb;
use sqlparser::ast::{
    self, BinaryOperator, ColumnOption, Expr, ObjectType, SelectItem, SetExpr, Statement,
    TableConstraint, TableFactor, UnaryOperator,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

/// What a statement returned.
#[derive(Debug, Clone, serde::Serialize)]
pub enum SqlOutput {
    /// A command tag like `CREATE TABLE` or `INSERT 0 3`.
    Done(String),
    Rows {
        columns: Vec<String>,
        rows: Vec<Vec<String>>,
        read_ht: u64,
    },
}

/// Parses `sql` (one or more statements) and runs them against database `db`.
pub async fn execute(
    client: &Client,
    db: &str,
    sql: &str,
    at: Option<HybridTime>,
) -> Result<Vec<SqlOutput>> {
    let stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql)
        .map_err(|e| Error::InvalidArgument(format!("SQL syntax error: {e}")))?;
    let mut out = Vec::new();
    for s in stmts {
        out.push(execute_one(client, db, s, at).await?);
    }
    Ok(out)
}

fn unsupported(what: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!(
        "unsupported statement or clause: {what}; this SQL subset has CREATE/DROP DATABASE, \
         CREATE/DROP TABLE, INSERT … VALUES, SELECT, DELETE and SHOW TABLES"
    ))
}

/// The last part of a possibly qualified name (`public.t` → `t`), unquoted.
pub fn last_ident(name: &ast::ObjectName) -> String {
    name.0
        .last()
        .map(|p| p.to_string().trim_matches('"').to_string())
        .unwrap_or_default()
}

async fn execute_one(
    client: &Client,
    db: &str,
    stmt: Statement,
    at: Option<HybridTime>,
) -> Result<SqlOutput> {
    match stmt {
        Statement::CreateDatabase {
            db_name,
            if_not_exists,
            ..
        } => {
            client
                .create_database(&last_ident(&db_name), if_not_exists)
                .await?;
            Ok(SqlOutput::Done("CREATE DATABASE".into()))
        }
        Statement::CreateTable(ct) => {
            let def = table_from_create(&ct, false)?;
            client
                .create_table(pb::CreateTableRequest {
                    database: db.into(),
                    name: def.name,
                    schema: Some(def.schema),
                    num_tablets: def.tablets,
                    if_not_exists: ct.if_not_exists,
                    for_restore: false,
                    hidden: false,
                    placement: vec![],
                })
                .await?;
            Ok(SqlOutput::Done("CREATE TABLE".into()))
        }
        Statement::Drop {
            object_type,
            names,
            if_exists,
            ..
        } => {
            for n in &names {
                let name = last_ident(n);
                let r = match object_type {
                    ObjectType::Table => client.drop_table(db, &name).await,
                    ObjectType::Database | ObjectType::Schema => client
                        .master()
                        .drop_database(pb::DropDatabaseRequest { name: name.clone() })
                        .await
                        .map(|_| ())
                        .map_err(|s| crate::error::from_status("master", s)),
                    other => return Err(unsupported(format!("DROP {other}"))),
                };
                match r {
                    Err(Error::NotFound(_)) if if_exists => {}
                    other => other?,
                }
            }
            client.refresh().await?;
            Ok(SqlOutput::Done(format!("DROP {object_type}")))
        }
        Statement::Insert(ins) => {
            let ast::TableObject::TableName(tname) = &ins.table else {
                return Err(unsupported("INSERT into a table function"));
            };
            let route = client.table(db, &last_ident(tname)).await?;
            let schema = route.schema().clone();
            let targets: Vec<usize> = if ins.columns.is_empty() {
                (0..schema.columns.len()).collect()
            } else {
                ins.columns
                    .iter()
                    .map(|c| {
                        let n = c.to_string().trim_matches('"').to_string();
                        route
                            .column_index(&n)
                            .ok_or_else(|| Error::InvalidArgument(format!("unknown column {n:?}")))
                    })
                    .collect::<Result<_>>()?
            };
            let source = ins
                .source
                .ok_or_else(|| unsupported("INSERT without VALUES"))?;
            let SetExpr::Values(values) = *source.body else {
                return Err(unsupported("INSERT … SELECT"));
            };
            let mut rows = Vec::new();
            for (rn, r) in values.rows.iter().enumerate() {
                let exprs: &Vec<Expr> = r;
                if exprs.len() != targets.len() {
                    return Err(Error::InvalidArgument(format!(
                        "row {} has {} values for {} columns",
                        rn + 1,
                        exprs.len(),
                        targets.len()
                    )));
                }
                let mut vals = vec![pb::Value::default(); schema.columns.len()];
                for (e, &ci) in exprs.iter().zip(&targets) {
                    vals[ci] = literal(&schema.columns[ci], e)?;
                }
                rows.push(pb::Row { values: vals });
            }
            let n = rows.len();
            client.put_rows(db, &route.info.name, rows).await?;
            Ok(SqlOutput::Done(format!("INSERT 0 {n}")))
        }
        Statement::Query(q) => {
            let limit = match &q.limit_clause {
                None => None,
                Some(ast::LimitClause::LimitOffset {
                    limit: Some(e),
                    offset: None,
                    ..
                }) => Some(
                    e.to_string()
                        .parse::<usize>()
                        .map_err(|_| Error::InvalidArgument(format!("bad LIMIT {e}")))?,
                ),
                Some(ast::LimitClause::LimitOffset {
                    limit: None,
                    offset: None,
                    ..
                }) => None,
                Some(other) => return Err(unsupported(other)),
            };
            if q.order_by.is_some() {
                return Err(unsupported("ORDER BY (rows come back in storage order)"));
            }
            let SetExpr::Select(sel) = *q.body else {
                return Err(unsupported("a query that is not a plain SELECT"));
            };
            if sel.from.len() != 1 || !sel.from[0].joins.is_empty() {
                return Err(unsupported("SELECT needs exactly one table and no joins"));
            }
            let TableFactor::Table { name, .. } = &sel.from[0].relation else {
                return Err(unsupported("SELECT from something other than a table"));
            };
            let route = client.table(db, &last_ident(name)).await?;
            let filter = match &sel.selection {
                Some(e) => conditions(&route, e)?,
                None => Vec::new(),
            };
            let count_only = sel.projection.len() == 1
                && sel.projection[0]
                    .to_string()
                    .eq_ignore_ascii_case("count(*)");
            let cols: Vec<usize> = if count_only {
                vec![]
            } else if sel.projection.len() == 1
                && matches!(sel.projection[0], SelectItem::Wildcard(_))
            {
                (0..route.schema().columns.len()).collect()
            } else {
                sel.projection
                    .iter()
                    .map(|p| {
                        let n = p.to_string().trim_matches('"').to_string();
                        route
                            .column_index(&n)
                            .ok_or_else(|| unsupported(format!("select item {p}")))
                    })
                    .collect::<Result<_>>()?
            };
            let schema = route.schema().clone();
            let mut count = 0u64;
            let mut rows = Vec::new();
            let read_ht = client
                .scan_table(db, &route.info.name, at, |_, batch| {
                    for rv in batch {
                        let row = rv.row.unwrap_or_default();
                        if !filter.iter().all(|(i, v)| row.values.get(*i) == Some(v)) {
                            continue;
                        }
                        count += 1;
                        if !count_only && limit.is_none_or(|l| rows.len() < l) {
                            rows.push(
                                cols.iter()
                                    .map(|&i| {
                                        let t = pb::DataType::try_from(schema.columns[i].data_type)
                                            .unwrap_or_default();
                                        types::format_value(t, &row.values[i])
                                    })
                                    .collect(),
                            );
                        }
                    }
                    Ok(())
                })
                .await?;
            if count_only {
                return Ok(SqlOutput::Rows {
                    columns: vec!["count".into()],
                    rows: vec![vec![count.to_string()]],
                    read_ht: read_ht.0,
                });
            }
            Ok(SqlOutput::Rows {
                columns: cols
                    .iter()
                    .map(|&i| schema.columns[i].name.clone())
                    .collect(),
                rows,
                read_ht: read_ht.0,
            })
        }
        Statement::Delete(del) => {
            let (ast::FromTable::WithFromKeyword(from) | ast::FromTable::WithoutKeyword(from)) =
                &del.from;
            let Some(TableFactor::Table { name, .. }) = from.first().map(|f| &f.relation) else {
                return Err(unsupported("DELETE without a table"));
            };
            let route = client.table(db, &last_ident(name)).await?;
            let filter = match &del.selection {
                Some(e) => conditions(&route, e)?,
                None => Vec::new(),
            };
            let schema = route.schema().clone();
            let mut keys = Vec::new();
            client
                .scan_table(db, &route.info.name, None, |_, batch| {
                    for rv in batch {
                        let row = rv.row.unwrap_or_default();
                        if filter.iter().all(|(i, v)| row.values.get(*i) == Some(v)) {
                            keys.push(crate::encoding::key_values(&schema, &row));
                        }
                    }
                    Ok(())
                })
                .await?;
            let n = keys.len();
            for chunk in keys.chunks(500) {
                let ops = chunk
                    .iter()
                    .map(|k| pb::RowOp {
                        row: Some(k.clone()),
                        delete: true,
                    })
                    .collect();
                client.write_ops(db, &route.info.name, ops).await?;
            }
            Ok(SqlOutput::Done(format!("DELETE {n}")))
        }
        Statement::ShowTables { .. } => {
            let tables = client.tables(db).await?;
            Ok(SqlOutput::Rows {
                columns: vec!["table".into(), "tablets".into(), "columns".into()],
                rows: tables
                    .iter()
                    .map(|t| {
                        vec![
                            t.name.clone(),
                            t.tablets.len().to_string(),
                            t.schema
                                .as_ref()
                                .map(|s| s.columns.len())
                                .unwrap_or(0)
                                .to_string(),
                        ]
                    })
                    .collect(),
                read_ht: 0,
            })
        }
        other => Err(unsupported(
            other.to_string().chars().take(60).collect::<String>(),
        )),
    }
}

/// A table definition taken from a CREATE TABLE statement.
#[derive(Debug, Clone)]
pub struct TableDef {
    pub name: String,
    pub schema: pb::TableSchema,
    /// 0 = the master's default.
    pub tablets: u32,
    /// Clauses that were ignored (only in lenient mode).
    pub ignored: Vec<String>,
}

/// Converts CREATE TABLE into a schema. Strict mode refuses clauses tabletdb cannot honour
/// (defaults, checks, unique constraints…); lenient mode (imports) ignores them and lists
/// them in `ignored`. A missing primary key is allowed here (an import may add it later with
/// ALTER TABLE … ADD PRIMARY KEY); `types::check_schema` catches it before creation.
pub fn table_from_create(ct: &ast::CreateTable, lenient: bool) -> Result<TableDef> {
    let name = last_ident(&ct.name);
    let mut ignored = Vec::new();
    let mut columns = Vec::new();
    let mut pk: Vec<u32> = Vec::new();
    for (i, c) in ct.columns.iter().enumerate() {
        let t = types::parse_type_name(&c.data_type.to_string()).map_err(|e| {
            Error::InvalidArgument(format!("column {:?} of table {name:?}: {e}", c.name.value))
        })?;
        let mut nullable = true;
        for o in &c.options {
            match &o.option {
                ColumnOption::NotNull => nullable = false,
                ColumnOption::PrimaryKey(_) => {
                    nullable = false;
                    pk.push(i as u32);
                }
                ColumnOption::Null => {}
                other if lenient => ignored.push(format!("column {}: {other}", c.name.value)),
                other => return Err(unsupported(format!("column option {other}"))),
            }
        }
        columns.push(pb::Column {
            name: c.name.value.clone(),
            data_type: t as i32,
            nullable,
        });
    }
    for con in &ct.constraints {
        match con {
            TableConstraint::PrimaryKey(p) => {
                if !pk.is_empty() {
                    return Err(Error::InvalidArgument(format!(
                        "table {name:?} has two primary keys"
                    )));
                }
                let cols: Vec<String> = p
                    .columns
                    .iter()
                    .map(|ic| ic.column.expr.to_string())
                    .collect();
                pk = primary_key_indexes(&mut columns, &cols)?;
            }
            other if lenient => ignored.push(format!("constraint {other}")),
            other => return Err(unsupported(format!("constraint {other}"))),
        }
    }
    let mut tablets = 0;
    if let ast::CreateTableOptions::With(opts) = &ct.table_options {
        for o in opts {
            let text = o.to_string();
            match text.split_once('=') {
                Some((k, v)) if k.trim().eq_ignore_ascii_case("tablets") => {
                    tablets = v.trim().parse().map_err(|_| {
                        Error::InvalidArgument(format!("tablets must be a number, got {v:?}"))
                    })?;
                }
                _ if lenient => ignored.push(format!("table option {text}")),
                _ => return Err(unsupported(format!("table option {text}"))),
            }
        }
    }
    Ok(TableDef {
        name,
        schema: pb::TableSchema {
            columns,
            primary_key: pk,
        },
        tablets,
        ignored,
    })
}

/// Resolves primary-key column names to indexes and marks those columns NOT NULL.
pub fn primary_key_indexes(columns: &mut [pb::Column], names: &[String]) -> Result<Vec<u32>> {
    let mut pk = Vec::new();
    for n in names {
        let col = n.trim_matches('"');
        let idx = columns.iter().position(|c| c.name == col).ok_or_else(|| {
            Error::InvalidArgument(format!("primary key names unknown column {col:?}"))
        })?;
        columns[idx].nullable = false;
        pk.push(idx as u32);
    }
    Ok(pk)
}

/// `col = literal [AND …]` → (column index, value) pairs.
fn conditions(route: &TableRoute, e: &Expr) -> Result<Vec<(usize, pb::Value)>> {
    match e {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            let mut v = conditions(route, left)?;
            v.extend(conditions(route, right)?);
            Ok(v)
        }
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } => {
            let col = left.to_string().trim_matches('"').to_string();
            let i = route
                .column_index(&col)
                .ok_or_else(|| Error::InvalidArgument(format!("unknown column {col:?}")))?;
            Ok(vec![(i, literal(&route.schema().columns[i], right)?)])
        }
        Expr::Nested(inner) => conditions(route, inner),
        other => Err(unsupported(format!(
            "WHERE {other} (only col = literal AND …)"
        ))),
    }
}

/// Converts a literal expression into a value of column `c`'s type.
pub fn literal(c: &pb::Column, e: &Expr) -> Result<pb::Value> {
    let t = pb::DataType::try_from(c.data_type).unwrap_or_default();
    let text = match e {
        Expr::Value(v) => match &v.value {
            ast::Value::Null => {
                let v = pb::Value { kind: None };
                types::check_value(c, &v, false)?;
                return Ok(v);
            }
            ast::Value::Number(n, _) => n.clone(),
            ast::Value::SingleQuotedString(s) | ast::Value::EscapedStringLiteral(s) => s.clone(),
            ast::Value::Boolean(b) => b.to_string(),
            other => return Err(unsupported(format!("literal {other}"))),
        },
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => format!("-{}", literal_text(expr)?),
        Expr::Cast { expr, .. } => return literal(c, expr),
        other => return Err(unsupported(format!("expression {other} (use a literal)"))),
    };
    let v = types::parse_value(t, &text)
        .map_err(|e| Error::InvalidArgument(format!("column {:?}: {e}", c.name)))?;
    types::check_value(c, &v, false)?;
    Ok(v)
}

fn literal_text(e: &Expr) -> Result<String> {
    match e {
        Expr::Value(v) => match &v.value {
            ast::Value::Number(n, _) => Ok(n.clone()),
            other => Err(unsupported(format!("-{other}"))),
        },
        other => Err(unsupported(format!("-{other}"))),
    }
}

/// Renders rows as an aligned text table, as psql does.
pub fn render_table(columns: &[String], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    for r in rows {
        for (i, v) in r.iter().enumerate() {
            w[i] = w[i].max(v.chars().count());
        }
    }
    let line = |vals: &[String]| {
        vals.iter()
            .enumerate()
            .map(|(i, v)| format!(" {:<width$} ", v, width = w[i]))
            .collect::<Vec<_>>()
            .join("|")
    };
    let mut out = line(columns);
    out.push('\n');
    out.push_str(
        &w.iter()
            .map(|n| "-".repeat(n + 2))
            .collect::<Vec<_>>()
            .join("+"),
    );
    out.push('\n');
    for r in rows {
        out.push_str(&line(r));
        out.push('\n');
    }
    out.push_str(&format!(
        "({} row{})",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    ));
    out
}
