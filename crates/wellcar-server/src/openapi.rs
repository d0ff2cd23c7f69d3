//! The admin API's OpenAPI 3.1 document, generated from the code, and its two routes:
//! `GET /api/v1/openapi.json` (the document) and `GET /api/v1/docs` (the same document as an HTML
//! page rendered on the server, [`crate::api_docs`]). Both are public.
//!
//! Contract:
//! - Admin routes are added only through [`DocumentedRoutes`]. Its only way in is
//!   [`DocumentedRoutes::routes`], which takes what `utoipa_axum::routes!` makes of handlers
//!   carrying a `#[utoipa::path]` attribute (a handler without one does not compile there). The
//!   axum route's path and methods are read from that attribute, and the same attribute is the
//!   document's operation: the router and the document are two views of one list.
//! - Each secured operation names its scope as the scope of its `bearer` security requirement;
//!   [`document`] copies it into `x-required-scope` and the description, and adds the 401/403
//!   (and 400/500) answers every secured route can give. The tests in `openapi_tests` call every
//!   documented operation on a running server and check that it exists, is the only method set on
//!   its path, and enforces the documented scope; and that no source file adds an `/api/` route
//!   around [`DocumentedRoutes`].
//! - Schemas come from `#[derive(ToSchema)]` on the types the handlers really take and return
//!   ([`crate::model`], [`crate::store`]); the tests validate real answers against them.

use std::sync::{Arc, LazyLock};

use axum::http::header;
use axum::response::IntoResponse;
use axum::Router;
use serde_json::{json, Value};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};

use crate::server::ServerState;

/// The document's fixed parts; operations and their schemas come from [`DocumentedRoutes`].
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Wellcar update server admin API",
        version = "1",
        description = "JSON admin API of `wellcar server serve`. Every route except the \
            documentation needs `Authorization: Bearer <token>`. Tokens have a scope: \
            read < publish < admin, each including the ones before. The token is checked before \
            the body is read: 401 for a missing, unknown, expired or revoked token, 403 for too \
            small a scope. Errors are `{\"error\": string}` with 400, 401, 403, 404, 409, 413 \
            or 500; changes are written to the activity log under the token's name. \
            `GET /metrics` needs a read token unless the server runs with `--metrics-listen`. \
            The Omaha endpoint is `POST /v1/update/` (text/xml, no token)."
    ),
    modifiers(&BearerScheme),
    components(schemas(crate::admin::ErrorBody)),
    tags(
        (name = "apps", description = "Applications (an OS or any other updatable thing)"),
        (name = "channels", description = "Channels, what they point at, and floors"),
        (name = "groups", description = "Groups and their rollout policies"),
        (name = "packages", description = "Release packages and payload uploads"),
        (name = "instances", description = "Machines and the events they reported"),
        (name = "activity", description = "The activity log"),
        (name = "retention", description = "Data retention"),
        (name = "tokens", description = "API tokens"),
        (name = "reboot locks", description = "FleetLock reboot locks: groups, holders, release"),
        (name = "documentation", description = "This document")
    )
)]
struct ApiDoc;

/// Adds the `bearer` HTTP security scheme the operations refer to.
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API token from `wellcar server token create` or `POST \
                         /api/v1/tokens`. The scope listed on each operation is the smallest \
                         that may call it (read < publish < admin).",
                    ))
                    .build(),
            ),
        );
    }
}

/// Admin routes that cannot exist without their documentation (see the module contract).
pub struct DocumentedRoutes(OpenApiRouter<Arc<ServerState>>);

impl Default for DocumentedRoutes {
    fn default() -> Self {
        Self::new()
    }
}

impl DocumentedRoutes {
    /// No routes yet.
    pub fn new() -> Self {
        DocumentedRoutes(OpenApiRouter::new())
    }

    /// Adds the handlers collected by `utoipa_axum::routes!` (one path, its methods).
    pub fn routes(self, handlers: UtoipaMethodRouter<Arc<ServerState>>) -> Self {
        DocumentedRoutes(self.0.routes(handlers))
    }

    /// Adds another module's documented routes.
    pub fn merge(self, other: DocumentedRoutes) -> Self {
        DocumentedRoutes(self.0.merge(other.0))
    }

    /// The axum router.
    pub fn into_router(self) -> Router<Arc<ServerState>> {
        self.0.split_for_parts().0
    }

    /// The operations and schemas, without the document's fixed parts.
    fn into_openapi(self) -> utoipa::openapi::OpenApi {
        self.0.split_for_parts().1
    }
}

/// The OpenAPI 3.1 document of every admin route, as JSON.
pub fn document() -> Value {
    let generated = ApiDoc::openapi().merge_from(crate::admin::documented_routes().into_openapi());
    let mut doc = serde_json::to_value(&generated).expect("an OpenApi serializes to JSON");
    note_scopes_and_errors(&mut doc);
    doc
}

static DOCUMENT_JSON: LazyLock<String> =
    LazyLock::new(|| serde_json::to_string_pretty(&document()).expect("a JSON value serializes"));

static DOCS_HTML: LazyLock<String> = LazyLock::new(|| crate::api_docs::render(&document()));

/// The scope operation `op` requires, from its `bearer` security requirement.
pub fn required_scope(op: &Value) -> Option<&str> {
    op.get("security")?
        .as_array()?
        .iter()
        .find_map(|req| req.get("bearer")?.as_array()?.first()?.as_str())
}

/// The HTTP methods an OpenAPI path item may hold operations for.
pub const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Writes each secured operation's scope into `x-required-scope` and its description, and adds
/// the error answers every secured route can give.
fn note_scopes_and_errors(doc: &mut Value) {
    let error = |what: &str| {
        json!({
            "description": what,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
        })
    };
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for item in paths.values_mut() {
        for method in METHODS {
            let Some(op) = item.get_mut(method) else {
                continue;
            };
            let Some(scope) = required_scope(op).map(str::to_owned) else {
                continue;
            };
            let sentence = format!("Needs a token with scope `{scope}` or higher.");
            let description = match op.get("description").and_then(Value::as_str) {
                Some(d) if !d.is_empty() => format!("{d}\n\n{sentence}"),
                _ => sentence,
            };
            op["description"] = Value::String(description);
            op["x-required-scope"] = Value::String(scope.clone());
            let takes_input = op.get("requestBody").is_some() || op.get("parameters").is_some();
            let responses = op["responses"]
                .as_object_mut()
                .expect("utoipa writes responses on every operation");
            if takes_input {
                responses
                    .entry("400")
                    .or_insert_with(|| error("A bad value, named in the message"));
            }
            responses.entry("401").or_insert_with(|| {
                error(
                    "No token, or an unknown, expired or revoked one (`WWW-Authenticate: Bearer`)",
                )
            });
            responses
                .entry("403")
                .or_insert_with(|| error(&format!("The token's scope is below `{scope}`")));
            responses
                .entry("500")
                .or_insert_with(|| error("A database failure"));
        }
    }
}

/// `GET /api/v1/openapi.json`.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "documentation",
    summary = "This OpenAPI 3.1 document (no token needed)",
    responses((status = 200, description = "The document", content_type = "application/json")))]
pub(crate) async fn openapi_json() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT_JSON.as_str(),
    )
}

/// `GET /api/v1/docs`.
#[utoipa::path(get, path = "/api/v1/docs", tag = "documentation",
    summary = "This document as an HTML page (no token needed)",
    responses((status = 200, description = "The page", content_type = "text/html")))]
pub(crate) async fn api_docs_page() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        DOCS_HTML.as_str(),
    )
}
