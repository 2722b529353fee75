//! Typed ids and the column type system: parsing SQL type names, checking a value against
//! its column, and rendering values as text. Values travel as the protobuf `Value`.

use crate::error::{Error, Result};
use pb::value::Kind;
use snapfleet_proto::tabletdb as pb;
use std::fmt;

macro_rules! string_id {
    ($(#[$m:meta])* $name:ident, $prefix:literal) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub String);
        impl $name {
            /// A new random id.
            pub fn generate() -> Self {
                $name(uuid::Uuid::new_v4().simple().to_string())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
            /// The directory/file name component for this id.
            pub fn dir_name(&self) -> String {
                format!(concat!($prefix, "{}"), self.0)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(
    /// A database's id (its directory name on each node).
    DatabaseId, ""
);
string_id!(
    /// A table's id.
    TableId, "table-"
);
string_id!(
    /// A tablet's id.
    TabletId, "tablet-"
);
string_id!(
    /// A snapshot's id.
    SnapshotId, ""
);

/// A tablet server's id, unique in its cluster.
pub type NodeId = u32;

/// Checks that an id from the network is a plain token and cannot name another path.
pub fn check_id(what: &str, id: &str) -> Result<()> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Error::InvalidArgument(format!(
            "{what} id {id:?} is not a valid id (1-64 characters of [A-Za-z0-9_-])"
        )));
    }
    Ok(())
}

/// Checks a database, table or column name.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(Error::InvalidArgument(format!(
            "{what} name {name:?} is invalid: use 1-63 letters, digits or _, starting with a letter"
        )));
    }
    Ok(())
}

/// Parses a SQL type name (PostgreSQL spelling and common aliases).
pub fn parse_type_name(name: &str) -> Result<pb::DataType> {
    use pb::DataType as T;
    let lower = name.trim().to_ascii_lowercase();
    let base = lower.split('(').next().unwrap_or("").trim();
    Ok(match base {
        "int2" | "smallint" => T::Int2,
        "int4" | "int" | "integer" => T::Int4,
        "int8" | "bigint" => T::Int8,
        "float8" | "double precision" | "double" | "float" => T::Float8,
        "numeric" | "decimal" => T::Numeric,
        "bool" | "boolean" => T::Bool,
        "text" | "varchar" | "character varying" | "char" | "character" | "string" => T::Text,
        "bytea" | "blob" => T::Bytea,
        "timestamp" | "timestamp without time zone" => T::Timestamp,
        "timestamptz" | "timestamp with time zone" => T::Timestamptz,
        "date" => T::Date,
        "uuid" => T::Uuid,
        "json" => T::Json,
        "jsonb" => T::Jsonb,
        other => {
            return Err(Error::InvalidArgument(format!(
                "unsupported column type {other:?}; supported: int2, int4, int8, float8, numeric, \
                 bool, text, bytea, timestamp, timestamptz, date, uuid, json, jsonb"
            )))
        }
    })
}

/// The PostgreSQL name of a type.
pub fn type_name(t: pb::DataType) -> &'static str {
    use pb::DataType as T;
    match t {
        T::Unspecified => "unspecified",
        T::Int2 => "int2",
        T::Int4 => "int4",
        T::Int8 => "int8",
        T::Float8 => "float8",
        T::Numeric => "numeric",
        T::Bool => "bool",
        T::Text => "text",
        T::Bytea => "bytea",
        T::Timestamp => "timestamp",
        T::Timestamptz => "timestamptz",
        T::Date => "date",
        T::Uuid => "uuid",
        T::Json => "json",
        T::Jsonb => "jsonb",
    }
}

/// Validates a schema: names, types, a primary key of non-null columns.
pub fn check_schema(schema: &pb::TableSchema) -> Result<()> {
    if schema.columns.is_empty() {
        return Err(Error::InvalidArgument(
            "a table needs at least one column".into(),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for c in &schema.columns {
        check_name("column", &c.name)?;
        if !seen.insert(c.name.as_str()) {
            return Err(Error::InvalidArgument(format!(
                "column {:?} appears twice",
                c.name
            )));
        }
        match pb::DataType::try_from(c.data_type) {
            Ok(pb::DataType::Unspecified) | Err(_) => {
                return Err(Error::InvalidArgument(format!(
                    "column {:?} has an unknown type code {}",
                    c.name, c.data_type
                )))
            }
            Ok(_) => {}
        }
    }
    if schema.primary_key.is_empty() {
        return Err(Error::InvalidArgument("a table needs a primary key".into()));
    }
    let mut pk_seen = std::collections::HashSet::new();
    for &i in &schema.primary_key {
        let Some(c) = schema.columns.get(i as usize) else {
            return Err(Error::InvalidArgument(format!(
                "primary key names column #{i}, but the table has {} columns",
                schema.columns.len()
            )));
        };
        if !pk_seen.insert(i) {
            return Err(Error::InvalidArgument(format!(
                "primary key names column {:?} twice",
                c.name
            )));
        }
    }
    Ok(())
}

fn column_type(c: &pb::Column) -> pb::DataType {
    pb::DataType::try_from(c.data_type).unwrap_or(pb::DataType::Unspecified)
}

/// Checks that `v` fits column `c`; NULL only where allowed.
pub fn check_value(c: &pb::Column, v: &pb::Value, is_key: bool) -> Result<()> {
    use pb::DataType as T;
    let t = column_type(c);
    let bad = || {
        Err(Error::InvalidArgument(format!(
            "value {} does not fit column {:?} of type {}",
            describe_kind(v),
            c.name,
            type_name(t)
        )))
    };
    match &v.kind {
        None => {
            if is_key || !c.nullable {
                return Err(Error::InvalidArgument(format!(
                    "column {:?} may not be NULL",
                    c.name
                )));
            }
            Ok(())
        }
        Some(Kind::Int(i)) => match t {
            T::Int2 if i16::try_from(*i).is_err() => bad(),
            T::Int4 if i32::try_from(*i).is_err() => bad(),
            T::Int2 | T::Int4 | T::Int8 => Ok(()),
            _ => bad(),
        },
        Some(Kind::Float(_)) if t == T::Float8 => Ok(()),
        Some(Kind::Boolean(_)) if t == T::Bool => Ok(()),
        Some(Kind::Text(s)) => match t {
            T::Text | T::Json | T::Jsonb => Ok(()),
            T::Numeric if is_numeric_text(s) => Ok(()),
            _ => bad(),
        },
        Some(Kind::Bytes(_)) if t == T::Bytea => Ok(()),
        Some(Kind::TimestampMicros(_)) if matches!(t, T::Timestamp | T::Timestamptz) => Ok(()),
        Some(Kind::DateDays(_)) if t == T::Date => Ok(()),
        Some(Kind::Uuid(b)) if t == T::Uuid && b.len() == 16 => Ok(()),
        _ => bad(),
    }
}

fn is_numeric_text(s: &str) -> bool {
    let s = s.trim();
    if matches!(s, "NaN" | "Infinity" | "-Infinity") {
        return true;
    }
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (mantissa, exp) = match s.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (s, None),
    };
    let mut parts = mantissa.splitn(2, '.');
    let int = parts.next().unwrap_or("");
    let frac = parts.next().unwrap_or("");
    let digits_ok = (!int.is_empty() || !frac.is_empty())
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit());
    let exp_ok = exp.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit())
    });
    digits_ok && exp_ok
}

fn describe_kind(v: &pb::Value) -> String {
    match &v.kind {
        None => "NULL".into(),
        Some(Kind::Int(i)) => format!("{i} (integer)"),
        Some(Kind::Float(f)) => format!("{f} (float)"),
        Some(Kind::Boolean(b)) => format!("{b} (bool)"),
        Some(Kind::Text(s)) => format!("{:?} (text)", truncate(s, 40)),
        Some(Kind::Bytes(b)) => format!("{} bytes (bytea)", b.len()),
        Some(Kind::TimestampMicros(t)) => format!("{t} (timestamp)"),
        Some(Kind::DateDays(d)) => format!("{d} (date)"),
        Some(Kind::Uuid(b)) => format!("{} bytes (uuid)", b.len()),
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let t: String = s.chars().take(n).collect();
        format!("{t}…")
    }
}

/// Checks a full row against a schema (arity, types, nullability).
pub fn check_row(schema: &pb::TableSchema, row: &pb::Row) -> Result<()> {
    if row.values.len() != schema.columns.len() {
        return Err(Error::InvalidArgument(format!(
            "row has {} values but the table has {} columns",
            row.values.len(),
            schema.columns.len()
        )));
    }
    for (i, (c, v)) in schema.columns.iter().zip(&row.values).enumerate() {
        check_value(c, v, schema.primary_key.contains(&(i as u32)))?;
    }
    Ok(())
}

/// Renders a value as PostgreSQL text output would (NULL as `NULL`).
pub fn format_value(t: pb::DataType, v: &pb::Value) -> String {
    match &v.kind {
        None => "NULL".into(),
        Some(Kind::Int(i)) => i.to_string(),
        Some(Kind::Float(f)) => format_float(*f),
        Some(Kind::Boolean(b)) => if *b { "t" } else { "f" }.into(),
        Some(Kind::Text(s)) => s.clone(),
        Some(Kind::Bytes(b)) => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let mut s = String::with_capacity(2 + b.len() * 2);
            s.push_str("\\x");
            for x in b {
                s.push(HEX[(x >> 4) as usize] as char);
                s.push(HEX[(x & 15) as usize] as char);
            }
            s
        }
        Some(Kind::TimestampMicros(us)) => {
            let Some(dt) = chrono::DateTime::from_timestamp_micros(*us) else {
                return us.to_string();
            };
            if t == pb::DataType::Timestamptz {
                dt.format("%Y-%m-%d %H:%M:%S%.f+00").to_string()
            } else {
                dt.naive_utc().format("%Y-%m-%d %H:%M:%S%.f").to_string()
            }
        }
        Some(Kind::DateDays(d)) => chrono::NaiveDate::from_ymd_opt(1970, 1, 1)
            .and_then(|e| e.checked_add_signed(chrono::Duration::days(*d as i64)))
            .map(|d| d.to_string())
            .unwrap_or_else(|| d.to_string()),
        Some(Kind::Uuid(b)) => match uuid::Uuid::from_slice(b) {
            Ok(u) => u.hyphenated().to_string(),
            Err(_) => format!("{b:?}"),
        },
    }
}

fn format_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        format!("{f}")
    }
}

/// Parses text (as written in SQL literals or CSV) into a value of type `t`.
pub fn parse_value(t: pb::DataType, s: &str) -> Result<pb::Value> {
    use pb::DataType as T;
    let bad = |why: &str| {
        Error::InvalidArgument(format!(
            "{:?} is not a valid {} value{why}",
            truncate(s, 40),
            type_name(t)
        ))
    };
    let kind = match t {
        T::Int2 | T::Int4 | T::Int8 => Kind::Int(s.trim().parse().map_err(|_| bad(""))?),
        T::Float8 => Kind::Float(match s.trim() {
            "NaN" => f64::NAN,
            "Infinity" => f64::INFINITY,
            "-Infinity" => f64::NEG_INFINITY,
            x => x.parse().map_err(|_| bad(""))?,
        }),
        T::Numeric => {
            if !is_numeric_text(s) {
                return Err(bad(""));
            }
            Kind::Text(s.trim().to_string())
        }
        T::Bool => Kind::Boolean(match s.trim().to_ascii_lowercase().as_str() {
            "t" | "true" | "1" | "yes" | "on" => true,
            "f" | "false" | "0" | "no" | "off" => false,
            _ => return Err(bad("")),
        }),
        T::Text | T::Json | T::Jsonb => Kind::Text(s.to_string()),
        T::Bytea => {
            let hex = s
                .strip_prefix("\\x")
                .ok_or_else(|| bad(" (bytea literals are hex: '\\x0a1b')"))?;
            if hex.len() % 2 != 0 {
                return Err(bad(" (odd number of hex digits)"));
            }
            fn nibble(c: u8) -> Option<u8> {
                match c {
                    b'0'..=b'9' => Some(c - b'0'),
                    b'a'..=b'f' => Some(c - b'a' + 10),
                    b'A'..=b'F' => Some(c - b'A' + 10),
                    _ => None,
                }
            }
            let mut out = Vec::with_capacity(hex.len() / 2);
            for pair in hex.as_bytes().chunks_exact(2) {
                match (nibble(pair[0]), nibble(pair[1])) {
                    (Some(h), Some(l)) => out.push(h << 4 | l),
                    _ => return Err(bad(" (not hex)")),
                }
            }
            Kind::Bytes(out)
        }
        T::Timestamp | T::Timestamptz => Kind::TimestampMicros(
            parse_timestamp(s).ok_or_else(|| bad(" (use 'YYYY-MM-DD HH:MM:SS[.ffffff][+HH]')"))?,
        ),
        T::Date => {
            let d = chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
                .map_err(|_| bad(" (use 'YYYY-MM-DD')"))?;
            let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch");
            Kind::DateDays((d - epoch).num_days() as i32)
        }
        T::Uuid => Kind::Uuid(
            uuid::Uuid::parse_str(s.trim())
                .map_err(|_| bad(""))?
                .as_bytes()
                .to_vec(),
        ),
        T::Unspecified => return Err(bad("")),
    };
    Ok(pb::Value { kind: Some(kind) })
}

fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_micros());
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%#z"] {
        if let Ok(t) = chrono::DateTime::parse_from_str(s, f) {
            return Some(t.timestamp_micros());
        }
    }
    for f in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S",
    ] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, f) {
            return Some(t.and_utc().timestamp_micros());
        }
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(t: pb::DataType) -> pb::Column {
        pb::Column {
            name: "c".into(),
            data_type: t as i32,
            nullable: true,
        }
    }

    #[test]
    fn values_round_trip_through_text() {
        use pb::DataType as T;
        for (t, s) in [
            (T::Int2, "-32768"),
            (T::Int8, "9223372036854775807"),
            (T::Float8, "1.5"),
            (T::Numeric, "-12345678901234567890.000001"),
            (T::Bool, "t"),
            (T::Text, "héllo\t'\"\\"),
            (T::Bytea, "\\x00ff10"),
            (T::Timestamp, "2024-02-29 23:59:59.123456"),
            (T::Timestamptz, "2024-02-29 23:59:59.123456+00"),
            (T::Date, "1999-12-31"),
            (T::Uuid, "123e4567-e89b-12d3-a456-426614174000"),
        ] {
            let v = parse_value(t, s).unwrap();
            check_value(&col(t), &v, false).unwrap();
            assert_eq!(format_value(t, &v), s, "{t:?}");
        }
    }

    #[test]
    fn out_of_range_and_wrong_kind_are_rejected() {
        use pb::DataType as T;
        let v = pb::Value {
            kind: Some(Kind::Int(40_000)),
        };
        assert!(check_value(&col(T::Int2), &v, false).is_err());
        assert!(check_value(&col(T::Text), &v, false).is_err());
        assert!(parse_value(T::Numeric, "12a").is_err());
        assert!(parse_type_name("geometry").is_err());
        let null = pb::Value { kind: None };
        assert!(check_value(&col(T::Int8), &null, true).is_err());
    }
}
