//! Bounded memory: a generated 2 GiB CSV converts to Parquet with this process's peak
//! resident memory under 512 MiB, every row accounted for. (A test binary of its own, so
//! the peak is this conversion's alone.)

use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use weir_core::dataset::DataStep;
use weir_data::pipeline::{convert, Input, Plan};
use weir_data::sink::WriteFence;

fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb / 1024)
        .unwrap_or(u64::MAX)
}

#[test]
fn a_two_gib_csv_converts_in_bounded_memory() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = dir.path().join("big.csv");
    // 1 MiB of rows, written 2,048 times (with a block number so values differ).
    let mut block = String::new();
    let mut rows_per_block = 0u64;
    while block.len() < (1 << 20) - 200 {
        let i = rows_per_block;
        block.push_str(&format!(
            ",{i},2026-11-20T{:02}:{:02}:{:02}Z,SYM{:03},{},{}.{:02},{}\n",
            i / 3600 % 24,
            i / 60 % 60,
            i % 60,
            i % 500,
            if i.is_multiple_of(2) { "B" } else { "S" },
            10 + i % 990,
            i % 100,
            1 + i % 5000
        ));
        rows_per_block += 1;
    }
    let blocks = 2048u64;
    {
        let mut w = std::io::BufWriter::with_capacity(1 << 22, std::fs::File::create(&input).expect("create"));
        w.write_all(b"block,seq,ts,symbol,side,price,qty\n").expect("header");
        for b in 0..blocks {
            let prefix = b.to_string();
            for line in block.lines() {
                w.write_all(prefix.as_bytes()).expect("write");
                w.write_all(line.as_bytes()).expect("write");
                w.write_all(b"\n").expect("write");
            }
        }
        w.flush().expect("flush");
    }
    let size = std::fs::metadata(&input).expect("meta").len();
    assert!(size >= 2 << 30, "a multi-gigabyte input: {size} bytes");
    let before = peak_rss_mib();
    let plan = Plan {
        sinks: Default::default(),
        step: Arc::new(DataStep::parse("convert", None).expect("step")),
        staging: Some(dir.path().join("staged")),
        quarantine: dir.path().join("quarantine"),
        outgoing: dir.path().join("outgoing"),
        fence: WriteFence { task: "mem".into(), fence: 1 },
        now_micros: 0,
        cancel: Arc::new(AtomicBool::new(false)),
        dedupe: None,
    };
    let r = convert(&Input { path: input.clone(), identity: "big.csv".into() }, &plan).expect("converts");
    let peak = peak_rss_mib();
    std::fs::remove_file(&input).ok();
    assert_eq!(r.rows_read, rows_per_block * blocks);
    assert_eq!((r.rows_written, r.rows_quarantined), (r.rows_read, 0));
    let out = r.output.expect("staged parquet");
    let meta = parquet::file::reader::SerializedFileReader::new(std::fs::File::open(&out).expect("open"))
        .map(|f| parquet::file::reader::FileReader::metadata(&f).file_metadata().num_rows())
        .expect("parquet");
    assert_eq!(meta as u64, r.rows_written, "the Parquet file holds every row");
    println!("converted {size} bytes; peak RSS {peak} MiB (before: {before} MiB)");
    assert!(peak < 512, "peak resident memory {peak} MiB for a {} MiB input", size >> 20);
}
