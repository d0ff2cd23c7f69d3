//! Omaha responses: what the server answers, and how a client reads it.

use base64::Engine as _;

use crate::codes::status;
use crate::limits::MAX_RESPONSE_BYTES;
use crate::xml::{parse_document, push_attr, Element, ParseError};

/// A `<response>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    /// `server` attribute (`wellcar` for ours).
    pub server: String,
    /// `<daystart elapsed_seconds>`: seconds since local midnight.
    pub elapsed_seconds: u32,
    /// `<daystart elapsed_days>`: days since 2007-01-01 (Omaha's epoch), if sent.
    pub elapsed_days: Option<u32>,
    /// One entry per `<app>`.
    pub apps: Vec<AppResponse>,
}

/// One `<app>` of a response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppResponse {
    /// `appid`, echoed exactly as the request sent it.
    pub app_id: String,
    /// `status`: `ok` or an `error-…` string.
    pub status: String,
    /// Whether a `<ping status="ok">` is included.
    pub ping_ok: bool,
    /// The `<updatecheck>`, if any.
    pub update_check: Option<UpdateCheckResponse>,
    /// Number of `<event status="ok">` acknowledgements (one per request event).
    pub event_acks: usize,
}

/// The `<updatecheck>` of a response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateCheckResponse {
    /// `ok`, `noupdate` or an `error-…` string.
    pub status: String,
    /// `PollInterval` in seconds (update_engine honours it; it must be sent every time).
    pub poll_interval: Option<u32>,
    /// `<urls><url codebase>` values, as written.
    pub codebases: Vec<String>,
    /// `<manifest>`s (several only for floors).
    pub manifests: Vec<Manifest>,
}

/// A `<manifest>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    /// `version` of the offered release.
    pub version: String,
    /// `<package>`s; the first is the payload.
    pub packages: Vec<Package>,
    /// `<action>`s.
    pub actions: Vec<Action>,
    /// `is_floor="true"`.
    pub is_floor: bool,
    /// `floor_reason`.
    pub floor_reason: Option<String>,
    /// `is_target="true"`.
    pub is_target: bool,
}

/// A `<package>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Package {
    /// File name, appended to each codebase.
    pub name: String,
    /// `hash`: base64 SHA-1 (informational for update_engine).
    pub sha1_base64: Option<String>,
    /// `hash_sha256`: hex SHA-256 (used for extra files).
    pub sha256_hex: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// `required`.
    pub required: Option<bool>,
}

/// An `<action>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Action {
    /// `event` (`postinstall`, `install`, …).
    pub event: String,
    /// `sha256`: base64 SHA-256 of the whole payload (what update_engine verifies).
    pub sha256_base64: Option<String>,
    /// `DisablePayloadBackoff="true"`.
    pub disable_payload_backoff: bool,
    /// `IsDeltaPayload="true"`.
    pub is_delta_payload: bool,
    /// `MaxFailureCountPerUrl`.
    pub max_failure_count_per_url: Option<u32>,
}

/// What a client should do, read from a response the way `update_engine` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateDecision {
    /// No update; poll again after `poll_interval` seconds if the server said so.
    NoUpdate {
        /// Server-requested poll interval.
        poll_interval: Option<u32>,
    },
    /// An update to install.
    Update(UpdateInfo),
}

/// An offered update, as `update_engine` extracts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateInfo {
    /// New version.
    pub version: String,
    /// Full payload URLs: each codebase, a `/` if missing, the package name.
    pub urls: Vec<String>,
    /// Payload size in bytes (> 0).
    pub size: u64,
    /// SHA-256 of the payload, decoded from the action's base64 `sha256`.
    pub sha256: [u8; 32],
    /// Delta payload flag.
    pub is_delta: bool,
    /// `DisablePayloadBackoff`.
    pub disable_payload_backoff: bool,
    /// Server-requested poll interval.
    pub poll_interval: Option<u32>,
}

/// Why a well-formed response cannot be used by a client (update_engine's error code 34 cases).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InterpretError {
    /// The response has no `<app>` with an `<updatecheck>`.
    #[error("response has no app/updatecheck element")]
    NoUpdateCheck,
    /// `updatecheck@status` is missing or not `ok`/`noupdate`.
    #[error("updatecheck status {0:?} is neither \"ok\" nor \"noupdate\"")]
    BadStatus(String),
    /// An `ok` update lacks a required part.
    #[error("update response is missing {0}")]
    Missing(&'static str),
    /// `size` is zero.
    #[error("package size must be greater than zero")]
    ZeroSize,
    /// The action's `sha256` is not base64 of 32 bytes.
    #[error("postinstall sha256 {0:?} is not base64 of a sha-256 digest")]
    BadSha256(String),
}

fn parse_bool(v: Option<&str>) -> bool {
    v.is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

impl Response {
    /// Parses a response document. Well-formedness and the root element are checked here;
    /// whether a client can act on it is [`Response::update_decision`]'s job. Bodies over
    /// [`MAX_RESPONSE_BYTES`], and documents over the other bounds of [`crate::limits`], are
    /// refused.
    pub fn parse(body: &[u8]) -> Result<Self, ParseError> {
        let mut root = parse_document(body, "response", MAX_RESPONSE_BYTES)?;
        if root.name != "response" {
            return Err(ParseError::WrongRoot {
                found: root.take_name(),
                expected: "response",
            });
        }
        let daystart = root.child("daystart");
        let mut apps = Vec::new();
        for app in root.children_named("app") {
            apps.push(AppResponse {
                app_id: app.attr("appid").unwrap_or_default().to_owned(),
                status: app.attr("status").unwrap_or_default().to_owned(),
                ping_ok: app
                    .child("ping")
                    .is_some_and(|p| p.attr("status") == Some(status::OK)),
                update_check: app.child("updatecheck").map(parse_update_check),
                event_acks: app.children_named("event").count(),
            });
        }
        Ok(Response {
            server: root.attr("server").unwrap_or_default().to_owned(),
            elapsed_seconds: daystart
                .and_then(|d| d.attr("elapsed_seconds"))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            elapsed_days: daystart
                .and_then(|d| d.attr("elapsed_days"))
                .and_then(|v| v.parse().ok()),
            apps,
        })
    }

    /// Reads the response as `update_engine` does: the first app's `updatecheck`, its first
    /// manifest, first package and `postinstall` action.
    pub fn update_decision(&self) -> Result<UpdateDecision, InterpretError> {
        let uc = self
            .apps
            .iter()
            .find_map(|a| a.update_check.as_ref())
            .ok_or(InterpretError::NoUpdateCheck)?;
        match uc.status.as_str() {
            status::NO_UPDATE => {
                return Ok(UpdateDecision::NoUpdate {
                    poll_interval: uc.poll_interval,
                })
            }
            status::OK => {}
            other => return Err(InterpretError::BadStatus(other.to_owned())),
        }
        let manifest = uc
            .manifests
            .first()
            .ok_or(InterpretError::Missing("manifest"))?;
        if manifest.version.is_empty() {
            return Err(InterpretError::Missing("manifest version"));
        }
        if uc.codebases.is_empty() {
            return Err(InterpretError::Missing("urls"));
        }
        let package = manifest
            .packages
            .first()
            .ok_or(InterpretError::Missing("package"))?;
        if package.size == 0 {
            return Err(InterpretError::ZeroSize);
        }
        let action = manifest
            .actions
            .iter()
            .find(|a| a.event == "postinstall")
            .ok_or(InterpretError::Missing("postinstall action"))?;
        let sha_text = action
            .sha256_base64
            .as_deref()
            .ok_or(InterpretError::Missing("postinstall sha256"))?;
        let sha256: [u8; 32] = base64::engine::general_purpose::STANDARD
            .decode(sha_text)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| InterpretError::BadSha256(sha_text.to_owned()))?;
        let urls = uc
            .codebases
            .iter()
            .map(|base| {
                if base.ends_with('/') {
                    format!("{base}{}", package.name)
                } else {
                    format!("{base}/{}", package.name)
                }
            })
            .collect();
        Ok(UpdateDecision::Update(UpdateInfo {
            version: manifest.version.clone(),
            urls,
            size: package.size,
            sha256,
            is_delta: action.is_delta_payload,
            disable_payload_backoff: action.disable_payload_backoff,
            poll_interval: uc.poll_interval,
        }))
    }

    /// Writes the response in Nebraska's shape: XML declaration, explicit end tags, app children
    /// in the order `ping`, `updatecheck`, `event`.
    pub fn to_xml(&self) -> String {
        let mut out = String::with_capacity(512);
        out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<response protocol=\"3.0\"");
        push_attr(&mut out, "server", &self.server);
        out.push_str("><daystart");
        push_attr(
            &mut out,
            "elapsed_seconds",
            &self.elapsed_seconds.to_string(),
        );
        if let Some(days) = self.elapsed_days {
            push_attr(&mut out, "elapsed_days", &days.to_string());
        }
        out.push_str("></daystart>");
        for app in &self.apps {
            out.push_str("<app");
            push_attr(&mut out, "appid", &app.app_id);
            push_attr(&mut out, "status", &app.status);
            out.push('>');
            if app.ping_ok {
                out.push_str("<ping status=\"ok\"></ping>");
            }
            if let Some(uc) = &app.update_check {
                write_update_check(&mut out, uc);
            }
            for _ in 0..app.event_acks {
                out.push_str("<event status=\"ok\"></event>");
            }
            out.push_str("</app>");
        }
        out.push_str("</response>\n");
        out
    }
}

fn parse_update_check(el: &Element) -> UpdateCheckResponse {
    let codebases = el
        .child("urls")
        .map(|urls| {
            urls.children_named("url")
                .filter_map(|u| u.attr("codebase").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let manifests = el
        .children_named("manifest")
        .map(|m| Manifest {
            version: m.attr("version").unwrap_or_default().to_owned(),
            packages: m
                .child("packages")
                .map(|ps| {
                    ps.children_named("package")
                        .map(|p| Package {
                            name: p.attr("name").unwrap_or_default().to_owned(),
                            sha1_base64: p.attr("hash").map(str::to_owned),
                            sha256_hex: p.attr("hash_sha256").map(str::to_owned),
                            size: p.attr("size").and_then(|s| s.parse().ok()).unwrap_or(0),
                            required: p.attr("required").map(|r| parse_bool(Some(r))),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            actions: m
                .child("actions")
                .map(|acts| {
                    acts.children_named("action")
                        .map(|a| Action {
                            event: a.attr("event").unwrap_or_default().to_owned(),
                            sha256_base64: a.attr("sha256").map(str::to_owned),
                            disable_payload_backoff: parse_bool(a.attr("DisablePayloadBackoff")),
                            is_delta_payload: parse_bool(a.attr("IsDeltaPayload")),
                            max_failure_count_per_url: a
                                .attr("MaxFailureCountPerUrl")
                                .and_then(|v| v.parse().ok()),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            is_floor: parse_bool(m.attr("is_floor")),
            floor_reason: m.attr("floor_reason").map(str::to_owned),
            is_target: parse_bool(m.attr("is_target")),
        })
        .collect();
    UpdateCheckResponse {
        status: el.attr("status").unwrap_or_default().to_owned(),
        poll_interval: el.attr("PollInterval").and_then(|v| v.parse().ok()),
        codebases,
        manifests,
    }
}

fn write_update_check(out: &mut String, uc: &UpdateCheckResponse) {
    out.push_str("<updatecheck");
    push_attr(out, "status", &uc.status);
    if let Some(p) = uc.poll_interval {
        push_attr(out, "PollInterval", &p.to_string());
    }
    out.push('>');
    if uc.status == status::OK || !uc.codebases.is_empty() {
        out.push_str("<urls>");
        for base in &uc.codebases {
            out.push_str("<url");
            push_attr(out, "codebase", base);
            out.push_str("></url>");
        }
        out.push_str("</urls>");
    }
    for m in &uc.manifests {
        out.push_str("<manifest");
        push_attr(out, "version", &m.version);
        if m.is_floor {
            push_attr(out, "is_floor", "true");
        }
        if let Some(reason) = &m.floor_reason {
            push_attr(out, "floor_reason", reason);
        }
        if m.is_target {
            push_attr(out, "is_target", "true");
        }
        out.push_str("><packages>");
        for p in &m.packages {
            out.push_str("<package");
            push_attr(out, "name", &p.name);
            if let Some(h) = &p.sha1_base64 {
                push_attr(out, "hash", h);
            }
            if let Some(h) = &p.sha256_hex {
                push_attr(out, "hash_sha256", h);
            }
            push_attr(out, "size", &p.size.to_string());
            if let Some(r) = p.required {
                push_attr(out, "required", if r { "true" } else { "false" });
            }
            out.push_str("></package>");
        }
        out.push_str("</packages><actions>");
        for a in &m.actions {
            out.push_str("<action");
            push_attr(out, "event", &a.event);
            if let Some(s) = &a.sha256_base64 {
                push_attr(out, "sha256", s);
            }
            if a.is_delta_payload {
                push_attr(out, "IsDeltaPayload", "true");
            }
            if a.disable_payload_backoff {
                push_attr(out, "DisablePayloadBackoff", "true");
            }
            if let Some(n) = a.max_failure_count_per_url {
                push_attr(out, "MaxFailureCountPerUrl", &n.to_string());
            }
            out.push_str("></action>");
        }
        out.push_str("</actions></manifest>");
    }
    out.push_str("</updatecheck>");
}

#[cfg(test)]
#[path = "response_tests.rs"]
mod tests;
