//! The human-readable API page (`GET /api/v1/docs`): the OpenAPI document
//! ([`crate::openapi::document`]) rendered as one self-contained HTML page on the server.
//!
//! Contract:
//! - Input is the OpenAPI JSON; every text from it is HTML-escaped. No scripts, no external
//!   assets (the page works offline and under a strict CSP).
//! - One section per operation (`id="op-<method>-<path>"`): method, path, summary, description,
//!   required scope, parameters, request body and answers; one section per schema
//!   (`id="schema-<name>"`) with its fields. Schema references are links.

use std::fmt::Write as _;

use serde_json::Value;

use crate::openapi::{required_scope, METHODS};

/// `text` with `&`, `<`, `>`, `"` and `'` escaped for HTML text and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The anchor id of operation `method path`.
pub fn operation_anchor(method: &str, path: &str) -> String {
    let slug: String = path
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("op-{method}{slug}")
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:60rem;margin:0 auto;\
padding:1rem;line-height:1.45;color:#1b1b1b}code{background:#f2f2f2;padding:0 .2rem;\
overflow-wrap:anywhere}section{border-top:1px solid #ccc;padding:.5rem 0}\
table{border-collapse:collapse;width:100%}td,th{border:1px solid #ddd;padding:.2rem .4rem;\
text-align:left;vertical-align:top}.method{font-weight:bold;text-transform:uppercase}\
.scope{background:#fff3cd;padding:0 .3rem}nav ul{columns:2}@media(max-width:40rem){nav ul{columns:1}}";

/// The page for OpenAPI document `doc`.
pub fn render(doc: &Value) -> String {
    let title = doc["info"]["title"].as_str().unwrap_or("API");
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t}</title><style>{STYLE}</style></head><body><main><h1>{t}</h1>\
         <p>OpenAPI {v}, API version {av}. Machine-readable: \
         <a href=\"/api/v1/openapi.json\"><code>/api/v1/openapi.json</code></a>.</p>{d}",
        t = escape(title),
        v = escape(doc["openapi"].as_str().unwrap_or("")),
        av = escape(doc["info"]["version"].as_str().unwrap_or("")),
        d = paragraphs(doc["info"]["description"].as_str().unwrap_or("")),
    );
    let operations = operations(doc);
    html.push_str("<nav aria-label=\"Operations\"><h2>Operations</h2><ul>");
    for (method, path, op) in &operations {
        let _ = write!(
            html,
            "<li><a href=\"#{a}\"><span class=\"method\">{m}</span> <code>{p}</code></a> {s}</li>",
            a = operation_anchor(method, path),
            m = escape(method),
            p = escape(path),
            s = escape(op["summary"].as_str().unwrap_or("")),
        );
    }
    html.push_str("</ul></nav>");
    for (method, path, op) in &operations {
        render_operation(&mut html, method, path, op);
    }
    html.push_str("<h2>Schemas</h2>");
    if let Some(schemas) = doc["components"]["schemas"].as_object() {
        for (name, schema) in schemas {
            render_schema(&mut html, name, schema);
        }
    }
    html.push_str("</main></body></html>");
    html
}

/// Every operation of `doc` as (method, path, operation), in document order.
pub fn operations(doc: &Value) -> Vec<(&'static str, &str, &Value)> {
    let mut out = Vec::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (path, item) in paths {
            for method in METHODS {
                if let Some(op) = item.get(method) {
                    out.push((method, path.as_str(), op));
                }
            }
        }
    }
    out
}

fn paragraphs(text: &str) -> String {
    text.split("\n\n")
        .filter(|p| !p.trim().is_empty())
        .map(|p| format!("<p>{}</p>", escape(p)))
        .collect()
}

fn render_operation(html: &mut String, method: &str, path: &str, op: &Value) {
    let _ = write!(
        html,
        "<section id=\"{a}\"><h3><span class=\"method\">{m}</span> <code>{p}</code></h3>\
         <p><strong>{s}</strong></p>{d}",
        a = operation_anchor(method, path),
        m = escape(method),
        p = escape(path),
        s = escape(op["summary"].as_str().unwrap_or("")),
        d = paragraphs(op["description"].as_str().unwrap_or("")),
    );
    match required_scope(op) {
        Some(scope) => {
            let _ = write!(
                html,
                "<p>Token scope: <span class=\"scope\">{}</span></p>",
                escape(scope)
            );
        }
        None => html.push_str("<p>No token needed.</p>"),
    }
    if let Some(params) = op["parameters"].as_array().filter(|p| !p.is_empty()) {
        html.push_str(
            "<table><caption>Parameters</caption><tr><th>Name</th><th>In</th><th>Required</th>\
             <th>Type</th><th>Description</th></tr>",
        );
        for p in params {
            let _ = write!(
                html,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(p["name"].as_str().unwrap_or("")),
                escape(p["in"].as_str().unwrap_or("")),
                if p["required"].as_bool() == Some(true) {
                    "yes"
                } else {
                    "no"
                },
                type_html(&p["schema"]),
                escape(p["description"].as_str().unwrap_or("")),
            );
        }
        html.push_str("</table>");
    }
    if let Some(content) = op["requestBody"]["content"].as_object() {
        for (media, body) in content {
            let _ = write!(
                html,
                "<p>Request body (<code>{}</code>): {}</p>",
                escape(media),
                type_html(&body["schema"]),
            );
        }
    }
    if let Some(responses) = op["responses"].as_object() {
        html.push_str(
            "<table><caption>Answers</caption><tr><th>Status</th><th>Meaning</th><th>Body</th></tr>",
        );
        for (status, response) in responses {
            let body = response["content"]
                .as_object()
                .map(|c| {
                    c.iter()
                        .map(|(media, b)| {
                            let schema = if b.get("schema").is_some() {
                                type_html(&b["schema"])
                            } else {
                                String::new()
                            };
                            format!("<code>{}</code> {schema}", escape(media))
                        })
                        .collect::<Vec<_>>()
                        .join("<br>")
                })
                .unwrap_or_default();
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{body}</td></tr>",
                escape(status),
                escape(response["description"].as_str().unwrap_or("")),
            );
        }
        html.push_str("</table>");
    }
    html.push_str("</section>");
}

fn render_schema(html: &mut String, name: &str, schema: &Value) {
    let _ = write!(
        html,
        "<section id=\"schema-{n}\"><h3>{n}</h3>{d}",
        n = escape(name),
        d = paragraphs(schema["description"].as_str().unwrap_or("")),
    );
    let mut fields = Vec::new();
    collect_fields(schema, &mut fields);
    if fields.is_empty() {
        let _ = write!(html, "<p>{}</p>", type_html(schema));
    } else {
        html.push_str(
            "<table><tr><th>Field</th><th>Type</th><th>Required</th><th>Description</th></tr>",
        );
        for (field, field_schema, required) in fields {
            let _ = write!(
                html,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&field),
                type_html(field_schema),
                if required { "yes" } else { "no" },
                escape(field_schema["description"].as_str().unwrap_or("")),
            );
        }
        html.push_str("</table>");
    }
    html.push_str("</section>");
}

/// The fields of an object schema, including those of `allOf` parts (flattened structs).
fn collect_fields<'a>(schema: &'a Value, out: &mut Vec<(String, &'a Value, bool)>) {
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if let Some(props) = schema["properties"].as_object() {
        for (name, s) in props {
            out.push((name.clone(), s, required.contains(&name.as_str())));
        }
    }
    if let Some(parts) = schema["allOf"].as_array() {
        for part in parts {
            collect_fields(part, out);
        }
    }
}

/// A short HTML description of a schema's type; references link to their schema.
fn type_html(schema: &Value) -> String {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap_or(r);
        return format!("<a href=\"#schema-{n}\">{n}</a>", n = escape(name));
    }
    for key in ["oneOf", "anyOf", "allOf"] {
        if let Some(parts) = schema[key].as_array() {
            let sep = if key == "allOf" { " and " } else { " or " };
            return parts.iter().map(type_html).collect::<Vec<_>>().join(sep);
        }
    }
    let base = match &schema["type"] {
        Value::String(t) => type_name(t, schema),
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .map(|t| type_name(t, schema))
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "any".into(),
    };
    match &schema["enum"] {
        Value::Array(values) => format!(
            "{base}: one of {}",
            values
                .iter()
                .map(|v| format!("<code>{}</code>", escape(&v.to_string())))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => base,
    }
}

fn type_name(t: &str, schema: &Value) -> String {
    match t {
        "array" => format!("array of {}", type_html(&schema["items"])),
        "integer" | "number" => match schema["format"].as_str() {
            Some(f) => format!("{} ({})", escape(t), escape(f)),
            None => escape(t),
        },
        other => escape(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_text_from_the_document_is_escaped() {
        let doc = json!({
            "openapi": "3.1.0",
            "info": {"title": "<script>x</script>", "version": "1", "description": "a & b"},
            "paths": {"/p/{id}": {"get": {
                "summary": "<b>s</b>", "description": "\"q\"",
                "parameters": [{"name": "<id>", "in": "path", "required": true,
                    "schema": {"type": "string", "enum": ["<e>"]}}],
                "responses": {"200": {"description": "<ok>"}}
            }}},
            "components": {"schemas": {"S": {"type": "object",
                "properties": {"<f>": {"type": "string", "description": "<d>"}}}}}
        });
        let html = render(&doc);
        for raw in [
            "<script>", "<b>", "<id>", "<ok>", "<f>", "<d>", "<e>", "\"q\"",
        ] {
            assert!(!html.contains(raw), "{raw} is not escaped in {html}");
        }
        assert!(html.contains("&lt;script&gt;x&lt;/script&gt;"));
        assert!(html.contains("id=\"op-get-p--id-\""), "{html}");
    }

    #[test]
    fn references_link_to_their_schema() {
        let schema = json!({"type": "array", "items": {"$ref": "#/components/schemas/Group"}});
        assert_eq!(
            type_html(&schema),
            "array of <a href=\"#schema-Group\">Group</a>"
        );
        let nullable = json!({"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/P"}]});
        assert_eq!(type_html(&nullable), "null or <a href=\"#schema-P\">P</a>");
    }
}
