//! The data path on real files in every format: what lands in the sinks is read back and
//! compared row by row, and every rejected row is found in the quarantine with its reason.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{json, Value};
use weir_core::dataset::DataStep;
use weir_data::pipeline::{convert, Input, Plan};
use weir_data::sink::landing::{land_local, Sinks};
use weir_data::sink::WriteFence;
use weir_data::{DataError, FileReport};

struct Dirs {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_path_buf();
    Dirs { _tmp: tmp, root }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write input");
    p
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).expect("gzip");
    e.finish().expect("gzip")
}

fn plan(d: &Dirs, step: Value, task: &str, fence: u64) -> Plan {
    let step = DataStep::parse("convert", Some(&step)).expect("valid step");
    Plan {
        sinks: Arc::new(Sinks::open_local(&step).expect("local sinks").local_states().expect("their schemas")),
        step: Arc::new(step),
        staging: Some(d.root.join("staging")),
        quarantine: d.root.join("quarantine"),
        outgoing: d.root.join("outgoing"),
        fence: WriteFence { task: task.into(), fence },
        now_micros: 1_795_000_000_000_000,
        cancel: Arc::new(AtomicBool::new(false)),
        dedupe: None,
    }
}

fn run(d: &Dirs, path: &Path, step: Value) -> Result<FileReport, DataError> {
    land(&Input { path: path.to_path_buf(), identity: path.display().to_string() }, &plan(d, step, "t1", 1))
}

/// Converts one input and lands it in the step's (local) sinks.
fn land(input: &Input, pl: &Plan) -> Result<FileReport, DataError> {
    let sinks = Sinks::open_local(&pl.step)?;
    let mut r = convert(input, pl)?;
    land_local(&sinks, &mut r, &Default::default())?;
    Ok(r)
}

/// All rows of Parquet files as text lines "a|b|c" (nulls as ∅), in file order.
fn rows(files: &[PathBuf]) -> Vec<String> {
    let mut out = Vec::new();
    for f in files {
        let file = std::fs::File::open(f).expect("open parquet");
        for b in ParquetRecordBatchReaderBuilder::try_new(file).expect("parquet").build().expect("reader") {
            let b: RecordBatch = b.expect("batch");
            let fmts: Vec<_> = b
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &FormatOptions::default().with_null("∅")).expect("fmt"))
                .collect();
            for r in 0..b.num_rows() {
                out.push(fmts.iter().map(|f| f.value(r).to_string()).collect::<Vec<_>>().join("|"));
            }
        }
    }
    out
}

fn schema_of(file: &Path) -> Vec<(String, String)> {
    let f = std::fs::File::open(file).expect("open");
    let b = ParquetRecordBatchReaderBuilder::try_new(f).expect("parquet");
    b.schema().fields().iter().map(|f| (f.name().clone(), f.data_type().to_string())).collect()
}

fn output(r: &FileReport) -> Vec<PathBuf> {
    r.output.iter().map(PathBuf::from).collect()
}

fn quarantined(r: &FileReport) -> Vec<String> {
    rows(&r.quarantine.iter().map(PathBuf::from).collect::<Vec<_>>())
}

const TRADES: &str = "id,ts,symbol,price,qty,venue\n\
1,2026-11-20T09:30:00Z,AAPL,189.5,100,XNAS\n\
2,2026-11-20T09:30:01Z,MSFT,402.25,50,\n\
3,2026-11-20T09:30:02Z,Zürich AG,12.0,7,XSWX\n";

#[test]
fn csv_plain_gzip_and_zstd_convert_to_the_same_typed_rows() {
    let d = dirs();
    let plain = write(&d.root, "trades.csv", TRADES.as_bytes());
    let gz = write(&d.root, "trades.csv.gz", &gzip(TRADES.as_bytes()));
    let zst = write(&d.root, "trades.data", &zstd::encode_all(TRADES.as_bytes(), 3).expect("zstd"));
    let mut seen = Vec::new();
    for p in [&plain, &gz, &zst] {
        let r = run(&d, p, json!({})).expect("converts");
        assert_eq!((r.rows_read, r.rows_written, r.rows_quarantined), (3, 3, 0), "{p:?}");
        seen.push((r.format.clone(), rows(&output(&r))));
        let types: Vec<String> = schema_of(&output(&r)[0]).into_iter().map(|(_, t)| t).collect();
        assert_eq!(types, vec!["Int64", "Timestamp(µs, \"+00:00\")", "Utf8", "Float64", "Int64", "Utf8"]);
    }
    assert_eq!(seen[0].0, "csv");
    assert_eq!(seen[1].0, "csv.gz");
    assert_eq!(seen[2].0, "csv.zst");
    assert_eq!(
        seen[0].1,
        vec![
            "1|2026-11-20T09:30:00Z|AAPL|189.5|100|XNAS",
            "2|2026-11-20T09:30:01Z|MSFT|402.25|50|∅",
            "3|2026-11-20T09:30:02Z|Zürich AG|12.0|7|XSWX",
        ]
    );
    assert!(seen.iter().all(|s| s.1 == seen[0].1));
}

#[test]
fn ragged_and_malformed_rows_are_quarantined_with_reasons_and_counted() {
    let d = dirs();
    let mut bytes = b"id;name;amount\n1;a;1.5\n2;b\n3;c;2.5;extra\n4;\"quoted;semi\";3\n".to_vec();
    bytes.extend_from_slice(b"5;\xff\xfe;4\n6;f;not-a-number\n7;g;7\n");
    let p = write(&d.root, "ragged.csv", &bytes);
    let r = run(
        &d,
        &p,
        json!({"schema": [{"name": "id", "type": "int64"}, {"name": "name", "type": "string"}, {"name": "amount", "type": "float64"}]}),
    )
    .expect("converts");
    assert_eq!((r.rows_read, r.rows_written, r.rows_quarantined), (7, 3, 4));
    assert_eq!(r.quarantined_by_rule.get("parse"), Some(&3));
    assert_eq!(r.quarantined_by_rule.get("type"), Some(&1));
    assert_eq!(rows(&output(&r)), vec!["1|a|1.5", "4|quoted;semi|3.0", "7|g|7.0"]);
    let q = quarantined(&r);
    assert_eq!(q.len(), 4);
    assert!(q.iter().any(|l| l.contains("|2|parse|the row has 2 fields, the file has 3 columns|2;b")), "{q:#?}");
    assert!(q.iter().any(|l| l.contains("|3|parse|the row has 4 fields")), "{q:#?}");
    assert!(q.iter().any(|l| l.contains("|5|parse|the row is not valid UTF-8")), "{q:#?}");
    assert!(q.iter().any(|l| l.contains("|6|type|column \"amount\": \"not-a-number\" is not a float64")), "{q:#?}");
}

#[test]
fn a_declared_schema_that_does_not_fit_is_named() {
    let d = dirs();
    let p = write(&d.root, "t.csv", TRADES.as_bytes());
    let e = run(&d, &p, json!({"schema": [{"name": "id", "type": "int64"}, {"name": "side", "type": "string"}]}))
        .expect_err("side is not in the file");
    assert!(matches!(e, DataError::Schema(_)), "{e}");
    assert!(e.to_string().contains("\"side\"") && e.to_string().contains("id, ts, symbol"), "{e}");
    assert!(!e.is_retryable());
    // A declared type the values do not fit quarantines the rows, naming column and value.
    let r = run(&d, &p, json!({"schema": [{"name": "symbol", "type": "int64"}, {"name": "id", "type": "int64"}]}))
        .expect("converts");
    assert_eq!((r.rows_written, r.rows_quarantined), (0, 3));
    assert!(quarantined(&r)[0].contains("column \"symbol\": \"AAPL\" is not a int64"));
    assert_eq!(r.ignored_columns, vec!["ts", "price", "qty", "venue"]);
}

#[test]
fn empty_and_header_only_files_are_zero_rows() {
    let d = dirs();
    for (name, bytes) in
        [("empty.csv", &b""[..]), ("header.csv", b"a,b\n"), ("empty.ndjson", b"\n\n"), ("e.json", b"[]")]
    {
        let p = write(&d.root, name, bytes);
        let r = run(&d, &p, json!({})).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((r.rows_read, r.rows_written, r.rows_quarantined), (0, 0, 0), "{name}");
        assert!(r.quarantine.is_none(), "{name}");
    }
    let p = write(&d.root, "none.csv", b"");
    let e = run(&d, &p, json!({"rules": {"min_rows": 1}})).expect_err("min rows");
    assert!(e.to_string().contains("min_rows 1"), "{e}");
}

#[test]
fn ndjson_json_and_xml_read_into_the_same_rows() {
    let d = dirs();
    let nd = write(
        &d.root,
        "t.ndjson",
        b"{\"id\": 1, \"name\": \"a\", \"tags\": [\"x\"]}\n{\"id\": 2, \"name\": \"\xc3\xa9\"}\nnot json\n[1]\n{\"id\": 3, \"name\": null, \"late\": true}\n",
    );
    // Two rows a chunk: the columns are those of the first chunk, later keys are reported.
    let r = run(&d, &nd, json!({"batch_rows": 2})).expect("ndjson");
    assert_eq!(r.format, "ndjson");
    assert_eq!((r.rows_read, r.rows_written, r.rows_quarantined), (5, 3, 2));
    assert_eq!(rows(&output(&r)), vec!["1|a|[\"x\"]", "2|é|∅", "3|∅|∅"]);
    assert_eq!(r.ignored_columns, vec!["late"]);
    let q = quarantined(&r);
    assert!(q.iter().any(|l| l.contains("|3|parse|line is not JSON")), "{q:#?}");
    assert!(q.iter().any(|l| l.contains("|4|parse|line is JSON an array where a JSON object was expected")), "{q:#?}");

    let arr = write(&d.root, "t.json", br#"[{"id": 1, "name": "a"}, {"id": 2, "name": "b", "x": {"y": 1}}]"#);
    let r = run(&d, &arr, json!({})).expect("json");
    assert_eq!(rows(&output(&r)), vec!["1|a|∅", "2|b|{\"y\":1}"]);

    let broken = write(&d.root, "broken.json", br#"[{"id": 1}, {"id": 2"#);
    let e = run(&d, &broken, json!({})).expect_err("truncated");
    assert!(matches!(e, DataError::Format(_)) && e.to_string().contains("json:"), "{e}");
    assert!(!walk(&d.root.join("staging")).iter().any(|f| f.contains("broken")), "nothing staged for a failed input");

    let xml = write(
        &d.root,
        "t.xml",
        br#"<?xml version="1.0"?>
<trades source="x">
  <trade id="1"><sym>AT&amp;T</sym><px>10.5</px><venue code="XNYS">NYSE</venue></trade>
  <trade id="2"><sym><![CDATA[B<C]]></sym><px>11</px></trade>
  <trade id="3"/>
</trades>"#,
    );
    let r = run(&d, &xml, json!({})).expect("xml");
    assert_eq!(r.format, "xml");
    assert_eq!(
        r.schema.iter().map(|(n, t)| format!("{n}:{t}")).collect::<Vec<_>>(),
        vec!["id:int64", "sym:string", "px:float64", "venue.code:string", "venue:string"]
    );
    assert_eq!(rows(&output(&r)), vec!["1|AT&T|10.5|XNYS|NYSE", "2|B<C|11.0|∅|∅", "3|∅|∅|∅|∅"]);
    let bad = write(&d.root, "bad.xml", b"<rows><row><a>1</a></row><row><a>2</b></row></rows>");
    let e = run(&d, &bad, json!({})).expect_err("malformed");
    assert!(e.to_string().contains("xml:"), "{e}");
}

#[test]
fn parquet_input_passes_its_types_through_or_casts_to_a_declared_schema() {
    let d = dirs();
    let csv = write(&d.root, "src.csv", TRADES.as_bytes());
    let first = run(&d, &csv, json!({})).expect("csv");
    let staged = output(&first)[0].clone();
    let pq = d.root.join("copy.bin");
    std::fs::copy(&staged, &pq).expect("copy");
    let r = run(&d, &pq, json!({})).expect("parquet");
    assert_eq!(r.format, "parquet");
    assert_eq!(rows(&output(&r)), rows(std::slice::from_ref(&staged)));
    let r = run(&d, &pq, json!({"schema": [{"name": "price", "type": "string"}, {"name": "qty", "type": "float64"}]}))
        .expect("cast");
    assert_eq!(rows(&output(&r)), vec!["189.5|100.0", "402.25|50.0", "12.0|7.0"]);
}

#[test]
fn quality_rules_quarantine_rows_and_thresholds_fail_the_input_without_writing() {
    let d = dirs();
    let p =
        write(&d.root, "q.csv", b"id,side,price,sym\n1,B,10,AAPL\n2,S,-5,MSFT\n2,B,11,MSFT\n3,X,12,msft\n4,S,13,\n");
    let sink = d.root.join("dataset");
    let step = json!({
        "rules": {"not_null": ["sym"], "unique": ["id"], "ranges": {"price": {"min": 0}},
                  "allowed": {"side": ["B", "S"]}, "patterns": {"sym": "[A-Z]+"}},
        "sinks": [{"type": "parquet", "path": sink}]
    });
    let r = run(&d, &p, step.clone()).expect("converts");
    assert_eq!((r.rows_read, r.rows_written, r.rows_quarantined), (5, 2, 3));
    // One reason per row: the first rule it breaks (row 4 breaks both pattern and allowed).
    assert_eq!(
        r.quarantined_by_rule,
        [("not_null".to_string(), 1), ("pattern".to_string(), 1), ("range".to_string(), 1)].into()
    );
    assert_eq!(rows(&r.sink_files.iter().map(PathBuf::from).collect::<Vec<_>>()), vec!["1|B|10|AAPL", "2|B|11|MSFT"]);

    let mut strict = step.clone();
    strict["rules"]["max_quarantined_ratio"] = json!(0.1);
    strict["sinks"] = json!([{"type": "parquet", "path": d.root.join("strict")}]);
    let e = run(&d, &p, strict).expect_err("threshold");
    assert!(matches!(e, DataError::Quality(_)), "{e}");
    assert!(e.to_string().contains("3 of 5 rows quarantined (60.00%)") && e.to_string().contains("quarantine"), "{e}");
    let written: Vec<_> = walk(&d.root.join("strict")).into_iter().filter(|f| !f.contains("_weir")).collect();
    assert!(written.is_empty(), "nothing may land when the input fails: {written:?}");
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_partitioned_dataset_is_replaced_per_input_and_refuses_a_stale_fence() {
    let d = dirs();
    let sink = d.root.join("trades");
    let step = json!({"sinks": [{"type": "parquet", "path": sink, "partition_by": "ts"}]});
    let csv = "id,ts\n1,2026-11-20T10:00:00Z\n2,2026-11-21T10:00:00Z\n3,2026-11-21T11:00:00Z\n";
    let p = write(&d.root, "a.csv", csv.as_bytes());
    let input = Input { path: p.clone(), identity: "s3://bucket/a.csv".into() };
    let r = land(&input, &plan(&d, step.clone(), "task-1", 1)).expect("first");
    let files: Vec<String> = walk(&sink).into_iter().filter(|f| f.ends_with(".parquet")).collect();
    assert_eq!(files.len(), 2, "{files:?}");
    // Folders named for the date, not the timestamp, so no reader takes one for the other.
    assert!(files[0].contains("/ts_date=2026-11-20/") && files[1].contains("/ts_date=2026-11-21/"), "{files:?}");
    assert_eq!(r.sink_files.len(), 2);

    // The same input again (a retry under a newer lease): replaced, not duplicated.
    land(&input, &plan(&d, step.clone(), "task-1", 2)).expect("retry");
    let all = |dir: &Path| {
        rows(
            &walk(dir)
                .into_iter()
                .filter(|f| f.ends_with(".parquet") && !f.contains("_weir"))
                .map(PathBuf::from)
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(all(&sink).len(), 3);

    // A stale worker of the same task, older lease: refused, nothing changes.
    let e = land(&input, &plan(&d, step.clone(), "task-1", 1)).expect_err("stale");
    assert!(matches!(e, DataError::StaleFence(_)), "{e}");
    assert_eq!(all(&sink).len(), 3);

    // The file changed upstream and shrank: its old rows go, in every partition.
    std::fs::write(&p, "id,ts\n9,2026-11-22T00:00:00Z\n").expect("rewrite");
    land(&input, &plan(&d, step.clone(), "task-2", 1)).expect("new run");
    assert_eq!(all(&sink), vec!["9|2026-11-22T00:00:00Z"]);

    // Another input lands beside it.
    let q = write(&d.root, "b.csv", b"id,ts\n10,2026-11-22T01:00:00Z\n");
    land(&Input { path: q, identity: "s3://bucket/b.csv".into() }, &plan(&d, step, "task-3", 1)).expect("b");
    assert_eq!(all(&sink).len(), 2);
}

#[test]
fn a_cancelled_conversion_commits_nothing() {
    let d = dirs();
    let mut csv = String::from("id\n");
    for i in 0..50_000 {
        csv.push_str(&format!("{i}\n"));
    }
    let p = write(&d.root, "big.csv", csv.as_bytes());
    let sink = d.root.join("out");
    let pl = plan(&d, json!({"batch_rows": 1000, "sinks": [{"type": "parquet", "path": sink}]}), "t", 1);
    pl.cancel.store(true, std::sync::atomic::Ordering::Relaxed);
    let e = land(&Input { path: p.clone(), identity: "big".into() }, &pl).expect_err("cancelled");
    assert!(matches!(e, DataError::Cancelled) && e.is_retryable(), "{e}");
    assert!(walk(&sink).iter().all(|f| f.contains("_weir")), "{:?}", walk(&sink));
}

#[test]
fn bad_files_are_named() {
    let d = dirs();
    let p = write(&d.root, "photo.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\xff\xfe");
    let e = run(&d, &p, json!({})).expect_err("binary");
    assert!(matches!(e, DataError::Format(_)) && e.to_string().contains("photo.jpg"), "{e}");
    let p = write(&d.root, "fake.csv.gz", b"\x1f\x8b\x08\x00garbage");
    let e = run(&d, &p, json!({})).expect_err("bad gzip");
    assert!(e.to_string().contains("fake.csv.gz"), "{e}");
    let e = run(&d, &d.root.join("missing.csv"), json!({})).expect_err("missing");
    assert!(matches!(e, DataError::Io { .. }) && e.to_string().contains("missing.csv"), "{e}");
}

#[test]
fn rows_are_never_lost_whatever_the_mix() {
    // Accounting on a larger mixed file: every row is either written or quarantined.
    let d = dirs();
    let mut csv = String::from("id,v\n");
    for i in 0..20_000u32 {
        match i % 7 {
            0 => csv.push_str(&format!("{i},x\n")),
            1 => csv.push_str(&format!("{i}\n")),
            _ => csv.push_str(&format!("{i},{}\n", i * 2)),
        }
    }
    let p = write(&d.root, "mix.csv", csv.as_bytes());
    let r = run(
        &d,
        &p,
        json!({"batch_rows": 777, "schema": [{"name": "id", "type": "int64"}, {"name": "v", "type": "int64"}]}),
    )
    .expect("converts");
    assert_eq!(r.rows_read, 20_000);
    assert_eq!(r.rows_written + r.rows_quarantined, 20_000);
    assert_eq!(rows(&output(&r)).len() as u64, r.rows_written);
    assert_eq!(quarantined(&r).len() as u64, r.rows_quarantined);
    assert_eq!(r.rows_quarantined, 2 * 20_000u64.div_ceil(7) - 1);
    let first_col: Vec<i64> =
        rows(&output(&r)).iter().map(|l| l.split('|').next().and_then(|v| v.parse().ok()).unwrap_or(-1)).collect();
    assert!(first_col.windows(2).all(|w| w[0] < w[1]), "order kept");
}

#[test]
fn a_column_name_postgres_would_cut_is_refused_for_a_postgres_sink() {
    let d = dirs();
    let long = "a_column_name_that_goes_on_and_on_for_longer_than_postgres_allows_it";
    let p = write(&d.root, "long.csv", format!("id,{long}\n1,x\n").as_bytes());
    let step = DataStep::parse(
        "store",
        Some(&json!({"sinks": [{"type": "postgres", "url_env": "PG", "table": "t", "create": true}]})),
    )
    .expect("step");
    let mut pl = plan(&d, json!({}), "t", 1);
    pl.step = Arc::new(step);
    pl.sinks = Arc::new(vec![weir_data::sink::SinkState { name: "postgres table t".into(), current: None }]);
    let e = convert(&Input { path: p, identity: "long.csv".into() }, &pl).expect_err("refused");
    assert!(matches!(e, DataError::Schema(_)) && e.to_string().contains(long) && e.to_string().contains("63"), "{e}");
}

/// `dedupe`: rows whose key a sink holds already, or an earlier row of the step had, are
/// not written again and are counted; a retry of an input does not take its own landed
/// rows for duplicates.
#[test]
fn dedupe_writes_each_key_once_and_a_retry_rewrites_its_own_rows() {
    let d = dirs();
    let lake = d.root.join("lake");
    let step = json!({"sinks": [{"type": "parquet", "path": lake.display().to_string()}], "dedupe": {"key": ["id"]}});
    let landed = |pl: &Plan, path: &Path| {
        let seen = weir_data::dedupe::Seen::load(
            &pl.step,
            &[weir_data::sink::input_key(&path.display().to_string())].into_iter().collect(),
        )
        .expect("keys")
        .map(Arc::new);
        let pl = Plan { dedupe: seen, ..pl.clone() };
        land(&Input { path: path.to_path_buf(), identity: path.display().to_string() }, &pl).expect("lands")
    };
    let day1 = write(&d.root, "day1.csv", b"id,name\n1,ada\n2,bob\n3,cy\n");
    let r = landed(&plan(&d, step.clone(), "t1", 1), &day1);
    assert_eq!((r.rows_read, r.rows_written, r.rows_duplicate), (3, 3, 0));
    // A recovered file repeating two landed records and one twice in itself.
    let recovered = write(&d.root, "recovered.csv", b"id,name\n2,bob\n3,cy\n4,di\n4,di\n5,ed\n");
    let r = landed(&plan(&d, step.clone(), "t2", 1), &recovered);
    assert_eq!((r.rows_read, r.rows_written, r.rows_quarantined, r.rows_duplicate), (5, 2, 0, 3));
    r.check_accounting().expect("read = written + quarantined + duplicate");
    // The same input again (a retry): its own rows are not duplicates of themselves.
    let r = landed(&plan(&d, step.clone(), "t2", 2), &recovered);
    assert_eq!((r.rows_written, r.rows_duplicate), (2, 3));
    let files: Vec<PathBuf> = std::fs::read_dir(&lake)
        .expect("lake")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    let mut all = rows(&files);
    all.sort();
    assert_eq!(all, vec!["1|ada", "2|bob", "3|cy", "4|di", "5|ed"]);
    // A key the data does not have is named.
    let bad = json!({"sinks": [{"type": "parquet", "path": lake.display().to_string()}], "dedupe": {"key": ["nope"]}});
    let e = weir_data::dedupe::Seen::load(&plan(&d, bad, "t3", 1).step, &Default::default())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("nope"), "{e}");
}

/// A task's newer lease fences every input it writes, not only the one it replaced: the
/// former owner of a stream cannot land a range the new owner never wrote.
#[test]
fn a_stale_attempt_cannot_commit_another_input_once_a_newer_one_has() {
    let d = dirs();
    let lake = d.root.join("lake");
    let step = json!({"sinks": [{"type": "parquet", "path": lake.display().to_string()}]});
    let a = write(&d.root, "a.ndjson", b"{\"id\": 1}\n");
    let b = write(&d.root, "b.ndjson", b"{\"id\": 2}\n");
    let input = |p: &Path| Input { path: p.to_path_buf(), identity: p.display().to_string() };
    land(&input(&a), &plan(&d, step.clone(), "stream-task", 2)).expect("the new owner lands");
    let e = land(&input(&b), &plan(&d, step.clone(), "stream-task", 1)).expect_err("the former owner is refused");
    assert_eq!(e.kind(), "stale_fence", "{e}");
    land(&input(&b), &plan(&d, step.clone(), "stream-task", 2)).expect("the new owner lands that input too");
    land(&input(&b), &plan(&d, step, "another-task", 1)).expect("another task is not fenced by it");
}
