//! The API manager's `collect` against a real HTTP server (WireMock's standalone jar, from
//! the npm registry, on the machine's Java), through the master: every pagination style
//! collecting every page once; every auth style, a token renewed on a 401 once, a rotated
//! refresh token kept across a restart and `invalid_grant` failing without a retry; 429
//! with Retry-After, 500s, a cut body, a slow response, a 404, a redirect loop and a page
//! that is not JSON; the manager's rate limit as the server saw it; and collected records
//! converted and stored, every record accounted for; and the real `weir-api-manager`
//! process streaming a 1 GiB response through in bounded memory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use weir_api_manager::client::Rate;
use weir_api_manager::ApiSettings;
use weir_proto::v1::{self, job_service_client::JobServiceClient};
use weir_tests::metric_sample as sample;
use weir_tests::{
    free_port, job, lake_rows, run_manager, spawn_master, step, submit, tasks, wait_finished, wait_master, wait_port,
    Backend, InProcMaster, Proc, StoreFixture, WireMock,
};

/// A master, an API manager and the HTTP server it collects from.
struct Lab {
    dir: tempfile::TempDir,
    store: StoreFixture,
    master: InProcMaster,
    manager: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
    server: WireMock,
}

/// How a job ended: its state, its collect task's output or error, its attempts.
struct Run {
    state: String,
    output: Value,
    kind: String,
    error: String,
    attempts: u32,
}

fn fast() -> Rate {
    Rate { per_minute: 60_000, burst: 1000 }
}

impl Lab {
    async fn start() -> Lab {
        Lab::start_on(Backend::Sqlite).await
    }

    async fn start_on(backend: Backend) -> Lab {
        let dir = tempfile::tempdir().expect("tmp");
        let store = StoreFixture::new(backend).await;
        let master = InProcMaster::start(&store.url).await;
        let server = WireMock::start().await;
        let mut lab = Lab { dir, store, master, manager: None, server };
        lab.manager(&lab.dir.path().join("data"), fast());
        lab
    }

    /// (Re)starts the API manager with its data in `data` and this rate per API.
    fn manager(&mut self, data: &Path, rate: Rate) {
        let settings =
            ApiSettings { data_dir: data.to_path_buf(), api_rate: rate, global_rate: fast(), ..ApiSettings::default() };
        self.manager_with(settings);
    }

    /// (Re)starts the API manager with these settings.
    fn manager_with(&mut self, settings: ApiSettings) {
        if let Some((stop, _)) = self.manager.take() {
            stop.cancel();
        }
        self.manager = Some(run_manager(
            weir_api_manager::spec_with(settings),
            &self.master.url,
            &format!("api-{}", uuid::Uuid::new_v4().simple()),
            "",
        ));
    }

    async fn stop_manager(&mut self) {
        if let Some((stop, handle)) = self.manager.take() {
            stop.cancel();
            handle.await.expect("manager stops");
        }
    }

    /// A collect config on this server: `extra` adds to (or overrides) api, base_url, path.
    fn resource(&self, path: &str, extra: Value) -> Value {
        let mut c = json!({"api": "test", "base_url": self.server.url, "path": path});
        if let (Some(o), Value::Object(e)) = (c.as_object_mut(), extra) {
            o.extend(e);
        }
        c
    }

    /// Runs one collect job (one attempt).
    async fn collect(&self, name: &str, config: Value) -> Run {
        let mut s = step("collect", "collect", "api", &[]);
        s.config_json = config.to_string();
        s.retry = Some(v1::RetryPolicy { max_attempts: 1, ..Default::default() });
        self.run(name, vec![s]).await
    }

    async fn run(&self, name: &str, steps: Vec<v1::StepSpec>) -> Run {
        let mut jc = self.master.jobs();
        let id = submit(&mut jc, job(name, steps)).await;
        let done = wait_finished(&mut jc, &id, Duration::from_secs(90)).await;
        let t = tasks(&mut jc, &id).await.into_iter().find(|t| t.step_id == "collect").expect("collect task");
        Run {
            state: weir_proto::convert::job_state_from_wire(done.state)
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            output: serde_json::from_str(&t.output_json).unwrap_or(Value::Null),
            kind: t.error_kind,
            error: t.error_message,
            attempts: t.attempt,
        }
    }

    /// Runs a collect job that must succeed; returns its output.
    async fn ok(&self, name: &str, config: Value) -> Value {
        let r = self.collect(name, config).await;
        assert_eq!(r.state, "succeeded", "{name}: {}: {}", r.kind, r.error);
        r.output
    }

    async fn stop(mut self) {
        self.stop_manager().await;
        self.master.stop().await;
        self.store.cleanup().await;
    }
}

/// The `id` of every record in a collect output's staged files, in order.
fn ids(output: &Value) -> Vec<i64> {
    let mut out = Vec::new();
    for f in output["files"].as_array().expect("files") {
        let text = std::fs::read_to_string(PathBuf::from(f["path"].as_str().expect("path"))).expect("staged file");
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).expect("a record");
            out.push(v["id"].as_i64().expect("id"));
        }
    }
    out
}

fn items(ids: &[i64]) -> Value {
    Value::Array(ids.iter().map(|i| json!({"id": i, "name": format!("item {i}")})).collect())
}

/// A GET stub of `path` with these query parameters (`absent` for ones that must not be).
fn get(path: &str, query: Value, response: Value) -> Value {
    json!({"request": {"method": "GET", "urlPath": path, "queryParameters": query}, "response": response})
}

fn body(v: Value) -> Value {
    json!({"status": 200, "jsonBody": v})
}

/// A job of `template` with `params`.
fn spec(name: &str, template: &str, params: Value) -> v1::JobSpec {
    v1::JobSpec {
        namespace: "test".into(),
        name: name.into(),
        template: template.into(),
        params_json: params.to_string(),
        ..Default::default()
    }
}

/// A task's output by step (its error when it has none).
fn out(ts: &[v1::Task], step: &str) -> Value {
    let t = ts.iter().find(|t| t.step_id == step).expect("task");
    serde_json::from_str(&t.output_json).unwrap_or_else(|_| json!({"error": t.error_message}))
}

/// Each task's step, error kind and message, for an assertion's message.
fn why(ts: &[v1::Task]) -> Vec<(&String, &String, &String)> {
    ts.iter().map(|t| (&t.step_id, &t.error_kind, &t.error_message)).collect()
}

fn counts(o: &Value) -> (u64, u64) {
    (o["pages"].as_u64().unwrap_or(0), o["records"].as_u64().unwrap_or(0))
}

#[tokio::test]
async fn every_pagination_style_collects_every_page_once() {
    let lab = Lab::start().await;
    let w = &lab.server;
    let none = |p: &str| json!({p: {"absent": true}});
    let eq = |p: &str, v: &str| json!({p: {"equalTo": v}});

    // A next URL in the body, relative or absolute.
    w.stub(get("/n/items", none("p"), body(json!({"items": items(&[1, 2]), "next": "/n/items?p=2"})))).await;
    w.stub(get(
        "/n/items",
        eq("p", "2"),
        body(json!({"items": items(&[3]), "next": format!("{}/n/items?p=3", w.url)})),
    ))
    .await;
    w.stub(get("/n/items", eq("p", "3"), body(json!({"items": items(&[4]), "next": null})))).await;
    let o = lab
        .ok(
            "next-url",
            lab.resource(
                "/n/items",
                json!({"paginator": {"type": "next_url", "path": "$.next"}, "records": "$.items[*]"}),
            ),
        )
        .await;
    assert_eq!((counts(&o), ids(&o)), ((3, 4), vec![1, 2, 3, 4]));
    assert_eq!(o["requests"], 3);

    // The Link header.
    let link = |n: u32| json!({"Link": format!("<{}/l/items?page={n}>; rel=\"next\", <{}/l/items?page=9>; rel=\"last\"", w.url, w.url)});
    w.stub(get("/l/items", none("page"), json!({"status": 200, "jsonBody": items(&[1, 2]), "headers": link(2)}))).await;
    w.stub(get("/l/items", eq("page", "2"), json!({"status": 200, "jsonBody": items(&[3]), "headers": link(3)}))).await;
    w.stub(get("/l/items", eq("page", "3"), body(items(&[4])))).await;
    let o = lab.ok("link", lab.resource("/l/items", json!({"paginator": {"type": "link_header"}}))).await;
    assert_eq!((counts(&o), ids(&o)), ((3, 4), vec![1, 2, 3, 4]));

    // A cursor in the body, then one in a header.
    w.stub(get("/c/items", none("after"), body(json!({"data": items(&[1, 2]), "meta": {"next": "abc"}})))).await;
    w.stub(get("/c/items", eq("after", "abc"), body(json!({"data": items(&[3]), "meta": {"next": "def"}})))).await;
    w.stub(get("/c/items", eq("after", "def"), body(json!({"data": items(&[4]), "meta": {"next": null}})))).await;
    let o = lab
        .ok(
            "cursor",
            lab.resource(
                "/c/items",
                json!({"paginator": {"type": "cursor", "path": "$.meta.next", "param": "after"}, "records": "$.data"}),
            ),
        )
        .await;
    assert_eq!((counts(&o), ids(&o)), ((3, 4), vec![1, 2, 3, 4]));
    w.stub(get(
        "/h/items",
        none("cursor"),
        json!({"status": 200, "jsonBody": items(&[1, 2]), "headers": {"X-Next-Cursor": "k2"}}),
    ))
    .await;
    w.stub(get("/h/items", eq("cursor", "k2"), body(items(&[3])))).await;
    let o = lab
        .ok(
            "cursor-header",
            lab.resource(
                "/h/items",
                json!({"paginator": {"type": "cursor", "header": "X-Next-Cursor", "param": "cursor"}}),
            ),
        )
        .await;
    assert_eq!((counts(&o), ids(&o)), ((2, 3), vec![1, 2, 3]));

    // Offset and limit up to the total; page numbers up to an empty page.
    for (offset, ids) in [("0", vec![1, 2]), ("2", vec![3, 4]), ("4", vec![5])] {
        w.stub(get(
            "/o/items",
            json!({"offset": {"equalTo": offset}, "limit": {"equalTo": "2"}}),
            body(json!({"rows": items(&ids), "total": 5})),
        ))
        .await;
    }
    let o = lab
        .ok(
            "offset",
            lab.resource(
                "/o/items",
                json!({"paginator": {"type": "offset", "limit": 2, "total_path": "$.total"}, "records": "$.rows[*]"}),
            ),
        )
        .await;
    assert_eq!((counts(&o), ids(&o)), ((3, 5), vec![1, 2, 3, 4, 5]));
    for (page, ids) in [("1", vec![1, 2]), ("2", vec![3]), ("3", vec![])] {
        w.stub(get("/p/items", eq("page", page), body(items(&ids)))).await;
    }
    let o = lab.ok("page-number", lab.resource("/p/items", json!({"paginator": {"type": "page_number"}}))).await;
    assert_eq!((counts(&o), ids(&o)), ((3, 3), vec![1, 2, 3]));

    // Each page was asked for once.
    for prefix in ["/n/", "/l/", "/c/", "/h/", "/o/", "/p/"] {
        let urls: Vec<String> = w.requests().await.into_iter().map(|r| r.1).filter(|u| u.starts_with(prefix)).collect();
        let mut unique = urls.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(urls.len(), unique.len(), "{prefix}: {urls:?}");
    }

    // `has_more: false` and `max_pages` stop; a cursor that comes back is an error naming it.
    w.stub(get("/m/items", json!({}), body(json!({"data": items(&[1]), "more": false, "next": "/m/items?p=2"})))).await;
    let o = lab
        .ok(
            "has-more",
            lab.resource(
                "/m/items",
                json!({"paginator": {"type": "next_url", "path": "$.next"}, "records": "$.data", "has_more": "$.more"}),
            ),
        )
        .await;
    assert_eq!(counts(&o), (1, 1));
    let o = lab
        .ok(
            "max-pages",
            lab.resource(
                "/n/items",
                json!({"paginator": {"type": "next_url", "path": "$.next"}, "records": "$.items", "max_pages": 2}),
            ),
        )
        .await;
    assert_eq!(counts(&o), (2, 3));
    w.stub(get("/loop/items", none("c"), body(json!({"data": items(&[1]), "next": "x"})))).await;
    w.stub(get("/loop/items", eq("c", "x"), body(json!({"data": items(&[2]), "next": "x"})))).await;
    let r = lab
        .collect(
            "loop",
            lab.resource(
                "/loop/items",
                json!({"paginator": {"type": "cursor", "path": "$.next", "param": "c"}, "records": "$.data"}),
            ),
        )
        .await;
    assert_eq!((r.state.as_str(), r.kind.as_str(), r.attempts), ("failed", "bad_format", 1));
    assert!(r.error.contains("/loop/items?c=x") && r.error.contains("would not end"), "{}", r.error);

    // A bad description is refused at submission, naming the field.
    let mut bad = step("collect", "collect", "api", &[]);
    bad.config_json = lab.resource("/x", json!({"paginator": {"type": "scroll"}})).to_string();
    let err = lab
        .master
        .jobs()
        .submit_job(v1::SubmitJobRequest { spec: Some(job("bad", vec![bad])) })
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("scroll"), "{}", err.message());
    lab.stop().await;
}

#[tokio::test]
async fn every_auth_style_authenticates_and_tokens_renew_once() {
    let mut lab = Lab::start().await;
    let url = lab.server.url.clone();
    let w = &lab.server;
    let ok = body(items(&[1]));
    let denied = json!({"status": 401, "jsonBody": {"error": "unauthorized"}});
    let env = |pairs: &[(&str, &str)]| json!({"env": weir_tests::credentials_env(pairs)});

    // API keys in a header and in the query; basic; bearer.
    w.stub(json!({"request": {"method": "GET", "urlPath": "/k", "headers": {"X-Api-Key": {"equalTo": "k3y"}}}, "response": ok})).await;
    w.stub(json!({"request": {"method": "GET", "urlPath": "/q", "queryParameters": {"key": {"equalTo": "k3y"}}}, "response": ok})).await;
    w.stub(json!({"request": {"method": "GET", "urlPath": "/q", "queryParameters": {"key": {"equalTo": "wrong"}}}, "response": {"status": 403, "body": "no"}})).await;
    w.stub(json!({"request": {"method": "GET", "urlPath": "/b", "basicAuthCredentials": {"username": "ada", "password": "pw"}}, "response": ok})).await;
    w.stub(json!({"request": {"method": "GET", "urlPath": "/t", "headers": {"Authorization": {"equalTo": "Bearer t0k"}}}, "response": ok})).await;
    for p in ["/k", "/q", "/b", "/t"] {
        w.stub(json!({"priority": 10, "request": {"method": "GET", "urlPath": p}, "response": denied})).await;
    }
    let key = env(&[("API_KEY", "k3y")]);
    lab.ok(
        "key-header",
        lab.resource("/k", json!({"auth": {"type": "api_key", "name": "X-Api-Key", "credentials": key}})),
    )
    .await;
    lab.ok(
        "key-query",
        lab.resource(
            "/q",
            json!({"auth": {"type": "api_key", "name": "key", "location": "query", "credentials": key}}),
        ),
    )
    .await;
    lab.ok(
        "basic",
        lab.resource(
            "/b",
            json!({"auth": {"type": "basic", "credentials": env(&[("USERNAME", "ada"), ("PASSWORD", "pw")])}}),
        ),
    )
    .await;
    lab.ok("bearer", lab.resource("/t", json!({"auth": {"type": "bearer", "credentials": env(&[("TOKEN", "t0k")])}})))
        .await;
    // A refused key fails without retry, naming the URL with the key masked.
    let r = lab
        .collect("key-wrong", lab.resource("/q", json!({"api": "other", "auth": {"type": "api_key", "name": "key", "location": "query", "credentials": env(&[("API_KEY", "wrong")])}})))
        .await;
    assert_eq!((r.state.as_str(), r.kind.as_str(), r.attempts), ("failed", "http_error", 1));
    assert!(r.error.contains("/q?key=***") && r.error.contains("403") && !r.error.contains("wrong"), "{}", r.error);
    // A credential that is not set fails the step at once, naming the variable.
    let r = lab
        .collect(
            "unset",
            lab.resource(
                "/t",
                json!({"api": "unset", "auth": {"type": "bearer", "credentials": {"env": "JOB_TEST_NOT_SET"}}}),
            ),
        )
        .await;
    assert_eq!((r.kind.as_str(), r.attempts), ("bad_config", 1));
    assert!(r.error.contains("JOB_TEST_NOT_SET"), "{}", r.error);

    // OAuth2 client credentials: the first token is refused, renewed once, the second works.
    let token = |state: &str, next: &str, tok: &str| {
        json!({"scenarioName": "cc", "requiredScenarioState": state, "newScenarioState": next,
               "request": {"method": "POST", "urlPath": "/oauth/token", "basicAuthCredentials": {"username": "cid", "password": "csecret"},
                           "bodyPatterns": [{"contains": "grant_type=client_credentials"}]},
               "response": body(json!({"access_token": tok, "token_type": "bearer", "expires_in": 3600}))})
    };
    w.stub(token("Started", "second", "tok-1")).await;
    w.stub(token("second", "done", "tok-2")).await;
    w.stub(json!({"request": {"method": "GET", "urlPath": "/cc", "headers": {"Authorization": {"equalTo": "Bearer tok-1"}}}, "response": denied})).await;
    w.stub(json!({"request": {"method": "GET", "urlPath": "/cc", "headers": {"Authorization": {"equalTo": "Bearer tok-2"}}}, "response": ok})).await;
    let cc = json!({"type": "oauth2_client_credentials", "token_url": format!("{url}/oauth/token"), "credentials": env(&[("CLIENT_ID", "cid"), ("CLIENT_SECRET", "csecret")])});
    lab.ok("client-credentials", lab.resource("/cc", json!({"api": "cc", "auth": cc}))).await;
    assert_eq!(w.count(json!({"method": "POST", "url": "/oauth/token"})).await, 2, "one renewal");
    assert_eq!(w.count(json!({"method": "GET", "url": "/cc"})).await, 2, "the refused request and its retry");

    // The refresh-token grant with rotation: r1 gives r2, which is kept on disk before it
    // is used; a restarted manager starts from r2; r1, once rotated, is invalid_grant.
    let refresh = |state: Option<&str>, next: Option<&str>, given: &str, access: &str, rotated: &str| {
        let mut m = json!({"request": {"method": "POST", "urlPath": "/oauth/refresh", "bodyPatterns": [{"contains": format!("refresh_token={given}")}]},
                           "response": body(json!({"access_token": access, "expires_in": 3600, "refresh_token": rotated}))});
        if let Some(s) = state {
            m["scenarioName"] = json!("rt");
            m["requiredScenarioState"] = json!(s);
        }
        if let Some(n) = next {
            m["newScenarioState"] = json!(n);
        }
        m
    };
    w.stub(refresh(Some("Started"), Some("rotated"), "r1", "a1", "r2")).await;
    w.stub(json!({"scenarioName": "rt", "requiredScenarioState": "rotated",
                  "request": {"method": "POST", "urlPath": "/oauth/refresh", "bodyPatterns": [{"contains": "refresh_token=r1"}]},
                  "response": {"status": 400, "jsonBody": {"error": "invalid_grant", "error_description": "token was rotated"}}})).await;
    w.stub(refresh(None, None, "r2", "a2", "r3")).await;
    w.stub(refresh(None, None, "r3", "a3", "r4")).await;
    for a in ["a1", "a2", "a3"] {
        w.stub(json!({"request": {"method": "GET", "urlPath": "/rt", "headers": {"Authorization": {"equalTo": format!("Bearer {a}")}}}, "response": ok})).await;
    }
    let rt = json!({"type": "oauth2_refresh_token", "token_url": format!("{url}/oauth/refresh"), "credentials": env(&[("REFRESH_TOKEN", "r1")])});
    let config = lab.resource("/rt", json!({"api": "rt", "auth": rt}));
    lab.ok("refresh-1", config.clone()).await;
    let kept: Vec<PathBuf> =
        std::fs::read_dir(lab.dir.path().join("data/tokens")).expect("tokens").flatten().map(|e| e.path()).collect();
    assert_eq!(kept.len(), 1);
    assert!(std::fs::read_to_string(&kept[0]).expect("kept").contains("\"r2\""), "the rotated token is kept");
    let data = lab.dir.path().join("data");
    lab.stop_manager().await;
    lab.manager(&data, fast());
    lab.ok("refresh-2", config.clone()).await;
    assert_eq!(
        lab.server
            .count(
                json!({"method": "POST", "url": "/oauth/refresh", "bodyPatterns": [{"contains": "refresh_token=r2"}]})
            )
            .await,
        1
    );
    // A manager without the kept token offers r1, now void: no retry, and it says why.
    lab.stop_manager().await;
    lab.manager(&lab.dir.path().join("fresh"), fast());
    let r = lab.collect("refresh-3", config).await;
    assert_eq!((r.state.as_str(), r.kind.as_str(), r.attempts), ("failed", "auth_failed", 1));
    assert!(r.error.contains("invalid_grant") && r.error.contains("REFRESH_TOKEN"), "{}", r.error);
    lab.stop().await;
}

/// Stubs `/name` answering `first` once, then `then`.
async fn twice(w: &WireMock, name: &str, first: Value, then: Value) {
    w.stub(json!({"scenarioName": name, "requiredScenarioState": "Started", "newScenarioState": "again",
                  "request": {"method": "GET", "urlPath": format!("/{name}")}, "response": first}))
        .await;
    w.stub(json!({"scenarioName": name, "requiredScenarioState": "again",
                  "request": {"method": "GET", "urlPath": format!("/{name}")}, "response": then}))
        .await;
}

#[tokio::test]
async fn what_the_server_says_is_honoured_and_what_cannot_work_fails_naming_it() {
    let lab = Lab::start().await;
    let w = &lab.server;
    let ok = body(items(&[1, 2]));

    // 429 with Retry-After: the next try waits as long as asked (the server's own clock).
    twice(w, "busy", json!({"status": 429, "headers": {"Retry-After": "1"}}), ok.clone()).await;
    let o = lab.ok("busy", lab.resource("/busy", json!({}))).await;
    assert_eq!((o["records"].as_u64(), o["retried"].as_u64()), (Some(2), Some(1)));
    let times: Vec<i64> = w.requests().await.into_iter().filter(|r| r.1 == "/busy").map(|r| r.2).collect();
    assert_eq!(times.len(), 2);
    assert!(times[1] - times[0] >= 950, "waited {} ms after Retry-After: 1", times[1] - times[0]);

    // 500s back off and try again; a body cut short is read again.
    w.stub(json!({"scenarioName": "flaky", "requiredScenarioState": "Started", "newScenarioState": "2", "request": {"urlPath": "/flaky"}, "response": {"status": 500}})).await;
    twice(w, "cut", json!({"fault": "MALFORMED_RESPONSE_CHUNK"}), ok.clone()).await;
    w.stub(json!({"scenarioName": "flaky", "requiredScenarioState": "2", "newScenarioState": "3", "request": {"urlPath": "/flaky"}, "response": {"status": 502}})).await;
    w.stub(json!({"scenarioName": "flaky", "requiredScenarioState": "3", "request": {"urlPath": "/flaky"}, "response": ok})).await;
    let o = lab.ok("flaky", lab.resource("/flaky", json!({}))).await;
    assert_eq!((o["records"].as_u64(), o["retried"].as_u64(), o["requests"].as_u64()), (Some(2), Some(2), Some(3)));
    let o = lab.ok("cut", lab.resource("/cut", json!({}))).await;
    assert_eq!((o["records"].as_u64(), o["retried"].as_u64()), (Some(2), Some(1)));

    // A server that stays slow: every try times out, and the step says so (retryable).
    w.stub(json!({"request": {"urlPath": "/slow"}, "response": {"status": 200, "jsonBody": [], "fixedDelayMilliseconds": 3000}})).await;
    let r = lab.collect("slow", lab.resource("/slow", json!({"timeout": "500ms", "max_retries": 2}))).await;
    assert_eq!((r.state.as_str(), r.kind.as_str()), ("failed", "unavailable"));
    assert!(r.error.contains("/slow") && r.error.contains("after 2 attempts"), "{}", r.error);

    // What no retry changes fails at once, naming the URL and why.
    w.stub(json!({"request": {"urlPath": "/gone"}, "response": {"status": 404, "body": "no such thing"}})).await;
    let r = lab.collect("gone", lab.resource("/gone", json!({}))).await;
    assert_eq!((r.kind.as_str(), r.attempts), ("http_error", 1));
    assert!(r.error.contains("/gone") && r.error.contains("404") && r.error.contains("no such thing"), "{}", r.error);
    w.stub(json!({"request": {"urlPath": "/r/a"}, "response": {"status": 302, "headers": {"Location": "/r/b"}}})).await;
    w.stub(json!({"request": {"urlPath": "/r/b"}, "response": {"status": 302, "headers": {"Location": "/r/a"}}})).await;
    let r = lab.collect("loop", lab.resource("/r/a", json!({}))).await;
    assert_eq!((r.kind.as_str(), r.attempts), ("http_error", 1));
    assert!(r.error.contains("too many redirects"), "{}", r.error);
    w.stub(json!({"request": {"urlPath": "/bad"}, "response": {"status": 200, "body": "{\"data\": [1, 2"}})).await;
    let r = lab.collect("bad", lab.resource("/bad", json!({}))).await;
    assert_eq!((r.kind.as_str(), r.attempts), ("bad_format", 1));
    assert!(r.error.contains("/bad") && r.error.contains("not JSON"), "{}", r.error);
    w.stub(json!({"request": {"urlPath": "/big"}, "response": {"status": 200, "body": "x".repeat(5000)}})).await;
    // A records path read on the whole page is bounded; one of member names streams.
    let r = lab.collect("big", lab.resource("/big", json!({"max_page_bytes": 1000, "records": "$..id"}))).await;
    assert_eq!((r.kind.as_str(), r.attempts), ("bad_format", 1));
    assert!(r.error.contains("5000 bytes, over max_page_bytes (1000)") && r.error.contains("streams"), "{}", r.error);
    // As Prometheus reads it: each answer by status, the timeouts as `error`, every
    // request's wait for the limits.
    let m = weir_runtime::metrics::encode();
    let requests = |status: &str| sample(&m, &format!(r#"weir_api_requests_total{{api="test",status="{status}"}}"#));
    assert_eq!(
        (requests("429"), requests("404"), requests("500"), requests("502")),
        (Some(1.0), Some(1.0), Some(1.0), Some(1.0)),
        "{m}"
    );
    assert_eq!(requests("error"), Some(2.0), "the two timeouts: {m}");
    assert_eq!(requests("redirect"), Some(1.0), "the redirect loop: {m}");
    let sent: f64 = m
        .lines()
        .filter(|l| l.starts_with(r#"weir_api_requests_total{api="test","#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(sample(&m, r#"weir_api_rate_limit_wait_seconds_count{api="test"}"#), Some(sent), "{m}");
    lab.stop().await;
}

#[tokio::test]
async fn the_managers_rate_limit_spaces_requests_as_the_server_sees_them() {
    let mut lab = Lab::start().await;
    // 2 requests a second, no burst beyond one.
    lab.manager(&lab.dir.path().join("slow-data"), Rate { per_minute: 120, burst: 1 });
    for p in 1..=4 {
        let next = if p < 4 { json!(format!("/rl/items?p={}", p + 1)) } else { Value::Null };
        let q = if p == 1 { json!({"p": {"absent": true}}) } else { json!({"p": {"equalTo": p.to_string()}}) };
        lab.server.stub(get("/rl/items", q, body(json!({"items": items(&[p]), "next": next})))).await;
    }
    let o = lab
        .ok(
            "limited",
            lab.resource(
                "/rl/items",
                json!({"api": "limited", "paginator": {"type": "next_url", "path": "$.next"}, "records": "$.items"}),
            ),
        )
        .await;
    assert_eq!(counts(&o), (4, 4));
    let times: Vec<i64> =
        lab.server.requests().await.into_iter().filter(|r| r.1.starts_with("/rl/")).map(|r| r.2).collect();
    // The limiter spaces the sends 500 ms apart; what the server records also holds each
    // request's way there, which varies on a loaded machine (one came 105 ms late once):
    // each gap at least 350 ms, and the run as long as the rate says, less that much.
    for pair in times.windows(2) {
        assert!(pair[1] - pair[0] >= 350, "requests {} ms apart at 2/s: {times:?}", pair[1] - pair[0]);
    }
    let span = times.last().copied().unwrap_or_default() - times.first().copied().unwrap_or_default();
    assert!(span >= 3 * 500 - 150, "4 requests at 2/s within {span} ms: {times:?}");
    lab.stop().await;
}

#[tokio::test]
async fn an_apis_circuit_opens_after_failures_fails_fast_and_a_probe_closes_it() {
    // PostgreSQL, so the test reads the master's outbox while the master runs.
    let mut lab = Lab::start_on(Backend::Postgres).await;
    let circuit = weir_core::api::circuit::CircuitConfig {
        consecutive_failures: 3,
        failure_ratio: 0.0,
        cooldown: Duration::from_secs(2),
        ..Default::default()
    };
    let settings = ApiSettings {
        data_dir: lab.dir.path().join("circuit-data"),
        api_rate: fast(),
        global_rate: fast(),
        circuit,
        ..ApiSettings::default()
    };
    lab.manager_with(settings);
    let w = &lab.server;
    w.stub(json!({"request": {"urlPath": "/sick"}, "response": {"status": 500, "body": "down"}})).await;
    w.stub(get("/fine", json!({}), body(items(&[1, 2])))).await;
    // Three 500s in a row open the circuit: the fourth attempt is not sent.
    let r = lab.collect("sick", lab.resource("/sick", json!({"max_retries": 10}))).await;
    assert_eq!((r.state.as_str(), r.kind.as_str()), ("failed", "circuit_open"), "{}", r.error);
    assert!(
        r.error.contains("3 failures in a row") && r.error.contains("/sick") && r.error.contains("500"),
        "{}",
        r.error
    );
    assert_eq!(w.count(json!({"urlPath": "/sick"})).await, 3);
    // The master knows the replica's circuit is open (what `weir apis` shows): on one of
    // the next heartbeats (every 5 s), later on a loaded machine.
    let mut wc = lab.master.workers();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = wc.list_quotas(v1::ListQuotasRequest {}).await.expect("quotas").into_inner();
        if r.circuits.iter().any(|c| c.api == "test" && c.state == "open" && c.reason.contains("in a row")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the open circuit never reached the master: {:?}", r.circuits);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // As Prometheus reads it (the manager runs in this process): the circuit open, three 500s.
    let m = weir_runtime::metrics::encode();
    assert_eq!(sample(&m, r#"weir_api_circuit_state{api="test",state="open"}"#), Some(1.0), "{m}");
    assert_eq!(sample(&m, r#"weir_api_circuit_state{api="test",state="closed"}"#), Some(0.0), "{m}");
    assert_eq!(sample(&m, r#"weir_api_requests_total{api="test",status="500"}"#), Some(3.0), "{m}");
    // While open, the API's other resources fail at once, with nothing sent.
    let r = lab.collect("fine-while-open", lab.resource("/fine", json!({}))).await;
    assert_eq!(r.kind, "circuit_open", "{}", r.error);
    assert_eq!(w.count(json!({"urlPath": "/fine"})).await, 0);
    // Another API is not affected.
    let o = lab.ok("other-api", lab.resource("/fine", json!({"api": "other"}))).await;
    assert_eq!(counts(&o), (1, 2));
    // After the cooldown, one probe goes; it succeeds and closes the circuit.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let o = lab.ok("fine-after", lab.resource("/fine", json!({}))).await;
    assert_eq!(counts(&o), (1, 2));
    // Each change went to the master over the heartbeat and into its outbox (`weir.apis`).
    let store = lab.store.open().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let events = loop {
        let all = store.messages_after(0, 1000).await.expect("outbox");
        let apis: Vec<_> = all.into_iter().map(|m| m.1).filter(|m| m.topic == "weir.apis").collect();
        if apis.len() >= 3 || std::time::Instant::now() > deadline {
            break apis;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let kinds: Vec<&str> = events.iter().map(|m| m.kind.as_str()).collect();
    assert_eq!(kinds, ["dev.weir.api.circuit_opened", "dev.weir.api.circuit_half_open", "dev.weir.api.circuit_closed"]);
    assert!(events.iter().all(|m| m.key == "test" && m.data["api"] == "test" && m.data["worker_id"].is_string()));
    let opened = &events[0].data;
    assert!(opened["reason"].as_str().is_some_and(|r| r.contains("3 failures in a row")), "{opened}");
    assert!(opened["open_until"].is_string(), "{opened}");
    let m = weir_runtime::metrics::encode();
    assert_eq!(sample(&m, r#"weir_api_circuit_state{api="test",state="closed"}"#), Some(1.0), "{m}");
    assert_eq!(sample(&m, r#"weir_api_requests_total{api="test",status="200"}"#), Some(1.0), "the probe: {m}");
    lab.stop().await;
}

#[tokio::test]
async fn collected_records_are_converted_and_stored_with_every_record_accounted_for() {
    let lab = Lab::start().await;
    let w = &lab.server;
    for (offset, ids) in
        [("0", (1..=50).collect::<Vec<_>>()), ("50", (51..=100).collect()), ("100", (101..=120).collect())]
    {
        w.stub(get("/orders", json!({"offset": {"equalTo": offset}}), body(json!({"orders": items(&ids)})))).await;
    }
    let (stop, batch) = lab.batch();
    let lake = lab.dir.path().join("lake");
    let mut collect = step("collect", "collect", "api", &[]);
    collect.config_json = lab
        .resource(
            "/orders",
            json!({"paginator": {"type": "offset", "limit": 50}, "records": "$.orders[*]", "records_per_file": 40}),
        )
        .to_string();
    let mut store = step("store", "store", "batch", &["collect"]);
    store.config_json = json!({"sinks": [{"type": "parquet", "path": lake.display().to_string()}]}).to_string();
    let r = lab
        .run(
            "orders",
            vec![collect, step("convert", "convert", "batch", &["collect"]), {
                let mut s = store;
                s.depends_on = vec!["convert".into()];
                s
            }],
        )
        .await;
    assert_eq!(r.state, "succeeded", "{}", r.error);
    assert_eq!(
        (counts(&r.output), r.output["files"].as_array().map(Vec::len)),
        ((3, 120), Some(3)),
        "120 records in files of 40"
    );
    let mut jc = lab.master.jobs();
    let id = lab.master_job_id("orders").await;
    let ts = tasks(&mut jc, &id).await;
    let out = |s: &str| -> Value {
        serde_json::from_str(&ts.iter().find(|t| t.step_id == s).expect("task").output_json).expect("output")
    };
    assert_eq!((out("convert")["rows_read"].as_u64(), out("convert")["rows_written"].as_u64()), (Some(120), Some(120)));
    assert_eq!(out("store")["rows_written"].as_u64(), Some(120));
    assert_eq!(lake_rows(&lake), 120);
    stop.cancel();
    batch.await.expect("batch manager stops");
    lab.stop().await;
}

impl Lab {
    /// The id of the newest job called `name`.
    async fn master_job_id(&self, name: &str) -> String {
        let mut jc = self.master.jobs();
        let page = jc
            .list_jobs(v1::ListJobsRequest { namespace: "test".into(), ..Default::default() })
            .await
            .expect("list")
            .into_inner();
        page.jobs.into_iter().find(|j| j.spec.as_ref().is_some_and(|s| s.name == name)).map(|j| j.id).expect("the job")
    }
}

/// Peak resident memory of a process (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kb = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).expect("VmHWM");
    kb.trim().trim_end_matches("kB").trim().parse::<u64>().expect("kB") * 1024
}

/// The real `weir-api-manager` process collects a 1 GiB JSON response, served by
/// CPython's own HTTP server, in bounded memory: every record staged once, in order,
/// and the process's peak RSS a small fraction of the response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_gigabyte_response_streams_through_in_bounded_memory() {
    use std::io::{BufRead, BufReader, Write};
    const SIZE: u64 = 1 << 30;
    const BOUND: u64 = 200 << 20;
    let dir = tempfile::tempdir().expect("tmp");
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).expect("mkdir");
    // One page: {"meta": …, "data": [records…], "next": null}, records with nested objects.
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(www.join("big.json")).expect("file"));
    f.write_all(br#"{"meta": {"generated": "2026-12-01"}, "data": ["#).expect("write");
    let (mut n, mut written) = (0u64, 0u64);
    while written < SIZE {
        let rec = format!(
            r#"{}{{"id": {n}, "name": "item {n}", "tags": ["a", "b\u00e9"], "price": {}.25, "owner": {{"id": {}, "email": "u{n}@example.com"}}, "note": "{}"}}"#,
            if n == 0 { "" } else { "," },
            n % 1000,
            n % 97,
            "x".repeat((n % 64) as usize)
        );
        f.write_all(rec.as_bytes()).expect("write");
        written += rec.len() as u64;
        n += 1;
    }
    f.write_all(br#"], "next": null}"#).expect("write");
    f.flush().expect("flush");
    drop(f);

    let port = free_port();
    let port_s = port.to_string();
    let www_s = www.display().to_string();
    let mut server = tokio::process::Command::new(weir_tests::python())
        .args(["-m", "http.server", "--bind", "127.0.0.1", "--directory", &www_s, &port_s])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("python http.server");
    wait_port(port, "python http.server").await;

    let store = StoreFixture::new(Backend::Sqlite).await;
    let (url, _master) = spawn_master(&store.url);
    wait_master(&url).await;
    let data = dir.path().join("data").display().to_string();
    let manager = Proc::spawn(
        "weir-api-manager",
        &[],
        &[("WEIR_MASTER_URL", url.as_str()), ("WEIR_POLL_WAIT", "1s"), ("WEIR_DATA_DIR", data.as_str())],
    );
    let mut jc = JobServiceClient::new(weir_tests::channel(&url));
    let mut s = step("collect", "collect", "api", &[]);
    s.config_json = json!({
        "api": "big", "base_url": format!("http://127.0.0.1:{port}"), "path": "/big.json",
        "records": "$.data[*]", "paginator": {"type": "next_url", "path": "$.next"}, "timeout": "10m"
    })
    .to_string();
    s.retry = Some(v1::RetryPolicy { max_attempts: 1, ..Default::default() });
    let id = submit(&mut jc, job("one-gigabyte", vec![s])).await;
    let done = wait_finished(&mut jc, &id, Duration::from_secs(600)).await;
    let t = tasks(&mut jc, &id).await.into_iter().find(|t| t.step_id == "collect").expect("collect task");
    assert_eq!(done.state, v1::JobState::Succeeded as i32, "{}: {}", t.error_kind, t.error_message);
    let peak = peak_rss(manager.pid());
    let output: Value = serde_json::from_str(&t.output_json).expect("output");
    assert_eq!(counts(&output), (1, n), "{output}");

    // Every record staged once, in order: the first and the last of each file line up.
    let (mut next, mut staged) = (0u64, 0u64);
    for f in output["files"].as_array().expect("files") {
        let path = f["path"].as_str().expect("path");
        let mut last = None;
        for line in BufReader::new(std::fs::File::open(path).expect("staged file")).lines() {
            let line = line.expect("line");
            if last.is_none() {
                let first: Value = serde_json::from_str(&line).expect("record");
                assert_eq!(first["id"].as_u64(), Some(next), "{path}");
            }
            staged += 1;
            last = Some(line);
        }
        let last: Value = serde_json::from_str(&last.expect("a record")).expect("record");
        assert_eq!(last["owner"]["email"], format!("u{}@example.com", staged - 1));
        next = staged;
    }
    assert_eq!(staged, n);
    let first = Path::new(output["files"][0]["path"].as_str().expect("path"));
    let spool = first.parent().expect("staging dir").join(".page");
    assert!(!spool.exists(), "the spooled page {} is left behind", spool.display());
    eprintln!("collected {n} records, {written} bytes; the manager's peak RSS {} MiB", peak >> 20);
    assert!(peak < BOUND, "the manager's peak RSS was {} MiB collecting {} MiB", peak >> 20, written >> 20);
    let _ = server.kill().await;
    store.cleanup().await;
}

/// The most requests in any window of `window_ms` among `times` (sorted, ms).
fn busiest(times: &[i64], window_ms: i64) -> usize {
    let mut start = 0;
    let mut most = 0;
    for end in 0..times.len() {
        while times[end] - times[start] >= window_ms {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    most
}

/// Three real `weir-api-manager` processes collecting from one API share its one limit:
/// the master divides it among them over the heartbeat; the requests the server saw never
/// exceed the limit plus the burst in any window, also while one replica is killed with
/// SIGKILL mid-collection and its share goes to the other two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_keep_to_one_limit_and_a_killed_ones_share_comes_back() {
    use weir_proto::v1::worker_service_client::WorkerServiceClient;
    const PER_MINUTE: i64 = 1200;
    const BURST: i64 = 10;
    const JOBS: usize = 6;
    const PAGES: u64 = 40;
    let server = WireMock::start().await;
    server
        .stub(json!({"request": {"method": "GET", "urlPath": "/shared/items"},
                     "response": {"status": 200, "jsonBody": [{"id": 1}]}}))
        .await;
    let dir = tempfile::tempdir().expect("tmp");
    let store = StoreFixture::new(Backend::Sqlite).await;
    let (url, _master) = spawn_master(&store.url);
    wait_master(&url).await;
    let data = dir.path().join("data").display().to_string();
    let apis = dir.path().join("apis.yaml");
    std::fs::write(&apis, format!("apis:\n  shared: {{rate: {PER_MINUTE}/min, burst: {BURST}}}\n")).expect("write");
    let apis = apis.display().to_string();
    let replica = |id: &str| {
        Proc::spawn(
            "weir-api-manager",
            &[],
            &[
                ("WEIR_MASTER_URL", url.as_str()),
                ("WEIR_WORKER_ID", id),
                ("WEIR_WORKER_CONCURRENCY", "2"),
                ("WEIR_POLL_WAIT", "1s"),
                ("WEIR_DATA_DIR", data.as_str()),
                ("WEIR_APIS", apis.as_str()),
                ("WEIR_API_GLOBAL_RATE", "0"),
            ],
        )
    };
    let mut replicas = vec![replica("api-a"), replica("api-b"), replica("api-c")];
    let mut jc = JobServiceClient::new(weir_tests::channel(&url));
    let mut ids = Vec::new();
    for j in 0..JOBS {
        let mut s = step("collect", "collect", "api", &[]);
        s.config_json = json!({
            "api": "shared", "base_url": server.url, "path": "/shared/items",
            "paginator": {"type": "page_number"}, "max_pages": PAGES
        })
        .to_string();
        s.timeouts = Some(v1::StepTimeouts { heartbeat: weir_tests::dur(2000), ..Default::default() });
        s.retry = Some(v1::RetryPolicy { max_attempts: 3, ..Default::default() });
        ids.push(submit(&mut jc, job(&format!("shared-{j}"), vec![s])).await);
    }

    // The master's table: shares never add up to more than the limit.
    let mut wc = WorkerServiceClient::new(weir_tests::channel(&url));
    let shares = |r: v1::ListQuotasResponse| -> Vec<(String, f64)> {
        r.quotas
            .into_iter()
            .filter(|q| q.key == "api/shared")
            .flat_map(|q| q.shares.into_iter().map(|s| (s.worker_id, s.per_minute)))
            .collect()
    };
    let mut seen_three = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !seen_three {
        assert!(std::time::Instant::now() < deadline, "three replicas never shared the limit");
        let s = shares(wc.list_quotas(v1::ListQuotasRequest {}).await.expect("quotas").into_inner());
        let total: f64 = s.iter().map(|x| x.1).sum();
        assert!(total <= PER_MINUTE as f64 + 1e-6, "shares over the limit: {s:?}");
        seen_three = s.len() == 3 && s.iter().all(|x| x.1 > 0.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What an operator sees: `weir apis` lists the limit and the three replicas' shares.
    let shown = std::process::Command::new(weir_tests::bin("weir"))
        .arg("apis")
        .env("WEIR_MASTER_URL", &url)
        .output()
        .expect("weir apis");
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.status.success(), "{text}{}", String::from_utf8_lossy(&shown.stderr));
    assert!(text.contains("shared") && ["api-a", "api-b", "api-c"].iter().all(|w| text.contains(w)), "{text}");
    // SIGKILL one replica mid-collection: its share goes to the other two.
    replicas.remove(2).kill9().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = shares(wc.list_quotas(v1::ListQuotasRequest {}).await.expect("quotas").into_inner());
        let total: f64 = s.iter().map(|x| x.1).sum();
        assert!(total <= PER_MINUTE as f64 + 1e-6, "shares over the limit: {s:?}");
        if !s.iter().any(|x| x.0 == "api-c") && total >= PER_MINUTE as f64 * 0.95 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the killed replica's share did not come back: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for id in &ids {
        let done = wait_finished(&mut jc, id, Duration::from_secs(120)).await;
        let t = tasks(&mut jc, id).await.remove(0);
        assert_eq!(done.state, v1::JobState::Succeeded as i32, "{}: {}", t.error_kind, t.error_message);
        let o: Value = serde_json::from_str(&t.output_json).expect("output");
        assert_eq!(counts(&o), (PAGES, PAGES), "every page once in the attempt that succeeded");
    }
    let times: Vec<i64> =
        server.requests().await.into_iter().filter(|r| r.1.starts_with("/shared/")).map(|r| r.2).collect();
    assert!(times.len() as u64 >= JOBS as u64 * PAGES);
    let span = (times[times.len() - 1] - times[0]).max(1);
    for window in [1000, 3000, 10_000, span + 1] {
        let most = busiest(&times, window) as i64;
        // +1: the server logs arrivals, and a window's edges can catch one request early.
        let bound = PER_MINUTE * window / 60_000 + BURST + 1;
        assert!(most <= bound, "{most} requests in {window} ms, over the limit {PER_MINUTE}/min + burst {BURST}");
    }
    let rate = (times.len() as f64 - 1.0) * 60_000.0 / span as f64;
    eprintln!(
        "{} requests over {span} ms by three replicas (one killed): {rate:.0}/min against {PER_MINUTE}/min",
        times.len()
    );
    store.cleanup().await;
}

impl Lab {
    /// The watermark the master stores for `key` in namespace `test`: its mark's value.
    async fn watermark(&self, key: &str) -> Option<Value> {
        let w = self
            .master
            .workers()
            .get_watermark(v1::GetWatermarkRequest { namespace: "test".into(), key: key.into() })
            .await
            .expect("get watermark")
            .into_inner()
            .watermark?;
        let mark: Value = serde_json::from_str(&w.mark_json).expect("mark");
        Some(mark["value"].clone())
    }

    /// Starts a batch manager beside the API manager.
    /// A file manager on this lab's data dir (for `resilient_fetch`'s files step).
    fn files(&self) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let store = format!("sqlite://{}", self.dir.path().join("files.db").display());
        let settings = weir_file_manager::FileSettings {
            data_dir: self.dir.path().join("data"),
            watches: Default::default(),
            watches_file: None,
            retention: Duration::from_secs(24 * 3600),
            store: weir_file_manager::Inventory::url(&store),
            staging: None,
        };
        run_manager(
            weir_file_manager::spec_with(settings),
            &self.master.url,
            &format!("files-{}", uuid::Uuid::new_v4().simple()),
            "",
        )
    }

    fn batch(&self) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        run_manager(
            weir_batch_manager::spec_with(weir_batch_manager::BatchSettings {
                data_dir: self.dir.path().join("data"),
                ..Default::default()
            }),
            &self.master.url,
            &format!("batch-{}", uuid::Uuid::new_v4().simple()),
            "",
        )
    }
}

#[tokio::test]
async fn an_incremental_resource_collects_only_what_is_new_and_a_failed_run_collects_it_again() {
    let lab = Lab::start().await;
    let w = &lab.server;
    let ev = |id: i64, t: &str| json!({"id": id, "updated_at": t});
    let since = |v: &str| json!({"since": {"equalTo": v}});
    // The server sends what changed at or after `since` (so the record at the mark comes again).
    w.stub(get(
        "/events",
        since("2026-01-01T00:00:00Z"),
        body(json!({"data": [ev(1, "2026-01-01T10:00:00Z"), ev(2, "2026-01-02T00:00:00Z")]})),
    ))
    .await;
    w.stub(get(
        "/events",
        since("2026-01-02T00:00:00Z"),
        body(json!({"data": [ev(2, "2026-01-02T00:00:00Z"), ev(3, "2026-01-03T00:00:00+01:00")]})),
    ))
    .await;
    let (stop, batch) = lab.batch();
    let lake = lab.dir.path().join("lake");
    let config = lab.resource(
        "/events",
        json!({"params": {"since": "{cursor}"}, "records": "$.data[*]",
               "incremental": {"cursor_path": "$.updated_at", "initial": "{params.from}"}}),
    );
    let run = |fail_before_store: bool| {
        let mut collect = step("collect", "collect", "api", &[]);
        collect.config_json = config.to_string();
        collect.retry = Some(v1::RetryPolicy { max_attempts: 1, ..Default::default() });
        let mut steps = vec![collect];
        if fail_before_store {
            let mut f = step("check", "fail", "api", &["collect"]);
            f.config_json = json!({"message": "the check failed", "retryable": false}).to_string();
            steps.push(f);
        } else {
            steps.push(step("convert", "convert", "batch", &["collect"]));
            let mut s = step("store", "store", "batch", &["convert"]);
            s.config_json = json!({"sinks": [{"type": "parquet", "path": lake.display().to_string()}]}).to_string();
            steps.push(s);
        }
        let mut j = job("events", steps);
        j.params_json = json!({"from": "2026-01-01T00:00:00Z"}).to_string();
        j
    };
    let key = "events/collect";
    assert_eq!(lab.watermark(key).await, None);

    let mut jc = lab.master.jobs();
    let outcome = |j: v1::Job| weir_proto::convert::job_state_from_wire(j.state).map(|s| s.as_str().to_string());
    let collected = |id: String| {
        let mut jc = lab.master.jobs();
        async move {
            let t = tasks(&mut jc, &id).await.into_iter().find(|t| t.step_id == "collect").expect("collect");
            serde_json::from_str::<Value>(&t.output_json).expect("output")
        }
    };

    // The first run starts from the initial value; its success stores the mark.
    let id = submit(&mut jc, run(false)).await;
    assert_eq!(outcome(wait_finished(&mut jc, &id, Duration::from_secs(90)).await).as_deref(), Some("succeeded"));
    let o = collected(id).await;
    assert_eq!((ids(&o), o["already_collected"].as_u64()), (vec![1, 2], Some(0)));
    assert_eq!(lab.watermark(key).await, Some(json!("2026-01-02T00:00:00Z")));

    // The second collects only record 3 (2 is at the mark and known), then fails before
    // its rows are stored: the mark stays.
    let id = submit(&mut jc, run(true)).await;
    assert_eq!(outcome(wait_finished(&mut jc, &id, Duration::from_secs(90)).await).as_deref(), Some("failed"));
    let o = collected(id).await;
    assert_eq!((ids(&o), o["already_collected"].as_u64(), o["records_read"].as_u64()), (vec![3], Some(1), Some(2)));
    assert_eq!(lab.watermark(key).await, Some(json!("2026-01-02T00:00:00Z")), "a failed run does not advance it");

    // The third collects record 3 again and stores it: every record lands exactly once.
    let id = submit(&mut jc, run(false)).await;
    assert_eq!(outcome(wait_finished(&mut jc, &id, Duration::from_secs(90)).await).as_deref(), Some("succeeded"));
    assert_eq!(ids(&collected(id).await), vec![3]);
    assert_eq!(lab.watermark(key).await, Some(json!("2026-01-03T00:00:00+01:00")));
    assert_eq!(lake_rows(&lake), 3, "records 1, 2 and 3, none twice");
    // What an operator sees.
    // (Not blocking: the master runs on this test's runtime.)
    let shown = tokio::process::Command::new(weir_tests::bin("weir"))
        .args(["watermarks", "--namespace", "test"])
        .env("WEIR_MASTER_URL", &lab.master.url)
        .output()
        .await
        .expect("weir watermarks");
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.contains("events/collect") && text.contains("2026-01-03T00:00:00+01:00"),
        "{text}{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    stop.cancel();
    batch.await.expect("batch manager stops");
    lab.stop().await;
}

#[tokio::test]
async fn a_child_resource_runs_once_per_parent_record_with_the_parents_fields() {
    let lab = Lab::start().await;
    let w = &lab.server;
    let users = json!([{"id": 1, "org": {"name": "acme"}}, {"id": 2, "org": {"name": "initech"}}, {"id": 3}]);
    w.stub(get("/users", json!({}), body(users))).await;
    for (user, orders) in [(1, json!([{"oid": 10}, {"oid": 11}])), (2, json!([{"oid": 20}])), (3, json!([]))] {
        w.stub(get(&format!("/users/{user}/orders"), json!({"per_page": {"equalTo": "50"}}), body(orders))).await;
    }
    w.stub(get("/broken-users", json!({}), body(json!([{"name": "no id"}])))).await;
    let child = |parent_path: &str| {
        let mut users = step("users", "collect", "api", &[]);
        users.config_json = lab.resource(parent_path, json!({})).to_string();
        let mut orders = step("collect", "collect", "api", &["users"]);
        orders.config_json = lab
            .resource(
                "/users/{parent.id}/orders",
                json!({"params": {"per_page": "50"},
                       "parent": {"step": "users", "include": ["id", "org.name"], "parallel": 2}}),
            )
            .to_string();
        orders.retry = Some(v1::RetryPolicy { max_attempts: 1, ..Default::default() });
        vec![users, orders]
    };
    let r = lab.run("orders", child("/users")).await;
    assert_eq!(r.state, "succeeded", "{}: {}", r.kind, r.error);
    assert_eq!((r.output["parents"].as_u64(), r.output["requests"].as_u64()), (Some(3), Some(3)));
    let mut got: Vec<(i64, i64, Value)> = Vec::new();
    for f in r.output["files"].as_array().expect("files") {
        for line in std::fs::read_to_string(f["path"].as_str().expect("path")).expect("staged").lines() {
            let v: Value = serde_json::from_str(line).expect("record");
            got.push((
                v["oid"].as_i64().expect("oid"),
                v["_users_id"].as_i64().expect("parent id"),
                v["_users_org_name"].clone(),
            ));
        }
    }
    got.sort_by_key(|g| g.0);
    assert_eq!(got, vec![(10, 1, json!("acme")), (11, 1, json!("acme")), (20, 2, json!("initech"))]);

    // A parent record without the field the path names fails the child, naming the record.
    let r = lab.run("orphans", child("/broken-users")).await;
    assert_eq!((r.state.as_str(), r.kind.as_str()), ("failed", "bad_format"));
    assert!(r.error.contains("{parent.id} has no value here") && r.error.contains("no id"), "{}", r.error);
    lab.stop().await;
}

#[tokio::test]
async fn while_the_primarys_circuit_is_open_collection_continues_from_its_fallbacks() {
    let mut lab = Lab::start().await;
    let circuit = weir_core::api::circuit::CircuitConfig {
        consecutive_failures: 2,
        failure_ratio: 0.0,
        cooldown: Duration::from_secs(60),
        ..Default::default()
    };
    lab.manager_with(ApiSettings {
        data_dir: lab.dir.path().join("fallback-data"),
        api_rate: fast(),
        global_rate: fast(),
        circuit,
        ..ApiSettings::default()
    });
    let w = &lab.server;
    let page = |n: &str| json!({"page": {"equalTo": n}});
    // The primary serves page 1, then fails; the replica has every page.
    w.stub(get("/primary/orders", page("1"), body(json!({"data": items(&[1, 2])})))).await;
    w.stub(
        json!({"request": {"urlPath": "/primary/orders", "queryParameters": page("2")}, "response": {"status": 500}}),
    )
    .await;
    w.stub(get("/replica/orders", page("2"), body(json!({"data": items(&[3])})))).await;
    w.stub(get("/replica/orders", page("3"), body(json!({"data": []})))).await;
    let config = json!({
        "api": "shop", "base_url": format!("{}/primary", w.url), "path": "/orders",
        "paginator": {"type": "page_number"}, "records": "$.data[*]", "max_retries": 2,
        "fallbacks": [{"base_url": format!("{}/replica", w.url)}]
    });
    let r = lab.collect("degraded", config).await;
    assert_eq!(r.state, "succeeded", "{}: {}", r.kind, r.error);
    assert_eq!(ids(&r.output), vec![1, 2, 3], "page 1 from the primary, the rest from the replica");
    let sources: Vec<(String, u64, u64)> = r.output["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .map(|s| {
            (
                s["source"].as_str().unwrap_or("").to_string(),
                s["pages"].as_u64().unwrap_or(0),
                s["records"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(sources, vec![("primary".into(), 1, 2), (format!("fallback 1 ({}/replica)", w.url), 2, 1)]);
    let from: Vec<&str> =
        r.output["files"].as_array().expect("files").iter().filter_map(|f| f["from"].as_str()).collect();
    assert_eq!(from.len(), 2, "each staged file holds one source's records: {from:?}");
    assert!(
        r.output["degraded"].as_str().is_some_and(|d| d.contains("fallback 1") && d.contains("500")),
        "{}",
        r.output
    );
    // The job's history says it ran degraded.
    let id = lab.master_job_id("degraded").await;
    let mut jc = lab.master.jobs();
    let events = weir_tests::events(&mut jc, &id).await;
    let degraded: Vec<&v1::JobEvent> = events.iter().filter(|e| e.r#type == "dev.weir.task.degraded").collect();
    assert_eq!(degraded.len(), 1, "{events:?}");
    assert!(degraded[0].message.contains("fallback 1"), "{}", degraded[0].message);

    // With every API source's circuit open, an export on disk holds the whole resource.
    let export = lab.dir.path().join("export");
    std::fs::create_dir_all(&export).expect("export dir");
    std::fs::write(export.join("a.json"), json!({"data": items(&[1, 2])}).to_string()).expect("write");
    std::fs::write(export.join("b.json"), json!({"data": items(&[3, 4])}).to_string()).expect("write");
    std::fs::write(export.join("notes.txt"), "not an export").expect("write");
    w.stub(json!({"request": {"urlPathPattern": "/down.*"}, "response": {"status": 500}})).await;
    let config = json!({
        "api": "warehouse", "base_url": format!("{}/down", w.url), "path": "/stock", "records": "$.data[*]",
        "max_retries": 2,
        "fallbacks": [{"base_url": format!("{}/down-too", w.url)},
                      {"location": {"uri": format!("file://{}", export.display())}, "patterns": ["*.json"]}]
    });
    let r = lab.collect("from-files", config).await;
    assert_eq!(r.state, "succeeded", "{}: {}", r.kind, r.error);
    assert_eq!((ids(&r.output), r.output["pages"].as_u64()), (vec![1, 2, 3, 4], Some(2)));
    assert!(r.output["degraded"].as_str().is_some_and(|d| d.contains("fallback 2 (files at file://")), "{}", r.output);
    lab.stop().await;
}

impl Lab {
    /// Waits until the master says this replica's circuit of `api` is `state`; its reason.
    async fn circuit_becomes(&self, api: &str, state: &str) -> String {
        let mut wc = self.master.workers();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let r = wc.list_quotas(v1::ListQuotasRequest {}).await.expect("quotas").into_inner();
            if let Some(c) = r.circuits.iter().find(|c| c.api == api && c.state == state) {
                return c.reason.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the circuit of {api} never became {state}: {:?}",
                r.circuits
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn a_failing_health_endpoint_opens_the_circuit_and_a_passing_one_closes_it() {
    let mut lab = Lab::start().await;
    let url = lab.server.url.clone();
    lab.server.stub(json!({"request": {"urlPath": "/health"}, "response": {"status": 503}})).await;
    lab.server.stub(get("/items", json!({}), body(items(&[1, 2])))).await;
    let profiles = weir_core::api::profile::ApiProfiles::parse(&format!(
        "apis: {{shop: {{circuit: {{consecutive_failures: 2, failure_ratio: 0, cooldown: 1s}}, \
         health: {{url: '{url}/health', interval: 1s}}}}}}"
    ))
    .expect("profiles");
    lab.manager_with(ApiSettings {
        data_dir: lab.dir.path().join("health-data"),
        api_rate: fast(),
        global_rate: fast(),
        profiles,
        ..ApiSettings::default()
    });
    let reason = lab.circuit_becomes("shop", "open").await;
    assert!(reason.contains("health check") && reason.contains("503"), "{reason}");
    // While the health endpoint fails, the API's resources fail at once, nothing sent.
    let resource = json!({"api": "shop", "base_url": url, "path": "/items"});
    let r = lab.collect("unhealthy", resource.clone()).await;
    assert_eq!((r.state.as_str(), r.kind.as_str()), ("failed", "circuit_open"), "{}", r.error);
    assert_eq!(lab.server.count(json!({"urlPath": "/items"})).await, 0);
    // Healthy again: the next check after the cooldown is the probe that closes it.
    lab.server.stub(json!({"request": {"urlPath": "/health"}, "response": {"status": 200}})).await;
    lab.circuit_becomes("shop", "closed").await;
    let o = lab.ok("healthy", resource).await;
    assert_eq!(ids(&o), vec![1, 2]);
    lab.stop().await;
}

#[tokio::test]
async fn the_standard_template_collects_an_api_into_a_dataset_and_a_wrong_key_fails_its_first_step() {
    let lab = Lab::start().await;
    let w = &lab.server;
    let bearer = |t: &str| json!({"Authorization": {"equalTo": format!("Bearer {t}")}});
    w.stub(json!({"priority": 1, "request": {"method": "GET", "urlPath": "/v2/orders", "headers": bearer("good"),
                  "queryParameters": {"after": {"absent": true}}},
                  "response": {"status": 200, "jsonBody": {"data": items(&[1, 2]), "next": "c2"}}}))
        .await;
    w.stub(json!({"priority": 1, "request": {"method": "GET", "urlPath": "/v2/orders", "headers": bearer("good"),
                  "queryParameters": {"after": {"equalTo": "c2"}}},
                  "response": {"status": 200, "jsonBody": {"data": items(&[3]), "next": null}}}))
        .await;
    w.stub(json!({"priority": 5, "request": {"urlPath": "/v2/orders"}, "response": {"status": 401}})).await;
    let (stop, batch) = lab.batch();
    let lake = lab.dir.path().join("lake");
    let spec = |name: &str, token: &str| {
        let resource = json!({"api": "shop", "base_url": format!("{}/v2", w.url), "path": "/orders",
            "records": "$.data[*]", "paginator": {"type": "cursor", "path": "$.next", "param": "after"},
            "auth": {"type": "bearer", "credentials": {"env": weir_tests::credentials_env(&[("TOKEN", token)])}}});
        v1::JobSpec {
            namespace: "test".into(),
            name: name.into(),
            template: "standard".into(),
            params_json: json!({"api": resource, "sinks": [{"type": "parquet", "path": lake.display().to_string()}],
                                "rules": {"not_null": ["id"], "unique": ["id"]}})
            .to_string(),
            ..Default::default()
        }
    };
    let mut jc = lab.master.jobs();
    let id = submit(&mut jc, spec("orders", "good")).await;
    let done = wait_finished(&mut jc, &id, Duration::from_secs(90)).await;
    let ts = tasks(&mut jc, &id).await;
    let out = |s: &str| out(&ts, s);
    assert_eq!(done.state, v1::JobState::Succeeded as i32, "{:?}", why(&ts));
    assert_eq!(
        (out("validate_source")["auth"].as_str(), out("validate_source")["requests"].as_u64()),
        (Some("bearer"), Some(1))
    );
    assert_eq!(out("connect")["headers"].as_u64(), Some(1), "one Authorization header, its value not shown");
    assert!(!out("connect").to_string().contains("good"), "no secret in a report");
    assert_eq!(counts(&out("collect")), (2, 3));
    assert_eq!(out("store")["rows_written"].as_u64(), Some(3));
    assert_eq!(lake_rows(&lake), 3);
    // `weir get` says what was collected and that all of it reached the data steps.
    let shown = tokio::process::Command::new(weir_tests::bin("weir"))
        .args(["get", &id])
        .env("WEIR_MASTER_URL", &lab.master.url)
        .output()
        .await
        .expect("weir get");
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("3 records collected, 3 read by convert: every collected record was converted"), "{text}");

    // A wrong key fails the first step at once, naming the API and the status; nothing is collected.
    let id = submit(&mut jc, spec("wrong-key", "bad")).await;
    let done = wait_finished(&mut jc, &id, Duration::from_secs(90)).await;
    assert_eq!(done.state, v1::JobState::Failed as i32);
    let ts = tasks(&mut jc, &id).await;
    let first = ts.iter().find(|t| t.step_id == "validate_source").expect("validate_source");
    assert_eq!(first.error_kind, "auth_failed", "{}", first.error_message);
    assert!(first.error_message.contains("api shop") && first.error_message.contains("401"), "{}", first.error_message);
    assert!(
        ts.iter().filter(|t| t.step_id != "validate_source").all(|t| t.output_json.is_empty()),
        "nothing ran after it"
    );
    stop.cancel();
    batch.await.expect("batch manager stops");
    lab.stop().await;
}

/// The real `weir-api-manager` killed with SIGKILL in the middle of a collection: the
/// retry, on a new process, goes on from the last checkpoint — the pages before it are
/// not requested again — and the dataset holds every record once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_manager_killed_mid_collection_is_resumed_from_its_checkpoint_without_duplicates() {
    const PAGES: i64 = 20;
    let dir = tempfile::tempdir().expect("tmp");
    let server = WireMock::start().await;
    for p in 1..=PAGES {
        let ids: Vec<i64> = ((p - 1) * 10 + 1..=p * 10).collect();
        server
            .stub(get(
                "/slow/orders",
                json!({"page": {"equalTo": p.to_string()}}),
                json!({"status": 200, "jsonBody": {"data": items(&ids)}, "fixedDelayMilliseconds": 250}),
            ))
            .await;
    }
    server
        .stub(get("/slow/orders", json!({"page": {"equalTo": (PAGES + 1).to_string()}}), body(json!({"data": []}))))
        .await;
    let store = StoreFixture::new(Backend::Sqlite).await;
    let (url, _master) = spawn_master(&store.url);
    wait_master(&url).await;
    let data = dir.path().join("data");
    let data_s = data.display().to_string();
    let env = [("WEIR_MASTER_URL", url.as_str()), ("WEIR_POLL_WAIT", "1s"), ("WEIR_DATA_DIR", data_s.as_str())];
    let first = Proc::spawn("weir-api-manager", &[], &env);
    let (stop, batch) = run_manager(
        weir_batch_manager::spec_with(weir_batch_manager::BatchSettings {
            data_dir: data.clone(),
            ..Default::default()
        }),
        &url,
        "batch-resume",
        "",
    );
    let lake = dir.path().join("lake");
    let mut collect = step("collect", "collect", "api", &[]);
    collect.config_json = json!({
        "api": "slow", "base_url": format!("{}/slow", server.url), "path": "/orders",
        "paginator": {"type": "page_number"}, "records": "$.data[*]", "records_per_file": 10
    })
    .to_string();
    collect.retry =
        Some(v1::RetryPolicy { max_attempts: 3, initial_interval: weir_tests::dur(100), ..Default::default() });
    collect.timeouts = Some(v1::StepTimeouts { heartbeat: weir_tests::dur(2000), ..Default::default() });
    let mut store_step = step("store", "store", "batch", &["convert"]);
    store_step.config_json = json!({"sinks": [{"type": "parquet", "path": lake.display().to_string()}]}).to_string();
    let mut jc = JobServiceClient::new(weir_tests::channel(&url));
    let id =
        submit(&mut jc, job("resume", vec![collect, step("convert", "convert", "batch", &["collect"]), store_step]))
            .await;

    // Kill the manager once it is half way.
    let pattern = json!({"urlPath": "/slow/orders"});
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while server.count(pattern.clone()).await < (PAGES / 2) as u64 {
        assert!(std::time::Instant::now() < deadline, "the collection never got half way");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.kill9().await;
    let before = server.count(pattern.clone()).await;
    let _second = Proc::spawn("weir-api-manager", &[], &env);
    let done = wait_finished(&mut jc, &id, Duration::from_secs(120)).await;
    let ts = tasks(&mut jc, &id).await;
    let t = ts.iter().find(|t| t.step_id == "collect").expect("collect");
    assert_eq!(done.state, v1::JobState::Succeeded as i32, "{}: {}", t.error_kind, t.error_message);
    assert_eq!(t.attempt, 2, "the killed attempt and the one that resumed");
    let output: Value = serde_json::from_str(&t.output_json).expect("output");
    assert_eq!(counts(&output), ((PAGES + 1) as u64, (PAGES * 10) as u64), "{output}");

    // Only the page in flight when it died (at most one) is requested twice.
    let sent = server.requests().await;
    let mut per_page: std::collections::BTreeMap<String, usize> = Default::default();
    for (_, u, _) in sent.iter().filter(|(_, u, _)| u.starts_with("/slow/orders")) {
        *per_page.entry(u.clone()).or_default() += 1;
    }
    let twice: Vec<&String> = per_page.iter().filter(|(_, n)| **n > 1).map(|(u, _)| u).collect();
    assert!(twice.len() <= 1, "pages requested again after the crash: {twice:?} ({before} before it)");
    assert_eq!(per_page.get("/slow/orders?page=1"), Some(&1), "the retry did not start over");
    assert_eq!(per_page.len(), (PAGES + 1) as usize);

    // Every record landed once.
    let loc = weir_tests::open_location(&json!({"uri": format!("file://{}", dir.path().display())}));
    let rows = weir_tests::dataset_rows(&loc, "lake", dir.path()).await;
    let unique: std::collections::BTreeSet<&String> = rows.iter().collect();
    assert_eq!((rows.len(), unique.len()), ((PAGES * 10) as usize, (PAGES * 10) as usize));
    stop.cancel();
    batch.await.expect("batch manager stops");
    store.cleanup().await;
}

/// Two managers on one data dir (a shared volume) with one rotating refresh token: the one
/// that still holds the token the other rotated away reads the kept one and goes on.
#[tokio::test]
async fn managers_sharing_a_data_dir_follow_each_others_rotated_refresh_token() {
    let w = WireMock::start().await;
    let refresh = |state: &str, next: Option<&str>, given: &str, answer: Value| {
        let mut m = json!({"scenarioName": "shared", "requiredScenarioState": state,
            "request": {"method": "POST", "urlPath": "/oauth/refresh", "bodyPatterns": [{"contains": format!("refresh_token={given}")}]},
            "response": answer});
        if let Some(n) = next {
            m["newScenarioState"] = json!(n);
        }
        m
    };
    let token = |access: &str, rotated: &str| {
        body(json!({"access_token": access, "expires_in": 3600, "refresh_token": rotated}))
    };
    w.stub(refresh("Started", Some("rotated"), "r1", token("a1", "r2"))).await;
    w.stub(refresh("rotated", None, "r1", json!({"status": 400, "jsonBody": {"error": "invalid_grant"}}))).await;
    w.stub(refresh("rotated", None, "r2", token("a2", "r3"))).await;
    let dir = tempfile::tempdir().expect("tmp");
    let spec: weir_core::api::AuthSpec = serde_json::from_value(json!({
        "type": "oauth2_refresh_token", "token_url": format!("{}/oauth/refresh", w.url),
        "credentials": {"env": weir_tests::credentials_env(&[("REFRESH_TOKEN", "r1")])}
    }))
    .expect("auth spec");
    let http = weir_api_manager::client::http_client(Default::default(), None, weir_worker::sandbox::Guard::open())
        .expect("client");
    // Both start from r1; the first rotates it to r2 (kept on the shared dir).
    let first = weir_api_manager::auth::build(&spec, "shared", &http, dir.path()).expect("first");
    let second = weir_api_manager::auth::build(&spec, "shared", &http, dir.path()).expect("second");
    let bearer = |c: weir_api_manager::auth::Credentials| c.headers.into_iter().map(|(_, v)| v).collect::<Vec<_>>();
    assert_eq!(bearer(first.credentials().await.expect("first token")), vec!["Bearer a1"]);
    // The second still holds r1, now void: it takes r2 from the shared dir instead.
    assert_eq!(bearer(second.credentials().await.expect("second token")), vec!["Bearer a2"]);
    let sent_r1 = w
        .count(json!({"method": "POST", "url": "/oauth/refresh", "bodyPatterns": [{"contains": "refresh_token=r1"}]}))
        .await;
    assert_eq!(sent_r1, 1, "the void token was never offered again");
}

/// `resilient_fetch` given a failed job: the primary failed at page 3 after two pages were
/// fetched; the recovery reads what the failed collection fetched from its checkpoint,
/// finds the primary still failing and the added fallback answering, fetches only the
/// missing pages from the fallback, merges everything into the dataset that already held
/// two of the records, and checks every key is held once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resilient_fetch_recovers_only_what_a_failed_job_missed_from_a_fallback_without_duplicates() {
    let lab = Lab::start().await;
    let w = &lab.server;
    let page = |prefix: &str, n: Option<u32>, ids: &[i64], next: Option<u32>| {
        let q = match n {
            None => json!({"page": {"absent": true}}),
            Some(n) => json!({"page": {"equalTo": n.to_string()}}),
        };
        let next = next.map(|m| format!("{}{prefix}/orders?page={m}", w.url));
        get(&format!("{prefix}/orders"), q, body(json!({"data": items(ids), "next": next})))
    };
    w.stub(page("/v2", None, &[1, 2], Some(2))).await;
    w.stub(page("/v2", Some(2), &[3, 4], Some(3))).await;
    w.stub(get("/v2/orders", json!({"page": {"equalTo": "3"}}), json!({"status": 500}))).await;
    for (n, ids, next) in
        [(None, &[1, 2][..], Some(2)), (Some(2), &[3, 4], Some(3)), (Some(3), &[5, 6], Some(4)), (Some(4), &[7], None)]
    {
        w.stub(page("/eu/v2", n, ids, next)).await;
    }
    let (stop_batch, batch) = lab.batch();
    let (stop_files, files) = lab.files();
    let lake = lab.dir.path().join("lake");
    let sinks = json!([{"type": "parquet", "path": lake.display().to_string()}]);
    let mut jc = lab.master.jobs();
    // Yesterday's run landed records 1 and 2.
    let before = lab.dir.path().join("before.csv");
    std::fs::write(&before, "id,name\n1,item 1\n2,item 2\n").expect("csv");
    let mut s = step("store", "store", "batch", &[]);
    s.config_json = json!({"inputs": [before.display().to_string()], "sinks": sinks}).to_string();
    let earlier = submit(&mut jc, job("yesterday", vec![s])).await;
    assert_eq!(wait_finished(&mut jc, &earlier, Duration::from_secs(60)).await.state, v1::JobState::Succeeded as i32);
    assert_eq!(lake_rows(&lake), 2);

    // Today's run: the primary fails at page 3, every attempt.
    let resource = json!({"api": "shop", "base_url": format!("{}/v2", w.url), "path": "/orders",
                          "records": "$.data[*]", "paginator": {"type": "next_url", "path": "$.next"},
                          "records_per_file": 2, "max_retries": 2});
    let failed = submit(&mut jc, spec("orders", "standard", json!({"api": resource, "sinks": sinks}))).await;
    let done = wait_finished(&mut jc, &failed, Duration::from_secs(120)).await;
    assert_eq!(done.state, v1::JobState::Failed as i32);
    assert_eq!(lake_rows(&lake), 2, "the failed run stored nothing");

    // A succeeded job has nothing to recover: refused at submission.
    let refused = jc
        .submit_job(v1::SubmitJobRequest {
            spec: Some(spec("again", "resilient_fetch", json!({"job_id": earlier, "key": ["id"]}))),
        })
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("nothing to recover"), "{}", refused.message());

    let params = json!({"job_id": failed, "key": ["id"], "fallbacks": [{"base_url": format!("{}/eu/v2", w.url)}]});
    let id = submit(&mut jc, spec("orders-recovery", "resilient_fetch", params)).await;
    let done = wait_finished(&mut jc, &id, Duration::from_secs(120)).await;
    let ts = tasks(&mut jc, &id).await;
    let out = |s: &str| out(&ts, s);
    assert_eq!(done.state, v1::JobState::Succeeded as i32, "{:?}", why(&ts));
    let analysis = out("failure_analysis");
    assert_eq!(analysis["failed_job"], json!(failed));
    assert_eq!(analysis["collected"]["from"], "checkpoint", "{analysis}");
    let fetched_before = analysis["collected"]["records"].as_u64().unwrap_or(0);
    assert!(fetched_before >= 2, "{analysis}");
    assert!(analysis["missing"].as_str().unwrap_or("").contains("page="), "{analysis}");
    let plan = out("recovery_strategy");
    assert_eq!((plan["strategy"].as_str(), plan["source"].as_u64()), (Some("api"), Some(1)), "{plan}");
    assert!(plan["tried"][0]["error"].as_str().is_some(), "the primary was tried first: {plan}");
    let api = out("alternative_api");
    assert_eq!(api["adopted_records"].as_u64(), Some(fetched_before), "{api}");
    assert_eq!(api["records"].as_u64(), Some(7), "{api}");
    assert_eq!(out("alternative_files")["skipped"], "another source recovers this");
    let rec = out("reconstruction");
    assert_eq!(
        (rec["rows_read"].as_u64(), rec["rows_written"].as_u64(), rec["rows_duplicate"].as_u64()),
        (Some(7), Some(5), Some(2)),
        "{rec}"
    );
    let check = out("validation");
    assert_eq!(check["sinks"][lake.display().to_string()], json!({"rows": 7, "distinct_keys": 7}), "{check}");
    assert_eq!(check["rows_duplicate"].as_u64(), Some(2), "{check}");
    assert_eq!(lake_rows(&lake), 7);
    // Only what was missing came from the fallback: its first page was never requested,
    // and the primary's first page only by the failed run (its probe and its collect).
    assert_eq!(
        w.count(json!({"method": "GET", "urlPath": "/eu/v2/orders", "queryParameters": {"page": {"absent": true}}}))
            .await,
        0
    );
    assert_eq!(
        w.count(json!({"method": "GET", "urlPath": "/v2/orders", "queryParameters": {"page": {"absent": true}}})).await,
        2
    );
    stop_files.cancel();
    stop_batch.cancel();
    files.await.expect("file manager stops");
    batch.await.expect("batch manager stops");
    lab.stop().await;
}

/// `resilient_fetch` when nothing is missing but the storing failed (the staged records are
/// stored again, into the sinks the recovery names), and when no API source answers at all
/// (the resource's files fallback, fetched by the file manager, merged by key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resilient_fetch_stores_staged_records_again_and_falls_back_to_files() {
    let lab = Lab::start().await;
    let w = &lab.server;
    w.stub(get("/v2/orders", json!({}), body(json!({"data": items(&[1, 2, 3])})))).await;
    w.stub(get("/v2/down", json!({}), json!({"status": 503}))).await;
    let (stop_batch, batch) = lab.batch();
    let (stop_files, files) = lab.files();
    let mut jc = lab.master.jobs();
    let run = |id: String| {
        let mut jc = lab.master.jobs();
        async move {
            let done = wait_finished(&mut jc, &id, Duration::from_secs(120)).await;
            let ts = tasks(&mut jc, &id).await;
            (done.state, ts)
        }
    };
    let resource = |path: &str| json!({"api": "shop", "base_url": format!("{}/v2", w.url), "path": path, "records": "$.data[*]", "max_retries": 1});

    // Collected, but its sink cannot be written (its path is under a file).
    let blocker = lab.dir.path().join("blocker");
    std::fs::write(&blocker, "not a folder").expect("file");
    let bad = json!([{"type": "parquet", "path": blocker.join("lake").display().to_string()}]);
    let failed = submit(&mut jc, spec("orders", "standard", json!({"api": resource("/orders"), "sinks": bad}))).await;
    assert_eq!(run(failed.clone()).await.0, v1::JobState::Failed as i32);
    let lake = lab.dir.path().join("lake");
    let good = json!([{"type": "parquet", "path": lake.display().to_string()}]);
    let id = submit(
        &mut jc,
        spec("orders-recovery", "resilient_fetch", json!({"job_id": failed, "key": "id", "sinks": good})),
    )
    .await;
    let (state, ts) = run(id).await;
    assert_eq!(state, v1::JobState::Succeeded as i32, "{:?}", why(&ts));
    assert_eq!(out(&ts, "failure_analysis")["collected"]["state"], "succeeded");
    assert_eq!(out(&ts, "recovery_strategy")["strategy"], "staged");
    assert_eq!(out(&ts, "reconstruction")["rows_written"].as_u64(), Some(3));
    assert_eq!(lake_rows(&lake), 3);
    assert_eq!(w.count(json!({"method": "GET", "urlPath": "/v2/orders"})).await, 2, "probe and collect, nothing again");

    // Nothing answers: the failed job's first step failed; the recovery adds an export.
    let failed = submit(&mut jc, spec("down", "standard", json!({"api": resource("/down"), "sinks": good}))).await;
    assert_eq!(run(failed.clone()).await.0, v1::JobState::Failed as i32);
    let export = lab.dir.path().join("export");
    std::fs::create_dir_all(&export).expect("dir");
    std::fs::write(
        export.join("part-1.ndjson"),
        "{\"id\": 3, \"name\": \"item 3\"}\n{\"id\": 4, \"name\": \"item 4\"}\n",
    )
    .expect("export");
    std::fs::write(export.join("part-2.ndjson"), "{\"id\": 5, \"name\": \"item 5\"}\n").expect("export");
    std::fs::write(export.join("README.txt"), "not records").expect("export");
    let params = json!({"job_id": failed, "key": ["id"],
                        "fallbacks": [{"location": {"uri": format!("file://{}", export.display())}, "patterns": ["*.ndjson"]}]});
    let id = submit(&mut jc, spec("down-recovery", "resilient_fetch", params)).await;
    let (state, ts) = run(id).await;
    assert_eq!(state, v1::JobState::Succeeded as i32, "{:?}", why(&ts));
    assert!(out(&ts, "failure_analysis")["missing"].as_str().unwrap_or("").contains("the whole resource"));
    let plan = out(&ts, "recovery_strategy");
    assert_eq!(plan["strategy"], "files", "{plan}");
    assert_eq!(out(&ts, "alternative_api")["skipped"], "another source recovers this");
    assert_eq!(out(&ts, "alternative_files")["count"].as_u64(), Some(2));
    let rec = out(&ts, "reconstruction");
    assert_eq!((rec["rows_written"].as_u64(), rec["rows_duplicate"].as_u64()), (Some(2), Some(1)), "{rec}");
    assert_eq!(out(&ts, "validation")["sinks"][lake.display().to_string()]["distinct_keys"].as_u64(), Some(5));
    assert_eq!(lake_rows(&lake), 5);
    stop_files.cancel();
    stop_batch.cancel();
    files.await.expect("file manager stops");
    batch.await.expect("batch manager stops");
    lab.stop().await;
}
