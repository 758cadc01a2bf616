//! The `secure_api` template end to end against a real HTTPS server (WireMock's Jetty with
//! a certificate from a test CA made here with OpenSSL), through the master, the API
//! manager and the batch manager: the policy checked, the credentials verified, each
//! host's TLS handshake reported with its chain and pin, the collection held to the
//! policy, personal data found and masked or hashed, and the dataset written with Parquet
//! modular encryption — unreadable without the key, read back with it by parquet-rs and
//! by DuckDB. And what the policy refuses: plain HTTP at submission, a wrong pin, a
//! server that speaks only an older TLS than asked, a next page on another host, a
//! certificate no trusted CA signed.

use std::time::Duration;

use arrow_array::Array;
use base64::Engine;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use weir_api_manager::client::Rate;
use weir_proto::v1;
use weir_tests::{
    credentials_env, job, read_lake, run_manager, step, submit, tasks, wait_finished, InProcMaster, Pki, StoreFixture,
    WireMock,
};

/// A master, an API and a batch manager, the HTTPS server and the CA that signed it.
struct Secure {
    dir: tempfile::TempDir,
    store: StoreFixture,
    master: InProcMaster,
    managers: Vec<(CancellationToken, tokio::task::JoinHandle<()>)>,
    server: WireMock,
    pki: Pki,
}

impl Secure {
    async fn start() -> Secure {
        let dir = tempfile::tempdir().expect("tmp");
        let pki = Pki::new(dir.path());
        let server = WireMock::start_https(pki.keystore(), &[]).await;
        let store = StoreFixture::new(weir_tests::Backend::Sqlite).await;
        let master = InProcMaster::start(&store.url).await;
        let fast = Rate { per_minute: 60_000, burst: 1000 };
        let data = dir.path().join("data");
        let api = weir_api_manager::ApiSettings {
            data_dir: data.clone(),
            api_rate: fast,
            global_rate: fast,
            ..Default::default()
        };
        let batch = weir_batch_manager::BatchSettings { data_dir: data, ..Default::default() };
        let id = uuid::Uuid::new_v4().simple();
        let managers = vec![
            run_manager(weir_api_manager::spec_with(api), &master.url, &format!("api-{id}"), ""),
            run_manager(weir_batch_manager::spec_with(batch), &master.url, &format!("batch-{id}"), ""),
        ];
        Secure { dir, store, master, managers, server, pki }
    }

    /// The customers resource on the HTTPS server, bearer auth, trusting the test CA.
    fn resource(&self, security: Value) -> Value {
        json!({"api": "crm", "base_url": format!("{}/v2", self.server.url), "path": "/customers",
               "records": "$.data[*]", "paginator": {"type": "next_url", "path": "$.next"},
               "auth": {"type": "bearer", "credentials": {"env": credentials_env(&[("TOKEN", "s3cret")])}},
               "security": security})
    }

    /// The test CA by reference, and optionally pinned.
    fn trust(&self, pin: bool) -> Value {
        let mut s = json!({"ca": {"file": self.pki.ca_pem.display().to_string()}});
        if pin {
            s["ca_pin"] = json!([self.pki.ca_sha256]);
        }
        s
    }

    /// One single-step job of `kind` with `config`; returns the task.
    async fn one(&self, name: &str, kind: &str, config: Value) -> v1::Task {
        let mut s = step(kind, kind, "api", &[]);
        s.config_json = config.to_string();
        s.retry = Some(v1::RetryPolicy { max_attempts: 1, ..Default::default() });
        let mut jc = self.master.jobs();
        let id = submit(&mut jc, job(name, vec![s])).await;
        wait_finished(&mut jc, &id, Duration::from_secs(60)).await;
        tasks(&mut jc, &id).await.into_iter().next().expect("task")
    }

    async fn stop(self) {
        for (stop, handle) in self.managers {
            stop.cancel();
            handle.await.expect("manager stops");
        }
        self.master.stop().await;
        self.store.cleanup().await;
    }
}

/// Customers with an e-mail, a card number, a phone number and an IBAN each.
fn customers() -> Vec<Value> {
    let rows = [
        ("Ada", "ada@example.com", "4111111111111111", "+49 30 1234567", "DE89370400440532013000"),
        ("Bob", "bob@example.org", "5500000000000004", "+44 20 7946 0958", "GB82WEST12345698765432"),
        ("Cy", "cy@example.net", "4012888888881881", "+33 1 23 45 67 89", "FR1420041010050500013M02606"),
        ("Di", "di@example.com", "378282246310005", "(212) 555-0123", "NL91ABNA0417164300"),
        ("Ed", "ed@example.com", "6011111111111117", "+31 20 123 4567", "ES9121000418450200051332"),
    ];
    rows.iter()
        .enumerate()
        .map(|(i, (n, e, c, p, iban))| {
            json!({"id": i + 1, "name": n, "email": e, "card": c, "phone": p, "iban": iban, "city": "Berlin"})
        })
        .collect()
}

fn texts(batches: &[arrow_array::RecordBatch], column: &str) -> Vec<String> {
    let mut v: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            let i = b.schema().index_of(column).expect("column");
            let col = arrow_cast::cast(b.column(i), &arrow_schema::DataType::Utf8).expect("text");
            let s = col.as_any().downcast_ref::<arrow_array::StringArray>().expect("strings").clone();
            (0..s.len()).map(move |r| s.value(r).to_string()).collect::<Vec<_>>()
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_api_collects_over_verified_tls_classifies_and_stores_encrypted() {
    let lab = Secure::start().await;
    let w = &lab.server;
    let all = customers();
    let bearer = json!({"Authorization": {"equalTo": "Bearer s3cret"}});
    w.stub(json!({"priority": 1, "request": {"method": "GET", "urlPath": "/v2/customers", "headers": bearer,
                  "queryParameters": {"page": {"absent": true}}},
                  "response": {"status": 200, "jsonBody": {"data": all[..3],
                               "next": format!("{}/v2/customers?page=2", w.url)}}}))
        .await;
    w.stub(json!({"priority": 1, "request": {"method": "GET", "urlPath": "/v2/customers", "headers": bearer,
                  "queryParameters": {"page": {"equalTo": "2"}}},
                  "response": {"status": 200, "jsonBody": {"data": all[3..], "next": null}}}))
        .await;
    w.stub(json!({"priority": 5, "request": {"urlPath": "/v2/customers"}, "response": {"status": 401}})).await;

    // The lake's key: 32 bytes, by reference (base64 in an environment variable).
    let key = *b"weir-lake-key-0123456789abcdef!!";
    let key_env = format!("JOB_TEST_LAKE_KEY_{}", uuid::Uuid::new_v4().simple());
    std::env::set_var(&key_env, base64::engine::general_purpose::STANDARD.encode(key));
    let hash_env = format!("JOB_TEST_PII_KEY_{}", uuid::Uuid::new_v4().simple());
    std::env::set_var(&hash_env, "pepper");
    let lake = lab.dir.path().join("lake");
    let mut resource = lab.resource(Value::Null);
    resource.as_object_mut().expect("obj").remove("security");
    let params = json!({
        "api": resource,
        "security": lab.trust(true),
        "classify": {"actions": {"card": "mask", "email": "hash"}, "hash_key": {"env": hash_env}},
        "encryption": {"key": {"env": key_env}, "key_id": "lake-2026"},
        "sinks": [{"type": "parquet", "path": lake.display().to_string()}],
    });
    let spec = v1::JobSpec {
        namespace: "test".into(),
        name: "customers".into(),
        template: "secure_api".into(),
        params_json: params.to_string(),
        ..Default::default()
    };
    let mut jc = lab.master.jobs();
    let id = submit(&mut jc, spec.clone()).await;
    let done = wait_finished(&mut jc, &id, Duration::from_secs(120)).await;
    let ts = tasks(&mut jc, &id).await;
    assert_eq!(
        done.state,
        v1::JobState::Succeeded as i32,
        "{:?}",
        ts.iter().map(|t| (&t.step_id, &t.error_kind, &t.error_message)).collect::<Vec<_>>()
    );
    let out = |s: &str| -> Value {
        let t = ts.iter().find(|t| t.step_id == s).expect("task");
        serde_json::from_str(&t.output_json).expect("output")
    };
    // Each step records what it checked.
    let checks = &out("security_validation")["checks"];
    assert_eq!((checks["https_only"].as_bool(), checks["min_tls"].as_str()), (Some(true), Some("TLSv1.2")));
    assert_eq!(checks["allowed_hosts"], json!(["127.0.0.1"]));
    assert_eq!(checks["ca_pin"], json!([lab.pki.ca_sha256]));
    assert_eq!(checks["trusted_roots"][0]["subject"], "CN=Weir Test CA");
    assert_eq!(out("auth_verification")["answered"], "2xx");
    let conn = &out("encrypted_connection")["hosts"][0]["connection"];
    assert!(["TLSv1.2", "TLSv1.3"].contains(&conn["protocol"].as_str().unwrap_or("")), "{conn}");
    assert_eq!(conn["pin_matched"].as_str(), Some(lab.pki.ca_sha256.as_str()), "{conn}");
    assert_eq!(conn["chain"].as_array().map(Vec::len), Some(2), "server and CA: {conn}");
    assert_eq!(out("secure_collection")["records"].as_u64(), Some(5));
    let classified = &out("classification")["classified"];
    assert_eq!(
        classified,
        &json!({"card": {"class": "card", "action": "mask"}, "email": {"class": "email", "action": "hash"},
                "iban": {"class": "iban", "action": "label"}, "phone": {"class": "phone", "action": "label"}})
    );
    assert_eq!(out("encrypted_storage")["rows_written"].as_u64(), Some(5));
    for s in ["security_validation", "auth_verification", "encrypted_connection", "secure_collection"] {
        assert!(!out(s).to_string().contains("s3cret"), "{s} shows no secret");
    }

    // The dataset is encrypted: unreadable without the key (its footer too), read with it.
    assert!(read_lake(&lake, None).is_err(), "a reader without the key reads nothing");
    let files: Vec<_> = std::fs::read_dir(&lake)
        .expect("lake")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "parquet"))
        .collect();
    for f in &files {
        let bytes = std::fs::read(f.path()).expect("file");
        assert_eq!(&bytes[bytes.len() - 4..], b"PARE", "encrypted footer");
        assert!(!String::from_utf8_lossy(&bytes).contains("Berlin"), "no clear value in the file");
    }
    let decrypt = parquet::encryption::decrypt::FileDecryptionProperties::builder(key.to_vec()).build().expect("props");
    let rows = read_lake(&lake, Some(&decrypt)).expect("read with the key");
    assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 5);
    assert_eq!(texts(&rows, "name"), vec!["Ada", "Bob", "Cy", "Di", "Ed"]);
    // Cards masked to their last four digits; e-mails an HMAC under the step's key; the rest as sent.
    assert_eq!(
        texts(&rows, "card"),
        vec!["************0004", "************1111", "************1117", "************1881", "***********0005"]
    );
    let hmac = |v: &str| {
        let k = openssl::pkey::PKey::hmac(b"pepper").expect("key");
        let mut s = openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &k).expect("signer");
        s.update(v.as_bytes()).expect("update");
        s.sign_to_vec().expect("sign").iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let mut want: Vec<String> = all.iter().map(|c| hmac(c["email"].as_str().unwrap_or(""))).collect();
    want.sort();
    assert_eq!(texts(&rows, "email"), want);
    assert!(texts(&rows, "iban").contains(&"DE89370400440532013000".to_string()));
    // Labels are in the files' schema: each PII column says its class.
    let schema = rows[0].schema();
    let label = |c: &str| schema.field_with_name(c).ok().and_then(|f| f.metadata().get("weir.classification").cloned());
    assert_eq!(
        (label("email"), label("card"), label("phone"), label("iban"), label("name")),
        (Some("email".into()), Some("card".into()), Some("phone".into()), Some("iban".into()), None)
    );
    // Another reader with the key: DuckDB's Parquet encryption.
    let script = format!(
        "import duckdb\nc = duckdb.connect()\nc.execute(\"PRAGMA add_parquet_key('k', '{}')\")\n\
         print(c.execute(\"select count(*), min(card) from read_parquet('{}/*.parquet', encryption_config={{footer_key: 'k'}})\").fetchone())",
        String::from_utf8_lossy(&key),
        lake.display()
    );
    let duck = std::process::Command::new(weir_tests::python()).args(["-c", &script]).output().expect("python");
    let said = String::from_utf8_lossy(&duck.stdout);
    assert!(said.contains("(5, '************0004')"), "{said} {}", String::from_utf8_lossy(&duck.stderr));

    // Plain HTTP is refused at submission, naming the rule.
    let mut plain = params.clone();
    plain["api"]["base_url"] = json!(format!("http://127.0.0.1:{}/v2", 9));
    let refused = jc
        .submit_job(v1::SubmitJobRequest {
            spec: Some(v1::JobSpec { name: "plain".into(), params_json: plain.to_string(), ..spec.clone() }),
        })
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("not HTTPS (security.https_only)"), "{}", refused.message());

    // A pin no certificate of the chain has: the handshake is refused, naming the pin.
    let mut wrong = lab.trust(false);
    wrong["ca_pin"] = json!([format!("sha256:{}", "ab".repeat(32))]);
    let t = lab.one("wrong-pin", "check_tls", lab.resource(wrong)).await;
    assert_eq!(t.error_kind, "insecure", "{}", t.error_message);
    assert!(t.error_message.contains("ca_pin") && t.error_message.contains("CN=Weir Test CA"), "{}", t.error_message);

    // A certificate no trusted CA signed (the system's CAs): refused at once, not retried.
    let t = lab.one("untrusted", "probe", lab.resource(json!({}))).await;
    assert_eq!(t.error_kind, "insecure", "{}", t.error_message);
    assert!(t.error_message.contains("certificate verify failed"), "{}", t.error_message);

    // A next page on another host than the step names: refused before it is requested.
    w.stub(json!({"priority": 1, "request": {"method": "GET", "urlPath": "/v2/elsewhere"},
                  "response": {"status": 200, "jsonBody": {"data": all[..1],
                               "next": format!("{}/v2/customers?page=2", w.url.replace("127.0.0.1", "localhost"))}}}))
        .await;
    let mut elsewhere = lab.resource(lab.trust(false));
    elsewhere["path"] = json!("/elsewhere");
    let t = lab.one("elsewhere", "collect", elsewhere).await;
    assert_eq!(t.error_kind, "insecure", "{}", t.error_message);
    assert!(t.error_message.contains("host localhost is not among the allowed hosts"), "{}", t.error_message);

    // A server that speaks only TLS 1.2, asked for 1.3: the handshake fails, naming the version.
    // (Java's security property: Jetty does not take the jdk.tls.server.protocols system property.)
    let security = lab.dir.path().join("tls12.security");
    std::fs::write(&security, "jdk.tls.disabledAlgorithms=SSLv3, TLSv1, TLSv1.1, TLSv1.3, RC4, DES, NULL, anon\n")
        .expect("java security file");
    let old =
        WireMock::start_https(lab.pki.keystore(), &[&format!("-Djava.security.properties={}", security.display())])
            .await;
    let mut strict = lab.trust(false);
    strict["min_tls"] = json!("1.3");
    let mut r = lab.resource(strict);
    r["base_url"] = json!(format!("{}/v2", old.url));
    let t = lab.one("old-tls", "check_tls", r.clone()).await;
    assert_eq!(t.error_kind, "insecure", "{}", t.error_message);
    assert!(
        t.error_message.contains("at least TLSv1.3") && t.error_message.contains("protocol version"),
        "{}",
        t.error_message
    );
    // The same server at 1.2 answers with TLS 1.2.
    r["security"]["min_tls"] = json!("1.2");
    let t = lab.one("tls12", "check_tls", r).await;
    let o: Value = serde_json::from_str(&t.output_json).unwrap_or(Value::Null);
    assert_eq!(o["hosts"][0]["connection"]["protocol"], "TLSv1.2", "{} {}", t.output_json, t.error_message);
    drop(old);
    lab.stop().await;
}
