//! `snapfleet export` checked against a real PostgreSQL: every column type and its edge
//! values go out as a script, psql loads it, and PostgreSQL's own COPY output is compared
//! value by value with the source rows.

use snapfleet_tabletdb::pb::{self, value::Kind, DataType};
use snapfleet_tabletdb::{types, Client};
use snapfleet_tests::pg::PgServer;
use snapfleet_tests::{snapfleet_bin, TestCluster};
use std::collections::HashMap;
use std::process::Command;

fn v(k: Kind) -> pb::Value {
    pb::Value { kind: Some(k) }
}
const NULL: pb::Value = pb::Value { kind: None };

fn every_type_schema() -> pb::TableSchema {
    use DataType as T;
    let cols = [
        ("id", T::Int8),
        ("i2", T::Int2),
        ("i4", T::Int4),
        ("i8", T::Int8),
        ("f8", T::Float8),
        ("num", T::Numeric),
        ("flag", T::Bool),
        ("txt", T::Text),
        ("raw", T::Bytea),
        ("ts", T::Timestamp),
        ("tstz", T::Timestamptz),
        ("day", T::Date),
        ("ident", T::Uuid),
        ("doc", T::Json),
        ("docb", T::Jsonb),
    ];
    pb::TableSchema {
        columns: cols
            .iter()
            .map(|(n, t)| pb::Column {
                name: n.to_string(),
                data_type: *t as i32,
                nullable: *n != "id",
            })
            .collect(),
        primary_key: vec![0],
    }
}

fn ts(s: &str) -> pb::Value {
    types::parse_value(DataType::Timestamp, s).unwrap()
}

fn every_type_rows() -> Vec<pb::Row> {
    let all_bytes: Vec<u8> = (0..=255).collect();
    let big = "x".repeat(300_000) + "ü";
    let rows = vec![
        vec![
            v(Kind::Int(1)),
            v(Kind::Int(i16::MIN as i64)),
            v(Kind::Int(i32::MIN as i64)),
            v(Kind::Int(i64::MIN)),
            v(Kind::Float(0.1)),
            v(Kind::Text("12345678901234567890.123456789012345678".into())),
            v(Kind::Boolean(true)),
            v(Kind::Text(
                "tab\there, newline\nhere, back\\slash, 'single' \"double\" \\N ünïcødé 🚀".into(),
            )),
            v(Kind::Bytes(all_bytes)),
            ts("1999-12-31 23:59:59.999999"),
            ts("2024-02-29 12:34:56.5"),
            types::parse_value(DataType::Date, "2000-02-29").unwrap(),
            types::parse_value(DataType::Uuid, "123e4567-e89b-12d3-a456-426614174000").unwrap(),
            v(Kind::Text(
                "{\"a\": [1, 2, {\"b\": null}],\n \"c\": \"x\\ty\"}".into(),
            )),
            v(Kind::Text("{\"k\": [true, false], \"n\": 1.5}".into())),
        ],
        vec![
            v(Kind::Int(2)),
            v(Kind::Int(i16::MAX as i64)),
            v(Kind::Int(i32::MAX as i64)),
            v(Kind::Int(i64::MAX)),
            v(Kind::Float(f64::MAX)),
            v(Kind::Text("-0.000000000000000001".into())),
            v(Kind::Boolean(false)),
            v(Kind::Text(String::new())),
            v(Kind::Bytes(vec![])),
            ts("1970-01-01 00:00:00"),
            ts("1900-01-01 00:00:00"),
            types::parse_value(DataType::Date, "1900-01-01").unwrap(),
            types::parse_value(DataType::Uuid, "00000000-0000-0000-0000-000000000000").unwrap(),
            v(Kind::Text("[]".into())),
            v(Kind::Text("\"just a string\"".into())),
        ],
        vec![
            v(Kind::Int(3)),
            v(Kind::Int(0)),
            v(Kind::Int(-1)),
            v(Kind::Int(0)),
            v(Kind::Float(f64::NAN)),
            v(Kind::Text("0".into())),
            v(Kind::Boolean(true)),
            v(Kind::Text(big)),
            v(Kind::Bytes(b"\\x not hex \t\n".to_vec())),
            ts("2262-04-11 23:47:16.854775"),
            ts("2038-01-19 03:14:08"),
            types::parse_value(DataType::Date, "9999-12-31").unwrap(),
            types::parse_value(DataType::Uuid, "ffffffff-ffff-ffff-ffff-ffffffffffff").unwrap(),
            v(Kind::Text("null".into())),
            v(Kind::Text("{}".into())),
        ],
        vec![
            v(Kind::Int(4)),
            NULL,
            NULL,
            NULL,
            v(Kind::Float(f64::NEG_INFINITY)),
            NULL,
            NULL,
            NULL,
            NULL,
            NULL,
            NULL,
            NULL,
            NULL,
            NULL,
            NULL,
        ],
        vec![
            v(Kind::Int(5)),
            NULL,
            NULL,
            NULL,
            v(Kind::Float(5e-324)),
            NULL,
            NULL,
            NULL,
            NULL,
            NULL,
            NULL,
            NULL,
            NULL,
            NULL,
            NULL,
        ],
        vec![
            v(Kind::Int(6)),
            NULL,
            NULL,
            NULL,
            v(Kind::Float(-0.0)),
            NULL,
            NULL,
            NULL,
            NULL,
            NULL,
            NULL,
            NULL,
            NULL,
            NULL,
            NULL,
        ],
    ];
    rows.into_iter().map(|values| pb::Row { values }).collect()
}

fn same(t: DataType, a: &pb::Value, b: &pb::Value) -> bool {
    match (&a.kind, &b.kind) {
        (Some(Kind::Float(x)), Some(Kind::Float(y))) => {
            x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan())
        }
        (Some(Kind::Text(x)), Some(Kind::Text(y))) if t == DataType::Jsonb => {
            serde_json::from_str::<serde_json::Value>(x).unwrap()
                == serde_json::from_str::<serde_json::Value>(y).unwrap()
        }
        _ => a == b,
    }
}

async fn load_source(client: &Client) {
    client.create_database("exp", false).await.unwrap();
    client
        .create_table(pb::CreateTableRequest {
            database: "exp".into(),
            name: "every_type".into(),
            schema: Some(every_type_schema()),
            num_tablets: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    client
        .put_rows("exp", "every_type", every_type_rows())
        .await
        .unwrap();
    // A composite primary key and a quoted-identifier-worthy name.
    snapfleet_tabletdb::sql::execute(
        client,
        "exp",
        "CREATE TABLE order_lines (order_id int8, line int4, sku text NOT NULL, qty int4, PRIMARY KEY (order_id, line)) WITH (tablets = 4);",
        None,
    )
    .await
    .unwrap();
    let rows: Vec<pb::Row> = (0..2000)
        .map(|i| pb::Row {
            values: vec![
                v(Kind::Int(i / 10)),
                v(Kind::Int(i % 10)),
                v(Kind::Text(format!("sku-{i}"))),
                if i % 7 == 0 { NULL } else { v(Kind::Int(i)) },
            ],
        })
        .collect();
    client.put_rows("exp", "order_lines", rows).await.unwrap();
}

fn compare_with_pg(
    pg: &PgServer,
    pgdb: &str,
    schema: &pb::TableSchema,
    table: &str,
    source: &[pb::Row],
) {
    let pg_rows = pg.copy_out(pgdb, table);
    assert_eq!(
        pg_rows.len(),
        source.len(),
        "row count of {table} in PostgreSQL"
    );
    let key = |vals: &[String]| vals.join("\u{1}");
    let mut by_key: HashMap<String, &pb::Row> = HashMap::new();
    for r in source {
        let k: Vec<String> = schema
            .primary_key
            .iter()
            .map(|&i| {
                types::format_value(
                    DataType::try_from(schema.columns[i as usize].data_type).unwrap(),
                    &r.values[i as usize],
                )
            })
            .collect();
        by_key.insert(key(&k), r);
    }
    for fields in pg_rows {
        assert_eq!(fields.len(), schema.columns.len());
        let vals: Vec<pb::Value> = fields
            .iter()
            .zip(&schema.columns)
            .map(|(f, c)| match f {
                None => NULL,
                Some(s) => types::parse_value(DataType::try_from(c.data_type).unwrap(), s)
                    .unwrap_or_else(|e| panic!("PostgreSQL printed {s:?} for {}: {e}", c.name)),
            })
            .collect();
        let k: Vec<String> = schema
            .primary_key
            .iter()
            .map(|&i| {
                types::format_value(
                    DataType::try_from(schema.columns[i as usize].data_type).unwrap(),
                    &vals[i as usize],
                )
            })
            .collect();
        let src = by_key
            .get(&key(&k))
            .unwrap_or_else(|| panic!("PostgreSQL has an extra row {k:?} in {table}"));
        for (i, c) in schema.columns.iter().enumerate() {
            let t = DataType::try_from(c.data_type).unwrap();
            assert!(
                same(t, &src.values[i], &vals[i]),
                "{table}.{} for key {k:?}: source {:?}, PostgreSQL {:?}",
                c.name,
                src.values[i],
                vals[i]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn export_loads_into_real_postgresql_value_for_value() {
    let c = TestCluster::start(2);
    let client = c.client().await.unwrap();
    load_source(&client).await;
    let pg = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    // psql runs as the postgres user when we are root: make the scripts readable.
    let scripts = dir.path().join("scripts");
    std::fs::create_dir(&scripts).unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();

    let export = |args: &[&str], out: &std::path::Path| {
        let o = Command::new(snapfleet_bin())
            .args(["export", "--master", &c.master_addr, "--db", "exp", "-o"])
            .arg(out)
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "export failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let copy_sql = scripts.join("copy.sql");
    let inserts_sql = scripts.join("inserts.sql");
    let zst = scripts.join("copy.sql.zst");
    export(&[], &copy_sql);
    export(&["--inserts", "--insert-batch", "7"], &inserts_sql);
    export(&[], &zst);
    let unpacked = scripts.join("unpacked.sql");
    std::fs::write(
        &unpacked,
        zstd::decode_all(std::fs::File::open(&zst).unwrap()).unwrap(),
    )
    .unwrap();
    let text = std::fs::read_to_string(&copy_sql).unwrap();
    assert!(text.contains("COPY \"every_type\""), "{}", &text[..300]);

    let order_schema = client
        .table("exp", "order_lines")
        .await
        .unwrap()
        .schema()
        .clone();
    let mut order_rows = Vec::new();
    client
        .scan_table("exp", "order_lines", None, |_, rows| {
            order_rows.extend(rows.into_iter().map(|r| r.row.unwrap()));
            Ok(())
        })
        .await
        .unwrap();
    for (pgdb, file) in [
        ("via_copy", &copy_sql),
        ("via_inserts", &inserts_sql),
        ("via_zstd", &unpacked),
    ] {
        pg.createdb(pgdb);
        pg.load(pgdb, file);
        compare_with_pg(
            &pg,
            pgdb,
            &every_type_schema(),
            "every_type",
            &every_type_rows(),
        );
        compare_with_pg(&pg, pgdb, &order_schema, "order_lines", &order_rows);
        // The primary key made it across.
        let out = pg.psql(pgdb, &["-At", "-c", "SELECT count(*) FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace WHERE c.contype = 'p' AND n.nspname = 'public'"]);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
    }

    // CQL: keyspace, tables and one INSERT per row.
    let cql = scripts.join("x.cql");
    export(&["--format", "cql"], &cql);
    let text = std::fs::read_to_string(&cql).unwrap();
    assert!(text.contains("CREATE KEYSPACE IF NOT EXISTS \"exp\""));
    assert!(text.contains("PRIMARY KEY ((\"order_id\"), \"line\")"));
    assert_eq!(text.matches("INSERT INTO ").count(), 2006);

    // An unknown table is a clear error.
    let o = Command::new(snapfleet_bin())
        .args([
            "export",
            "--master",
            &c.master_addr,
            "--db",
            "exp",
            "--tables",
            "nope",
            "-o",
        ])
        .arg(scripts.join("nope.sql"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("\"nope\""));
}

fn pg_dump(pg: &PgServer, db: &str, out: &std::path::Path) {
    let o = Command::new(pg.bin_dir().join("pg_dump"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            "postgres",
            "--no-owner",
            "-f",
        ])
        .arg(out)
        .arg(db)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn run_cli(args: &[&str]) -> std::process::Output {
    Command::new(snapfleet_bin()).args(args).output().unwrap()
}

/// PostgreSQL → pg_dump → import into tabletdb → export → a second PostgreSQL database:
/// both PostgreSQL databases hold the same rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_dump_imports_and_round_trips_back_into_postgresql() {
    let pg = PgServer::start();
    pg.createdb("origin");
    let setup = "
        CREATE TABLE customers (
            id bigint NOT NULL, name character varying(40) NOT NULL, balance numeric(12,2),
            vip boolean DEFAULT false, joined timestamp with time zone, born date, tag uuid,
            prefs jsonb, photo bytea, note text
        );
        CREATE TABLE order_lines (order_id integer, line smallint, sku text, price double precision,
            PRIMARY KEY (order_id, line));
        CREATE INDEX customers_name ON customers (name);
        CREATE FUNCTION noop() RETURNS int LANGUAGE sql AS $$ SELECT 1; $$;
        CREATE SEQUENCE seq1;
        INSERT INTO customers
          SELECT i, 'name ' || i || E' tab\\there', (i * 1.25)::numeric(12,2), i % 3 = 0,
                 timestamptz '2024-01-01 00:00:00+00' + i * interval '1 hour 1.5 second',
                 date '1990-01-01' + i, md5(i::text)::uuid, jsonb_build_object('n', i, 'odd', i % 2 = 1),
                 decode(md5(i::text), 'hex'), CASE WHEN i % 5 = 0 THEN NULL ELSE 'line1' || chr(10) || 'line2 \\ ''q''' END
          FROM generate_series(1, 500) i;
        ALTER TABLE ONLY customers ADD CONSTRAINT customers_pkey PRIMARY KEY (id);
        INSERT INTO order_lines SELECT i / 4, i % 4, 'sku-' || i, i / 3.0 FROM generate_series(0, 999) i;
    ";
    let o = pg.psql("origin", &["-c", setup]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let dump = dir.path().join("origin.sql");
    pg_dump(&pg, "origin", &dump);

    let c = TestCluster::start(3);
    let o = run_cli(&[
        "--json",
        "import",
        "--master",
        &c.master_addr,
        "--db",
        "imported",
        dump.to_str().unwrap(),
    ]);
    assert!(
        o.status.success(),
        "import failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["rows"], 1500, "{report:#}");
    let warnings = report["warnings"].to_string();
    assert!(
        warnings.contains("FUNCTION") && warnings.contains("INDEX"),
        "{warnings}"
    );

    let back = dir.path().join("back.sql");
    let o = run_cli(&[
        "export",
        "--master",
        &c.master_addr,
        "--db",
        "imported",
        "-o",
        back.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    pg.createdb("copy");
    pg.load("copy", &back);
    for (table, order) in [("customers", "id"), ("order_lines", "order_id, line")] {
        let q = format!("COPY (SELECT * FROM {table} ORDER BY {order}) TO STDOUT");
        let a = pg.psql("origin", &["-c", &q]);
        let b = pg.psql("copy", &["-c", &q]);
        assert!(a.status.success() && b.status.success());
        assert!(!a.stdout.is_empty());
        assert!(a.stdout == b.stdout, "{table} differs after the round trip");
    }

    // Importing again into the same database is refused and changes nothing.
    let o = run_cli(&[
        "import",
        "--master",
        &c.master_addr,
        "--db",
        "imported",
        dump.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
}

/// Malformed scripts: a clear error naming the line, and the target unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_scripts_fail_with_a_line_number_and_change_nothing() {
    let c = TestCluster::start(1);
    let client = c.client().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &str)] = &[
        (
            "bad_quote.sql",
            "CREATE TABLE t (k int8 PRIMARY KEY, v text);\nINSERT INTO t VALUES (1, 'ok');\nINSERT INTO t VALUES (2, 'never closed);\n",
            "line 3:",
        ),
        (
            "truncated_copy.sql",
            "CREATE TABLE t (k int8 PRIMARY KEY, v text);\nCOPY t (k, v) FROM stdin;\n1\ta\n2\tb\n",
            "line 2:",
        ),
        (
            "unknown_type.sql",
            "CREATE TABLE t (k int8 PRIMARY KEY);\nCREATE TABLE g (k int8 PRIMARY KEY, p geometry);\n",
            "line 2:",
        ),
        (
            "bad_value.sql",
            "CREATE TABLE t (k int8 PRIMARY KEY, v int4);\nCOPY t (k, v) FROM stdin;\n1\t2\n2\tnot-a-number\n\\.\n",
            "line 4:",
        ),
        ("no_pk.sql", "\n\nCREATE TABLE t (k int8, v text);\n", "line 3:"),
        (
            "cql.sql",
            "// snapfleet export\nCREATE KEYSPACE IF NOT EXISTS \"m\" WITH replication = {'class': 'SimpleStrategy'};\n",
            "CQL script",
        ),
    ];
    for (name, text, want) in cases {
        let f = dir.path().join(name);
        std::fs::write(&f, text).unwrap();
        let o = run_cli(&[
            "import",
            "--master",
            &c.master_addr,
            "--db",
            "m",
            f.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(1), "{name} should fail");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{name}: expected {want:?} in {err}");
        client.refresh().await.unwrap();
        assert!(
            client
                .tables("m")
                .await
                .map(|t| t.is_empty())
                .unwrap_or(true),
            "{name} left a table behind"
        );
        // No hidden table either: the catalog holds no table at all.
        assert!(
            client.catalog().tables.is_empty(),
            "{name} left a hidden table: {:?}",
            client.catalog().tables
        );
    }
}
