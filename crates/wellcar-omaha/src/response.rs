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
mod tests {
    use super::*;

    use crate::corpus::read as corpus;

    fn sha(b64: &str) -> [u8; 32] {
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
            .try_into()
            .unwrap()
    }

    enum Want {
        Update {
            version: &'static str,
            url: &'static str,
            size: u64,
            sha256: &'static str,
            delta: bool,
            backoff_off: bool,
        },
        NoUpdate,
        Invalid,
        BadDigest,
        Malformed,
    }

    /// Every response in the corpus with the client-side reading INDEX.md expects.
    const RESPONSES: &[(&str, Want)] = &[
        (
            "03-response-goomaha-ue-update-ok.xml",
            Want::Update {
                version: "9999.0.0",
                url: "http://kam:8080/static/update.gz",
                size: 67546213,
                sha256: "0VAlQW3RE99SGtSB5R4m08antAHO8XDoBMKDyxQT/Mg=",
                delta: false,
                backoff_off: false,
            },
        ),
        (
            "05-response-goomaha-ue-noupdate-MALFORMED.xml",
            Want::Malformed,
        ),
        (
            "06-response-goomaha-protocoltest-sample-update.xml",
            Want::Update {
                version: "9999.0.0",
                url: "http://kam:8080/static/update.gz",
                size: 67546213,
                sha256: "0VAlQW3RE99SGtSB5R4m08antAHO8XDoBMKDyxQT/Mg=",
                delta: true,
                backoff_off: false,
            },
        ),
        (
            "07-response-goomaha-example-newresponse.xml",
            Want::Update {
                version: "9999.0.0",
                url: "http://localhost/updates/update.gz",
                size: 67546213,
                sha256: "0VAlQW3RE99SGtSB5R4m08antAHO8XDoBMKDyxQT/Mg=",
                delta: true,
                backoff_off: true,
            },
        ),
        (
            "08-response-goomaha-multi-manifest-floors.xml",
            Want::BadDigest,
        ),
        (
            "13-response-nebraska-updater-update-exists.xml",
            Want::BadDigest,
        ),
        ("14-response-nebraska-updater-noupdate.xml", Want::NoUpdate),
        ("15-response-nebraska-updater-error.xml", Want::Invalid),
        (
            "16-response-nebraska-updater-app-without-updatecheck.xml",
            Want::Invalid,
        ),
        ("18-response-ue-unittest-noupdate.xml", Want::NoUpdate),
        (
            "20-response-ue-unittest-missing-status-INVALID.xml",
            Want::Invalid,
        ),
        (
            "21-response-ue-unittest-missing-field-no-ping-no-required.xml",
            Want::BadDigest,
        ),
        (
            "22-response-ue-unittest-codebase-without-trailing-slash.xml",
            Want::BadDigest,
        ),
        (
            "26-response-google-v3-positive-multiapp.xml",
            Want::NoUpdate,
        ),
        (
            "28-response-flatcar-update-local-server-rendered.xml",
            Want::Update {
                version: "3732.0.0",
                url: "http://localhost:9091/flatcar_production_update.gz",
                size: 382137917,
                sha256: "stLG3U/o4Ar8TMHFwT/RWB0iNkaWOO6QtLrq6+AHBbA=",
                delta: false,
                backoff_off: true,
            },
        ),
        (
            "39-response-nebraska-recon-noupdate-with-ping-and-event-acks.xml",
            Want::NoUpdate,
        ),
        (
            "40-response-nebraska-recon-unknown-appid-error.xml",
            Want::Invalid,
        ),
    ];

    #[test]
    fn every_corpus_response_reads_as_indexed() {
        for (file, want) in RESPONSES {
            let parsed = Response::parse(&corpus(file));
            match want {
                Want::Malformed => {
                    assert!(parsed.is_err(), "{file} must not parse");
                    continue;
                }
                _ => assert!(parsed.is_ok(), "{file}: {parsed:?}"),
            }
            let decision = parsed.unwrap().update_decision();
            match want {
                Want::Update {
                    version,
                    url,
                    size,
                    sha256,
                    delta,
                    backoff_off,
                } => {
                    let Ok(UpdateDecision::Update(info)) = decision else {
                        panic!("{file}: {decision:?}")
                    };
                    assert_eq!(info.version, *version, "{file}");
                    assert_eq!(info.urls[0], *url, "{file}");
                    assert_eq!(info.size, *size, "{file}");
                    assert_eq!(info.sha256, sha(sha256), "{file}");
                    assert_eq!(info.is_delta, *delta, "{file}");
                    assert_eq!(info.disable_payload_backoff, *backoff_off, "{file}");
                }
                Want::NoUpdate => assert!(
                    matches!(decision, Ok(UpdateDecision::NoUpdate { .. })),
                    "{file}: {decision:?}"
                ),
                Want::Invalid => assert!(
                    matches!(
                        decision,
                        Err(InterpretError::BadStatus(_) | InterpretError::NoUpdateCheck)
                    ),
                    "{file}: {decision:?}"
                ),
                Want::BadDigest => assert!(
                    matches!(decision, Err(InterpretError::BadSha256(_))),
                    "{file}: {decision:?}"
                ),
                Want::Malformed => unreachable!(),
            }
        }
    }

    #[test]
    fn corpus_codebase_without_slash_gets_one() {
        let r = Response::parse(&corpus(
            "22-response-ue-unittest-codebase-without-trailing-slash.xml",
        ))
        .unwrap();
        let uc = r.apps[0].update_check.as_ref().unwrap();
        assert_eq!(uc.codebases, ["http://concat/url/slash/test"]);
        assert_eq!(uc.manifests[0].packages[0].size, 587);
    }

    #[test]
    fn written_response_parses_back_and_is_usable() {
        let resp = Response {
            server: "wellcar".into(),
            elapsed_seconds: 42,
            elapsed_days: Some(7000),
            apps: vec![AppResponse {
                app_id: "{E96281A6-d1af-4bde-9a0a-97b76e56dc57}".into(),
                status: "ok".into(),
                ping_ok: true,
                update_check: Some(UpdateCheckResponse {
                    status: "ok".into(),
                    poll_interval: Some(1800),
                    codebases: vec!["http://h/packages/a&b".into()],
                    manifests: vec![Manifest {
                        version: "1.2.3".into(),
                        packages: vec![Package {
                            name: "wellcar_update.bin".into(),
                            sha1_base64: Some("I6DGNAOrJRUxPbCuLw+AITfiVMo=".into()),
                            sha256_hex: None,
                            size: 10,
                            required: Some(true),
                        }],
                        actions: vec![Action {
                            event: "postinstall".into(),
                            sha256_base64: Some(
                                "stLG3U/o4Ar8TMHFwT/RWB0iNkaWOO6QtLrq6+AHBbA=".into(),
                            ),
                            disable_payload_backoff: true,
                            ..Action::default()
                        }],
                        ..Manifest::default()
                    }],
                }),
                event_acks: 2,
            }],
        };
        let xml = resp.to_xml();
        assert!(
            xml.contains("codebase=\"http://h/packages/a&amp;b\""),
            "{xml}"
        );
        let back = Response::parse(xml.as_bytes()).unwrap();
        assert_eq!(back, resp);
        let Ok(UpdateDecision::Update(info)) = back.update_decision() else {
            panic!()
        };
        assert_eq!(info.urls, ["http://h/packages/a&b/wellcar_update.bin"]);
        assert_eq!(info.poll_interval, Some(1800));
    }

    /// Finding "the agent can be crashed by its server": a response nested as deep as fits in
    /// the response size limit is refused at the depth limit on a small stack, and the 1.04 MB
    /// attack body is refused by size before it is parsed. At 5098ded the deep tree was freed
    /// recursively and the stack overflowed.
    #[test]
    fn deep_or_oversized_responses_are_refused_on_a_small_stack() {
        let depth = (MAX_RESPONSE_BYTES - "<response></response>".len()) / "<app></app>".len();
        let body = format!(
            "<response>{}{}</response>",
            "<app>".repeat(depth),
            "</app>".repeat(depth)
        );
        assert!(body.len() <= MAX_RESPONSE_BYTES);
        let err = crate::xml::tests::on_small_stack(move || Response::parse(body.as_bytes()))
            .unwrap_err();
        assert!(
            matches!(&err, ParseError::TooDeep { element, max: crate::MAX_DEPTH, .. } if element == "app"),
            "{err}"
        );
        assert!(err.to_string().contains("depth limit of 32"), "{err}");

        let attack = "<a>".repeat(149_000) + &"</a>".repeat(149_000);
        assert!(attack.len() > 1_000_000);
        let err = crate::xml::tests::on_small_stack(move || Response::parse(attack.as_bytes()))
            .unwrap_err();
        assert_eq!(
            err,
            ParseError::TooLarge {
                document: "response",
                bytes: 7 * 149_000,
                max: MAX_RESPONSE_BYTES
            }
        );
    }

    /// The largest response a Wellcar server writes (an answer to the largest request the
    /// limits allow: every app pinged, offered an update with a 2 KB URL, and every event acked;
    /// about 25 KB) is well inside the response limits.
    #[test]
    fn the_largest_server_response_is_within_the_limits() {
        let app = AppResponse {
            app_id: format!("{{{}}}", crate::WELLCAR_APP_ID),
            status: "ok".into(),
            ping_ok: true,
            update_check: Some(UpdateCheckResponse {
                status: "ok".into(),
                poll_interval: Some(1800),
                codebases: vec![format!("https://{}/", "u".repeat(2000))],
                manifests: vec![Manifest {
                    version: "4081.2.0+nightly-20251231-0000".into(),
                    packages: vec![Package {
                        name: "wellcar_update.bin".into(),
                        sha1_base64: Some("I6DGNAOrJRUxPbCuLw+AITfiVMo=".into()),
                        sha256_hex: Some("ab".repeat(32)),
                        size: 1 << 40,
                        required: Some(true),
                    }],
                    actions: vec![Action {
                        event: "postinstall".into(),
                        sha256_base64: Some("stLG3U/o4Ar8TMHFwT/RWB0iNkaWOO6QtLrq6+AHBbA=".into()),
                        disable_payload_backoff: true,
                        ..Action::default()
                    }],
                    ..Manifest::default()
                }],
            }),
            event_acks: crate::MAX_EVENTS_PER_APP,
        };
        let resp = Response {
            server: "wellcar".into(),
            elapsed_seconds: 86_399,
            elapsed_days: Some(7_000),
            apps: vec![app; crate::MAX_APPS_PER_REQUEST],
        };
        let xml = resp.to_xml();
        assert!(xml.len() < MAX_RESPONSE_BYTES / 4, "{} bytes", xml.len());
        assert_eq!(Response::parse(xml.as_bytes()).unwrap(), resp);
    }
}
