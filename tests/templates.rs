//! The API templates and `realtime_stream` through the five real binaries and the `weir`
//! CLI, against WireMock (plain HTTP and HTTPS with a test CA on one server) and the NATS
//! server: `standard` from a bearer-protected API into Parquet; `secure_api` over
//! verified, pinned TLS into an encrypted dataset with its personal data masked;
//! `resilient_fetch` recovering a job whose primary failed half way from a fallback,
//! without duplicates; and `realtime_stream` probing a JetStream stream and consuming it
//! into Parquet with a rule checked per record. The managers read their credentials and
//! keys from their own environment, as they would on a cluster.

use std::path::Path;

use base64::Engine;
use serde_json::{json, Value};
use weir_tests::*;

struct Platform {
    url: String,
    _master: Proc,
    _managers: Vec<Proc>,
}

fn start(store_url: &str, dir: &Path, env: &[(&str, &str)]) -> Platform {
    let (url, master) = spawn_master(store_url);
    let data = dir.join("data").display().to_string();
    let datasets = format!("sqlite://{}", dir.join("datasets.db").display());
    let files = format!("sqlite://{}", dir.join("files.db").display());
    let managers = ["api", "file", "batch", "stream"]
        .iter()
        .map(|q| {
            let mut e = vec![
                ("WEIR_MASTER_URL", url.as_str()),
                ("WEIR_POLL_WAIT", "1s"),
                ("WEIR_DRAIN_TIMEOUT", "500ms"),
                ("WEIR_DATA_DIR", data.as_str()),
                ("WEIR_DATASETS_STORE_URL", datasets.as_str()),
                ("WEIR_FILES_STORE_URL", files.as_str()),
            ];
            e.extend_from_slice(env);
            Proc::spawn(&format!("weir-{q}-manager"), &[], &e)
        })
        .collect();
    Platform { url, _master: master, _managers: managers }
}

/// Submits `spec` with `weir submit`, waits with `weir watch`; the job as `weir --json get` shows it.
async fn run(p: &Platform, dir: &Path, spec: Value) -> (bool, Value) {
    let file = dir.join(format!("{}.json", spec["name"].as_str().unwrap_or("job")));
    std::fs::write(&file, spec.to_string()).expect("spec");
    let id = cli_submit(&p.url, &file).await;
    let ok = weir_cli(&p.url, &["watch", &id]).status.success();
    let job: Value = serde_json::from_slice(&weir_cli(&p.url, &["--json", "get", &id]).stdout).expect("json");
    (ok, job)
}

fn output(job: &Value, step: &str) -> Value {
    let t = job["tasks"].as_array().and_then(|t| t.iter().find(|t| t["step_id"] == step)).cloned();
    t.map(|t| if t["output"].is_null() { json!({"error": t["error_message"]}) } else { t["output"].clone() })
        .unwrap_or(Value::Null)
}

fn errors(job: &Value) -> Vec<String> {
    job["tasks"]
        .as_array()
        .map(|t| t.iter().map(|t| format!("{}: {}", t["step_id"], t["error_message"])).collect())
        .unwrap_or_default()
}

/// Rows of the Parquet files in `lake`, read with `key` if they are encrypted.
fn rows(lake: &Path, key: Option<&[u8]>) -> usize {
    let decryption = key
        .map(|k| parquet::encryption::decrypt::FileDecryptionProperties::builder(k.to_vec()).build().expect("props"));
    read_lake(lake, decryption.as_ref()).expect("the lake reads").iter().map(|b| b.num_rows()).sum()
}

fn records(ids: &[i64]) -> Value {
    Value::Array(
        ids.iter()
            .map(|i| json!({"id": i, "email": format!("user{i}@example.com"), "card": "4111111111111111"}))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_and_stream_templates_run_through_the_five_binaries() {
    let store = StoreFixture::new(Backend::Postgres).await;
    let dir = tempfile::tempdir().expect("tmp");
    let pki = Pki::new(dir.path());
    let w = WireMock::start_https(pki.keystore(), &[]).await;
    let http = w.http_url().to_string();
    let page = |path: &str, query: Value, data: Value, next: Option<String>| {
        json!({"request": {"method": "GET", "urlPath": path, "queryParameters": query,
                           "headers": {"Authorization": {"equalTo": "Bearer s3cret"}}},
               "response": {"status": 200, "jsonBody": {"data": data, "next": next}}})
    };
    let none = json!({"page": {"absent": true}});
    let n = |p: u32| json!({"page": {"equalTo": p.to_string()}});
    w.stub(page("/v2/orders", none.clone(), records(&[1, 2, 3]), None)).await;
    w.stub(page("/v2/customers", none.clone(), records(&[1, 2]), Some(format!("{}/v2/customers?page=2", w.url)))).await;
    w.stub(page("/v2/customers", n(2), records(&[3]), None)).await;
    w.stub(page("/v2/flaky", none.clone(), records(&[1, 2]), Some(format!("{http}/v2/flaky?page=2")))).await;
    w.stub(json!({"request": {"urlPath": "/v2/flaky", "queryParameters": n(2)}, "response": {"status": 500}})).await;
    w.stub(page("/eu/v2/flaky", n(2), records(&[3, 4]), None)).await;

    let key = *b"weir-lake-key-0123456789abcdef!!";
    let key_b64 = base64::engine::general_purpose::STANDARD.encode(key);
    let env = [("SHOP_TOKEN", "s3cret"), ("JOB_TEST_LAKE_KEY", key_b64.as_str()), ("JOB_TEST_PII_KEY", "pepper")];
    let p = start(&store.url, dir.path(), &env);
    let auth = json!({"type": "bearer", "credentials": {"env": "SHOP"}});
    let lake = |name: &str| dir.path().join(name);
    let sinks = |name: &str| json!([{"type": "parquet", "path": lake(name).display().to_string()}]);

    // standard, from a plain-HTTP API into Parquet.
    let resource = json!({"api": "shop", "base_url": format!("{http}/v2"), "path": "/orders", "records": "$.data[*]", "auth": auth});
    let spec = json!({"namespace": "api", "name": "orders", "template": "standard",
                      "params": {"api": resource, "sinks": sinks("orders")}});
    let (ok, job) = run(&p, dir.path(), spec).await;
    assert!(ok, "standard: {:?}", errors(&job));
    assert_eq!(rows(&lake("orders"), None), 3);

    // secure_api, over TLS verified against the pinned test CA, into an encrypted dataset.
    let resource = json!({"api": "crm", "base_url": format!("{}/v2", w.url), "path": "/customers",
                          "records": "$.data[*]", "paginator": {"type": "next_url", "path": "$.next"}, "auth": auth});
    let spec = json!({"namespace": "api", "name": "customers", "template": "secure_api", "params": {
        "api": resource,
        "security": {"ca": {"file": pki.ca_pem.display().to_string()}, "ca_pin": [pki.ca_sha256]},
        "classify": {"actions": {"card": "mask", "email": "hash"}, "hash_key": {"env": "JOB_TEST_PII_KEY"}},
        "encryption": {"key": {"env": "JOB_TEST_LAKE_KEY"}},
        "sinks": sinks("customers")}});
    let (ok, job) = run(&p, dir.path(), spec).await;
    assert!(ok, "secure_api: {:?}", errors(&job));
    assert_eq!(output(&job, "encrypted_connection")["hosts"][0]["connection"]["pin_matched"], json!(pki.ca_sha256));
    assert_eq!(output(&job, "classification")["classified"]["card"]["action"], "mask");
    assert_eq!(rows(&lake("customers"), Some(&key)), 3);

    // resilient_fetch: the primary fails at page 2; the recovery goes on from a fallback.
    let resource = json!({"api": "flaky", "base_url": format!("{http}/v2"), "path": "/flaky", "records": "$.data[*]",
                          "paginator": {"type": "next_url", "path": "$.next"}, "auth": auth,
                          "records_per_file": 2, "max_retries": 2});
    let spec = json!({"namespace": "api", "name": "flaky", "template": "standard",
                      "params": {"api": resource, "sinks": sinks("flaky")}});
    let (ok, failed) = run(&p, dir.path(), spec).await;
    assert!(!ok, "the primary fails at page 2");
    let failed_id = failed["id"].as_str().expect("id").to_string();
    let spec = json!({"namespace": "api", "name": "flaky-recovery", "template": "resilient_fetch", "params": {
        "job_id": failed_id, "key": ["id"], "fallbacks": [{"base_url": format!("{http}/eu/v2")}]}});
    let (ok, job) = run(&p, dir.path(), spec).await;
    assert!(ok, "resilient_fetch: {:?}", errors(&job));
    assert_eq!(output(&job, "recovery_strategy")["strategy"], "api");
    assert_eq!(output(&job, "alternative_api")["adopted_records"].as_u64(), Some(2));
    assert_eq!(
        output(&job, "validation")["sinks"][lake("flaky").display().to_string()]["distinct_keys"].as_u64(),
        Some(4)
    );
    assert_eq!(rows(&lake("flaky"), None), 4);

    // realtime_stream: the probe, then a stream from NATS JetStream up to what it holds.
    let (name, js) = nats_stream().await;
    for i in 0..50 {
        let body = json!({"id": i, "amount": if i == 7 { Value::Null } else { json!(i) }}).to_string();
        js.publish(format!("{name}.orders"), body.into()).await.expect("publish").await.expect("stored");
    }
    let params = |stream: &str| {
        json!({"source": {"type": "nats", "servers": "nats://127.0.0.1:4222", "stream": stream, "consumer": "weir"},
               "until": "now", "rules": {"not_null": ["amount"]}, "sinks": sinks("ticks")})
    };
    let spec = json!({"namespace": "streams", "name": "ticks", "template": "realtime_stream", "params": params(&name)});
    let (ok, job) = run(&p, dir.path(), spec).await;
    assert!(ok, "realtime_stream: {:?}", errors(&job));
    assert_eq!(output(&job, "connect")["lanes"][0]["lane"], json!(format!("{name}/0")));
    let o = output(&job, "stream");
    assert_eq!(
        (o["records"].as_u64(), o["rows_written"].as_u64(), o["rows_quarantined"].as_u64()),
        (Some(50), Some(49), Some(1)),
        "{o}"
    );
    assert_eq!(rows(&lake("ticks"), None), 49);
    // A stream that does not exist fails the probe, naming it; nothing is consumed.
    let spec = json!({"namespace": "streams", "name": "nowhere", "template": "realtime_stream", "params": params("no_such_stream")});
    let (ok, job) = run(&p, dir.path(), spec).await;
    assert!(!ok && errors(&job).iter().any(|e| e.contains("stream no_such_stream")), "{:?}", errors(&job));
    let _ = js.delete_stream(&name).await;
    drop(p);
    store.cleanup().await;
}
