//! The PostgreSQL sink against the real server: loaded rows are read back and compared,
//! a retry replaces instead of duplicating, a stale fence is refused, keys upsert.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use serde_json::json;
use sqlx::{Connection, PgConnection};
use weir_core::dataset::DataStep;
use weir_data::pipeline::{convert, Input, Plan};
use weir_data::sink::postgres::{load, PgTable};
use weir_data::sink::{input_key, WriteFence};
use weir_data::DataError;
use weir_store::testing::TestSchema;

fn staged(dir: &Path, name: &str, csv: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, csv).expect("write");
    let plan = Plan {
        sinks: Default::default(),
        step: Arc::new(
            DataStep::parse(
                "convert",
                Some(&json!({"schema": [
                    {"name": "id", "type": "int64"}, {"name": "name", "type": "string"},
                    {"name": "day", "type": "date"}, {"name": "at", "type": "timestamp"},
                    {"name": "ok", "type": "boolean"}, {"name": "px", "type": "float64"}]})),
            )
            .expect("step"),
        ),
        staging: Some(dir.join("staging")),
        quarantine: dir.join("q"),
        outgoing: dir.join("outgoing"),
        fence: WriteFence { task: "conv".into(), fence: 1 },
        now_micros: 0,
        cancel: Arc::new(AtomicBool::new(false)),
        dedupe: None,
    };
    let r = convert(&Input { path: p.clone(), identity: p.display().to_string() }, &plan).expect("convert");
    PathBuf::from(r.output.expect("staged file"))
}

async fn table(conn: &mut PgConnection, sql: &str) -> Vec<String> {
    sqlx::query_scalar::<_, String>(sql).fetch_all(conn).await.expect("read back")
}

const CSV: &str = "id,name,day,at,ok,px\n\
1,plain,2026-11-20,2026-11-20T10:00:00Z,true,1.5\n\
2,\"quote \"\" and, comma\",2026-11-21,2026-11-21T10:00:00.123456Z,false,\n\
3,Zürich \\N ✓,,,,-0.25\n\
4,\\N,,,,\n\
5,\"\",,,,inf\n";

#[tokio::test]
async fn rows_load_replace_on_retry_and_stale_fences_are_refused() {
    let schema = TestSchema::create().await.expect("schema");
    let mut conn = PgConnection::connect(&schema.url).await.expect("connect");
    let dir = tempfile::tempdir().expect("tmp");
    let file = staged(dir.path(), "a.csv", CSV);
    let key = input_key("s3://b/a.csv");
    let target = PgTable { table: "trades".into(), create: true, key: vec![] };
    let w = |f| WriteFence { task: "task-1".into(), fence: f };

    assert_eq!(load(&mut conn, &target, &file, &key, &w(1)).await.expect("load"), 5);
    let sql =
        "SELECT concat_ws('|', id, name, day, at AT TIME ZONE 'UTC', ok, px, _weir_input) FROM trades ORDER BY id";
    let expected = vec![
        format!("1|plain|2026-11-20|2026-11-20 10:00:00|t|1.5|{key}"),
        format!("2|quote \" and, comma|2026-11-21|2026-11-21 10:00:00.123456|f|{key}"),
        format!("3|Zürich \\N ✓|-0.25|{key}"),
        // A text `\N` is text, not a null, and an infinite price lands as one.
        format!("4|\\N|{key}"),
        format!("5|Infinity|{key}"),
    ];
    assert_eq!(table(&mut conn, sql).await, expected);

    // A retry under a newer lease replaces the input's rows.
    assert_eq!(load(&mut conn, &target, &file, &key, &w(2)).await.expect("reload"), 5);
    assert_eq!(table(&mut conn, sql).await, expected);

    // The stale lease's late write is refused and changes nothing.
    let e = load(&mut conn, &target, &file, &key, &w(1)).await.expect_err("stale");
    assert!(matches!(e, DataError::StaleFence(_)), "{e}");
    assert_eq!(table(&mut conn, sql).await, expected);

    // Another input adds its own rows beside.
    let other = staged(dir.path(), "b.csv", "id,name,day,at,ok,px\n6,b,,,,\n");
    load(&mut conn, &target, &other, &input_key("s3://b/b.csv"), &w(1)).await.expect("other input");
    assert_eq!(table(&mut conn, "SELECT id::text FROM trades ORDER BY id").await, vec!["1", "2", "3", "4", "5", "6"]);

    // Without create, a missing table is a clear config error.
    let missing = PgTable { table: "nope".into(), create: false, key: vec![] };
    let e = load(&mut conn, &missing, &file, &key, &w(3)).await.expect_err("missing table");
    assert!(matches!(e, DataError::Config(_)) && e.to_string().contains("nope"), "{e}");
    drop(conn);
    schema.drop().await.expect("drop schema");
}

#[tokio::test]
async fn a_key_upserts() {
    let schema = TestSchema::create().await.expect("schema");
    let mut conn = PgConnection::connect(&schema.url).await.expect("connect");
    let dir = tempfile::tempdir().expect("tmp");
    let target = PgTable { table: "latest".into(), create: true, key: vec!["id".into()] };
    let w = WriteFence { task: "t".into(), fence: 1 };
    let a = staged(dir.path(), "a.csv", "id,name,day,at,ok,px\n1,first,,,,\n2,second,,,,\n");
    load(&mut conn, &target, &a, &input_key("a"), &w).await.expect("load a");
    let b = staged(dir.path(), "b.csv", "id,name,day,at,ok,px\n2,updated,,,,\n3,third,,,,\n");
    load(&mut conn, &target, &b, &input_key("b"), &w).await.expect("load b");
    assert_eq!(
        table(&mut conn, "SELECT id || '=' || name FROM latest ORDER BY id").await,
        vec!["1=first", "2=updated", "3=third"]
    );
    let pk: String = sqlx::query_scalar(
        "SELECT string_agg(a.attname, ',') FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
         WHERE i.indrelid = to_regclass('latest') AND i.indisprimary",
    )
    .fetch_one(&mut conn)
    .await
    .expect("pk");
    assert_eq!(pk, "id");
    drop(conn);
    schema.drop().await.expect("drop schema");
}

/// A stream's new lease claims the table before it reads where it stands: from then on a
/// load of the former lease is refused whatever input it carries, while the new lease and
/// other tasks load as before, and an older lease cannot claim it back.
#[tokio::test]
async fn a_claimed_table_refuses_a_former_leases_load_of_any_input() {
    use weir_data::sink::postgres::{bookkeeping, claim};
    let schema = TestSchema::create().await.expect("schema");
    let mut conn = PgConnection::connect(&schema.url).await.expect("connect");
    let dir = tempfile::tempdir().expect("tmp");
    let (a, b) = (staged(dir.path(), "a.csv", CSV), staged(dir.path(), "b.csv", CSV));
    let (key_a, key_b) = (input_key("kafka://orders/p0_0-4"), input_key("kafka://orders/p0_5-9"));
    let target = PgTable { table: "trades".into(), create: true, key: vec![] };
    let w = |f| WriteFence { task: "stream".into(), fence: f };
    bookkeeping(&mut conn).await.expect("bookkeeping");
    claim(&mut conn, "trades", &w(1)).await.expect("lease 1 claims");
    assert_eq!(load(&mut conn, &target, &a, &key_a, &w(1)).await.expect("lease 1 loads"), 5);

    claim(&mut conn, "trades", &w(2)).await.expect("lease 2 claims");
    let e = load(&mut conn, &target, &b, &key_b, &w(1)).await.expect_err("a former lease's new input");
    assert!(matches!(&e, DataError::StaleFence(m) if m.contains("lease 2")), "{e}");
    let e = claim(&mut conn, "trades", &w(1)).await.expect_err("an older lease claims");
    assert!(matches!(e, DataError::StaleFence(_)), "{e}");

    assert_eq!(load(&mut conn, &target, &b, &key_b, &w(2)).await.expect("lease 2 loads"), 5);
    let other = WriteFence { task: "another-task".into(), fence: 1 };
    let key_c = input_key("s3://b/c.csv");
    assert_eq!(load(&mut conn, &target, &a, &key_c, &other).await.expect("another task loads"), 5);
    let inputs = table(&mut conn, "SELECT DISTINCT _weir_input FROM trades ORDER BY 1").await;
    let mut want = vec![key_a, key_b, key_c];
    want.sort();
    assert_eq!(inputs, want);
    conn.close().await.expect("close");
    schema.drop().await.expect("drop");
}
