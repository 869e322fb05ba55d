//! Rule tables from TOML and YAML over real sockets: every matching rule applies, bad tables
//! are refused with the field named, and reloads (by call or by watching the file) change
//! limits and shadow modes without losing bucket state.
#![cfg(all(feature = "config", not(loom)))]

#[path = "support/http.rs"]
mod support;

use std::time::{Duration, Instant};

use axum::routing::{get, post};
use axum::Router;
use http::StatusCode;
use support::*;
use tollgate::http::{ConfigError, Key, RuleSet};

const TABLE: &str = r#"
[[rule]]
name = "login"
methods = ["post"]
path = "/login"
key = "ip"
limit = "2/minute"

[[rule]]
name = "api"
path = "/api/*"
key = "api_key"
limit = "3/minute"

[[rule]]
name = "all"
limit = { capacity = 100, refill = 100, interval = "1m" }
"#;

const YAML: &str = r#"
rules:
  - name: login
    methods: [POST]
    path: /login
    key: ip
    limit: 2/minute
  - name: api
    path: /api/*
    key: api_key
    limit: 3/minute
  - name: all
    limit: {capacity: 100, refill: 100, interval: 1m}
"#;

fn app(
    rules: &RuleSet,
) -> (
    Router,
    tollgate::http::RateLimitLayer<std::sync::Arc<tollgate::KeyedLimiter<Key>>>,
) {
    let layer = rules.layer().unwrap();
    let router = Router::new()
        .route("/login", post(|| async { "in" }))
        .route("/api/{x}", get(|| async { "api" }))
        .route("/health", get(|| async { "ok" }))
        .layer(layer.clone());
    (router, layer)
}

fn names(got: &Got) -> Vec<String> {
    got.headers
        .get_all("ratelimit")
        .iter()
        .map(|v| {
            v.to_str()
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .trim_matches('"')
                .to_string()
        })
        .collect()
}

async fn every_matching_rule_applies(rules: RuleSet) {
    let (router, _layer) = app(&rules);
    let addr = serve(router).await;
    let c = client();
    let login = || {
        http::Request::post(format!("http://{addr}/login"))
            .body(http_body_util::Full::default())
            .unwrap()
    };
    for _ in 0..2 {
        let got = send(&c, login()).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(names(&got), ["login", "all"]);
    }
    let got = send(&c, login()).await;
    assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(got.header("retry-after"), Some("30"));
    for _ in 0..3 {
        let got = send(&c, get_with(addr, "/api/x", &[("x-api-key", "a")])).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(names(&got), ["api", "all"]);
    }
    let got = send(&c, get_with(addr, "/api/y", &[("x-api-key", "a")])).await;
    assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS);
    // /health matches only the catch-all rule.
    let got = send(&c, get_with(addr, "/health", &[])).await;
    assert_eq!(names(&got), ["all"]);
    // The refused requests took nothing from "all": 2 + 3 + 1 granted.
    let all = rules.limiter("all").unwrap();
    assert_eq!(all.snapshot_key(&Key::Global).remaining(), 100 - 6);
}

#[tokio::test]
async fn a_toml_table_limits_what_it_matches() {
    every_matching_rule_applies(RuleSet::from_toml(TABLE).unwrap()).await;
}

#[tokio::test]
async fn a_yaml_table_limits_what_it_matches() {
    every_matching_rule_applies(RuleSet::from_yaml(YAML).unwrap()).await;
}

#[test]
fn bad_tables_name_the_rule_and_field() {
    let bad = |text: &str| RuleSet::from_toml(text).unwrap_err();
    let rule = |text: &str| match bad(text) {
        ConfigError::Rule { rule, field, .. } => (rule, field),
        other => panic!("{other}"),
    };
    assert_eq!(
        rule("[[rule]]\nname = \"a\"\nkey = \"cookie\"\nlimit = \"1/s\"\n"),
        ("a".into(), "key")
    );
    assert_eq!(
        rule("[[rule]]\nname = \"a\"\npath = \"api\"\nlimit = \"1/s\"\n"),
        ("a".into(), "path")
    );
    assert_eq!(
        rule("[[rule]]\nname = \"a\"\nmethods = [\"GE T\"]\nlimit = \"1/s\"\n"),
        ("a".into(), "methods")
    );
    assert_eq!(
        rule("[[rule]]\nname = \"a\"\ncost = 5\nlimit = \"1/s\"\n"),
        ("a".into(), "cost")
    );
    assert_eq!(
        rule("[[rule]]\nname = \"a\"\nlimit = \"1/s\"\n[[rule]]\nname = \"a\"\nlimit = \"1/s\"\n"),
        ("a".into(), "name")
    );
    assert_eq!(
        rule("[[rule]]\nname = \"\"\nlimit = \"1/s\"\n"),
        ("#1".into(), "name")
    );
    for text in [
        "[[rule]]\nname = \"a\"\nlimit = \"5/fortnight\"\n",
        "[[rule]]\nname = \"a\"\nlimt = \"5/s\"\n",
        "[[rule]]\nname = \"a\"\n",
        "[[rule]\n",
    ] {
        let e = bad(text);
        assert!(matches!(e, ConfigError::Parse(_)), "{text}: {e}");
    }
    let e = RuleSet::from_yaml("rules:\n  - name: a\n    limit: 5/fortnight\n").unwrap_err();
    assert!(e.to_string().contains("fortnight"), "{e}");
    assert!(matches!(
        RuleSet::load("/nonexistent/rules.toml"),
        Err(ConfigError::Io(_))
    ));
}

#[tokio::test]
async fn a_reload_changes_limits_and_shadow_modes_and_keeps_the_buckets() {
    let rules = RuleSet::from_toml(TABLE).unwrap();
    let (router, layer) = app(&rules);
    let addr = serve(router).await;
    let c = client();
    let api = || get_with(addr, "/api/x", &[("x-api-key", "a")]);
    for _ in 0..2 {
        assert_eq!(send(&c, api()).await.status, StatusCode::OK);
    }
    // 3/minute → 10/minute: a keeps its one token, and the capacity is 10.
    let raised = TABLE.replace("3/minute", "10/minute");
    let done = rules.reload_toml(&layer, &raised).unwrap();
    assert_eq!(done.limits, ["api"]);
    let a = Key::Header(http::HeaderValue::from_static("a"));
    let d = rules.limiter("api").unwrap().snapshot_key(&a);
    assert_eq!((d.remaining(), d.capacity()), (1, 10));
    let got = send(&c, api()).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got
        .header("ratelimit-policy")
        .unwrap()
        .contains("\"api\";q=10;"));
    assert_eq!(send(&c, api()).await.status, StatusCode::TOO_MANY_REQUESTS);
    // Shadow mode on for "api": requests pass.
    let shadow = raised.replace("key = \"api_key\"", "key = \"api_key\"\nshadow = true");
    let done = rules.reload_toml(&layer, &shadow).unwrap();
    assert_eq!(
        (done.limits.len(), done.shadow.as_slice()),
        (0, &["api".to_string()][..])
    );
    assert_eq!(send(&c, api()).await.status, StatusCode::OK);
    // A new rule, or a new path, needs a new layer: refused, nothing changed.
    let more = format!("{shadow}\n[[rule]]\nname = \"extra\"\nlimit = \"1/s\"\n");
    assert!(matches!(
        rules.reload_toml(&layer, &more),
        Err(ConfigError::NeedsRestart(r)) if r == ["extra"]
    ));
    let moved = shadow.replace("/api/*", "/v2/*");
    assert!(matches!(
        rules.reload_toml(&layer, &moved),
        Err(ConfigError::NeedsRestart(_))
    ));
    assert_eq!(layer.is_policy_shadow("api"), Some(true));
    assert_eq!(rules.limit("api").unwrap().capacity(), 10);
}

#[tokio::test]
async fn a_watched_file_is_reloaded_when_it_changes() {
    let dir = std::env::temp_dir().join(format!("tollgate-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("rules.yaml");
    std::fs::write(&path, YAML).unwrap();
    let rules = std::sync::Arc::new(RuleSet::load(&path).unwrap());
    let layer = rules.layer().unwrap();
    let _watch = rules
        .watch(&layer, &path, Duration::from_millis(10))
        .unwrap();
    // A broken file is logged and changes nothing; the fixed one applies.
    std::fs::write(&path, "rules: [").unwrap();
    std::fs::write(&path, YAML.replace("3/minute", "7/minute")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while rules.limit("api").unwrap().capacity() != 7 {
        assert!(Instant::now() < deadline, "never reloaded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
