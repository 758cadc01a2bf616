//! Security end to end: JWT bearer tokens on a master (HS256 with a shared secret, RS256
//! with keys from a JWKS document a real HTTP server — WireMock — serves, rotated while
//! the master runs), namespaces scoping every call, per-caller submission limits, the
//! sandbox at submission and again on the manager (through a symbolic link only the
//! manager's machine can see), mTLS between a manager and the master with certificates
//! reloaded from their files, and an audit record for each of these.

use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use weir_proto::v1;
use weir_proto::v1::job_service_client::JobServiceClient;
use weir_runtime::auth::Credentials;
use weir_runtime::grpc::AuthedChannel;
use weir_runtime::security::{AuthArgs, ClientSecurity, SandboxArgs, TlsArgs, TokenArgs};
use weir_tests::{bin, job, step, Backend, InProcMaster, Pki, StoreFixture, WireMock};

const SECRET: &str = "a-shared-secret-of-at-least-32-bytes!";
const ISSUER: &str = "https://idp.weir.test";
const AUDIENCE: &str = "weir";

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs()
}

fn claims(sub: &str, permissions: &[&str], extra: Value) -> Value {
    let mut c = json!({"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600, "nbf": now() - 5,
        "permissions": permissions});
    if let (Some(c), Value::Object(e)) = (c.as_object_mut(), extra) {
        c.extend(e);
    }
    c
}

fn hs256(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.as_bytes()))
        .expect("signed")
}

/// An RSA signing key with its key id, as an identity provider holds one.
struct RsaKey {
    kid: String,
    pem: Vec<u8>,
    jwk: Value,
}

impl RsaKey {
    fn new(kid: &str) -> RsaKey {
        let rsa = openssl::rsa::Rsa::generate(2048).expect("rsa");
        let b64 = |b: Vec<u8>| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwk = json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
            "n": b64(rsa.n().to_vec()), "e": b64(rsa.e().to_vec())});
        RsaKey { kid: kid.into(), pem: rsa.private_key_to_pem().expect("pem"), jwk }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &EncodingKey::from_rsa_pem(&self.pem).expect("key")).expect("signed")
    }
}

/// The identity provider's key set, newest stub first (WireMock prefers the latest).
async fn publish_keys(idp: &WireMock, keys: &[&RsaKey]) {
    let set = json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
    idp.stub(json!({"request": {"method": "GET", "url": "/jwks.json"},
        "response": {"status": 200, "headers": {"content-type": "application/json"}, "body": set.to_string()}}))
        .await;
}

fn security(token: Option<&str>, tls: Option<TlsArgs>) -> ClientSecurity {
    let credentials = token.map(|t| Credentials::token(t).expect("token")).unwrap_or_default();
    let tls = tls.map(|t| t.client().expect("client TLS")).unwrap_or(None);
    ClientSecurity { credentials, tls }
}

fn jobs_as(url: &str, token: Option<&str>) -> JobServiceClient<AuthedChannel> {
    JobServiceClient::new(weir_runtime::grpc::channel(url, &security(token, None)).expect("channel"))
}

fn workers_as(url: &str, token: &str) -> v1::worker_service_client::WorkerServiceClient<AuthedChannel> {
    v1::worker_service_client::WorkerServiceClient::new(
        weir_runtime::grpc::channel(url, &security(Some(token), None)).expect("channel"),
    )
}

/// Waits until the master answers `token`'s calls (it leads).
async fn wait_leading(jobs: &mut JobServiceClient<AuthedChannel>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // PauseJob asks for leadership first: a bad id is INVALID_ARGUMENT only once it
        // leads (ListJobs answers before, from the store).
        match jobs.pause_job(v1::PauseJobRequest { job_id: String::new() }).await {
            Err(s) if s.code() == tonic::Code::InvalidArgument => return,
            other => assert!(Instant::now() < deadline, "master never led: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn in_namespace(ns: &str, mut spec: v1::JobSpec) -> v1::JobSpec {
    spec.namespace = ns.into();
    spec
}

fn noop_job(ns: &str, name: &str) -> v1::JobSpec {
    in_namespace(ns, job(name, vec![step("a", "noop", "batch", &[])]))
}

fn convert_job(ns: &str, name: &str, input: &str) -> v1::JobSpec {
    let mut s = step("convert", "convert", "batch", &[]);
    s.config_json = json!({"inputs": [input]}).to_string();
    in_namespace(ns, job(name, vec![s]))
}

async fn submit(c: &mut JobServiceClient<AuthedChannel>, spec: v1::JobSpec) -> Result<v1::Job, tonic::Status> {
    c.submit_job(v1::SubmitJobRequest { spec: Some(spec) }).await.map(|r| r.into_inner().job.expect("job"))
}

async fn audit(url: &str, admin: &ClientSecurity) -> Vec<v1::AuditRecord> {
    let ch = weir_runtime::grpc::channel(url, admin).expect("channel");
    let mut c = v1::audit_service_client::AuditServiceClient::new(ch);
    c.list_audit(v1::ListAuditRequest { page_size: 1000, ..Default::default() })
        .await
        .expect("admin reads the audit trail")
        .into_inner()
        .records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_namespaces_scope_every_call_and_each_refusal_is_audited() {
    let store = StoreFixture::new(Backend::Sqlite).await;
    let idp = WireMock::start().await;
    let k1 = RsaKey::new("k1");
    publish_keys(&idp, &[&k1]).await;
    let jwks_url = format!("{}/jwks.json", idp.http_url());
    let master = InProcMaster::start_configured(&store.url, None, |c| {
        c.auth = AuthArgs {
            enabled: true,
            hs256_secret: Some(SECRET.into()),
            jwks_urls: vec![jwks_url],
            issuer: Some(ISSUER.into()),
            audience: Some(AUDIENCE.into()),
            jwks_refresh: Duration::from_secs(1),
            ..AuthArgs::default()
        };
        c.submission_limit = "4/min".into();
    })
    .await;
    let ops = hs256(&claims("ops", &["*:admin"], json!({})), SECRET);
    let ada = hs256(&claims("ada", &["finance:write"], json!({})), SECRET);
    let bob = hs256(&claims("bob", &["marketing:admin"], json!({})), SECRET);
    // Carol's token comes from the identity provider, signed with its RSA key.
    let carol = k1.sign(&claims("carol", &["finance:read", "read:users"], json!({})));
    let mut as_ops = jobs_as(&master.url, Some(&ops));
    wait_leading(&mut as_ops).await;

    // Who is calling: every bad token is UNAUTHENTICATED, naming why.
    let stranger = RsaKey::new("k9");
    let none = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let payload =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims("ada", &["*:admin"], json!({})).to_string());
    let ada_parts: Vec<&str> = ada.split('.').collect();
    let bad: Vec<(Option<String>, &str)> = vec![
        (None, "no bearer token"),
        (Some(hs256(&claims("ada", &["finance:write"], json!({"exp": now() - 120})), SECRET)), "expired"),
        (Some(hs256(&claims("ada", &["finance:write"], json!({"nbf": now() + 600})), SECRET)), "not valid yet"),
        (Some(hs256(&claims("ada", &["finance:write"], json!({"aud": "another-app"})), SECRET)), "audience"),
        (Some(hs256(&claims("ada", &["finance:write"], json!({"iss": "https://evil.test"})), SECRET)), "issuer"),
        (Some(format!("{none}.{payload}.")), "malformed"),
        (Some(format!("{}.{payload}.{}", ada_parts[0], ada_parts[2])), "signature"),
        (Some(hs256(&claims("ada", &["*:admin"], json!({})), "another-secret-another-secret-another")), "signature"),
        (Some(stranger.sign(&claims("ada", &["*:admin"], json!({})))), "no key with id \"k9\""),
    ];
    for (token, why) in &bad {
        let e = jobs_as(&master.url, token.as_deref()).list_jobs(v1::ListJobsRequest::default()).await.expect_err(why);
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{why}: {e:?}");
        assert!(e.message().contains(why), "{why}: {}", e.message());
    }

    // What they may do: write in finance only.
    let mut as_ada = jobs_as(&master.url, Some(&ada));
    let finance_job = submit(&mut as_ada, noop_job("finance", "daily")).await.expect("ada writes in finance");
    let e = submit(&mut as_ada, noop_job("marketing", "daily")).await.expect_err("not her namespace");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("marketing:write"), "{}", e.message());
    // The sandbox: no local path is allowed outside the roots, and the rule is named.
    let e = submit(&mut as_ada, convert_job("finance", "shadow", "/etc/shadow")).await.expect_err("sandboxed");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("/etc/shadow") && e.message().contains("sandbox.namespaces"), "{}", e.message());
    submit(&mut as_ada, noop_job("finance", "weekly")).await.expect("a fourth submission");
    // The fifth within the minute is over the limit, with a retry delay.
    let e = submit(&mut as_ada, noop_job("finance", "hourly")).await.expect_err("over the limit");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    let retry_ms: u64 = e
        .metadata()
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a retry delay");
    assert!(retry_ms > 1000 && retry_ms <= 15_000, "{retry_ms}");

    // Another namespace's job does not exist for bob; carol (RS256) reads but cannot steer.
    let id = finance_job.id.clone();
    let mut as_bob = jobs_as(&master.url, Some(&bob));
    let e = as_bob.get_job(v1::GetJobRequest { job_id: id.clone() }).await.expect_err("not his");
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let e =
        as_bob.cancel_job(v1::CancelJobRequest { job_id: id.clone(), reason: "mine now".into() }).await.expect_err("x");
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let listed = as_bob.list_jobs(v1::ListJobsRequest::default()).await.expect("list").into_inner().jobs;
    assert!(listed.is_empty(), "bob sees only marketing: {listed:?}");
    let e = as_bob
        .list_jobs(v1::ListJobsRequest { namespace: "finance".into(), ..Default::default() })
        .await
        .expect_err("not his namespace");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let mut as_carol = jobs_as(&master.url, Some(&carol));
    let got = as_carol.get_job(v1::GetJobRequest { job_id: id.clone() }).await.expect("carol reads finance");
    assert_eq!(got.into_inner().job.and_then(|j| j.spec).map(|s| s.name).as_deref(), Some("daily"));
    let e = as_carol.pause_job(v1::PauseJobRequest { job_id: id.clone() }).await.expect_err("read only");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let listed = as_ada.list_jobs(v1::ListJobsRequest::default()).await.expect("list").into_inner().jobs;
    assert_eq!(listed.len(), 2, "ada sees her two finance jobs");
    // Only workers lease tasks.
    let e = workers_as(&master.url, &ada)
        .acquire_tasks(v1::AcquireTasksRequest {
            worker_id: "ada-laptop".into(),
            queue: "batch".into(),
            max_tasks: 1,
            wait: None,
        })
        .await
        .expect_err("not a worker");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("*:worker"), "{}", e.message());
    // Only admins read the audit trail.
    let ch = weir_runtime::grpc::channel(&master.url, &security(Some(&ada), None)).expect("channel");
    let e = v1::audit_service_client::AuditServiceClient::new(ch)
        .list_audit(v1::ListAuditRequest::default())
        .await
        .expect_err("not an admin");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");

    // The identity provider rotates its key: k2 signs from now on, k1 is withdrawn. The
    // master picks the new set up without a restart.
    let k2 = RsaKey::new("k2");
    publish_keys(&idp, &[&k2]).await;
    let carol2 = k2.sign(&claims("carol", &["finance:read"], json!({})));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let new_ok =
            jobs_as(&master.url, Some(&carol2)).get_job(v1::GetJobRequest { job_id: id.clone() }).await.is_ok();
        let old = jobs_as(&master.url, Some(&carol)).get_job(v1::GetJobRequest { job_id: id.clone() }).await;
        if new_ok && old.as_ref().is_err_and(|e| e.code() == tonic::Code::Unauthenticated) {
            break;
        }
        assert!(Instant::now() < deadline, "the rotated key was not picked up: old token {old:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The CLI: `weir token` signs with the shared secret, `weir audit` reads the trail.
    let weir = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = std::process::Command::new(bin("weir"));
        c.args(args).env("WEIR_MASTER_URL", &master.url).env_remove("WEIR_TOKEN");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().expect("run weir")
    };
    let minted = weir(
        &["token", "--subject", "ops-cli", "--permissions", "*:admin", "--ttl", "10m"],
        &[("WEIR_AUTH_HS256_SECRET", SECRET), ("WEIR_AUTH_ISSUER", ISSUER), ("WEIR_AUTH_AUDIENCE", AUDIENCE)],
    );
    assert!(minted.status.success(), "{}", String::from_utf8_lossy(&minted.stderr));
    let token = String::from_utf8_lossy(&minted.stdout).trim().to_string();
    let out = weir(&["audit", "--outcome", "limited"], &[("WEIR_TOKEN", &token)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("ada") && text.contains("SubmitJob") && text.contains("limited"), "{text}");
    assert!(!text.contains("denied"), "only what was asked for: {text}");
    let out = weir(&["audit"], &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no bearer token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Every mutating call and every refusal is in the audit trail, newest first.
    let records = audit(&master.url, &security(Some(&ops), None)).await;
    let has = |outcome: &str, action: &str, subject: &str, text: &str| {
        records
            .iter()
            .any(|r| r.outcome == outcome && r.action == action && r.subject == subject && r.message.contains(text))
    };
    for (_, why) in &bad {
        assert!(has("unauthenticated", "ListJobs", "", why), "no audit record for {why}: {records:#?}");
    }
    assert!(has("unauthenticated", "ListAudit", "", "no bearer token"), "the CLI without a token");
    assert!(records
        .iter()
        .any(|r| r.outcome == "ok" && r.action == "SubmitJob" && r.subject == "ada" && r.target == id));
    assert!(has("denied", "SubmitJob", "ada", "marketing"));
    assert!(has("invalid", "SubmitJob", "ada", "/etc/shadow"));
    assert!(has("limited", "SubmitJob", "ada", "submission limit"));
    assert!(records
        .iter()
        .any(|r| r.outcome == "denied" && r.action == "GetJob" && r.subject == "bob" && r.target == id));
    assert!(has("denied", "CancelJob", "bob", "finance"));
    assert!(has("denied", "ListJobs", "bob", "finance"));
    assert!(has("denied", "PauseJob", "carol", "finance:write"));
    assert!(has("denied", "AcquireTasks", "ada", "*:worker"));
    assert!(has("denied", "ListAudit", "ada", "*:admin"));
    assert!(records.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    assert!(records.iter().all(|r| r.peer.starts_with("127.0.0.1:")), "each names the caller's address");
    // Each record is also on its way to `weir.audit`, through the outbox (read once the
    // master has let go of the embedded store).
    master.stop().await;
    let s = store.open().await;
    let published = s.messages_after(0, 10_000).await.expect("outbox");
    let on_topic = published.iter().filter(|(_, m)| m.topic == "weir.audit").count();
    assert_eq!(on_topic, records.len(), "one weir.audit message per record");
    drop(s);

    store.cleanup().await;
}

/// A manager in this process with its own sandbox and security (no token: `""`).
fn manager(
    spec: weir_worker::manager::ManagerSpec,
    master_url: &str,
    sandbox: SandboxArgs,
    token: &str,
    tls: TlsArgs,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let cancel = CancellationToken::new();
    let args = weir_worker::manager::ManagerArgs {
        concurrency: Some(2),
        poll_wait: Duration::from_secs(2),
        drain_timeout: Duration::from_secs(1),
        worker_id: Some(format!("manager-{}", uuid::Uuid::new_v4().simple())),
        token: TokenArgs { token: (!token.is_empty()).then(|| token.into()), token_file: None },
        tls,
        sandbox,
        ..weir_worker::manager::ManagerArgs::local(master_url)
    };
    let c = cancel.clone();
    (cancel, tokio::spawn(async move { weir_worker::manager::run(spec, args, c).await.expect("manager runs") }))
}

/// A batch manager in this process with its own sandbox and security.
fn batch_manager(
    master_url: &str,
    sandbox: SandboxArgs,
    token: &str,
    tls: TlsArgs,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    manager(weir_batch_manager::spec().expect("settings"), master_url, sandbox, token, tls)
}

async fn finished(c: &mut JobServiceClient<AuthedChannel>, id: &str) -> (v1::Job, Vec<v1::Task>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let job = c.get_job(v1::GetJobRequest { job_id: id.into() }).await.expect("job").into_inner().job.expect("job");
        let state = weir_proto::convert::job_state_from_wire(job.state).expect("state");
        if state.is_terminal() {
            let tasks = c.get_job_tasks(v1::GetJobTasksRequest { job_id: id.into() }).await.expect("tasks");
            return (job, tasks.into_inner().tasks);
        }
        assert!(Instant::now() < deadline, "job {id} did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manager_checks_the_sandbox_again_where_the_files_are() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("landing");
    std::fs::create_dir(&root).expect("mkdir");
    std::fs::write(root.join("orders.csv"), "id,amount\n1,9.5\n2,3.25\n").expect("csv");
    // A link inside the root that leads out of it: only the manager's machine can tell.
    std::os::unix::fs::symlink("/etc", root.join("etc")).expect("symlink");
    let store = StoreFixture::new(Backend::Sqlite).await;
    // The master lets anything under the temporary directory through (it cannot see links).
    let master = InProcMaster::start_configured(&store.url, None, |c| {
        c.auth = AuthArgs { enabled: true, hs256_secret: Some(SECRET.into()), ..AuthArgs::default() };
    })
    .await;
    let worker = hs256(&json!({"sub": "batch-manager", "exp": now() + 600, "permissions": ["*:worker"]}), SECRET);
    let ada = hs256(&json!({"sub": "ada", "exp": now() + 600, "permissions": ["finance:write"]}), SECRET);
    let mut as_ada = jobs_as(&master.url, Some(&ada));
    wait_leading(&mut as_ada).await;
    let only_root = SandboxArgs { allowed_paths: vec![root.display().to_string()], ..SandboxArgs::default() };
    let (stop, manager) = batch_manager(&master.url, only_root, &worker, TlsArgs::default());

    let inside = root.join("orders.csv").display().to_string();
    let ok = submit(&mut as_ada, convert_job("finance", "orders", &inside)).await.expect("accepted");
    let (job, _) = finished(&mut as_ada, &ok.id).await;
    assert_eq!(job.state, v1::JobState::Succeeded as i32, "{job:?}");

    let through_link = root.join("etc/hostname").display().to_string();
    let sneaky =
        submit(&mut as_ada, convert_job("finance", "sneaky", &through_link)).await.expect("master cannot tell");
    let (job, tasks) = finished(&mut as_ada, &sneaky.id).await;
    assert_eq!(job.state, v1::JobState::Failed as i32, "{job:?}");
    let t = &tasks[0];
    assert_eq!(t.error_kind, "sandbox", "{t:?}");
    assert!(t.error_message.contains("resolves to /etc/hostname"), "{}", t.error_message);
    assert!(t.error_message.contains("sandbox.namespaces"), "{}", t.error_message);
    assert_eq!(t.attempt, 1, "a sandbox refusal is not retried");
    // The manager's refusal is audited too, under the manager's name.
    let ops = hs256(&json!({"sub": "ops", "exp": now() + 600, "permissions": ["*:admin"]}), SECRET);
    let records = audit(&master.url, &security(Some(&ops), None)).await;
    let r = records.iter().find(|r| r.action == "RunTask").expect("an audit record of the refusal");
    assert_eq!((r.subject.as_str(), r.namespace.as_str(), r.outcome.as_str()), ("batch-manager", "finance", "invalid"));
    assert_eq!(r.target, t.id);
    assert!(r.message.contains("/etc/hostname"), "{}", r.message);

    stop.cancel();
    manager.await.expect("manager stops");
    master.stop().await;
    store.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_mtls_a_manager_runs_jobs_and_a_client_without_a_trusted_certificate_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = dir.path().join("first");
    std::fs::create_dir(&first).expect("mkdir");
    let pki = Pki::new(&first);
    // The files the master reads: copies, so they can be swapped while it runs.
    let live = dir.path().join("live");
    std::fs::create_dir(&live).expect("mkdir");
    let install = |from: &Pki| {
        std::fs::copy(&from.server_pem, live.join("server.pem")).expect("copy");
        std::fs::copy(&from.server_key, live.join("server.key")).expect("copy");
        std::fs::copy(&from.ca_pem, live.join("ca.pem")).expect("copy");
    };
    install(&pki);
    let client_tls = |p: &Pki| TlsArgs {
        tls_cert: Some(p.client_pem.clone()),
        tls_key: Some(p.client_key.clone()),
        tls_ca: Some(p.ca_pem.clone()),
    };
    let store = StoreFixture::new(Backend::Sqlite).await;
    let master = InProcMaster::start_configured(&store.url, None, |c| {
        c.auth = AuthArgs { enabled: true, hs256_secret: Some(SECRET.into()), ..AuthArgs::default() };
        c.tls = TlsArgs {
            tls_cert: Some(live.join("server.pem")),
            tls_key: Some(live.join("server.key")),
            tls_ca: Some(live.join("ca.pem")),
        };
    })
    .await;
    assert!(master.url.starts_with("https://127.0.0.1:"), "{}", master.url);
    let ops = hs256(&json!({"sub": "ops", "exp": now() + 600, "permissions": ["*:admin"]}), SECRET);
    let worker = hs256(&json!({"sub": "batch-manager", "exp": now() + 600, "permissions": ["*:worker"]}), SECRET);
    let channel =
        |tls: TlsArgs| weir_runtime::grpc::channel(&master.url, &security(Some(&ops), Some(tls))).expect("ch");
    let mut as_ops = JobServiceClient::new(channel(client_tls(&pki)));
    wait_leading(&mut as_ops).await;

    // A manager with a certificate the CA signed runs a job over mTLS.
    let (stop, manager) = batch_manager(&master.url, SandboxArgs::local(), &worker, client_tls(&pki));
    let j = submit(&mut as_ops, noop_job("ops", "over-mtls")).await.expect("submitted over mTLS");
    let (job, _) = finished(&mut as_ops, &j.id).await;
    assert_eq!(job.state, v1::JobState::Succeeded as i32, "{job:?}");

    // A client with no certificate, and one whose certificate another CA signed: refused
    // in the handshake, before any token is looked at.
    let no_cert = TlsArgs { tls_cert: None, tls_key: None, tls_ca: Some(pki.ca_pem.clone()) };
    let other_dir = dir.path().join("other");
    std::fs::create_dir(&other_dir).expect("mkdir");
    let other = Pki::new(&other_dir);
    let foreign = TlsArgs { tls_ca: Some(pki.ca_pem.clone()), ..client_tls(&other) };
    for (what, tls) in [("no certificate", no_cert), ("another CA's certificate", foreign)] {
        let r = JobServiceClient::new(channel(tls)).list_jobs(v1::ListJobsRequest::default()).await;
        assert!(r.is_err(), "{what}: {r:?}");
    }
    // A refused handshake is audited from its own task, after the client saw the refusal.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let records = audit(&master.url, &security(Some(&ops), Some(client_tls(&pki)))).await;
        let handshakes =
            records.iter().filter(|r| r.action == "TlsHandshake" && r.outcome == "unauthenticated").count();
        if handshakes >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "each refused handshake is audited: {records:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The certificates rotate (a new CA, a new server certificate): the master serves the
    // new ones to new connections without a restart, and the old CA's clients are refused.
    let second = dir.path().join("second");
    std::fs::create_dir(&second).expect("mkdir");
    let renewed = Pki::new(&second);
    install(&renewed);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let new = JobServiceClient::new(channel(client_tls(&renewed))).list_jobs(v1::ListJobsRequest::default()).await;
        let old = JobServiceClient::new(channel(client_tls(&pki))).list_jobs(v1::ListJobsRequest::default()).await;
        if new.is_ok() && old.is_err() {
            break;
        }
        assert!(Instant::now() < deadline, "the renewed certificates were not served: new {new:?}, old {old:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    stop.cancel();
    manager.await.expect("manager stops");
    master.stop().await;
    store.cleanup().await;
}

fn connections_as(url: &str, token: &str) -> v1::connection_service_client::ConnectionServiceClient<AuthedChannel> {
    v1::connection_service_client::ConnectionServiceClient::new(
        weir_runtime::grpc::channel(url, &security(Some(token), None)).expect("channel"),
    )
}

fn put(ns: &str, name: &str, config: Value) -> v1::PutConnectionRequest {
    v1::PutConnectionRequest {
        connection: Some(v1::Connection {
            namespace: ns.into(),
            name: name.into(),
            description: format!("{name} of {ns}"),
            config_json: config.to_string(),
            ..Default::default()
        }),
    }
}

fn configured(ns: &str, name: &str, config: Value) -> v1::JobSpec {
    let mut s = step("convert", "convert", "batch", &[]);
    s.config_json = config.to_string();
    in_namespace(ns, job(name, vec![s]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_name_an_admins_connections_and_neither_a_connection_nor_a_variable_opens_the_sandbox() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("finance");
    std::fs::create_dir(&root).expect("mkdir");
    std::fs::write(root.join("orders.csv"), "id,amount\n1,9.5\n2,3.25\n").expect("csv");
    let policy = dir.path().join("sandbox.yaml");
    let r = root.display().to_string();
    std::fs::write(
        &policy,
        format!(
            "namespaces:\n  finance: {{paths: [{r}], hosts: ['*'], env: ['FINANCE_*']}}\n  marketing: {{paths: [{r}], hosts: ['*']}}\n"
        ),
    )
    .expect("policy");
    let sandbox =
        || SandboxArgs { sandbox_file: Some(policy.clone()), allowed_paths: vec![], ..SandboxArgs::default() };
    let store = StoreFixture::new(Backend::Sqlite).await;
    let master = InProcMaster::start_configured(&store.url, None, |c| {
        c.auth = AuthArgs { enabled: true, hs256_secret: Some(SECRET.into()), ..AuthArgs::default() };
        c.sandbox = sandbox();
    })
    .await;
    let token =
        |sub: &str, grants: &[&str]| hs256(&json!({"sub": sub, "exp": now() + 600, "permissions": grants}), SECRET);
    let (ops, ada, bob) =
        (token("ops", &["finance:admin"]), token("ada", &["finance:write"]), token("bob", &["marketing:write"]));
    let mut as_ada = jobs_as(&master.url, Some(&ada));
    wait_leading(&mut as_ada).await;
    let (stop, manager) = batch_manager(&master.url, sandbox(), &token("batch", &["*:worker"]), TlsArgs::default());

    // Only an admin of the namespace defines its connections.
    let orders = json!({"inputs": [root.join("orders.csv").display().to_string()]});
    let lake = json!({"type": "parquet", "path": root.join("lake").display().to_string()});
    let e =
        connections_as(&master.url, &ada).put_connection(put("finance", "orders", orders.clone())).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("needs finance:admin"), "{e:?}");
    let e = connections_as(&master.url, &bob)
        .get_connection(v1::GetConnectionRequest { namespace: "finance".into(), name: "orders".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "another namespace's connections do not show: {e:?}");
    let mut as_ops = connections_as(&master.url, &ops);
    let made = as_ops.put_connection(put("finance", "orders", orders.clone())).await.expect("admin puts").into_inner();
    assert!(made.created);
    let c = made.connection.expect("connection");
    assert_eq!((c.updated_by.as_str(), c.namespace.as_str()), ("ops", "finance"));
    assert!(c.updated.is_some());
    let again = as_ops.put_connection(put("finance", "orders", orders.clone())).await.expect("replace");
    assert!(!again.into_inner().created, "a put of the same name replaces it");
    let e = as_ops.put_connection(put("finance", "bad", json!({"a": {"$connection": "orders"}}))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("config.a names a connection"), "{e:?}");

    // The CLI puts one from a YAML file and lists them.
    let yaml = dir.path().join("lake.yaml");
    std::fs::write(&yaml, format!("type: parquet\npath: {}\n", root.join("lake").display())).expect("yaml");
    let weir = |args: &[&str]| {
        std::process::Command::new(bin("weir"))
            .args(args)
            .env("WEIR_MASTER_URL", &master.url)
            .env("WEIR_TOKEN", &ops)
            .output()
            .expect("run weir")
    };
    let out = weir(&["connections", "put", "lake", "-n", "finance", "--config", yaml.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("connection finance/lake created"));
    let out = weir(&["--json", "connections", "list", "-n", "finance"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!(listed.iter().map(|c| c["name"].as_str().unwrap_or("")).collect::<Vec<_>>(), ["lake", "orders"]);
    assert_eq!(listed[0]["config"], lake);

    // A job names them; it runs with the admin's config, and the stored job shows it expanded.
    let by_name = json!({"$connection": "orders", "sinks": [{"$connection": "lake"}]});
    let ok = submit(&mut as_ada, configured("finance", "orders", by_name.clone())).await.expect("accepted");
    let (job, tasks) = finished(&mut as_ada, &ok.id).await;
    assert_eq!(job.state, v1::JobState::Succeeded as i32, "{job:?} {tasks:?}");
    let stored: Value = serde_json::from_str(&job.spec.expect("spec").steps[0].config_json).expect("config");
    assert_eq!(stored, json!({"inputs": orders["inputs"], "sinks": [lake]}));
    let written = walk(&root.join("lake"));
    assert!(written.iter().any(|p| p.extension().is_some_and(|e| e == "parquet")), "{written:?}");

    // The job may add what the connection leaves open, never change what it sets.
    let e =
        submit(&mut as_ada, configured("finance", "x", json!({"$connection": "orders", "inputs": ["/etc/shadow"]})))
            .await
            .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("step \"convert\" inputs: set by connection \"orders\""), "{e:?}");
    // Another namespace cannot name finance's connections.
    let e =
        submit(&mut jobs_as(&master.url, Some(&bob)), configured("marketing", "x", by_name.clone())).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("connection \"orders\" not found in namespace \"marketing\""), "{e:?}");

    // Variables: finance reads FINANCE_*, not another team's; through a connection neither.
    let pg =
        |var: &str| json!({"$connection": "orders", "sinks": [{"type": "postgres", "url_env": var, "table": "t"}]});
    let e = submit(&mut as_ada, configured("finance", "x", pg("MARKETING_PG_URL"))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("sinks[0].url_env: environment variable MARKETING_PG_URL is not among"), "{e:?}");
    assert!(e.message().contains("sandbox.namespaces.\"finance\".env"), "{e:?}");
    as_ops
        .put_connection(put("finance", "warehouse", json!({"type": "postgres", "url_env": "MARKETING_PG_URL"})))
        .await
        .expect("an admin may write it; the sandbox still holds");
    let e = submit(
        &mut as_ada,
        configured(
            "finance",
            "x",
            json!({"$connection": "orders", "sinks": [{"$connection": "warehouse", "table": "t"}]}),
        ),
    )
    .await
    .unwrap_err();
    assert!(e.message().contains("environment variable MARKETING_PG_URL is not among"), "{e:?}");

    // Deleted: new jobs cannot name it, the finished job keeps what it ran with.
    as_ops
        .delete_connection(v1::DeleteConnectionRequest { namespace: "finance".into(), name: "orders".into() })
        .await
        .expect("delete");
    let e = submit(&mut as_ada, configured("finance", "later", by_name)).await.unwrap_err();
    assert!(e.message().contains("connection \"orders\" not found in namespace \"finance\""), "{e:?}");
    let e = as_ops
        .delete_connection(v1::DeleteConnectionRequest { namespace: "finance".into(), name: "orders".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    // Every change and every refusal is in the audit trail.
    let records = audit(&master.url, &security(Some(&token("root", &["*:admin"])), None)).await;
    let seen = |subject: &str, action: &str, target: &str, outcome: &str| {
        records.iter().any(|r| r.subject == subject && r.action == action && r.target == target && r.outcome == outcome)
    };
    assert!(seen("ada", "PutConnection", "orders", "denied"));
    assert!(seen("bob", "GetConnection", "orders", "denied"));
    assert!(seen("ops", "PutConnection", "orders", "ok"));
    assert!(seen("ops", "PutConnection", "bad", "invalid"));
    assert!(seen("ops", "PutConnection", "lake", "ok"), "the CLI's put");
    assert!(seen("ops", "DeleteConnection", "orders", "ok"));
    assert!(records.iter().any(|r| r.action == "DeleteConnection" && r.code == "NOT_FOUND" && r.outcome == "failed"));

    stop.cancel();
    manager.await.expect("manager stops");
    master.stop().await;
    store.cleanup().await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// An API manager in this process holding tasks to `sandbox`.
fn api_manager(
    master_url: &str,
    data: &std::path::Path,
    sandbox: SandboxArgs,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let settings = weir_api_manager::ApiSettings { data_dir: data.to_path_buf(), ..Default::default() };
    manager(weir_api_manager::spec_with(settings), master_url, sandbox, "", TlsArgs::default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_page_or_a_redirect_outside_the_namespaces_hosts_is_refused_on_the_manager() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = WireMock::start().await;
    let port = server.url.rsplit(':').next().expect("port").trim_end_matches('/').to_string();
    // 127.0.0.1 on the server's port is allowed; `localhost`, the same server by another
    // name, is not — as a metadata endpoint or an internal host would not be.
    let sandbox = || SandboxArgs { allowed_hosts: vec![server.url.clone()], ..SandboxArgs::local() };
    let store = StoreFixture::new(Backend::Sqlite).await;
    let master = InProcMaster::start_configured(&store.url, None, |c| c.sandbox = sandbox()).await;
    let mut jobs = master.jobs();
    weir_tests::wait_master(&master.url).await;
    let (stop, manager) = api_manager(&master.url, &dir.path().join("data"), sandbox());
    let page = |ids: &[i64], next: Option<String>| json!({"status": 200, "jsonBody": {"items": ids.iter().map(|i| json!({"id": i})).collect::<Vec<_>>(), "next": next}});
    let stub =
        |path: &str, response: Value| json!({"request": {"method": "GET", "urlPath": path}, "response": response});
    let here = |p: &str| format!("{}{p}", server.url);
    let elsewhere = |p: &str| format!("http://localhost:{port}{p}");
    server.stub(stub("/inside", page(&[1], Some(here("/last"))))).await;
    server.stub(stub("/outside", page(&[1], Some(elsewhere("/last"))))).await;
    server.stub(stub("/moved", json!({"status": 302, "headers": {"Location": elsewhere("/last")}}))).await;
    server.stub(stub("/last", page(&[2], None))).await;
    let collect = |path: &str| {
        let mut s = step("collect", "collect", "api", &[]);
        s.config_json = json!({"api": "shop", "base_url": server.url, "path": path, "records": "$.items[*]",
                               "paginator": {"type": "next_url", "path": "$.next"}})
        .to_string();
        s.retry = Some(v1::RetryPolicy { max_attempts: 3, ..Default::default() });
        job(&format!("collect{}", path.replace('/', "-")), vec![s])
    };
    let run = |spec: v1::JobSpec| {
        let mut jobs = jobs.clone();
        async move {
            let id = weir_tests::submit(&mut jobs, spec).await;
            let done = weir_tests::wait_finished(&mut jobs, &id, Duration::from_secs(60)).await;
            (done, weir_tests::tasks(&mut jobs, &id).await.remove(0))
        }
    };

    let (done, t) = run(collect("/inside")).await;
    assert_eq!(done.state, v1::JobState::Succeeded as i32, "{t:?}");
    let (done, t) = run(collect("/outside")).await;
    assert_eq!(done.state, v1::JobState::Failed as i32);
    assert_eq!((t.error_kind.as_str(), t.attempt), ("sandbox", 1), "refused once, not retried: {t:?}");
    assert!(
        t.error_message.contains(&format!("url: http://localhost:{port} is not among the hosts allowed")),
        "{}",
        t.error_message
    );
    let (done, t) = run(collect("/moved")).await;
    assert_eq!(done.state, v1::JobState::Failed as i32);
    assert_eq!(t.error_kind, "sandbox", "{t:?}");
    assert!(t.error_message.contains("redirect: http://localhost"), "{}", t.error_message);
    // Neither refused URL was requested: /last was asked once, by the job inside.
    let asked: Vec<String> =
        server.requests().await.into_iter().map(|r| r.1).filter(|u| u.starts_with("/last")).collect();
    assert_eq!(asked.len(), 1, "{asked:?}");
    // Each refusal is in the audit trail.
    let records = audit(&master.url, &ClientSecurity::default()).await;
    assert_eq!(records.iter().filter(|r| r.action == "RunTask" && r.outcome == "invalid").count(), 2, "{records:#?}");

    let _ = &mut jobs;
    stop.cancel();
    manager.await.expect("manager stops");
    master.stop().await;
    store.cleanup().await;
}
