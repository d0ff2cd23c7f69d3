//! Omaha requests: what a client POSTs to `/v1/update/`.

use crate::codes::{event_result, event_type, ErrorCode};
use crate::limits::{MAX_APPS_PER_REQUEST, MAX_EVENTS_PER_APP};
use crate::xml::{parse_document, push_attr, Element, ParseError};
use crate::MAX_REQUEST_BYTES;

/// A parsed `<request>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// `version` attribute of `<request>` (the updater, e.g. `update_engine-0.4.10`).
    pub updater_version: String,
    /// `installsource` (`scheduler`, `ondemandupdate`, …).
    pub install_source: String,
    /// The `<os>` element, if sent.
    pub os: Option<OsInfo>,
    /// One entry per `<app>`, in document order.
    pub apps: Vec<AppRequest>,
}

/// The `<os>` element.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OsInfo {
    /// `platform` (`CoreOS` for Flatcar).
    pub platform: String,
    /// `version`.
    pub version: String,
    /// `sp` (Flatcar: `<version>_<arch>`).
    pub sp: String,
    /// `arch` (`x64`, `arm`; Nebraska's second source for the architecture).
    pub arch: String,
}

/// One `<app>` of a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppRequest {
    /// `appid` exactly as sent (braces and case kept, so the response can echo it).
    pub app_id: String,
    /// Installed version.
    pub version: String,
    /// `track`: the group name (Flatcar `GROUP`).
    pub track: String,
    /// `board` (`amd64-usr`, `arm64-usr`).
    pub board: String,
    /// `machineid`.
    pub machine_id: String,
    /// `machinealias`.
    pub machine_alias: String,
    /// `bootid`.
    pub boot_id: String,
    /// `oem`.
    pub oem: String,
    /// `oemversion`.
    pub oem_version: String,
    /// `alephversion`: the first version this machine ever ran.
    pub aleph_version: String,
    /// `multi_manifest_ok="true"` (Nebraska syncers).
    pub multi_manifest_ok: bool,
    /// Whether a `<ping>` was sent.
    pub ping: bool,
    /// The `<updatecheck>`, if sent.
    pub update_check: Option<UpdateCheckRequest>,
    /// The `<event>`s, in order.
    pub events: Vec<Event>,
}

/// The `<updatecheck>` of a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateCheckRequest {
    /// `targetversionprefix`, if non-empty.
    pub target_version_prefix: Option<String>,
}

/// One `<event>` of a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    /// `eventtype`.
    pub event_type: u32,
    /// `eventresult`.
    pub event_result: u32,
    /// `errorcode`, if sent.
    pub error_code: Option<ErrorCode>,
    /// `previousversion`, if sent (may be empty).
    pub previous_version: Option<String>,
}

impl Event {
    /// Flatcar's routine-check quirk: `3/2` with an empty or `0.0.0.0` `previousversion` reports
    /// nothing and must be treated as a no-op.
    pub fn is_noop_flatcar_quirk(&self) -> bool {
        self.event_type == event_type::UPDATE_COMPLETE
            && self.event_result == event_result::SUCCESS_REBOOT
            && matches!(
                self.previous_version.as_deref(),
                None | Some("") | Some("0.0.0.0")
            )
    }

    /// Whether the event reports a failure (`eventresult="0"`).
    pub fn is_error(&self) -> bool {
        self.event_result == event_result::ERROR
    }
}

fn attr(el: &Element, name: &str) -> String {
    el.attr(name).unwrap_or_default().to_owned()
}

fn parse_u32(el: &Element, name: &'static str) -> Result<u32, ParseError> {
    let raw = el.attr(name).ok_or(ParseError::MissingAttribute {
        element: "event",
        attribute: name,
    })?;
    raw.trim()
        .parse()
        .map_err(|_| ParseError::InvalidAttribute {
            element: "event",
            attribute: name,
            value: raw.to_owned(),
        })
}

impl Request {
    /// Parses a request body. See the crate docs for what is accepted, and [`crate::limits`] for
    /// the bounds: besides the document bounds, at most [`MAX_APPS_PER_REQUEST`] apps and
    /// [`MAX_EVENTS_PER_APP`] events per app, checked before any app is read.
    pub fn parse(body: &[u8]) -> Result<Self, ParseError> {
        let mut root = parse_document(body, "request", MAX_REQUEST_BYTES)?;
        if root.name != "request" {
            return Err(ParseError::WrongRoot {
                found: root.take_name(),
                expected: "request",
            });
        }
        let protocol = root.attr("protocol").unwrap_or_default();
        if protocol.trim() != "3.0" {
            return Err(ParseError::UnsupportedProtocol {
                found: protocol.to_owned(),
            });
        }
        let os = root.child("os").map(|os| OsInfo {
            platform: attr(os, "platform"),
            version: attr(os, "version"),
            sp: attr(os, "sp"),
            arch: attr(os, "arch"),
        });
        let count = root.children_named("app").count();
        if count > MAX_APPS_PER_REQUEST {
            return Err(ParseError::TooManyApps {
                count,
                max: MAX_APPS_PER_REQUEST,
            });
        }
        for (index, app) in root.children_named("app").enumerate() {
            let count = app.children_named("event").count();
            if count > MAX_EVENTS_PER_APP {
                return Err(ParseError::TooManyEvents {
                    app: index + 1,
                    count,
                    max: MAX_EVENTS_PER_APP,
                });
            }
        }
        let mut apps = Vec::with_capacity(count);
        for app in root.children_named("app") {
            let app_id = app.attr("appid").ok_or(ParseError::MissingAttribute {
                element: "app",
                attribute: "appid",
            })?;
            let mut events = Vec::new();
            for ev in app.children_named("event") {
                let error_code =
                    match ev.attr("errorcode") {
                        None => None,
                        Some(raw) => Some(ErrorCode::parse(raw).ok_or_else(|| {
                            ParseError::InvalidAttribute {
                                element: "event",
                                attribute: "errorcode",
                                value: raw.to_owned(),
                            }
                        })?),
                    };
                events.push(Event {
                    event_type: parse_u32(ev, "eventtype")?,
                    event_result: parse_u32(ev, "eventresult")?,
                    error_code,
                    previous_version: ev.attr("previousversion").map(str::to_owned),
                });
            }
            apps.push(AppRequest {
                app_id: app_id.to_owned(),
                version: attr(app, "version"),
                track: attr(app, "track"),
                board: attr(app, "board"),
                machine_id: attr(app, "machineid"),
                machine_alias: attr(app, "machinealias"),
                boot_id: attr(app, "bootid"),
                oem: attr(app, "oem"),
                oem_version: attr(app, "oemversion"),
                aleph_version: attr(app, "alephversion"),
                multi_manifest_ok: app.attr("multi_manifest_ok") == Some("true"),
                ping: app.child("ping").is_some(),
                update_check: app.child("updatecheck").map(|uc| UpdateCheckRequest {
                    target_version_prefix: uc
                        .attr("targetversionprefix")
                        .filter(|p| !p.is_empty())
                        .map(str::to_owned),
                }),
                events,
            });
        }
        Ok(Request {
            updater_version: attr(&root, "version"),
            install_source: attr(&root, "installsource"),
            os,
            apps,
        })
    }

    /// Writes the request in `update_engine`'s shape (used by the Wellcar agent and tests).
    pub fn to_xml(&self) -> String {
        let mut out = String::with_capacity(1024);
        out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<request protocol=\"3.0\"");
        push_attr(&mut out, "version", &self.updater_version);
        push_attr(&mut out, "updaterversion", &self.updater_version);
        push_attr(&mut out, "installsource", &self.install_source);
        push_attr(&mut out, "ismachine", "1");
        out.push_str(">\n");
        if let Some(os) = &self.os {
            out.push_str("    <os");
            push_attr(&mut out, "version", &os.version);
            push_attr(&mut out, "platform", &os.platform);
            push_attr(&mut out, "sp", &os.sp);
            if !os.arch.is_empty() {
                push_attr(&mut out, "arch", &os.arch);
            }
            out.push_str("></os>\n");
        }
        for app in &self.apps {
            out.push_str("    <app");
            push_attr(&mut out, "appid", &app.app_id);
            push_attr(&mut out, "version", &app.version);
            push_attr(&mut out, "track", &app.track);
            push_attr(&mut out, "bootid", &app.boot_id);
            push_attr(&mut out, "oem", &app.oem);
            push_attr(&mut out, "oemversion", &app.oem_version);
            push_attr(&mut out, "alephversion", &app.aleph_version);
            push_attr(&mut out, "machineid", &app.machine_id);
            push_attr(&mut out, "machinealias", &app.machine_alias);
            push_attr(&mut out, "board", &app.board);
            if app.multi_manifest_ok {
                push_attr(&mut out, "multi_manifest_ok", "true");
            }
            out.push_str(">\n");
            if app.ping {
                out.push_str("        <ping active=\"1\"></ping>\n");
            }
            if let Some(uc) = &app.update_check {
                out.push_str("        <updatecheck");
                if let Some(p) = &uc.target_version_prefix {
                    push_attr(&mut out, "targetversionprefix", p);
                }
                out.push_str("></updatecheck>\n");
            }
            for ev in &app.events {
                out.push_str("        <event");
                push_attr(&mut out, "eventtype", &ev.event_type.to_string());
                push_attr(&mut out, "eventresult", &ev.event_result.to_string());
                if let Some(code) = ev.error_code {
                    push_attr(&mut out, "errorcode", &code.raw.to_string());
                }
                if let Some(prev) = &ev.previous_version {
                    push_attr(&mut out, "previousversion", prev);
                }
                out.push_str("></event>\n");
            }
            out.push_str("    </app>\n");
        }
        out.push_str("</request>\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FLATCAR_APP_ID;

    use crate::corpus::read as corpus;

    /// Fills the `%s` placeholders of Nebraska's templated requests (appid, track, machineid).
    fn templated(name: &str) -> Vec<u8> {
        let text = String::from_utf8(corpus(name)).unwrap();
        let mut parts = text.split("%s");
        let mut out = parts.next().unwrap().to_owned();
        for (value, rest) in [FLATCAR_APP_ID, "stable", "machine-1"].iter().zip(parts) {
            out.push_str(value);
            out.push_str(rest);
        }
        out.into_bytes()
    }

    struct Expect {
        file: &'static str,
        apps: usize,
        ping: bool,
        update_check: bool,
        events: &'static [(u32, u32)],
    }

    /// Every request in the corpus, with what it must parse into (from the corpus INDEX.md).
    const REQUESTS: &[Expect] = &[
        Expect {
            file: "01-request-goomaha-omaha-client-multiapp.xml",
            apps: 2,
            ping: true,
            update_check: true,
            events: &[],
        },
        Expect {
            file: "04-request-goomaha-ue-event-only-3-1.xml",
            apps: 1,
            ping: false,
            update_check: false,
            events: &[(3, 1)],
        },
        Expect {
            file: "10-request-nebraska-apitest-check-with-event-TEMPLATED.xml",
            apps: 1,
            ping: true,
            update_check: true,
            events: &[(3, 1)],
        },
        Expect {
            file: "11-request-nebraska-apisecret-ping-only-TEMPLATED.xml",
            apps: 1,
            ping: true,
            update_check: false,
            events: &[],
        },
        Expect {
            file: "27-request-google-v3-event-report.xml",
            apps: 1,
            ping: false,
            update_check: false,
            events: &[(9, 1), (5, 1), (2, 4)],
        },
        Expect {
            file: "30-request-ue-recon-b-routine-check.xml",
            apps: 1,
            ping: true,
            update_check: true,
            events: &[(3, 2)],
        },
        Expect {
            file: "31-request-ue-recon-c-event-download-started-13-1.xml",
            apps: 1,
            ping: false,
            update_check: false,
            events: &[(13, 1)],
        },
        Expect {
            file: "32-request-ue-recon-d-event-download-finished-14-1.xml",
            apps: 1,
            ping: false,
            update_check: false,
            events: &[(14, 1)],
        },
        Expect {
            file: "34-request-ue-recon-ping-only-need-reboot.xml",
            apps: 1,
            ping: true,
            update_check: false,
            events: &[],
        },
        Expect {
            file: "35-request-ue-recon-first-check-after-update-3-2.xml",
            apps: 1,
            ping: true,
            update_check: true,
            events: &[(3, 2)],
        },
        Expect {
            file: "37-request-ue-recon-event-update-failed-3-0-hash-mismatch-custom-server.xml",
            apps: 1,
            ping: false,
            update_check: false,
            events: &[(3, 0)],
        },
        Expect {
            file: "38-request-nebraska-recon-syncer-arm64-multi-manifest.xml",
            apps: 1,
            ping: false,
            update_check: true,
            events: &[],
        },
    ];

    #[test]
    fn every_corpus_request_parses_as_indexed() {
        for e in REQUESTS {
            let body = if e.file.contains("TEMPLATED") {
                templated(e.file)
            } else {
                corpus(e.file)
            };
            let req = Request::parse(&body).unwrap_or_else(|err| panic!("{}: {err}", e.file));
            assert_eq!(req.apps.len(), e.apps, "{}", e.file);
            for app in &req.apps {
                assert_eq!(app.ping, e.ping, "{} ping", e.file);
                assert_eq!(
                    app.update_check.is_some(),
                    e.update_check,
                    "{} updatecheck",
                    e.file
                );
                let events: Vec<_> = app
                    .events
                    .iter()
                    .map(|ev| (ev.event_type, ev.event_result))
                    .collect();
                assert_eq!(events, e.events, "{} events", e.file);
            }
        }
    }

    #[test]
    fn flatcar_fields_are_read() {
        let req = Request::parse(&corpus(
            "35-request-ue-recon-first-check-after-update-3-2.xml",
        ))
        .unwrap();
        assert_eq!(req.updater_version, "update_engine-0.4.10");
        let app = &req.apps[0];
        assert_eq!(app.app_id, "{e96281a6-d1af-4bde-9a0a-97b76e56dc57}");
        assert_eq!(app.version, "3815.2.0");
        assert_eq!(app.track, "stable");
        assert_eq!(app.board, "amd64-usr");
        assert_eq!(app.machine_id, "0f6a2d3b9c8e4f1aa7b6c5d4e3f2a1b0");
        assert_eq!(app.oem, "qemu");
        assert_eq!(app.aleph_version, "3760.2.0");
        assert_eq!(app.events[0].previous_version.as_deref(), Some("3760.2.0"));
        assert!(!app.events[0].is_noop_flatcar_quirk());

        let routine = Request::parse(&corpus("30-request-ue-recon-b-routine-check.xml")).unwrap();
        assert!(routine.apps[0].events[0].is_noop_flatcar_quirk());

        let failed = Request::parse(&corpus(
            "37-request-ue-recon-event-update-failed-3-0-hash-mismatch-custom-server.xml",
        ))
        .unwrap();
        let ev = &failed.apps[0].events[0];
        assert!(ev.is_error());
        assert_eq!(ev.error_code.map(|c| c.code()), Some(10));

        let syncer = Request::parse(&corpus(
            "38-request-nebraska-recon-syncer-arm64-multi-manifest.xml",
        ))
        .unwrap();
        assert_eq!(syncer.os.as_ref().map(|o| o.arch.as_str()), Some("arm"));
        assert!(syncer.apps[0].multi_manifest_ok);
    }

    #[test]
    fn bad_requests_are_rejected_with_reason() {
        let v2 = Request::parse(b"<request protocol=\"2.0\"><app appid=\"x\"/></request>");
        assert_eq!(
            v2,
            Err(ParseError::UnsupportedProtocol {
                found: "2.0".into()
            })
        );
        let resp = Request::parse(&corpus("18-response-ue-unittest-noupdate.xml"));
        assert!(matches!(resp, Err(ParseError::WrongRoot { .. })));
        let no_appid = Request::parse(b"<request protocol=\"3.0\"><app/></request>");
        assert_eq!(
            no_appid,
            Err(ParseError::MissingAttribute {
                element: "app",
                attribute: "appid"
            })
        );
        let bad_event = Request::parse(
            b"<request protocol=\"3.0\"><app appid=\"a\"><event eventtype=\"x\" eventresult=\"1\"/></app></request>",
        );
        assert!(matches!(
            bad_event,
            Err(ParseError::InvalidAttribute {
                attribute: "eventtype",
                ..
            })
        ));
        let err = Request::parse(b"<request protocol=\"3.0\"><app appid=\"a\">").unwrap_err();
        assert!(err.to_string().contains("unclosed element <app>"), "{err}");
    }

    #[test]
    fn written_request_parses_back() {
        let req = Request::parse(&corpus(
            "35-request-ue-recon-first-check-after-update-3-2.xml",
        ))
        .unwrap();
        let again = Request::parse(req.to_xml().as_bytes()).unwrap();
        assert_eq!(again, req);
    }

    /// `n` apps of the Wellcar app, each with `events` download-started events.
    fn many_apps(n: usize, events: usize) -> String {
        let event = "<event eventtype=\"13\" eventresult=\"1\"/>".repeat(events);
        let app = format!(
            "<app appid=\"{}\" machineid=\"m\" track=\"stable\">{event}</app>",
            crate::WELLCAR_APP_ID
        );
        format!("<request protocol=\"3.0\">{}</request>", app.repeat(n))
    }

    /// Finding "a request with 500 apps and events wrote 500 rows": such a request is refused
    /// before any app is read, naming the limit. At 5098ded it parsed into 500 apps.
    #[test]
    fn apps_past_the_per_request_limit_are_refused() {
        let body = many_apps(500, 1);
        assert!(body.len() <= MAX_REQUEST_BYTES, "{} bytes", body.len());
        let err = Request::parse(body.as_bytes()).unwrap_err();
        assert_eq!(
            err,
            ParseError::TooManyApps {
                count: 500,
                max: MAX_APPS_PER_REQUEST
            }
        );
        assert_eq!(
            err.to_string(),
            "request has 500 <app> elements, over the limit of 8 per request"
        );
        let at_limit =
            Request::parse(many_apps(MAX_APPS_PER_REQUEST, MAX_EVENTS_PER_APP).as_bytes())
                .expect("the largest allowed request parses");
        assert_eq!(at_limit.apps.len(), MAX_APPS_PER_REQUEST);
        assert!(at_limit
            .apps
            .iter()
            .all(|a| a.events.len() == MAX_EVENTS_PER_APP));
    }

    /// Finding "a request with 500 apps and events wrote 500 rows": one app may not carry more
    /// than the per-app event limit; the error names the app's position and the limit.
    #[test]
    fn events_past_the_per_app_limit_are_refused() {
        let second = many_apps(1, MAX_EVENTS_PER_APP + 1);
        let body = many_apps(1, 1).replace(
            "</request>",
            second.trim_start_matches("<request protocol=\"3.0\">"),
        );
        let err = Request::parse(body.as_bytes()).unwrap_err();
        assert_eq!(
            err,
            ParseError::TooManyEvents {
                app: 2,
                count: MAX_EVENTS_PER_APP + 1,
                max: MAX_EVENTS_PER_APP
            }
        );
        assert_eq!(
            err.to_string(),
            "<app> number 2 of the request has 17 <event> elements, over the limit of 16 per app"
        );
    }

    /// Finding "CPU amplification": a request is bounded in size by the parser itself, not only
    /// by the server's body check, and a request element with thousands of attributes is refused
    /// at the per-element limit.
    #[test]
    fn oversized_requests_are_refused_by_the_parser() {
        let big = format!(
            "<request protocol=\"3.0\">{}</request>",
            " ".repeat(MAX_REQUEST_BYTES)
        );
        assert!(matches!(
            Request::parse(big.as_bytes()),
            Err(ParseError::TooLarge {
                document: "request",
                max: MAX_REQUEST_BYTES,
                ..
            })
        ));
        // As many distinct short attributes as fit in one request body.
        let mut attrs = String::new();
        let mut i = 0u32;
        while attrs.len() < MAX_REQUEST_BYTES - 64 {
            attrs.push_str(&format!(" {}=''", char::from_u32(0x4e00 + i).unwrap()));
            i += 1;
        }
        let body = format!("<request protocol=\"3.0\"{attrs}/>");
        assert!(
            body.len() <= MAX_REQUEST_BYTES && i > 9_000,
            "{} attributes",
            i
        );
        let err = Request::parse(body.as_bytes()).unwrap_err();
        assert!(
            matches!(&err, ParseError::TooManyAttributes { element, max: 64, .. } if element == "request"),
            "{err}"
        );
    }
}
