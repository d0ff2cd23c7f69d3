//! HTTP tests of the dashboard against a real server (loopback, SQLite): login and logout,
//! cookie flags, CSRF and origin checks, expired sessions, scopes, escaping, search.

use super::test_fleet::Fleet;
use super::{COOKIE, IDLE_TIMEOUT_MS};
use crate::store;

/// One answer: status, `Set-Cookie`, `Location`, body.
#[derive(Debug)]
struct Answer {
    status: u16,
    set_cookie: Option<String>,
    location: Option<String>,
    body: String,
}

async fn request(
    url: String,
    cookie: Option<String>,
    form: Option<Vec<(String, String)>>,
    origin: Option<String>,
) -> Answer {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .max_redirects(0)
            .http_status_as_error(false)
            .build()
            .into();
        let result = match form {
            None => {
                let mut r = agent.get(&url);
                if let Some(c) = &cookie {
                    r = r.header("Cookie", c);
                }
                r.call()
            }
            Some(fields) => {
                let mut r = agent.post(&url);
                if let Some(c) = &cookie {
                    r = r.header("Cookie", c);
                }
                if let Some(o) = &origin {
                    r = r.header("Origin", o);
                }
                let pairs: Vec<(&str, &str)> = fields
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                r.send_form(pairs)
            }
        };
        let mut response = result.unwrap();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let set_cookie = header("set-cookie");
        let location = header("location");
        Answer {
            status: response.status().as_u16(),
            set_cookie,
            location,
            body: response.body_mut().read_to_string().unwrap(),
        }
    })
    .await
    .unwrap()
}

struct Browser<'a> {
    fleet: &'a Fleet,
    cookie: Option<String>,
}

impl<'a> Browser<'a> {
    fn new(fleet: &'a Fleet) -> Self {
        Browser {
            fleet,
            cookie: None,
        }
    }

    async fn get(&self, path: &str) -> Answer {
        request(
            format!("{}{path}", self.fleet.url()),
            self.cookie.clone(),
            None,
            None,
        )
        .await
    }

    async fn post(&self, path: &str, fields: &[(&str, &str)]) -> Answer {
        let fields = fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        request(
            format!("{}{path}", self.fleet.url()),
            self.cookie.clone(),
            Some(fields),
            None,
        )
        .await
    }

    async fn post_from(&self, origin: &str, path: &str, fields: &[(&str, &str)]) -> Answer {
        let fields = fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        request(
            format!("{}{path}", self.fleet.url()),
            self.cookie.clone(),
            Some(fields),
            Some(origin.to_owned()),
        )
        .await
    }

    async fn login(&mut self, token: &str) -> Answer {
        let a = self.post("/ui/login", &[("token", token)]).await;
        if let Some(c) = &a.set_cookie {
            self.cookie = c.split(';').next().map(str::to_owned);
        }
        a
    }

    async fn csrf(&self) -> String {
        let page = self.get("/ui/").await;
        assert_eq!(page.status, 200, "{}", page.body);
        let start = page
            .body
            .find("name=\"csrf-token\" content=\"")
            .expect("csrf meta")
            + 27;
        page.body[start..start + 64].to_owned()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn login_sets_a_strict_http_only_cookie_and_logout_ends_the_session() {
    let fleet = Fleet::start().await;
    let mut b = Browser::new(&fleet);
    let anonymous = b.get("/ui/").await;
    assert_eq!(anonymous.status, 303);
    assert_eq!(anonymous.location.as_deref(), Some("/ui/login"));

    let login = b.login(&fleet.admin).await;
    assert_eq!(login.status, 303, "{}", login.body);
    let cookie = login.set_cookie.expect("a session cookie");
    assert!(cookie.starts_with(&format!("{COOKIE}=")), "{cookie}");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age="] {
        assert!(cookie.contains(flag), "{flag} missing from {cookie}");
    }
    assert!(
        !cookie.contains(&fleet.admin),
        "the token itself must not be in the cookie"
    );

    let overview = b.get("/ui/").await;
    assert_eq!(overview.status, 200);
    for group in ["stable", "beta", "alpha"] {
        assert!(
            overview.body.contains(&format!("id=\"group-{group}\"")),
            "{group} card missing"
        );
    }
    assert!(
        overview
            .body
            .contains("<strong id=\"fleet-total\">22</strong>"),
        "fleet total"
    );
    assert!(
        overview
            .body
            .contains("Halted: safe mode: instance stable-003 failed"),
        "the halt and its reason"
    );

    let csrf = b.csrf().await;
    let out = b.post("/ui/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, 303);
    assert!(out.set_cookie.unwrap().contains("Max-Age=0"));
    let after = b.get("/ui/").await;
    assert_eq!(after.status, 401);
    assert!(after.body.contains("not known"), "{}", after.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_token_gets_a_clear_page_and_no_session() {
    let fleet = Fleet::start().await;
    let mut b = Browser::new(&fleet);
    let a = b.login("wct_not-a-token").await;
    assert_eq!(a.status, 401);
    assert!(a.set_cookie.is_none());
    assert!(a.body.contains("unknown, expired or revoked"), "{}", a.body);
    let forged_cookie = Browser {
        fleet: &fleet,
        cookie: Some(format!("{COOKIE}=0123456789abcdef")),
    };
    let page = forged_cookie.get("/ui/instances").await;
    assert_eq!(page.status, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_csrf_token_or_foreign_origin_changes_nothing() {
    let fleet = Fleet::start().await;
    let mut b = Browser::new(&fleet);
    b.login(&fleet.admin).await;
    let csrf = b.csrf().await;
    let forged = b.post("/ui/groups/beta/pause", &[("csrf", "forged")]).await;
    assert_eq!(forged.status, 403);
    assert!(forged.body.contains("security token"), "{}", forged.body);
    let missing = b.post("/ui/groups/beta/pause", &[]).await;
    assert_eq!(missing.status, 403);
    let foreign = b
        .post_from(
            "https://evil.example",
            "/ui/groups/beta/pause",
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(foreign.status, 403);
    assert!(foreign.body.contains("another site"), "{}", foreign.body);
    assert!(
        fleet.updates_enabled("beta").await,
        "beta must still be enabled"
    );
    let ok = b.post("/ui/groups/beta/pause", &[("csrf", &csrf)]).await;
    assert_eq!(ok.status, 303, "{}", ok.body);
    assert!(!fleet.updates_enabled("beta").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_session_changes_nothing() {
    let fleet = Fleet::start().await;
    let mut b = Browser::new(&fleet);
    b.login(&fleet.admin).await;
    let csrf = b.csrf().await;
    fleet.advance(IDLE_TIMEOUT_MS);
    let a = b.post("/ui/groups/beta/pause", &[("csrf", &csrf)]).await;
    assert_eq!(a.status, 401);
    assert!(a.body.contains("session has expired"), "{}", a.body);
    assert!(a.set_cookie.unwrap().contains("Max-Age=0"));
    assert!(fleet.updates_enabled("beta").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_token_ends_its_session() {
    let fleet = Fleet::start().await;
    let mut b = Browser::new(&fleet);
    b.login(&fleet.reader).await;
    assert_eq!(b.get("/ui/activity").await.status, 200);
    let now = fleet.now();
    fleet
        .server
        .state
        .db
        .write(move |c| store::revoke_token(c, "viewer", "test", now))
        .await
        .unwrap();
    let a = b.get("/ui/activity").await;
    assert_eq!(a.status, 401);
    assert!(a.body.contains("revoked"), "{}", a.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_token_gets_no_mutating_buttons_and_403_when_it_posts() {
    let fleet = Fleet::start().await;
    let mut b = Browser::new(&fleet);
    b.login(&fleet.reader).await;
    let csrf = b.csrf().await;
    for path in [
        "/ui/",
        "/ui/groups/beta",
        "/ui/channels",
        "/ui/instances",
        "/ui/activity",
        "/ui/adoption",
        "/ui/instances/beta-000",
    ] {
        let page = b.get(path).await;
        assert_eq!(page.status, 200, "{path}: {}", page.body);
        let forms = page.body.matches("method=\"post\"").count();
        assert_eq!(forms, 1, "{path} must have only the logout form");
        for button in [
            "pause-group",
            "resume-group",
            "publish-review",
            "release-lock",
        ] {
            assert!(!page.body.contains(button), "{path} shows {button}");
        }
    }
    let pause = b.post("/ui/groups/beta/pause", &[("csrf", &csrf)]).await;
    assert_eq!(pause.status, 403);
    assert!(pause.body.contains("scope read"), "{}", pause.body);
    let publish = b
        .post(
            "/ui/channels/publish",
            &[
                ("csrf", &csrf),
                ("channel", "beta"),
                ("arch", "amd64"),
                ("version", "1.2.0"),
            ],
        )
        .await;
    assert_eq!(publish.status, 403);
    assert_eq!(b.get("/ui/groups/beta/pause").await.status, 403);
    let release = b
        .post(
            "/ui/locks/release",
            &[("csrf", &csrf), ("group", "default"), ("id", "stable-001")],
        )
        .await;
    assert_eq!(release.status, 403);
    assert_eq!(fleet.lock_holders("default").await, ["stable-001"]);
    assert!(fleet.updates_enabled("beta").await);
    let channels = b.get("/ui/channels").await.body;
    assert!(
        !channels.contains("now points at 1.2.0"),
        "nothing published"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publish_token_publishes_after_confirming_but_cannot_pause() {
    let fleet = Fleet::start().await;
    let mut b = Browser::new(&fleet);
    b.login(&fleet.publisher).await;
    let csrf = b.csrf().await;
    let group = b.get("/ui/groups/beta").await.body;
    assert!(!group.contains("pause-group"));
    let confirm = b
        .get("/ui/channels/publish?channel=beta&arch=amd64&version=1.2.0")
        .await;
    assert_eq!(confirm.status, 200, "{}", confirm.body);
    assert!(
        confirm.body.contains("will point at 1.2.0 (now: 1.1.0)"),
        "{}",
        confirm.body
    );
    let done = b
        .post(
            "/ui/channels/publish",
            &[
                ("csrf", &csrf),
                ("channel", "beta"),
                ("arch", "amd64"),
                ("version", "1.2.0"),
            ],
        )
        .await;
    assert_eq!(done.status, 303, "{}", done.body);
    let channels = b.get(done.location.as_deref().unwrap()).await.body;
    assert!(
        channels.contains("channel beta (amd64) now points at 1.2.0"),
        "history: {channels}"
    );
    assert_eq!(
        b.post("/ui/groups/beta/pause", &[("csrf", &csrf)])
            .await
            .status,
        403
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn html_in_aliases_is_escaped_everywhere() {
    let fleet = Fleet::start().await;
    let alias = "<script>alert('x')</script><b>bold</b>";
    fleet.add_instance("evil-1", alias, "beta").await;
    let mut b = Browser::new(&fleet);
    b.login(&fleet.admin).await;
    for path in ["/ui/instances?q=evil", "/ui/instances/evil-1"] {
        let page = b.get(path).await;
        assert_eq!(page.status, 200);
        assert!(
            !page.body.contains("<script>alert"),
            "{path} is not escaped"
        );
        assert!(!page.body.contains("<b>bold"), "{path} is not escaped");
        assert!(
            page.body.contains("&lt;script&gt;alert("),
            "{path}: {}",
            page.body
        );
    }
    let search = b.get("/ui/instances?q=%3Cscript%3E%22").await.body;
    assert!(
        search.contains("value=\"&lt;script&gt;&quot;\""),
        "the search box echo is escaped"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_metacharacters_in_search_match_literally() {
    let fleet = Fleet::start().await;
    fleet.add_instance("pct", "100% done", "alpha").await;
    fleet.add_instance("und", "a_b", "alpha").await;
    fleet.add_instance("quote", "x' OR '1'='1", "alpha").await;
    let mut b = Browser::new(&fleet);
    b.login(&fleet.admin).await;
    let count = |body: &str| -> String {
        let start = body.find("id=\"match-count\">").unwrap() + 17;
        body[start..].split(' ').next().unwrap().to_owned()
    };
    for (q, expected) in [
        ("%25", "1"),
        ("_", "1"),
        ("%27+OR+%271%27%3D%271", "1"),
        ("%5C", "0"),
        ("%27%3B+DROP+TABLE+instances%3B--", "0"),
    ] {
        let page = b.get(&format!("/ui/instances?q={q}")).await;
        assert_eq!(page.status, 200, "{q}: {}", page.body);
        assert_eq!(count(&page.body), expected, "search {q}");
    }
    let all = b.get("/ui/instances").await.body;
    assert_eq!(count(&all), "25", "the instances table is intact");
    let beta = b.get("/ui/instances?group=beta&version=1.1.0").await.body;
    assert_eq!(count(&beta), "3");
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_carry_security_headers() {
    let fleet = Fleet::start().await;
    let page = tokio::task::spawn_blocking({
        let url = format!("{}/ui/login", fleet.url());
        move || ureq::get(&url).call().unwrap()
    })
    .await
    .unwrap();
    let h = page.headers();
    assert_eq!(h.get("x-frame-options").unwrap(), "DENY");
    assert_eq!(h.get("cache-control").unwrap(), "no-store");
    assert!(h
        .get("content-security-policy")
        .unwrap()
        .to_str()
        .unwrap()
        .contains("frame-ancestors 'none'"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_force_releases_a_reboot_lock_after_confirming() {
    let fleet = Fleet::start().await;
    let mut b = Browser::new(&fleet);
    b.login(&fleet.admin).await;
    let csrf = b.csrf().await;
    let locks = b.get("/ui/locks").await.body;
    assert!(locks.contains("stable-001"), "{locks}");
    assert!(
        locks.contains("release?group=default&amp;id=stable%2D001\""),
        "{locks}"
    );
    let confirm = b.get("/ui/locks/release?group=default&id=stable-001").await;
    assert_eq!(confirm.status, 200, "{}", confirm.body);
    assert!(confirm.body.contains("released now"), "{}", confirm.body);
    let forged = b
        .post(
            "/ui/locks/release",
            &[("csrf", "x"), ("group", "default"), ("id", "stable-001")],
        )
        .await;
    assert_eq!(forged.status, 403);
    assert_eq!(fleet.lock_holders("default").await, ["stable-001"]);
    let done = b
        .post(
            "/ui/locks/release",
            &[("csrf", &csrf), ("group", "default"), ("id", "stable-001")],
        )
        .await;
    assert_eq!(done.status, 303, "{}", done.body);
    assert!(fleet.lock_holders("default").await.is_empty());
    let activity = b
        .get("/ui/activity?kind=fleetlock-force-released")
        .await
        .body;
    assert!(activity.contains("released by an admin"), "{activity}");
    let again = b.get("/ui/locks/release?group=default&id=stable-001").await;
    assert_eq!(again.status, 404);
}
