//! Names an input's compression and format from its first bytes, its name and what the
//! step declared. Pure functions over a byte prefix: no I/O here.
//!
//! Content wins over the name where they disagree (a `.csv` that starts with `PAR1` is
//! Parquet), and a declared setting wins over both.

use weir_core::dataset::{Compression, FormatKind, FormatSpec};

use crate::DataError;

/// How many decompressed bytes detection looks at.
pub const SNIFF_BYTES: usize = 64 * 1024;

/// A CSV dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CsvDialect {
    pub delimiter: u8,
    pub quote: u8,
    pub header: bool,
}

/// What an input is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    Csv(CsvDialect),
    /// One JSON array of objects.
    Json,
    /// One JSON object per line.
    Ndjson,
    /// Records are the elements named `record` (absent: the root's first child's name).
    Xml {
        record: Option<String>,
    },
    Parquet,
}

impl Format {
    /// The format's name in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Format::Csv(d) if d.delimiter == b'\t' => "tsv",
            Format::Csv(_) => "csv",
            Format::Json => "json",
            Format::Ndjson => "ndjson",
            Format::Xml { .. } => "xml",
            Format::Parquet => "parquet",
        }
    }
}

/// The compression of an input, from its magic bytes, else its name, unless declared.
pub fn compression(name: &str, magic: &[u8], declared: Option<Compression>) -> Compression {
    if let Some(c) = declared {
        return c;
    }
    if magic.starts_with(&[0x1f, 0x8b]) {
        return Compression::Gzip;
    }
    if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Compression::Zstd;
    }
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".gz") || lower.ends_with(".gzip") {
        Compression::Gzip
    } else if lower.ends_with(".zst") || lower.ends_with(".zstd") {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// The format of an input, given its decompressed first bytes (`head`, at most
/// [`SNIFF_BYTES`]), its name, and the step's declared format.
pub fn format(name: &str, head: &[u8], spec: Option<&FormatSpec>) -> Result<Format, DataError> {
    let declared = spec.and_then(|s| s.kind);
    let kind = match declared {
        Some(k) => k,
        None => sniff_kind(name, head)?,
    };
    let text_setting = |v: &Option<String>, default: u8| v.as_deref().and_then(|s| s.bytes().next()).unwrap_or(default);
    Ok(match kind {
        FormatKind::Csv | FormatKind::Tsv => {
            let delimiter = match spec.and_then(|s| s.delimiter.as_ref()) {
                Some(d) => text_setting(&Some(d.clone()), b','),
                None if kind == FormatKind::Tsv => b'\t',
                None => sniff_delimiter(head),
            };
            let quote = text_setting(&spec.and_then(|s| s.quote.clone()), b'"');
            let header = match spec.and_then(|s| s.header) {
                Some(h) => h,
                None => sniff_header(head, delimiter, quote),
            };
            Format::Csv(CsvDialect { delimiter, quote, header })
        }
        FormatKind::Json => Format::Json,
        FormatKind::Ndjson => Format::Ndjson,
        FormatKind::Xml => Format::Xml { record: spec.and_then(|s| s.record.clone()) },
        FormatKind::Parquet => Format::Parquet,
    })
}

/// The kind from content first, then the name.
fn sniff_kind(name: &str, head: &[u8]) -> Result<FormatKind, DataError> {
    if head.starts_with(b"PAR1") {
        return Ok(FormatKind::Parquet);
    }
    let body = head.strip_prefix(b"\xef\xbb\xbf").unwrap_or(head);
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let lower = name.to_ascii_lowercase();
    let stem =
        lower.trim_end_matches(".gz").trim_end_matches(".gzip").trim_end_matches(".zst").trim_end_matches(".zstd");
    match first {
        Some(b'[') => Ok(FormatKind::Json),
        Some(b'{') if stem.ends_with(".json") && !looks_line_delimited(body) => Ok(FormatKind::Json),
        Some(b'{') => Ok(FormatKind::Ndjson),
        Some(b'<') => Ok(FormatKind::Xml),
        None if head.is_empty() => {
            // An empty file: trust the name, so an empty CSV reads as zero rows.
            Ok(by_name(stem).unwrap_or(FormatKind::Csv))
        }
        None => Ok(FormatKind::Csv),
        Some(_) if looks_binary(body) => Err(DataError::Format(format!(
            "{name}: not text and not Parquet (its first bytes hold NUL or mostly non-UTF-8 bytes); formats read: csv, tsv, json, ndjson, xml, parquet"
        ))),
        Some(_) => Ok(if stem.ends_with(".tsv") || stem.ends_with(".tab") { FormatKind::Tsv } else { FormatKind::Csv }),
    }
}

fn by_name(stem: &str) -> Option<FormatKind> {
    let ext = stem.rsplit('.').next()?;
    Some(match ext {
        "csv" | "txt" => FormatKind::Csv,
        "tsv" | "tab" => FormatKind::Tsv,
        "json" => FormatKind::Json,
        "ndjson" | "jsonl" => FormatKind::Ndjson,
        "xml" => FormatKind::Xml,
        "parquet" => FormatKind::Parquet,
        _ => return None,
    })
}

/// A `{` file is NDJSON when its first line closes the object it opens.
fn looks_line_delimited(body: &[u8]) -> bool {
    let line = body.split(|&b| b == b'\n').next().unwrap_or(body);
    serde_json::from_slice::<serde_json::Value>(line).is_ok()
}

/// Binary, not text with a few bad bytes (those rows are rejected one by one): a NUL, or
/// more than 5% of the head not UTF-8.
fn looks_binary(b: &[u8]) -> bool {
    if b.contains(&0) {
        return true;
    }
    let text = String::from_utf8_lossy(b);
    let bad = text.chars().filter(|&c| c == char::REPLACEMENT_CHARACTER).count();
    bad * 20 > text.chars().count().max(1)
}

/// Complete lines of the head (the last one may be cut off by the sniff limit).
fn whole_lines(head: &[u8]) -> &[u8] {
    if head.len() < SNIFF_BYTES {
        return head;
    }
    match head.iter().rposition(|&b| b == b'\n') {
        Some(i) => &head[..=i],
        None => head,
    }
}

fn records(head: &[u8], delimiter: u8, quote: u8, limit: usize) -> Vec<csv::StringRecord> {
    csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .quote(quote)
        .has_headers(false)
        .flexible(true)
        .from_reader(whole_lines(head))
        .into_records()
        .take(limit)
        .filter_map(Result::ok)
        .collect()
}

/// The candidate delimiter that splits the most rows into the same number (> 1) of fields.
fn sniff_delimiter(head: &[u8]) -> u8 {
    let mut best = (b',', 0usize, 0usize);
    for d in [b',', b'\t', b';', b'|'] {
        let recs = records(head, d, b'"', 200);
        let mut counts = std::collections::HashMap::new();
        for r in &recs {
            *counts.entry(r.len()).or_insert(0usize) += 1;
        }
        let (fields, rows) = counts.into_iter().max_by_key(|&(f, n)| (n, f)).unwrap_or((0, 0));
        if fields > 1 && (rows, fields) > (best.1, best.2) {
            best = (d, rows, fields);
        }
    }
    best.0
}

/// A first row is a header when its fields are all present, distinct and none of them
/// looks like data (a number written with digits, a date, a boolean) — unless the other
/// rows are all text too and the first row repeats them, which no file does in practice.
fn sniff_header(head: &[u8], delimiter: u8, quote: u8) -> bool {
    use weir_core::dataset::ColumnType;
    let recs = records(head, delimiter, quote, 2);
    let Some(first) = recs.first() else { return true };
    let mut seen = std::collections::HashSet::new();
    first.iter().all(|f| {
        let f = f.trim();
        // "inf" reads as a float, but as a column name it is a word.
        let data = match crate::typing::infer_value(f) {
            ColumnType::String => false,
            ColumnType::Float64 => f.bytes().any(|b| b.is_ascii_digit()),
            _ => true,
        };
        !f.is_empty() && seen.insert(f) && !data
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sniff(name: &str, head: &[u8]) -> Format {
        format(name, head, None).expect("detects")
    }

    #[test]
    fn a_header_of_words_is_a_header_even_when_a_word_parses_as_a_number() {
        assert!(sniff_header(b"big,inf,nan,when\n1,2,3,2026-11-23\n", b',', b'"'));
        assert!(!sniff_header(b"1,2.5,2026-11-23\n3,4,5\n", b',', b'"'));
    }

    #[test]
    fn compression_by_magic_then_name() {
        assert_eq!(compression("a.csv", &[0x1f, 0x8b, 8], None), Compression::Gzip);
        assert_eq!(compression("a.csv", &[0x28, 0xb5, 0x2f, 0xfd], None), Compression::Zstd);
        assert_eq!(compression("a.csv.zst", b"", None), Compression::Zstd);
        assert_eq!(compression("a.csv", b"id,x", None), Compression::None);
        assert_eq!(compression("a.gz", b"id", Some(Compression::None)), Compression::None);
    }

    #[test]
    fn formats_from_content() {
        assert_eq!(sniff("x.bin", b"PAR1\x15\x04"), Format::Parquet);
        assert_eq!(sniff("x", b"  [{\"a\":1}]"), Format::Json);
        assert_eq!(sniff("x.json", b"{\"a\":1}\n{\"a\":2}\n"), Format::Ndjson);
        assert_eq!(sniff("x.json", b"{\n  \"a\": 1\n}"), Format::Json);
        assert_eq!(sniff("x.txt", b"<?xml version=\"1.0\"?><rows/>"), Format::Xml { record: None });
        let csv = |d: u8, h: bool| Format::Csv(CsvDialect { delimiter: d, quote: b'"', header: h });
        assert_eq!(sniff("t.csv", b"id,name,price\n1,a,2.5\n2,b,3\n"), csv(b',', true));
        assert_eq!(sniff("t.csv", b"id;name;note\n1;a;x,y\n2;b;z\n"), csv(b';', true));
        assert_eq!(sniff("t.dat", b"id\tname\n1\ta\n"), csv(b'\t', true));
        assert_eq!(sniff("t.csv", b"1,a,2.5\n2,b,3\n"), csv(b',', false));
        assert_eq!(sniff("t.csv", b"\"a,b\",c\n\"x,y\",z\n"), csv(b',', true));
        assert_eq!(sniff("empty.ndjson", b""), Format::Ndjson);
        assert_eq!(format("t.tsv", b"", None).expect("empty").name(), "tsv");
    }

    #[test]
    fn declared_settings_win() {
        let spec = FormatSpec {
            kind: Some(FormatKind::Csv),
            delimiter: Some("|".into()),
            header: Some(false),
            ..FormatSpec::default()
        };
        assert_eq!(
            format("x.json", b"[1]", Some(&spec)).expect("declared"),
            Format::Csv(CsvDialect { delimiter: b'|', quote: b'"', header: false })
        );
    }

    #[test]
    fn binary_is_refused_by_name() {
        let e = format("photo.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\xff\xfe", None).expect_err("binary");
        assert!(e.to_string().contains("not text"), "{e}");
    }
}
