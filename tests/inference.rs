//! Weir's type inference against pyarrow's, on a corpus of varied CSV files of the kinds
//! data teams ingest (trades, a survey full of null markers, sensor readings, a legacy
//! export, and a file of edge cases): every column types the same, or the difference is
//! one of the documented ones below, each of which must still occur (so the list stays
//! true).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use weir_data::typing::InputSchema;

const TRADES: &str = "trade_id,ts,symbol,side,price,qty,venue\n\
1,2026-11-20T09:30:00.125Z,AAPL,B,189.50,100,XNAS\n\
2,2026-11-20T09:30:00.250Z,MSFT,S,402.25,50,XNYS\n\
3,2026-11-20T09:30:01.000Z,AAPL,S,189.45,200,BATS\n";

const SURVEY: &str = "respondent,age,income,satisfied,country,joined,score,comment\n\
r1,34,52000,True,DE,2024-01-15,7.5,\"fine, thanks\"\n\
r2,NA,N/A,False,NA,2023-11-02,nan,\n\
r3,,NULL,,FR,,8,\"said \"\"ok\"\"\"\n\
r4,51,#N/A,TRUE,NA,2025-06-30,NaN,n/a\n\
r5,29,61000.5,false,US,2024-12-31,-1.#IND,null\n";

const SENSORS: &str = "device,reading_at,temp,humidity,ok,status,battery\n\
s-01,2026-11-23 07:00:00.123,-3.5,81,1,true,0.97\n\
s-02,2026-11-23 07:00:00.456,NaN,79,0,1,1\n\
s-03,2026-11-23 07:00:01,#N/A,80,1,0,N/A\n\
s-04,2026-11-23 07:00:02,21.25,,0,false,0.5\n";

const LEGACY: &str = "order_no,zip,amount,discount,placed,tracking,notes,code\n\
007,02134,$12.50,5%,11/23/2026,0x1F,\"rush, fragile\",A1\n\
008,10001,$3.00,0%,11/24/2026,0x2A,,B2\n\
010,94105,$7.25,10%,11/25/2026,0x3,none,C3\n";

const EDGES: &str = "big,sci,plus,inf,time,minutes,mixed_tz,nothing,casing,leap,padded,zero_one,neg\n\
99999999999999999999,1e3,+5,inf,07:00:00,2026-11-23 07:00,2026-11-23T07:00:00Z,,tRUE,2024-02-29, 42 ,0,-0\n\
1,2.5E-2,+6,-Infinity,08:30:00,2026-11-23 08:00,2026-11-23 08:00:00,,False,2023-02-29,43,1,-7\n";

/// Differences kept on purpose: (file, column, pyarrow's type, Weir's type, why).
const DOCUMENTED: &[(&str, &str, &str, &str, &str)] = &[
    (
        "legacy.csv",
        "tracking",
        "int64",
        "string",
        "hex is read as text: arrow's parsers read decimal only, and an identifier written in hex is not a quantity",
    ),
    ("edges.csv", "time", "time32[s]", "string", "Weir has no time-of-day type; the text is kept"),
    (
        "edges.csv",
        "minutes",
        "timestamp[s]",
        "string",
        "arrow's timestamp parser wants seconds; the text is kept rather than guessed",
    ),
    (
        "edges.csv",
        "mixed_tz",
        "string",
        "timestamp",
        "a timestamp without an offset is UTC in Weir, so zoned and unzoned values mix",
    ),
    (
        "edges.csv",
        "nothing",
        "null",
        "string",
        "Weir has no null type: an all-null column is text, which any later value fits",
    ),
];

/// pyarrow's type as a Weir column type name.
fn class(pyarrow: &str) -> &str {
    match pyarrow {
        "int64" => "int64",
        "double" => "float64",
        "bool" => "boolean",
        "date32[day]" => "date",
        "string" | "large_string" => "string",
        t if t.starts_with("timestamp") => "timestamp",
        other => other,
    }
}

fn corpus(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for (name, body) in [
        ("trades.csv", TRADES),
        ("survey.csv", SURVEY),
        ("sensors.csv", SENSORS),
        ("legacy.csv", LEGACY),
        ("edges.csv", EDGES),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, body).expect("write");
        files.push(p);
    }
    // The same trades, gzipped: detected from the content by Weir, the name by pyarrow.
    let gz = dir.join("trades-gz.csv.gz");
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut e, TRADES.as_bytes()).expect("gzip");
    std::fs::write(&gz, e.finish().expect("gzip")).expect("write");
    files.push(gz);
    files
}

/// Weir's inferred types of a file: its first chunk typed as the pipeline types it.
fn weir_types(path: &Path) -> Vec<(String, String)> {
    let mut opened = weir_data::read::open(path, None, 8192).expect("opens");
    let first = opened.source.next_chunk().expect("reads").expect("a chunk");
    let input = InputSchema::resolve(None, &first.batch, opened.source.positional(), None).expect("types");
    input.fields.iter().map(|f| (f.name.clone(), f.kind.as_str().to_string())).collect()
}

#[test]
fn inferred_types_match_pyarrows_or_differ_as_documented() {
    let dir = tempfile::tempdir().expect("tmp");
    let files = corpus(dir.path());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/infer_types.py");
    let out = std::process::Command::new(weir_tests::python()).arg(script).args(&files).output().expect("python");
    assert!(out.status.success(), "pyarrow: {}", String::from_utf8_lossy(&out.stderr));
    let pyarrow: BTreeMap<String, Vec<(String, String)>> = serde_json::from_slice(&out.stdout).expect("json");

    let mut unexplained = Vec::new();
    let mut seen = Vec::new();
    let mut columns = 0;
    for f in &files {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let theirs = &pyarrow[&f.display().to_string()];
        let ours = weir_types(f);
        assert_eq!(
            ours.iter().map(|c| &c.0).collect::<Vec<_>>(),
            theirs.iter().map(|c| &c.0).collect::<Vec<_>>(),
            "{name}: columns"
        );
        for ((col, weir), (_, arrow)) in ours.iter().zip(theirs) {
            columns += 1;
            if class(arrow) == weir {
                continue;
            }
            match DOCUMENTED.iter().find(|d| d.0 == name && d.1 == col && d.2 == arrow && d.3 == weir) {
                Some(d) => seen.push((d.0, d.1)),
                None => unexplained.push(format!("{name}.{col}: pyarrow {arrow}, Weir {weir}")),
            }
        }
    }
    assert!(unexplained.is_empty(), "undocumented differences: {unexplained:#?}");
    let stale: Vec<_> =
        DOCUMENTED.iter().filter(|d| !seen.contains(&(d.0, d.1))).map(|d| format!("{}.{}", d.0, d.1)).collect();
    assert!(stale.is_empty(), "documented differences that no longer occur: {stale:?}");
    assert!(columns >= 40, "the corpus has {columns} columns");
}
