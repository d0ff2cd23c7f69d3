//! `POST /v1/update/`: the Omaha endpoint.
//!
//! Contract:
//! - A body over 64 KiB, or one that is not a well-formed Omaha 3.0 request, gets HTTP 400 with a
//!   plain-text reason (Nebraska answers an empty 200).
//! - Every `<app>` gets one `<app>` back, appid echoed as sent. Unknown app:
//!   `error-unknownApplication`; unknown track: `error-unknownApplicationOrGroup`; both with
//!   `<updatecheck status="error-internal">` if a check was asked for.
//! - Before anything else: the client IP's rate limit (429), the fleet token if one is set
//!   (401), then the body limit and parse (400, parsed off the async workers), the per-request
//!   app and event counts (400), and each machine id's rate limit (429); see
//!   [`crate::admission`]. A refused request changes nothing.
//! - Events are stored before the response is sent; each is acked. Only events verified
//!   against a grant ([`crate::event_trust`]: the instance was granted that update, for that
//!   version) move the instance's status or halt a group; the rest are stored marked
//!   unverified, counted (`wellcar_server_events_unverified_total{reason}`) and never acted
//!   on. An event never creates an instance.
//!   Flatcar's routine `3/2` with an empty `previousversion` is acked and ignored; events
//!   without a `machineid` are acked but cannot be attributed, so they are not stored.
//! - Safe mode halts a group once `safe_mode_failures` distinct instances granted the version
//!   failed (verified failure events, or timeouts) on it.
//! - An update check is answered `noupdate` from memory when the instance is current, the group
//!   is paused or halted, or the window is closed; only a possible grant touches the database.
//!   Every `updatecheck` carries `PollInterval`.
//! - An update check with a `targetversionprefix` is offered the matching package instead of the
//!   channel's next hop ([`crate::pinning`]); policy and limits apply unchanged.
//! - The recorded client IP and the download URLs' base come from [`crate::peer`]: the TCP peer
//!   unless it is a `--trusted-proxy`; `--public-url` or the listener's address, never `Host`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use wellcar_contract::OsVersion;
use wellcar_omaha::{
    event_result, event_type, status as omaha_status, Action, AppRequest, AppResponse, Manifest,
    Request, UpdateCheckResponse, MAX_REQUEST_BYTES,
};

use crate::model::{status, Channel, Group, InstanceFacts, Package};
use crate::server::ServerState;
use crate::store::{self, Sighting};
use crate::StoreError;

mod grant;
use grant::{decide, may_grant};

/// Flatcar's legacy hard-coded amd64 group UUIDs, which old clients send as `track`.
const LEGACY_TRACKS: [(&str, &str); 4] = [
    ("5b810680-e36a-4879-b98a-4f989e80b899", "alpha"),
    ("3fe10490-dd73-4b49-b72a-28ac19acfcdc", "beta"),
    ("9a2deb70-37be-4026-853f-bfdd6b347bbe", "stable"),
    ("72834a2b-ad86-4d6d-b498-e08a19ebe54e", "edge"),
];

fn bad_request(state: &ServerState, reason: String) -> Response {
    state.metrics.bad_request();
    tracing::debug!("rejected omaha request: {reason}");
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{reason}\n"),
    )
        .into_response()
}

/// The architecture as Nebraska derives it: `board`, then `os@arch`, else amd64.
pub fn arch_of(app: &AppRequest, req: &Request) -> &'static str {
    match app.board.as_str() {
        "amd64-usr" => return "amd64",
        "arm64-usr" => return "arm64",
        _ => {}
    }
    match req.os.as_ref().map(|o| o.arch.as_str()) {
        Some("arm" | "arm64" | "aarch64") => "arm64",
        _ => "amd64",
    }
}

/// The client's address: the peer, or `X-Forwarded-For` from a `--trusted-proxy` peer.
fn client_ip(state: &ServerState, headers: &HeaderMap, peer: SocketAddr) -> String {
    crate::peer::client_ip(&state.settings.trusted_proxies, headers, peer).to_string()
}

/// The base of download URLs: `--public-url` or the listener's own address, never `Host`.
fn public_base(state: &ServerState, _headers: &HeaderMap) -> String {
    let s = &state.settings;
    crate::peer::public_base(s.public_url.as_deref(), s.listen, s.tls.is_some())
}

/// A client's or package's version as an [`OsVersion`] (Flatcar's `3815.2.0`,
/// `4799.0.0+nightly-…`); `None` for anything else, which [`next_hop`] answers with "no update".
pub fn parse_version(v: &str) -> Option<OsVersion> {
    OsVersion::parse(v).ok()
}

/// Omaha's `daystart`: seconds since UTC midnight and days since 2007-01-01.
fn daystart(now_ms: i64) -> (u32, u32) {
    let secs = now_ms.div_euclid(1000);
    let since_midnight = secs.rem_euclid(86_400) as u32;
    let omaha_epoch = 1_167_609_600; // 2007-01-01T00:00:00Z
    let days = ((secs - omaha_epoch).max(0) / 86_400) as u32;
    (since_midnight, days)
}

/// `POST /v1/update/`.
pub async fn handle(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let ip = client_ip(&state, &headers, peer);
    let ip_addr = ip.parse().unwrap_or_else(|_| peer.ip());
    if let Err(refused) = crate::admission::admit_omaha(&state, ip_addr, &headers) {
        return crate::admission::refuse(&state, refused);
    }
    if body.len() > MAX_REQUEST_BYTES {
        return bad_request(
            &state,
            format!(
                "omaha request body is {} bytes, over the {MAX_REQUEST_BYTES}-byte limit",
                body.len()
            ),
        );
    }
    // Parsing is CPU work proportional to the body: off the async workers.
    // (`Bytes` clones share the buffer; the body is signed over below.)
    let parse_body = body.clone();
    let parse = move || {
        #[cfg(test)]
        crate::event_trust_tests::parse_gate::pass(&parse_body);
        Request::parse(&parse_body)
    };
    let request = match tokio::task::spawn_blocking(parse).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return bad_request(&state, format!("malformed omaha request: {e}")),
        Err(e) => {
            tracing::error!("omaha request parser failed: {e}");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server error: the omaha request parser failed\n",
            )
                .into_response();
        }
    };
    if let Err(refused) = crate::admission::admit_instances(&state, &request) {
        return crate::admission::refuse(&state, refused);
    }
    match answer(&state, &request, &ip, &headers).await {
        Ok(response) => {
            state.metrics.observe(started.elapsed());
            let signer = state.settings.response_signer.as_ref();
            crate::response_signing::omaha_reply(signer, &body, &headers, response.to_xml())
        }
        Err(e) => {
            tracing::error!("omaha request failed: {e}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("server error: {e}\n"),
            )
                .into_response()
        }
    }
}

/// Builds the response for a parsed request (events are committed before this returns).
pub async fn answer(
    state: &Arc<ServerState>,
    request: &Request,
    ip: &str,
    headers: &HeaderMap,
) -> Result<wellcar_omaha::Response, StoreError> {
    let now = state.now();
    let (elapsed_seconds, elapsed_days) = daystart(now);
    let mut response = wellcar_omaha::Response {
        server: "wellcar".into(),
        elapsed_seconds,
        elapsed_days: Some(elapsed_days),
        apps: Vec::with_capacity(request.apps.len()),
    };
    for app in &request.apps {
        response
            .apps
            .push(answer_app(state, request, app, ip, headers, now).await?);
    }
    Ok(response)
}

fn error_update_check(state: &ServerState) -> UpdateCheckResponse {
    UpdateCheckResponse {
        status: omaha_status::ERROR_INTERNAL.into(),
        poll_interval: Some(state.settings.poll_interval_secs),
        ..UpdateCheckResponse::default()
    }
}

async fn answer_app(
    state: &Arc<ServerState>,
    request: &Request,
    app: &AppRequest,
    ip: &str,
    headers: &HeaderMap,
    now: i64,
) -> Result<AppResponse, StoreError> {
    let mut config = state.config();
    let app_id = wellcar_omaha::normalize_app_id(&app.app_id);
    let mut out = AppResponse {
        app_id: app.app_id.clone(),
        status: omaha_status::OK.into(),
        ping_ok: false,
        update_check: None,
        event_acks: 0,
    };
    if !config.apps.contains_key(&app_id) {
        out.ping_ok = app.ping;
        out.status = omaha_status::ERROR_UNKNOWN_APPLICATION.into();
        out.update_check = app.update_check.as_ref().map(|_| error_update_check(state));
        return Ok(out);
    }
    let track = LEGACY_TRACKS
        .iter()
        .find(|(id, _)| wellcar_omaha::normalize_app_id(&app.track) == *id)
        .map_or(app.track.as_str(), |(_, name)| name);
    let mut group = config
        .groups
        .get(&(app_id.clone(), track.to_owned()))
        .cloned();
    let arch = arch_of(app, request);
    let sighting = Sighting {
        facts: InstanceFacts {
            app_id: app_id.clone(),
            machine_id: app.machine_id.clone(),
            alias: app.machine_alias.clone(),
            ip: ip.to_owned(),
            oem: app.oem.clone(),
            version: app.version.clone(),
            track: track.to_owned(),
            group_id: group.as_ref().map(|g| g.id.clone()),
            arch: arch.to_owned(),
        },
        at: now,
    };

    let meaningful: Vec<_> = app
        .events
        .iter()
        .filter(|e| !e.is_noop_flatcar_quirk())
        .cloned()
        .collect();
    out.event_acks = app.events.len();
    if !meaningful.is_empty() && !app.machine_id.is_empty() {
        let s = sighting.clone();
        let g = group.clone();
        let outcome = state
            .db
            .write_combined(move |conn| apply_events(conn, &s, g.as_ref(), &meaningful, now))
            .await?;
        state.metrics.add_events(outcome.stored as u64);
        for why in &outcome.unverified {
            state.metrics.unverified_event(*why);
        }
        if let (Some(g), true) = (&group, outcome.verified > 0) {
            // A finished or failed update may free a slot.
            state.clear_saturated(&g.id);
        }
        state.metrics.add_failures(outcome.failures as u64);
        if outcome.halted {
            state.refresh_config(true).await?;
            config = state.config();
            group = config
                .groups
                .get(&(app_id.clone(), track.to_owned()))
                .cloned();
        }
    }
    out.ping_ok = app.ping;

    if app.update_check.is_some() {
        let Some(group) = group else {
            out.status = omaha_status::ERROR_UNKNOWN_APPLICATION_OR_GROUP.into();
            out.update_check = Some(error_update_check(state));
            return Ok(out);
        };
        let channel = config
            .channels
            .get(&(app_id.clone(), group.channel.clone(), arch.to_owned()))
            .cloned();
        let pin = crate::pinning::requested_prefix(app);
        let hop = match (channel, pin) {
            (Some(c), None) => next_hop(&c, &app.version, &group),
            // A pinned check may read packages: only when a grant is possible at all.
            (Some(c), Some(prefix)) if may_grant(state, &group, &sighting, now) => {
                let machine = &app.machine_id;
                crate::pinning::pinned_hop(state, &c, machine, &app.version, prefix).await?
            }
            _ => None,
        };
        let offer = match hop {
            Some((package, floor)) => decide(state, &group, package, &sighting, pin, now)
                .await?
                .map(|(p, payload)| (p, payload, floor)),
            None => None,
        };
        state.metrics.check(offer.is_some());
        let mut uc = UpdateCheckResponse {
            status: omaha_status::NO_UPDATE.into(),
            poll_interval: Some(state.settings.poll_interval_secs),
            ..UpdateCheckResponse::default()
        };
        match offer {
            Some((package, payload, floor_reason)) => {
                uc.status = omaha_status::OK.into();
                uc.codebases = vec![codebase(state, headers, &package)];
                let mut m = match &payload {
                    crate::deltas::PayloadChoice::Full => manifest(&package),
                    crate::deltas::PayloadChoice::Delta(d) => {
                        crate::deltas::delta_manifest(manifest(&package), d)
                    }
                };
                m.is_floor = floor_reason.is_some();
                m.floor_reason = floor_reason;
                uc.manifests = vec![m];
                // A new grant wrote these facts already; a re-served one did not.
                state.note_sighting(sighting);
            }
            None => {
                if !app.machine_id.is_empty() {
                    state.note_sighting(sighting);
                }
            }
        }
        out.update_check = Some(uc);
    } else if app.ping && !app.machine_id.is_empty() {
        state.note_sighting(sighting);
    }
    Ok(out)
}

fn codebase(state: &ServerState, headers: &HeaderMap, p: &Package) -> String {
    if !p.url.is_empty() {
        return p.url.clone();
    }
    format!(
        "{}/packages/{}/{}/{}/",
        public_base(state, headers),
        p.app_id,
        p.arch,
        p.version
    )
}

/// The Omaha manifest offering package `p` in full.
pub(crate) fn manifest(p: &Package) -> Manifest {
    Manifest {
        version: p.version.clone(),
        packages: vec![wellcar_omaha::Package {
            name: p.filename.clone(),
            sha1_base64: Some(p.sha1_base64.clone()),
            sha256_hex: Some(p.sha256_hex.clone()),
            size: p.size as u64,
            required: Some(true),
        }],
        actions: vec![Action {
            event: "postinstall".into(),
            sha256_base64: Some(p.sha256_base64.clone()),
            disable_payload_backoff: true,
            ..Action::default()
        }],
        ..Manifest::default()
    }
}

/// The package an instance at `current` should move to next on `channel`: the lowest floor
/// above its version and below the target, else the target (with the floor's reason if it is
/// one). `None` when there is nothing newer (or an allowed downgrade is not applicable).
pub fn next_hop(
    channel: &Channel,
    current: &str,
    group: &Group,
) -> Option<(Package, Option<String>)> {
    let target = channel.package.clone()?;
    let target_v = parse_version(&target.version)?;
    let current_v = parse_version(current)?;
    if current_v == target_v {
        return None;
    }
    if current_v > target_v {
        return group.policy.allow_downgrade.then_some((target, None));
    }
    let floor = channel
        .floors
        .iter()
        .filter_map(|f| parse_version(&f.package.version).map(|v| (v, f)))
        .filter(|(v, _)| *v > current_v && *v < target_v)
        .min_by(|a, b| a.0.cmp(&b.0));
    Some(match floor {
        Some((_, f)) => (f.package.clone(), Some(f.reason.clone())),
        None => (target, None),
    })
}

/// What applying a request's events did.
#[derive(Debug, Default)]
pub struct EventOutcome {
    /// Events stored (verified or not).
    pub stored: usize,
    /// Events verified and applied.
    pub verified: usize,
    /// Why each unverified event was not acted on.
    pub unverified: Vec<crate::event_trust::Unverified>,
    /// Failed updates among the verified events.
    pub failures: usize,
    /// Whether a group was halted.
    pub halted: bool,
}

/// Stores events; those [`crate::event_trust::classify`] verifies move the instance's status,
/// and a verified failure halts a safe-mode group once `safe_mode_failures` distinct granted
/// instances failed on the version. Unverified events are only stored (marked so).
pub fn apply_events(
    conn: &mut dyn crate::db::Conn,
    s: &Sighting,
    request_group: Option<&Group>,
    events: &[wellcar_omaha::Event],
    now: i64,
) -> Result<EventOutcome, StoreError> {
    let mut outcome = EventOutcome::default();
    // Lock order group -> instance, the same as the grant transaction (no deadlocks on PostgreSQL).
    if let Some(g) = request_group {
        store::lock_group(conn, &g.id)?;
    }
    // Never created here: an event cannot make up an instance, let alone a grant.
    let instance = store::find_instance(conn, &s.facts.app_id, &s.facts.machine_id, true)?;
    let group_id = instance
        .as_ref()
        .and_then(|i| i.facts.group_id.clone())
        .or_else(|| request_group.map(|g| g.id.clone()));
    let mut current_status = instance
        .as_ref()
        .map_or_else(|| status::UNDEFINED.to_owned(), |i| i.status.clone());
    for ev in events {
        let trust = crate::event_trust::classify(
            instance.as_ref().map(|i| crate::event_trust::GrantState {
                instance: i,
                status: &current_status,
            }),
            request_group.map(|g| g.id.as_str()),
            &s.facts.version,
            ev,
        );
        store::insert_event(
            conn,
            &store::NewEvent {
                app_id: &s.facts.app_id,
                machine_id: &s.facts.machine_id,
                group_id: group_id.as_deref(),
                event: ev,
                version: &s.facts.version,
                verified: trust.is_ok(),
            },
            now,
        )?;
        outcome.stored += 1;
        let (Ok(()), Some(instance)) = (trust, &instance) else {
            if let Err(why) = trust {
                tracing::debug!(machine = %s.facts.machine_id, reason = why.as_str(), "event not verified; stored, not acted on");
                outcome.unverified.push(why);
            }
            continue;
        };
        outcome.verified += 1;
        let new_status = match (ev.event_type, ev.event_result) {
            (_, event_result::ERROR) => status::ERROR,
            (event_type::UPDATE_DOWNLOAD_STARTED, event_result::SUCCESS) => status::DOWNLOADING,
            (event_type::UPDATE_DOWNLOAD_FINISHED, event_result::SUCCESS) => status::DOWNLOADED,
            (event_type::UPDATE_COMPLETE, event_result::SUCCESS)
            | (event_type::INSTALLED_COMPLETION_PREVENTED, event_result::SUCCESS) => {
                status::INSTALLED
            }
            (event_type::UPDATE_COMPLETE, event_result::SUCCESS_REBOOT) => status::COMPLETE,
            _ => continue,
        };
        // A failed delta is no failed update: the grant stands (no safe-mode count) and the
        // next check gets the full payload.
        let delta_failed =
            new_status == status::ERROR && crate::deltas::note_failure(conn, instance, ev, now)?;
        let new_status = if delta_failed {
            status::GRANTED
        } else {
            new_status
        };
        let error_code = ev.error_code.map(|c| i64::from(c.code()));
        let version = (new_status == status::COMPLETE).then_some(s.facts.version.as_str());
        store::set_instance_status(
            conn,
            &s.facts.app_id,
            &s.facts.machine_id,
            new_status,
            version,
            error_code,
            now,
        )?;
        current_status = new_status.to_owned();
        if new_status == status::ERROR {
            outcome.failures += 1;
            outcome.halted |= record_failure(conn, s, instance, ev, now)?;
        }
    }
    Ok(outcome)
}

/// Logs a verified failure of `instance`'s grant and applies the safe-mode brake of its group.
/// Returns whether this halted the group.
fn record_failure(
    conn: &mut dyn crate::db::Conn,
    s: &Sighting,
    instance: &crate::model::Instance,
    ev: &wellcar_omaha::Event,
    now: i64,
) -> Result<bool, StoreError> {
    // Verified events come only from instances with a grant in a group.
    let target = instance.granted_version.clone().unwrap_or_default();
    let group_id = instance.facts.group_id.clone().unwrap_or_default();
    let error_code = ev.error_code.map(|c| i64::from(c.code()));
    let what = if ev.error_code.is_some_and(|c| c.is_rollback()) {
        format!(
            "instance {} rolled back from {target} (error code 44)",
            s.facts.machine_id
        )
    } else {
        format!(
            "instance {} failed updating to {target} (error code {}, event {}/{})",
            s.facts.machine_id,
            error_code.map_or_else(|| "none".to_owned(), |c| c.to_string()),
            ev.event_type,
            ev.event_result
        )
    };
    store::log_activity(
        conn,
        now,
        &store::NewActivity {
            actor: "system",
            kind: "instance-update-failed",
            app_id: Some(&s.facts.app_id),
            group_id: Some(&group_id),
            severity: "error",
            message: &what,
        },
    )?;
    let Some(g) = store::lock_group(conn, &group_id)? else {
        return Ok(false);
    };
    if !g.policy.safe_mode {
        return Ok(false);
    }
    let failed = store::count_failed_on_version(conn, &group_id, &target)?;
    if failed < g.policy.safe_mode_failures {
        return Ok(false);
    }
    store::halt_group(
        conn,
        &group_id,
        &s.facts.app_id,
        &format!(
            "safe mode: {what}; {failed} of the {} failures allowed on {target}",
            g.policy.safe_mode_failures
        ),
        now,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daystart_counts_from_omaha_epoch() {
        // 2007-01-02T00:00:10Z
        assert_eq!(daystart(1_167_696_010_000), (10, 1));
    }

    #[test]
    fn arch_follows_board_then_os() {
        let mut req = Request::parse(
            br#"<request protocol="3.0"><os arch="arm"/><app appid="a" board="amd64-usr"/></request>"#,
        )
        .unwrap();
        assert_eq!(arch_of(&req.apps[0], &req), "amd64");
        req.apps[0].board.clear();
        assert_eq!(arch_of(&req.apps[0], &req), "arm64");
        req.os = None;
        assert_eq!(arch_of(&req.apps[0], &req), "amd64");
    }

    #[test]
    fn versions_parse_as_os_versions_only() {
        assert!(parse_version("4799.0.0+nightly-20260821-2100").is_some());
        for other in ["v1.2.3", "1.2", "1.0.0-rc1", " 1.2.3", "ForcedUpdate", ""] {
            assert!(parse_version(other).is_none(), "{other:?}");
        }
        assert!(parse_version("3815.2.0") > parse_version("3760.2.0"));
        assert!(parse_version("3815.2.10") > parse_version("3815.2.9"));
    }
}
