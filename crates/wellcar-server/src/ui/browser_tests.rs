//! The dashboard in a real browser: Debian's `chromium`, headless, driven through
//! `chromedriver` (WebDriver) by fantoccini, against a server with a seeded fleet
//! ([`super::test_fleet`]). One browser session runs every scenario in turn (starting Chromium
//! is most of the cost); each scenario saves a screenshot under
//! `$CARGO_TARGET_DIR/ui-screenshots/` (or the temp dir). A missing `chromium` or
//! `chromedriver` fails the test.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use super::test_fleet::Fleet;

/// A chromedriver process on a free loopback port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_driver() -> Driver {
    let chromedriver = wellcar_test_support::tools::require("chromedriver");
    let port = free_port();
    let child = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chromedriver");
    let url = format!("http://127.0.0.1:{port}");
    let driver = Driver { child, url };
    let status = format!("{}/status", driver.url);
    wellcar_test_support::wait::wait_until_async(
        "chromedriver to answer /status",
        Duration::from_secs(30),
        || {
            let status = status.clone();
            async move {
                tokio::task::spawn_blocking(move || ureq::get(&status).call().ok().map(|_| ()))
                    .await
                    .ok()
                    .flatten()
            }
        },
    )
    .await;
    driver
}

async fn open_browser(driver: &Driver, profile: &std::path::Path) -> Client {
    let chromium = wellcar_test_support::tools::require("chromium");
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
                format!("--user-data-dir={}", profile.display()),
                "--window-size=1280,800",
            ],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a chromium session through chromedriver")
}

fn screenshot_dir() -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join("ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(client: &Client, name: &str) -> PathBuf {
    let png = client.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
    let path = screenshot_dir().join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap();
    path
}

async fn text(client: &Client, css: &str) -> String {
    client
        .wait()
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap()
}

async fn login(client: &Client, base: &str, token: &str) {
    client.goto(&format!("{base}/ui/login")).await.unwrap();
    client
        .find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(token)
        .await
        .unwrap();
    client
        .find(Locator::Css("form[action='/ui/login'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    client
        .wait()
        .for_element(Locator::Id("fleet-total"))
        .await
        .unwrap();
}

async fn logout(client: &Client) {
    client
        .find(Locator::Css("form.logout button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    client
        .wait()
        .for_element(Locator::Id("token"))
        .await
        .unwrap();
}

/// `fetch`es a POST from the page with the page's CSRF token; returns the status.
async fn post_from_page(client: &Client, path: &str, body: &str) -> u16 {
    let script = "const [path, body, done] = arguments;
        const csrf = document.querySelector('meta[name=csrf-token]').content;
        fetch(path, {method: 'POST', headers: {'Content-Type': 'application/x-www-form-urlencoded'},
                     body: 'csrf=' + encodeURIComponent(csrf) + body, redirect: 'manual'})
          .then(r => done(r.status), e => done(String(e)));";
    let v = client
        .execute_async(script, vec![json!(path), json!(body)])
        .await
        .unwrap();
    v.as_u64().unwrap_or_else(|| panic!("fetch {path}: {v}")) as u16
}

/// Controls a keyboard or screen-reader user cannot use on the current page: form fields
/// without a label (`<label for>`, a wrapping `<label>`, `aria-label` or `aria-labelledby`),
/// buttons and links without a name, and controls taken out of the tab order.
async fn unusable_controls(client: &Client) -> Vec<String> {
    let v = client
        .execute(
            "const bad = [];
             const named = e => (e.textContent || '').trim() || e.getAttribute('aria-label')
               || e.getAttribute('title') || (e.querySelector('img[alt]') || {}).alt;
             for (const e of document.querySelectorAll('input, select, textarea')) {
               if (e.type === 'hidden') continue;
               const labelled = (e.id && document.querySelector(`label[for=\"${e.id}\"]`))
                 || e.closest('label') || e.getAttribute('aria-label')
                 || e.getAttribute('aria-labelledby');
               if (!labelled) bad.push('unlabelled ' + e.outerHTML.slice(0, 80));
             }
             for (const e of document.querySelectorAll('button, a[href], input[type=submit]')) {
               if (e.tagName !== 'INPUT' && !named(e)) bad.push('nameless ' + e.outerHTML.slice(0, 80));
             }
             for (const e of document.querySelectorAll('a[href], button, input, select, textarea')) {
               if (e.tabIndex < 0 && e.type !== 'hidden') bad.push('not in tab order ' + e.outerHTML.slice(0, 80));
             }
             return bad;",
            vec![],
        )
        .await
        .unwrap();
    serde_json::from_value(v).unwrap()
}

async fn no_horizontal_scroll(client: &Client) -> (u64, u64) {
    let v = client
        .execute(
            "const e = document.scrollingElement; return [e.scrollWidth, e.clientWidth];",
            vec![],
        )
        .await
        .unwrap();
    (v[0].as_u64().unwrap(), v[1].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_works_in_chromium() {
    let started = Instant::now();
    let fleet = Fleet::start().await;
    let base = fleet.url();
    let driver = start_driver().await;
    let profile = tempfile::tempdir().unwrap();
    let client = open_browser(&driver, profile.path()).await;
    let mut steps = Vec::new();
    let mut step = |name: &str, since: &mut Instant| {
        steps.push(format!("{name} {:?}", since.elapsed()));
        *since = Instant::now();
    };
    let mut t = Instant::now();

    // Log in; three groups with their instance counts.
    login(&client, &base, &fleet.admin).await;
    assert_eq!(text(&client, "#fleet-total").await, "22");
    for (track, size) in super::test_fleet::GROUP_SIZES {
        let count = text(&client, &format!("#group-{track} .count")).await;
        assert_eq!(count, size.to_string(), "instances of {track}");
    }
    let overview = shot(&client, "01-overview").await;
    step("login+overview", &mut t);

    // Pause beta through its confirmation; the activity log shows it.
    client
        .goto(&format!("{base}/ui/groups/beta"))
        .await
        .unwrap();
    client
        .find(Locator::Id("pause-group"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let consequences = text(&client, ".consequences").await;
    assert!(
        consequences.contains("stops granting updates"),
        "{consequences}"
    );
    shot(&client, "02-pause-confirmation").await;
    client
        .find(Locator::Id("confirm-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    client
        .wait()
        .for_element(Locator::Css(".notice"))
        .await
        .unwrap();
    assert!(text(&client, ".badge.paused").await.contains("Paused"));
    assert!(!fleet.updates_enabled("beta").await);
    client
        .goto(&format!("{base}/ui/activity?kind=group-paused"))
        .await
        .unwrap();
    let log = text(&client, "#activity tbody").await;
    assert!(
        log.contains("group-paused") && log.contains("ops-admin") && log.contains("beta"),
        "{log}"
    );
    shot(&client, "03-activity-paused").await;
    step("pause+activity", &mut t);

    // Publish a package to a channel, with confirmation and history.
    client.goto(&format!("{base}/ui/channels")).await.unwrap();
    client
        .find(Locator::Css("#publish-channel option[value='alpha']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    client
        .find(Locator::Css("#publish-version option[value='1.2.0']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    client
        .find(Locator::Id("publish-review"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let consequences = text(&client, ".consequences").await;
    assert!(
        consequences.contains("will point at 1.2.0 (now: nothing)"),
        "{consequences}"
    );
    client
        .find(Locator::Id("confirm-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    client
        .wait()
        .for_element(Locator::Css(".notice"))
        .await
        .unwrap();
    let history = text(&client, "#publish-history").await;
    assert!(
        history.contains("channel alpha (amd64) now points at 1.2.0"),
        "{history}"
    );
    shot(&client, "04-published").await;
    step("publish", &mut t);

    // An instance's timeline.
    client
        .goto(&format!("{base}/ui/instances?group=stable&q=stable-003"))
        .await
        .unwrap();
    client
        .find(Locator::LinkText("stable-003"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let timeline = text(&client, "#timeline").await;
    for what in ["download started", "download finished", "update complete"] {
        assert!(timeline.contains(what), "{what} missing from {timeline}");
    }
    shot(&client, "05-timeline").await;
    step("timeline", &mut t);

    // Reboot locks: holders, and a force-release button for an admin.
    client.goto(&format!("{base}/ui/locks")).await.unwrap();
    assert_eq!(text(&client, "#lock-default .holders").await, "1");
    assert!(client
        .find(Locator::Css("#lock-default .release-lock"))
        .await
        .is_ok());
    shot(&client, "06-reboot-locks").await;
    step("locks", &mut t);

    // Phone width: no horizontal scrolling on any page.
    client.set_window_size(390, 844).await.unwrap();
    for path in [
        "/ui/",
        "/ui/groups/stable",
        "/ui/channels",
        "/ui/instances",
        "/ui/instances/stable-003",
        "/ui/activity",
        "/ui/adoption",
    ] {
        client.goto(&format!("{base}{path}")).await.unwrap();
        let (scroll, client_w) = no_horizontal_scroll(&client).await;
        assert!(
            scroll <= client_w,
            "{path} scrolls sideways at phone width: {scroll} > {client_w}"
        );
        let unusable = unusable_controls(&client).await;
        assert!(unusable.is_empty(), "{path}: {unusable:#?}");
    }
    client.goto(&format!("{base}/ui/")).await.unwrap();
    shot(&client, "07-phone-overview").await;
    client.set_window_size(1280, 800).await.unwrap();
    step("phone", &mut t);

    // A read-only token: no buttons that change things, 403 if it posts anyway.
    logout(&client).await;
    login(&client, &base, &fleet.reader).await;
    for path in ["/ui/", "/ui/groups/alpha", "/ui/channels", "/ui/locks"] {
        client.goto(&format!("{base}{path}")).await.unwrap();
        let forms = client
            .find_all(Locator::Css("form[method='post']"))
            .await
            .unwrap();
        assert_eq!(forms.len(), 1, "{path}: only the logout form");
        let buttons = client
            .find_all(Locator::Css(
                "#pause-group, #resume-group, #publish-review, .release-lock",
            ))
            .await
            .unwrap();
        assert!(buttons.is_empty(), "{path} shows a mutating button");
    }
    let status = post_from_page(&client, "/ui/groups/alpha/pause", "").await;
    assert_eq!(status, 403);
    assert!(fleet.updates_enabled("alpha").await);
    client
        .goto(&format!("{base}/ui/groups/alpha/pause"))
        .await
        .unwrap();
    assert!(text(&client, "h1").await.contains("Not allowed"));
    shot(&client, "08-read-only-403").await;
    step("read-only", &mut t);

    client.close().await.unwrap();
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
    if std::env::var_os("WELLCAR_UI_SCREENSHOT_DOCS").is_some() {
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::copy(&overview, docs.join("dashboard-overview.png")).unwrap();
    }
    eprintln!(
        "browser test: {:?} in all ({}); screenshots in {}",
        started.elapsed(),
        steps.join(", "),
        screenshot_dir().display()
    );
}
