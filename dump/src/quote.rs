//! Exact rendering of values for each script dialect: PostgreSQL COPY text format, SQL
//! literals (with `standard_conforming_strings = on`), CQL literals, and type names. Every
//! value must read back into PostgreSQL (or Cassandra) as the same value; this module never
//! loses precision (floats use the shortest representation that round-trips).

use snapfleet_tabletdb::pb::{self, value::Kind, DataType};
use snapfleet_tabletdb::types::format_value;

/// PostgreSQL type name of a column type.
pub fn pg_type(t: DataType) -> &'static str {
    match t {
        DataType::Int2 => "smallint",
        DataType::Int4 => "integer",
        DataType::Int8 => "bigint",
        DataType::Float8 => "double precision",
        DataType::Numeric => "numeric",
        DataType::Bool => "boolean",
        DataType::Text => "text",
        DataType::Bytea => "bytea",
        DataType::Timestamp => "timestamp without time zone",
        DataType::Timestamptz => "timestamp with time zone",
        DataType::Date => "date",
        DataType::Uuid => "uuid",
        DataType::Json => "json",
        DataType::Jsonb => "jsonb",
        DataType::Unspecified => "text",
    }
}

/// CQL type name of a column type.
pub fn cql_type(t: DataType) -> &'static str {
    match t {
        DataType::Int2 => "smallint",
        DataType::Int4 => "int",
        DataType::Int8 => "bigint",
        DataType::Float8 => "double",
        DataType::Numeric => "decimal",
        DataType::Bool => "boolean",
        DataType::Bytea => "blob",
        DataType::Timestamp | DataType::Timestamptz => "timestamp",
        DataType::Date => "date",
        DataType::Uuid => "uuid",
        DataType::Text | DataType::Json | DataType::Jsonb | DataType::Unspecified => "text",
    }
}

/// A double-quoted SQL identifier (`"a""b"`); CQL uses the same rule.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A field in COPY text format: `\N` for NULL; backslash, tab, newline and CR escaped.
pub fn copy_field(t: DataType, v: &pb::Value, out: &mut String) {
    if v.kind.is_none() {
        out.push_str("\\N");
        return;
    }
    for c in format_value(t, v).chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

/// Undoes COPY text escaping (the inverse of [`copy_field`]); `\N` is NULL.
pub fn unescape_copy_field(f: &str) -> Option<String> {
    if f == "\\N" {
        return None;
    }
    let mut out = String::with_capacity(f.len());
    let mut it = f.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some('v') => out.push('\u{b}'),
            Some(o) => out.push(o),
            None => {}
        }
    }
    Some(out)
}

/// A single-quoted string literal (standard conforming strings: only `'` is doubled).
pub fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A SQL literal for PostgreSQL.
pub fn sql_literal(t: DataType, v: &pb::Value) -> String {
    match &v.kind {
        None => "NULL".into(),
        Some(Kind::Int(i)) => i.to_string(),
        Some(Kind::Boolean(b)) => if *b { "true" } else { "false" }.into(),
        // `-0` would parse as the integer 0: negative zero goes quoted like NaN.
        Some(Kind::Float(f)) if f.is_finite() && !(*f == 0.0 && f.is_sign_negative()) => {
            format_value(t, v)
        }
        _ => format!("{}::{}", sql_string(&format_value(t, v)), pg_type(t)),
    }
}

/// A CQL literal.
pub fn cql_literal(t: DataType, v: &pb::Value) -> String {
    match &v.kind {
        None => "null".into(),
        Some(Kind::Int(i)) => i.to_string(),
        Some(Kind::Boolean(b)) => b.to_string(),
        Some(Kind::Float(f)) if f.is_nan() => "NaN".into(),
        Some(Kind::Float(f)) if f.is_infinite() => {
            if *f > 0.0 { "Infinity" } else { "-Infinity" }.into()
        }
        Some(Kind::Float(_)) => format_value(t, v),
        Some(Kind::Text(s)) if t == DataType::Numeric => s.clone(),
        Some(Kind::Bytes(b)) => {
            let mut s = String::from("0x");
            for x in b {
                s.push_str(&format!("{x:02x}"));
            }
            s
        }
        Some(Kind::Uuid(_)) => format_value(t, v),
        Some(Kind::TimestampMicros(us)) => match chrono::DateTime::from_timestamp_micros(*us) {
            Some(dt) => sql_string(&dt.format("%Y-%m-%d %H:%M:%S%.3f+0000").to_string()),
            None => us.to_string(),
        },
        _ => sql_string(&format_value(t, v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> pb::Value {
        pb::Value {
            kind: Some(Kind::Text(s.into())),
        }
    }

    #[test]
    fn copy_escapes_and_nulls() {
        let mut out = String::new();
        copy_field(DataType::Text, &text("a\tb\nc\\d\re"), &mut out);
        assert_eq!(out, "a\\tb\\nc\\\\d\\re");
        out.clear();
        copy_field(DataType::Text, &pb::Value { kind: None }, &mut out);
        assert_eq!(out, "\\N");
        out.clear();
        copy_field(
            DataType::Bytea,
            &pb::Value {
                kind: Some(Kind::Bytes(vec![0, 255])),
            },
            &mut out,
        );
        assert_eq!(out, "\\\\x00ff");
    }

    #[test]
    fn literals() {
        assert_eq!(sql_literal(DataType::Text, &text("it's")), "'it''s'::text");
        assert_eq!(ident("we\"ird"), "\"we\"\"ird\"");
        let nan = pb::Value {
            kind: Some(Kind::Float(f64::NAN)),
        };
        assert_eq!(
            sql_literal(DataType::Float8, &nan),
            "'NaN'::double precision"
        );
        let nz = pb::Value {
            kind: Some(Kind::Float(-0.0)),
        };
        assert_eq!(sql_literal(DataType::Float8, &nz), "'-0'::double precision");
        assert_eq!(
            cql_literal(
                DataType::Bytea,
                &pb::Value {
                    kind: Some(Kind::Bytes(vec![1, 2]))
                }
            ),
            "0x0102"
        );
    }
}
