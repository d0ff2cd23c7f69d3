//! The generated OpenAPI document against the running server: a real server on SQLite over
//! loopback HTTP.
//!
//! Why a route cannot go missing from the document:
//! - By construction: the admin router and the document are built from one list,
//!   `admin::documented_routes`, made only of `utoipa_axum::routes!(handler)` entries. `routes!`
//!   reads each handler's path and methods from its `#[utoipa::path]` (a handler without one does
//!   not compile there), and [`crate::openapi::DocumentedRoutes`] has no method that takes a bare
//!   axum route. So adding a route through it adds its operation.
//! - [`no_source_file_adds_an_api_route_around_the_document`] fails when any module adds an
//!   `/api/…` route with plain axum (`.route("/api/…")`, `.nest("/api…")`), the one way around
//!   the list.
//! - [`every_documented_operation_is_served_with_its_scope`] calls every documented operation:
//!   it must exist (401 without a token, not 404/405), refuse the next lower scope (403) and
//!   accept the documented one. [`documented_paths_answer_no_other_method`] checks that no
//!   undocumented method is served on a documented path.
//! - [`real_answers_match_the_documented_schemas`] validates real answers of several routes
//!   against their documented schemas: every field named, every required field present, types.

use std::collections::BTreeMap;

use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use wellcar_omaha::{AppRequest, Request, WELLCAR_APP_ID};

use crate::api_docs::operations;
use crate::client::{ApiClient, Body};
use crate::openapi::required_scope;
use crate::rate_limit::Limit;
use crate::store::{self, Scope};
use crate::{RunningServer, Settings};

struct Setup {
    server: RunningServer,
    tokens: BTreeMap<&'static str, String>,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let database = format!("sqlite:{}", dir.path().join("server.db").display());
        let mut settings = Settings::new(&database, "127.0.0.1:0".parse().unwrap());
        settings.payload_dir = dir.path().join("payloads");
        // These tests send a few hundred admin requests from one address.
        settings.rate_limits.admin_per_ip = Limit {
            burst: 100_000,
            per_minute: 100_000,
        };
        let server = crate::spawn(settings).await.unwrap();
        let mut tokens = BTreeMap::new();
        for scope in [Scope::Read, Scope::Publish, Scope::Admin] {
            let now = server.state.now();
            let secret = server
                .state
                .db
                .write(move |c| {
                    let new = store::NewToken {
                        name: scope.as_str(),
                        scope,
                        expires_at: None,
                        actor: "test",
                    };
                    store::create_scoped_token(c, &new, now)
                })
                .await
                .unwrap()
                .secret;
            tokens.insert(scope.as_str(), secret);
        }
        Setup {
            server,
            tokens,
            _dir: dir,
        }
    }

    fn client(&self, scope: Option<&str>) -> ApiClient {
        ApiClient::new(&self.server.url(), scope.map(|s| self.tokens[s].as_str()))
    }

    /// The document as the server serves it.
    async fn document(&self) -> Value {
        let (status, body) = self
            .client(None)
            .get_text("/api/v1/openapi.json")
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        serde_json::from_slice(&body).unwrap()
    }
}

/// `path` with the app placeholder filled with Wellcar's app id and the others with `x`.
fn concrete(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').unwrap() + open;
        out.push_str(&rest[..open]);
        out.push_str(if &rest[open..=close] == "{app}" {
            WELLCAR_APP_ID
        } else {
            "x"
        });
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

fn method(name: &str) -> Method {
    Method::from_bytes(name.to_ascii_uppercase().as_bytes()).unwrap()
}

/// The scope just below `scope`, if any.
fn lower(scope: &str) -> Option<&'static str> {
    match scope {
        "admin" => Some("publish"),
        "publish" => Some("read"),
        "read" => None,
        other => panic!("unknown scope {other:?} in the document"),
    }
}

async fn send(client: &ApiClient, m: &str, path: &str) -> (StatusCode, Vec<u8>) {
    let (status, body) = client
        .send(method(m), path, None, Body::Bytes(Vec::new()))
        .await
        .unwrap();
    (status, body.to_vec())
}

/// Every documented operation answers on the running server: the public ones with 200, the
/// secured ones with 401 without a token (so the route exists: an unknown route is 404 before
/// any token check), 403 with the scope just below the documented one, and with the documented
/// scope neither 401/403 nor the router's 404/405 (a 404 from the handler names what it missed).
#[tokio::test]
async fn every_documented_operation_is_served_with_its_scope() {
    let s = Setup::start().await;
    let doc = s.document().await;
    let ops = operations(&doc);
    assert!(ops.len() >= 25, "only {} operations documented", ops.len());
    let anonymous = s.client(None);
    // The control: a route nobody documented is the router's 404.
    let (status, _) = send(&anonymous, "get", "/api/v1/undocumented").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let mut secured = 0;
    for (m, path, op) in &ops {
        let url = concrete(path);
        let (status, body) = send(&anonymous, m, &url).await;
        let Some(scope) = required_scope(op) else {
            assert_eq!(status, StatusCode::OK, "{m} {path} is documented as public");
            continue;
        };
        secured += 1;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{m} {path} without a token: {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(op["x-required-scope"], scope, "{m} {path}");
        if let Some(below) = lower(scope) {
            let (status, body) = send(&s.client(Some(below)), m, &url).await;
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{m} {path} documents scope {scope}, but a {below} token got: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let (status, body) = send(&s.client(Some(scope)), m, &url).await;
        assert!(
            ![
                StatusCode::UNAUTHORIZED,
                StatusCode::FORBIDDEN,
                StatusCode::METHOD_NOT_ALLOWED
            ]
            .contains(&status),
            "{m} {path} with a {scope} token: {status}"
        );
        if status == StatusCode::NOT_FOUND {
            let error: crate::admin::ErrorBody = serde_json::from_slice(&body)
                .unwrap_or_else(|e| panic!("{m} {path}: a 404 without an error body ({e})"));
            assert!(error.error.contains("not found"), "{m} {path}: {error:?}");
        }
    }
    assert!(secured >= 23, "{secured}");
    s.server.shutdown().await.unwrap();
}

/// On every documented path, every method the document does not list is refused with 405: no
/// undocumented method hides on a documented path.
#[tokio::test]
async fn documented_paths_answer_no_other_method() {
    let s = Setup::start().await;
    let doc = s.document().await;
    let admin = s.client(Some("admin"));
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in ["get", "put", "post", "delete", "patch"] {
            if item.get(m).is_some() {
                continue;
            }
            let (status, _) = send(&admin, m, &concrete(path)).await;
            assert_eq!(
                status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{m} {path} is served but not documented"
            );
        }
    }
    s.server.shutdown().await.unwrap();
}

/// The one way around `DocumentedRoutes`: a module adding an `/api/` route with plain axum.
/// Scans every source file of the crate (tests excluded) for such a call.
#[test]
fn no_source_file_adds_an_api_route_around_the_document() {
    fn scan(dir: &std::path::Path, found: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                scan(&path, found);
                continue;
            }
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !name.ends_with(".rs") || name.ends_with("_tests.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            found.extend(
                undocumented_api_routes(&text)
                    .into_iter()
                    .map(|at| format!("{}: {at}", path.display())),
            );
        }
    }
    let mut found = Vec::new();
    scan(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut found,
    );
    assert!(
        found.is_empty(),
        "add these routes with DocumentedRoutes and #[utoipa::path]: {found:#?}"
    );
    // The scanner itself finds what it looks for.
    let sample = "Router::new()\n  .route(\n   \"/api/v1/x\", get(h))\n .nest(\"/api/v2\", r)";
    assert_eq!(undocumented_api_routes(sample).len(), 2);
    assert!(undocumented_api_routes(".route(\"/ui/x\", get(h))").is_empty());
}

/// `.route(`, `.route_service(`, `.nest(` or `.nest_service(` calls whose path starts `"/api`.
fn undocumented_api_routes(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for call in [".route(", ".route_service(", ".nest(", ".nest_service("] {
        for (at, _) in text.match_indices(call) {
            let rest = text[at + call.len()..].trim_start();
            if rest.starts_with("\"/api") {
                found.push(rest.lines().next().unwrap_or("").to_owned());
            }
        }
    }
    found
}

/// Checks `value` against `schema` (resolving `$ref`s in `doc`): object fields all declared and
/// the required ones present, JSON types as documented. Appends what is wrong to `errors`.
fn validate(doc: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.strip_prefix("#/components/schemas/").unwrap();
        let target = &doc["components"]["schemas"][name];
        assert!(target.is_object(), "{at}: dangling reference {r}");
        return validate(doc, target, value, at, errors);
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(alternatives) = schema[key].as_array() {
            let fits = alternatives.iter().any(|alt| {
                let mut e = Vec::new();
                validate(doc, alt, value, at, &mut e);
                e.is_empty()
            });
            if !fits {
                errors.push(format!("{at}: {value} fits none of {key}"));
            }
            return;
        }
    }
    let mut fields = BTreeMap::new();
    let mut required = Vec::new();
    if collect_object(doc, schema, &mut fields, &mut required) {
        let Some(object) = value.as_object() else {
            errors.push(format!("{at}: expected an object, got {value}"));
            return;
        };
        for (key, v) in object {
            match fields.get(key.as_str()) {
                Some(field_schema) => {
                    validate(doc, field_schema, v, &format!("{at}.{key}"), errors)
                }
                None => errors.push(format!("{at}: field {key:?} is not in the schema")),
            }
        }
        for key in required {
            if !object.contains_key(&key) {
                errors.push(format!("{at}: required field {key:?} is missing"));
            }
        }
        return;
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return,
    };
    let fits = types.iter().any(|t| match *t {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        _ => false,
    });
    if !fits {
        errors.push(format!("{at}: {value} is not {types:?}"));
        return;
    }
    if let (Some(items), Some(values)) = (schema.get("items"), value.as_array()) {
        for (i, v) in values.iter().enumerate() {
            validate(doc, items, v, &format!("{at}[{i}]"), errors);
        }
    }
}

/// Gathers the fields of an object schema, through `$ref` and `allOf` (flattened structs);
/// false if `schema` is not an object schema.
fn collect_object<'a>(
    doc: &'a Value,
    schema: &'a Value,
    fields: &mut BTreeMap<&'a str, &'a Value>,
    required: &mut Vec<String>,
) -> bool {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.strip_prefix("#/components/schemas/").unwrap();
        return collect_object(doc, &doc["components"]["schemas"][name], fields, required);
    }
    let mut object = false;
    if let Some(parts) = schema["allOf"].as_array() {
        for part in parts {
            object |= collect_object(doc, part, fields, required);
        }
    }
    if schema["type"] == "object" || schema.get("properties").is_some() {
        object = true;
        for (k, v) in schema["properties"].as_object().into_iter().flatten() {
            fields.insert(k, v);
        }
        for r in schema["required"].as_array().into_iter().flatten() {
            required.push(r.as_str().unwrap().to_owned());
        }
    }
    object
}

/// The documented JSON schema of `method path`'s answer with `status`.
fn response_schema<'a>(doc: &'a Value, method: &str, path: &str, status: u16) -> &'a Value {
    let schema = &doc["paths"][path][method]["responses"][status.to_string()]["content"]
        ["application/json"]["schema"];
    assert!(
        schema.is_object(),
        "{method} {path} documents no {status} JSON body"
    );
    schema
}

fn check_answer(doc: &Value, method: &str, path: &str, status: u16, value: &Value) {
    let mut errors = Vec::new();
    validate(
        doc,
        response_schema(doc, method, path, status),
        value,
        path,
        &mut errors,
    );
    assert!(errors.is_empty(), "{method} {path}: {errors:#?}");
}

/// A machine checks in and reports an event, a package is published, a token created; then the
/// real answers of thirteen routes validate against their documented schemas (field names,
/// required fields, types), the nullable and flattened fields included.
#[tokio::test]
async fn real_answers_match_the_documented_schemas() {
    let s = Setup::start().await;
    let doc = s.document().await;
    let admin = s.client(Some("admin"));
    let app = format!("/api/v1/apps/{WELLCAR_APP_ID}");
    let package = json!({
        "version": "2.0.0", "arch": "amd64", "filename": "wellcar.raw",
        "url": "https://example.com/p/", "size": 4, "sha256_hex": "ab".repeat(32),
        "sha1_base64": "AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    });
    let created: Value = admin
        .call(Method::POST, &format!("{app}/packages"), &package)
        .await
        .unwrap();
    check_answer(&doc, "post", "/api/v1/apps/{app}/packages", 201, &created);
    let published: Value = admin
        .call(
            Method::POST,
            &format!("{app}/channels/stable/publish"),
            &json!({"version": "2.0.0"}),
        )
        .await
        .unwrap();
    check_answer(
        &doc,
        "post",
        "/api/v1/apps/{app}/channels/{channel}/publish",
        200,
        &published,
    );
    let machine = "0123456789abcdef0123456789abcdef";
    let check = Request {
        updater_version: "update_engine-0.4.10".into(),
        install_source: "scheduler".into(),
        os: None,
        apps: vec![AppRequest {
            app_id: WELLCAR_APP_ID.into(),
            version: "1.0.0".into(),
            track: "stable".into(),
            board: "amd64-usr".into(),
            machine_id: machine.into(),
            oem: "qemu".into(),
            ping: true,
            update_check: Some(Default::default()),
            ..AppRequest::default()
        }],
    };
    let (status, _) = admin.omaha(&check.to_xml()).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let token: Value = admin
        .call(
            Method::POST,
            "/api/v1/tokens",
            &json!({"name": "ci", "scope": "publish", "expires_in_secs": 3600}),
        )
        .await
        .unwrap();
    check_answer(&doc, "post", "/api/v1/tokens", 201, &token);
    let paused: Value = admin
        .call(
            Method::POST,
            &format!("{app}/groups/beta/pause"),
            &json!({}),
        )
        .await
        .unwrap();
    check_answer(
        &doc,
        "post",
        "/api/v1/apps/{app}/groups/{track}/pause",
        200,
        &paused,
    );
    let gets = [
        ("/api/v1/apps", "/api/v1/apps".to_owned()),
        ("/api/v1/apps/{app}/channels", format!("{app}/channels")),
        ("/api/v1/apps/{app}/groups", format!("{app}/groups")),
        (
            "/api/v1/apps/{app}/groups/{track}",
            format!("{app}/groups/beta"),
        ),
        ("/api/v1/apps/{app}/packages", format!("{app}/packages")),
        ("/api/v1/apps/{app}/instances", format!("{app}/instances")),
        (
            "/api/v1/apps/{app}/instances/{machine}/events",
            format!("{app}/instances/{machine}/events"),
        ),
        ("/api/v1/activity", "/api/v1/activity".to_owned()),
        ("/api/v1/tokens", "/api/v1/tokens".to_owned()),
        (
            "/api/v1/fleetlock/groups",
            "/api/v1/fleetlock/groups".to_owned(),
        ),
    ];
    for (documented, url) in gets {
        let value: Value = admin.get(&url).await.unwrap();
        check_answer(&doc, "get", documented, 200, &value);
    }
    let instances: Value = admin.get(&format!("{app}/instances")).await.unwrap();
    assert_eq!(instances[0]["machine_id"], machine, "{instances}");
    let channels: Value = admin.get(&format!("{app}/channels")).await.unwrap();
    assert!(
        channels
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["package"].is_object())
            && channels
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["package"].is_null()),
        "both a published and an empty channel were validated: {channels}"
    );
    s.server.shutdown().await.unwrap();
}

/// The validator catches an unknown field, a missing required field and a wrong type.
#[test]
fn the_schema_check_finds_wrong_answers() {
    let doc = crate::openapi::document();
    let schema = json!({"$ref": "#/components/schemas/App"});
    let mut errors = Vec::new();
    validate(
        &doc,
        &schema,
        &json!({"id": "x", "name": "n", "description": "d"}),
        "app",
        &mut errors,
    );
    assert!(errors.is_empty(), "{errors:?}");
    validate(
        &doc,
        &schema,
        &json!({"id": 1, "colour": "red"}),
        "app",
        &mut errors,
    );
    let text = errors.join("\n");
    for expected in [
        "\"colour\" is not in the schema",
        "\"name\" is missing",
        "1 is not",
    ] {
        assert!(text.contains(expected), "{expected} not in {text}");
    }
}

/// `/api/v1/docs` is an HTML page with a section for every documented operation and schema.
#[tokio::test]
async fn the_docs_page_shows_every_operation() {
    let s = Setup::start().await;
    let doc = s.document().await;
    let (status, page) = s.client(None).get_text("/api/v1/docs").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let page = String::from_utf8(page.to_vec()).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert!(!page.contains("<script"), "the page needs no script");
    for (m, path, _) in operations(&doc) {
        let anchor = crate::api_docs::operation_anchor(m, path);
        assert!(page.contains(&format!("id=\"{anchor}\"")), "{m} {path}");
    }
    for name in doc["components"]["schemas"].as_object().unwrap().keys() {
        assert!(page.contains(&format!("id=\"schema-{name}\"")), "{name}");
    }
    assert!(page.contains("class=\"scope\">admin<"));
    s.server.shutdown().await.unwrap();
}
