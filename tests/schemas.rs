//! Datasets that stay readable as their inputs change: three daily files into one step
//! with two sinks — a Parquet dataset (local disk, S3 on moto, Azure Blob on Azurite) and
//! a PostgreSQL table — through the real master and batch manager, under each schema
//! contract. After every day the dataset is read back whole by pyarrow and DuckDB (the
//! Python peer, `tests/python/read_dataset.py`) and the table by PostgreSQL, row by row;
//! the quarantine holds exactly the rows that did not fit, with their reasons; the
//! catalogue, `weir datasets` and the `weir.datasets` events show each version. A sink
//! failing during commit (its PostgreSQL connection killed, an object-store PUT refused)
//! leaves neither sink with the input.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;
use weir_batch_manager::BatchSettings;
use weir_bus::{Bus, MemoryBus};
use weir_proto::v1;
use weir_store::testing::TestSchema;
use weir_tests::{job, run_manager, step, submit, tasks, wait_finished, Backend, InProcMaster, StoreFixture};

const DAY1: &str = "id,name,amount\n1,ada,12.5\n2,bob,3.25\n";
/// A new column, and `NA` where an amount is missing.
const DAY2: &str = "id,name,amount,currency\n3,cy,NA,EUR\n4,dee,7.25,USD\n";
/// An amount that is not a number.
const DAY3: &str = "id,name,amount,currency\n5,eve,x5,EUR\n6,fay,8.5,GBP\n";

/// A master, a batch manager (its catalogue in the master's store), a sink database, and
/// the in-process bus the master publishes to.
struct Lab {
    dir: tempfile::TempDir,
    store: StoreFixture,
    master: InProcMaster,
    bus: Arc<MemoryBus>,
    sink_db: TestSchema,
    url_env: String,
    stop: CancellationToken,
    manager: tokio::task::JoinHandle<()>,
    datasets_url: String,
}

/// How a job ended: its state, its task's output (or error) and attempt count.
struct Run {
    state: String,
    output: Value,
    error: String,
    attempts: u32,
}

impl Lab {
    async fn start() -> Lab {
        let dir = tempfile::tempdir().expect("tmp");
        // PostgreSQL: the master and the batch manager's catalogue share it (the embedded
        // store has one owner process), and the master relays the catalogue's events.
        let store = StoreFixture::new(Backend::Postgres).await;
        let bus = Arc::new(MemoryBus::default());
        let master = InProcMaster::start_with_bus(
            &store.url,
            Some(bus.clone() as Arc<dyn Bus>),
            weir_master::config::EventsConfig::default(),
        )
        .await;
        let sink_db = TestSchema::create().await.expect("postgres");
        let url_env = weir_tests::credentials_env(&[("URL", &sink_db.url)]) + "_URL";
        let port = weir_tests::free_port();
        let settings = BatchSettings {
            data_dir: dir.path().join("data"),
            catalogue: weir_worker::store::LazyStore::url(&store.url),
            ..BatchSettings::default()
        };
        let (stop, manager) = run_manager(
            weir_batch_manager::spec_with(settings),
            &master.url,
            "batch-schemas",
            &format!("127.0.0.1:{port}"),
        );
        Lab {
            dir,
            store,
            master,
            bus,
            sink_db,
            url_env,
            stop,
            manager,
            datasets_url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Writes an input file.
    fn file(&self, name: &str, body: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, body).expect("input");
        p
    }

    /// The local dataset's folder.
    fn lake(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A PostgreSQL sink into `table` (created on the first day).
    fn table_sink(&self, table: &str, contract: Value) -> Value {
        json!({"type": "postgres", "url_env": self.url_env, "table": table, "create": true, "schema_contract": contract})
    }

    /// Runs one `store` job over `input` into `sinks`, one attempt.
    async fn run(&self, name: &str, input: &Path, sinks: Value) -> Run {
        let mut s = step("store", "store", "batch", &[]);
        s.config_json = json!({"inputs": [input.display().to_string()], "sinks": sinks}).to_string();
        s.retry = Some(v1::RetryPolicy { max_attempts: 1, ..Default::default() });
        let mut jc = self.master.jobs();
        let id = submit(&mut jc, job(name, vec![s])).await;
        let done = wait_finished(&mut jc, &id, Duration::from_secs(60)).await;
        let t = tasks(&mut jc, &id).await.remove(0);
        Run {
            state: weir_proto::convert::job_state_from_wire(done.state)
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            output: serde_json::from_str(&t.output_json).unwrap_or(Value::Null),
            error: t.error_message,
            attempts: t.attempt,
        }
    }

    /// Runs a job that must succeed; returns its output.
    async fn ok(&self, name: &str, input: &Path, sinks: Value) -> Value {
        let r = self.run(name, input, sinks).await;
        assert_eq!(r.state, "succeeded", "{name}: {}", r.error);
        r.output
    }

    /// The table's rows as `id|name|amount|currency` (absent columns and nulls empty).
    async fn table(&self, table: &str) -> Vec<String> {
        let mut pg = PgConnection::connect(&self.sink_db.url).await.expect("connect");
        let cols: Vec<String> = sqlx::query_scalar(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
        )
        .bind(table)
        .fetch_all(&mut pg)
        .await
        .expect("columns");
        let col = |c: &str| if cols.iter().any(|x| x == c) { format!("{c}::text") } else { "NULL::text".into() };
        let sql = format!(
            "SELECT format('%s|%s|%s|%s', id, name, {}, {}) FROM {table} ORDER BY id",
            col("amount"),
            col("currency")
        );
        sqlx::query_scalar(&sql).fetch_all(&mut pg).await.expect("rows")
    }

    /// The PostgreSQL types of the table's columns, `name type`.
    async fn table_types(&self, table: &str) -> Vec<String> {
        let mut pg = PgConnection::connect(&self.sink_db.url).await.expect("connect");
        sqlx::query_scalar(
            "SELECT attname || ' ' || format_type(atttypid, atttypmod) FROM pg_attribute
              WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped AND attname <> '_weir_input' ORDER BY attnum",
        )
        .bind(table)
        .fetch_all(&mut pg)
        .await
        .expect("types")
    }

    async fn stop(self) {
        self.stop.cancel();
        self.manager.await.expect("manager stops");
        self.master.stop().await;
        self.sink_db.drop().await.expect("drop schema");
        self.store.cleanup().await;
    }
}

/// What pyarrow and DuckDB read of a dataset.
async fn read(spec: Value) -> Value {
    weir_tests::read_dataset(spec).await
}

/// A reader's rows as `id|name|amount|currency` lines (as in [`Lab::table`]), sorted by id.
fn lines(reader: &Value) -> Vec<String> {
    let schema: Vec<String> =
        reader["schema"].as_array().expect("schema").iter().map(|f| f[0].as_str().unwrap_or("").to_string()).collect();
    let at = |name: &str| schema.iter().position(|n| n == name);
    let mut out: Vec<(i64, String)> = reader["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            let v = |name: &str| at(name).and_then(|i| r[i].as_str()).unwrap_or("").to_string();
            (v("id").parse().unwrap_or(-1), format!("{}|{}|{}|{}", v("id"), v("name"), v("amount"), v("currency")))
        })
        .collect();
    out.sort();
    out.into_iter().map(|(_, l)| l).collect()
}

/// A reader's `name type` pairs.
fn types(reader: &Value) -> Vec<String> {
    reader["schema"]
        .as_array()
        .expect("schema")
        .iter()
        .map(|f| format!("{} {}", f[0].as_str().unwrap_or(""), f[1].as_str().unwrap_or("")))
        .collect()
}

/// Asserts both readers see exactly `rows` (and pyarrow's plain read of the folder does
/// not fail, with the same number of rows).
fn assert_reads(got: &Value, rows: &[&str], what: &str) {
    assert_eq!(lines(&got["pyarrow"]), rows, "{what}: pyarrow");
    assert_eq!(lines(&got["duckdb"]), rows, "{what}: duckdb");
    assert_eq!(got["pyarrow_default"]["rows"].as_u64(), Some(rows.len() as u64), "{what}: pyarrow without a schema");
}

/// The quarantined rows of a step's one file, as `row|rule|reason`.
fn quarantined(output: &Value) -> Vec<String> {
    let Some(q) = output["files"][0]["quarantine"].as_str() else { return vec![] };
    use arrow_cast::display::{ArrayFormatter, FormatOptions};
    let file = std::fs::File::open(q).expect("quarantine file");
    let mut out = Vec::new();
    for b in parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("parquet")
        .build()
        .expect("reader")
    {
        let b = b.expect("batch");
        let f = |c: &str| {
            let i = b.schema().index_of(c).expect("column");
            ArrayFormatter::try_new(b.column(i).as_ref(), &FormatOptions::default()).expect("fmt")
        };
        let (row, rule, reason) = (f("row"), f("rule"), f("reason"));
        for r in 0..b.num_rows() {
            out.push(format!("{}|{}|{}", row.value(r), rule.value(r), reason.value(r)));
        }
    }
    out
}

const D1: [&str; 2] = ["1|ada|12.5|", "2|bob|3.25|"];

#[tokio::test]
async fn three_days_under_the_default_contract_evolve_and_quarantine_in_both_sinks() {
    let lab = Lab::start().await;
    let mut events = lab.bus.subscribe("test", &["weir.datasets"]).await.expect("subscribe");
    let lake = lab.lake("orders");
    let sinks = json!([{"type": "parquet", "path": lake.display().to_string()}, lab.table_sink("orders", json!({}))]);
    let local = json!({"path": lake.display().to_string()});

    let out = lab.ok("day1", &lab.file("day1.csv", DAY1), sinks.clone()).await;
    assert_eq!(out["files"][0]["tables"]["orders"], 2);
    let got = read(local.clone()).await;
    assert_reads(&got, &D1, "day 1");
    assert_eq!(types(&got["pyarrow"]), ["id int64", "name string", "amount double"]);
    assert_eq!(lab.table("orders").await, D1);

    // Day 2: `currency` is added in both sinks; `NA` is a null amount, not text.
    let out = lab.ok("day2", &lab.file("day2.csv", DAY2), sinks.clone()).await;
    assert_eq!(out["rows_quarantined"], 0);
    let after2 = ["1|ada|12.5|", "2|bob|3.25|", "3|cy||EUR", "4|dee|7.25|USD"];
    let got = read(local.clone()).await;
    assert_reads(&got, &after2, "day 2");
    assert_eq!(types(&got["pyarrow"]), ["id int64", "name string", "amount double", "currency string"]);
    assert_eq!(types(&got["duckdb"]), ["id BIGINT", "name VARCHAR", "amount DOUBLE", "currency VARCHAR"]);
    assert_eq!(lab.table("orders").await, after2);
    assert_eq!(lab.table_types("orders").await, ["id bigint", "name text", "amount double precision", "currency text"]);
    let versions = &out["files"][0]["schema_versions"];
    assert_eq!(
        versions.as_object().map(|o| o.values().cloned().collect::<Vec<_>>()),
        Some(vec![json!(2), json!(2)]),
        "{versions}"
    );

    // Day 3: "x5" does not fit `amount` (float64): its row goes to the quarantine, the
    // other lands in both sinks; no file holds `amount` as anything but double.
    let out = lab.ok("day3", &lab.file("day3.csv", DAY3), sinks.clone()).await;
    assert_eq!(
        (out["rows_read"].as_u64(), out["rows_written"].as_u64(), out["rows_quarantined"].as_u64()),
        (Some(2), Some(1), Some(1))
    );
    assert_eq!(quarantined(&out), ["1|type|column \"amount\": \"x5\" is not a float64"]);
    let after3 = ["1|ada|12.5|", "2|bob|3.25|", "3|cy||EUR", "4|dee|7.25|USD", "6|fay|8.5|GBP"];
    let got = read(local.clone()).await;
    assert_reads(&got, &after3, "day 3");
    assert_eq!(types(&got["pyarrow"]), ["id int64", "name string", "amount double", "currency string"]);
    assert_eq!(lab.table("orders").await, after3);
    assert!(out["files"][0].get("schema_versions").is_none(), "day 3 changes no schema: {}", out["files"][0]);

    // The catalogue: two datasets with two versions each, by the jobs that made them.
    let mut ds = v1::dataset_service_client::DatasetServiceClient::new(weir_tests::channel(&lab.datasets_url));
    let listed = ds.list_datasets(v1::ListDatasetsRequest { limit: 0 }).await.expect("list").into_inner().datasets;
    assert_eq!(listed.len(), 2, "{listed:?}");
    let parquet = listed.iter().find(|d| d.kind == "parquet").expect("the parquet dataset");
    assert_eq!(parquet.dataset, format!("file://{}", lake.display()));
    assert_eq!(parquet.version, 2);
    let history = ds
        .get_dataset_history(v1::GetDatasetHistoryRequest { dataset: parquet.dataset.clone() })
        .await
        .expect("history")
        .into_inner()
        .versions;
    assert_eq!(history.iter().map(|v| v.changes.join(";")).collect::<Vec<_>>(), ["created", "added currency (string)"]);
    assert!(history[1].input.ends_with("day2.csv"), "{:?}", history[1]);
    let pg = listed.iter().find(|d| d.kind == "postgres").expect("the table");
    assert!(pg.dataset.starts_with("postgres://") && pg.dataset.ends_with("/orders"), "{}", pg.dataset);

    // `weir datasets history` says the same.
    let cli = tokio::process::Command::new(weir_tests::bin("weir"))
        .args(["datasets", "--datasets-url", &lab.datasets_url, "history", &parquet.dataset])
        .output()
        .await
        .expect("weir");
    let text = String::from_utf8_lossy(&cli.stdout);
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    assert!(
        text.contains("version 2") && text.contains("added currency (string)") && text.contains("day2.csv"),
        "{text}"
    );

    // One `dev.weir.dataset.schema_changed` event per version, through the outbox.
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let d =
            tokio::time::timeout(Duration::from_secs(10), events.next()).await.expect("an event").expect("delivery");
        let e: Value = serde_json::from_slice(&d.message.payload).expect("cloudevent");
        assert_eq!(e["type"], "dev.weir.dataset.schema_changed");
        seen.push(format!("{}@{}", e["data"]["sink"].as_str().unwrap_or(""), e["data"]["version"]));
    }
    seen.sort();
    assert_eq!(seen, ["parquet@1", "parquet@2", "postgres@1", "postgres@2"]);
    lab.stop().await;
}

#[tokio::test]
async fn frozen_discarding_and_quarantining_contracts_do_what_they_say() {
    let lab = Lab::start().await;
    let day1 = lab.file("day1.csv", DAY1);
    let day2 = lab.file("day2.csv", DAY2);
    let day3 = lab.file("day3.csv", DAY3);
    let contract_sinks = |name: &str, contract: Value| {
        let lake = lab.lake(name);
        (
            json!([{"type": "parquet", "path": lake.display().to_string(), "schema_contract": contract},
                   lab.table_sink(name, contract.clone())]),
            json!({"path": lake.display().to_string()}),
        )
    };

    // columns: freeze — day 2's new column refuses the input, in both sinks, without a
    // retry; a renamed column is refused naming both names.
    let (sinks, local) = contract_sinks("frozen", json!({"columns": "freeze"}));
    lab.ok("f1", &day1, sinks.clone()).await;
    let r = lab.run("f2", &day2, sinks.clone()).await;
    assert_eq!((r.state.as_str(), r.attempts), ("failed", 1));
    assert!(r.error.contains("\"currency\"") && r.error.contains("freeze"), "{}", r.error);
    assert_reads(&read(local.clone()).await, &D1, "frozen after day 2");
    assert_eq!(lab.table("frozen").await, D1);
    let renamed = lab.file("renamed.csv", "id,name,amt\n7,gus,1.5\n");
    let r = lab.run("f3", &renamed, sinks.clone()).await;
    assert!(
        r.error.contains("\"amt\"") && r.error.contains("\"amount\"") && r.error.contains("renamed"),
        "{}",
        r.error
    );
    assert_eq!(lab.table("frozen").await, D1);

    // columns: discard_value, data_type: discard_value — `currency` never lands, "x5"
    // lands as a null amount, and the report says so.
    let (sinks, local) =
        contract_sinks("discarding", json!({"columns": "discard_value", "data_type": "discard_value"}));
    lab.ok("d1", &day1, sinks.clone()).await;
    let out = lab.ok("d2", &day2, sinks.clone()).await;
    assert!(
        out["files"][0]["discarded_columns"]["currency"].as_str().is_some_and(|r| r.contains("discard_value")),
        "{out}"
    );
    let out = lab.ok("d3", &day3, sinks.clone()).await;
    assert_eq!(out["files"][0]["discarded_values"]["amount"], 1, "{out}");
    let rows = ["1|ada|12.5|", "2|bob|3.25|", "3|cy||", "4|dee|7.25|", "5|eve||", "6|fay|8.5|"];
    let got = read(local.clone()).await;
    assert_reads(&got, &rows, "discarding");
    assert_eq!(types(&got["pyarrow"]), ["id int64", "name string", "amount double"]);
    assert_eq!(lab.table("discarding").await, rows);

    // columns: quarantine — rows holding a value in the new column go to the quarantine
    // with the reason; an amount that does not fit is quarantined as such first.
    let (sinks, local) = contract_sinks("quarantining", json!({"columns": "quarantine"}));
    lab.ok("q1", &day1, sinks.clone()).await;
    let out = lab.ok("q2", &day2, sinks.clone()).await;
    let q = quarantined(&out);
    assert_eq!(q.len(), 2, "{q:?}");
    assert!(q.iter().all(|l| l.contains("|schema|column \"currency\" is not in")), "{q:?}");
    let out = lab.ok("q3", &day3, sinks.clone()).await;
    let q = quarantined(&out);
    assert_eq!(q[0], "1|type|column \"amount\": \"x5\" is not a float64");
    assert!(q[1].starts_with("2|schema|"), "{q:?}");
    assert_reads(&read(local.clone()).await, &D1, "quarantining");
    assert_eq!(lab.table("quarantining").await, D1);

    // data_type: freeze — "x5" refuses day 3 whole, in both sinks.
    let (sinks, local) = contract_sinks("typed", json!({"data_type": "freeze"}));
    lab.ok("t1", &day1, sinks.clone()).await;
    lab.ok("t2", &day2, sinks.clone()).await;
    let r = lab.run("t3", &day3, sinks.clone()).await;
    assert_eq!(r.state, "failed");
    assert!(r.error.contains("\"x5\" is not a float64") && r.error.contains("data_type: freeze"), "{}", r.error);
    let after2 = ["1|ada|12.5|", "2|bob|3.25|", "3|cy||EUR", "4|dee|7.25|USD"];
    assert_reads(&read(local).await, &after2, "typed");
    assert_eq!(lab.table("typed").await, after2);
    lab.stop().await;
}

#[tokio::test]
async fn an_explicit_widen_contract_widens_every_file_and_the_table_as_a_new_version() {
    let lab = Lab::start().await;
    let lake = lab.lake("wide");
    let contract = json!({"data_type": "widen"});
    let sinks = json!([{"type": "parquet", "path": lake.display().to_string(), "schema_contract": contract},
                       lab.table_sink("wide", contract.clone())]);
    lab.ok("w1", &lab.file("day1.csv", DAY1), sinks.clone()).await;
    lab.ok("w2", &lab.file("day2.csv", DAY2), sinks.clone()).await;
    let out = lab.ok("w3", &lab.file("day3.csv", DAY3), sinks.clone()).await;
    assert_eq!(out["rows_quarantined"], 0, "nothing quarantined: the column takes text now");
    let rows = ["1|ada|12.5|", "2|bob|3.25|", "3|cy||EUR", "4|dee|7.25|USD", "5|eve|x5|EUR", "6|fay|8.5|GBP"];
    let got = read(json!({"path": lake.display().to_string()})).await;
    assert_reads(&got, &rows, "widened");
    assert_eq!(types(&got["pyarrow"]), ["id int64", "name string", "amount string", "currency string"]);
    // pyarrow's plain read takes the first file's schema (day 1's, before `currency`): its
    // amount is text too, since the widening rewrote every file.
    assert_eq!(types(&got["pyarrow_default"]), ["id int64", "name string", "amount string"]);
    assert_eq!(lab.table("wide").await, rows);
    assert_eq!(lab.table_types("wide").await, ["id bigint", "name text", "amount text", "currency text"]);
    let history: Value =
        serde_json::from_slice(&std::fs::read(lake.join("_weir/schema.json")).expect("history")).expect("json");
    assert_eq!(
        history["versions"][2]["changes"],
        json!([{"change": "widened", "column": "amount", "from": "float64", "to": "string"}])
    );

    // Widening cannot be asked of an object-store dataset: refused at submission.
    let mut s = step("store", "store", "batch", &[]);
    s.config_json =
        json!({"inputs": ["/x.csv"], "sinks": [{"type": "parquet", "path": "p", "schema_contract": contract,
        "location": {"uri": "s3://b", "credentials": {"env": "X"}}}]})
        .to_string();
    let err = lab
        .master
        .jobs()
        .submit_job(v1::SubmitJobRequest { spec: Some(job("wide-s3", vec![s])) })
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("widen"), "{}", err.message());
    lab.stop().await;
}

#[tokio::test]
async fn three_days_into_an_s3_dataset_and_a_table_agree() {
    let lab = Lab::start().await;
    let moto = weir_tests::Moto::start().await;
    moto.create_bucket("lake").await;
    let location = moto.location("s3://lake");
    let spec = json!({"path": "s3://lake/orders", "endpoint": moto.endpoint, "key": "test", "secret": "test"});
    let sinks =
        json!([{"type": "parquet", "path": "orders", "location": location}, lab.table_sink("orders", json!({}))]);
    lab.ok("s1", &lab.file("day1.csv", DAY1), sinks.clone()).await;
    assert_reads(&read(spec.clone()).await, &D1, "s3 day 1");
    lab.ok("s2", &lab.file("day2.csv", DAY2), sinks.clone()).await;
    let after2 = ["1|ada|12.5|", "2|bob|3.25|", "3|cy||EUR", "4|dee|7.25|USD"];
    let got = read(spec.clone()).await;
    assert_reads(&got, &after2, "s3 day 2");
    assert_eq!(types(&got["pyarrow"]), ["id int64", "name string", "amount double", "currency string"]);
    let out = lab.ok("s3", &lab.file("day3.csv", DAY3), sinks.clone()).await;
    assert_eq!(quarantined(&out), ["1|type|column \"amount\": \"x5\" is not a float64"]);
    let after3 = ["1|ada|12.5|", "2|bob|3.25|", "3|cy||EUR", "4|dee|7.25|USD", "6|fay|8.5|GBP"];
    assert_reads(&read(spec.clone()).await, &after3, "s3 day 3");
    assert_eq!(lab.table("orders").await, after3);

    // Frozen on S3 too: the new column refuses the input in both sinks.
    let frozen = json!([{"type": "parquet", "path": "frozen", "location": location, "schema_contract": {"columns": "freeze"}},
                        lab.table_sink("frozen", json!({"columns": "freeze"}))]);
    lab.ok("sf1", &lab.file("f1.csv", DAY1), frozen.clone()).await;
    let r = lab.run("sf2", &lab.file("f2.csv", DAY2), frozen).await;
    assert!(r.error.contains("\"currency\""), "{}", r.error);
    assert_reads(
        &read(json!({"path": "s3://lake/frozen", "endpoint": moto.endpoint, "key": "test", "secret": "test"})).await,
        &D1,
        "s3 frozen",
    );
    assert_eq!(lab.table("frozen").await, D1);
    lab.stop().await;
}

#[tokio::test]
async fn a_postgres_connection_killed_during_commit_leaves_neither_sink_with_the_input() {
    let lab = Lab::start().await;
    let lake = lab.lake("orders");
    let local = json!({"path": lake.display().to_string()});
    let sinks = json!([{"type": "parquet", "path": lake.display().to_string()}, lab.table_sink("orders", json!({}))]);
    lab.ok("k1", &lab.file("day1.csv", DAY1), sinks.clone()).await;

    // A deferred constraint trigger runs at COMMIT and kills its own backend there: the
    // load's commit dies with its connection.
    let mut pg = PgConnection::connect(&lab.sink_db.url).await.expect("connect");
    for sql in [
        "CREATE FUNCTION die() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NULL; END $$",
        "CREATE CONSTRAINT TRIGGER die_at_commit AFTER INSERT ON orders DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION die()",
    ] {
        sqlx::query(sql).execute(&mut pg).await.expect("trigger");
    }
    let day2 = lab.file("day2.csv", DAY2);
    let r = lab.run("k2", &day2, sinks.clone()).await;
    assert_eq!(r.state, "failed");
    assert!(r.error.contains("committing the load into orders"), "{}", r.error);
    // Neither sink has day 2: the Parquet commit was taken back, schema version and all.
    let got = read(local.clone()).await;
    assert_reads(&got, &D1, "after the killed commit");
    assert_eq!(types(&got["pyarrow"]), ["id int64", "name string", "amount double"]);
    assert_eq!(lab.table("orders").await, D1);
    assert_eq!(lab.table_types("orders").await, ["id bigint", "name text", "amount double precision"]);

    // Once the database behaves, the same input lands in both.
    sqlx::query("DROP TRIGGER die_at_commit ON orders").execute(&mut pg).await.expect("drop trigger");
    lab.ok("k3", &day2, sinks).await;
    let after2 = ["1|ada|12.5|", "2|bob|3.25|", "3|cy||EUR", "4|dee|7.25|USD"];
    assert_reads(&read(local).await, &after2, "after the retry");
    assert_eq!(lab.table("orders").await, after2);
    drop(pg);
    lab.stop().await;
}

#[tokio::test]
async fn an_object_store_put_refused_during_commit_leaves_neither_sink_with_the_input() {
    let lab = Lab::start().await;
    let azurite = weir_tests::Azurite::start().await;
    azurite.create_container("lake").await;
    let location = azurite.location("azblob://lake");
    let blob = weir_tests::open_location(&location);
    let sinks =
        json!([{"type": "parquet", "path": "orders", "location": location}, lab.table_sink("orders", json!({}))]);
    lab.ok("a1", &lab.file("day1.csv", DAY1), sinks.clone()).await;
    let before = weir_tests::dataset_rows(&blob, "orders", lab.dir.path()).await;
    assert_eq!(before.len(), 2);

    // A lease on the dataset's schema history: Azure refuses every write to it without
    // the lease id, so day 2's commit (which records its new column) is refused.
    let lease = azurite.lease("lake", "orders/_weir/schema.json").await;
    let day2 = lab.file("day2.csv", DAY2);
    let r = lab.run("a2", &day2, sinks.clone()).await;
    assert_eq!(r.state, "failed", "{:?}", r.output);
    assert_eq!(weir_tests::dataset_rows(&blob, "orders", lab.dir.path()).await, before, "the dataset keeps day 1 only");
    assert_eq!(lab.table("orders").await, D1);
    assert_eq!(lab.table_types("orders").await, ["id bigint", "name text", "amount double precision"]);

    azurite.break_lease("lake", "orders/_weir/schema.json", &lease).await;
    lab.ok("a3", &day2, sinks).await;
    assert_eq!(weir_tests::dataset_rows(&blob, "orders", lab.dir.path()).await.len(), 4);
    assert_eq!(lab.table("orders").await, ["1|ada|12.5|", "2|bob|3.25|", "3|cy||EUR", "4|dee|7.25|USD"]);
    lab.stop().await;
}
