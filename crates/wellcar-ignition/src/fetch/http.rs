//! http(s) through `wellcar-http`: per-URL proxy choice, Ignition's retry loop, and the
//! status rules of the module docs.

use std::io::Read;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use wellcar_http::ureq;

use super::{short_url, FetchError, Fetcher, ProxySettings};

/// The proxy for a request to `host` over `scheme` under `settings`, as Go's
/// `httpproxy.Config.ProxyFunc`: chosen by scheme, never used for `localhost` or a loopback IP,
/// and skipped for hosts matching a `noProxy` entry.
pub(crate) fn proxy_for<'s>(
    settings: &'s ProxySettings,
    scheme: &str,
    host: &str,
) -> Option<&'s str> {
    let proxy = match scheme {
        "https" => settings.https_proxy.as_deref(),
        _ => settings.http_proxy.as_deref(),
    }
    .filter(|p| !p.is_empty())?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    if host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()) {
        return None;
    }
    let bypass = settings
        .no_proxy
        .iter()
        .flat_map(|s| s.split(','))
        .any(|entry| {
            let entry = entry.trim().to_ascii_lowercase();
            let entry = entry
                .split_once(':')
                .map_or(entry.as_str(), |(h, _)| h)
                .to_string();
            if entry.is_empty() {
                return false;
            }
            if entry == "*" {
                return true;
            }
            if let (Some((net, bits)), Ok(ip)) = (entry.split_once('/'), host.parse::<IpAddr>()) {
                return cidr_contains(net, bits, ip);
            }
            let domain = entry.trim_start_matches("*.").trim_start_matches('.');
            if entry.starts_with('.') || entry.starts_with("*.") {
                return host.ends_with(&format!(".{domain}"));
            }
            host == domain || host.ends_with(&format!(".{domain}"))
        });
    (!bypass).then_some(proxy)
}

fn cidr_contains(net: &str, bits: &str, ip: IpAddr) -> bool {
    let (Ok(net), Ok(bits)) = (net.parse::<IpAddr>(), bits.parse::<u32>()) else {
        return false;
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

/// One attempt's outcome that the retry loop looks at.
enum Attempt {
    /// Retry (after the backoff), remembering why.
    Retry(String),
    /// Stop with this error.
    Fatal(FetchError),
}

fn classify(url: &str, fetcher: &Fetcher, error: ureq::Error) -> Attempt {
    let url = short_url(url);
    match error {
        ureq::Error::TooManyRedirects => Attempt::Fatal(FetchError::Redirects {
            url,
            limit: fetcher.options.max_redirects,
        }),
        ureq::Error::BadUri(reason) => Attempt::Fatal(FetchError::BadUrl { url, reason }),
        e @ (ureq::Error::InvalidProxyUrl
        | ureq::Error::RedirectFailed
        | ureq::Error::Tls(_)
        | ureq::Error::Pem(_)
        | ureq::Error::Rustls(_)) => Attempt::Fatal(FetchError::Request {
            url,
            reason: e.to_string(),
        }),
        ureq::Error::Io(e) if e.to_string().contains("certificate") => {
            Attempt::Fatal(FetchError::Request {
                url,
                reason: format!("TLS: {e}"),
            })
        }
        other => Attempt::Retry(other.to_string()),
    }
}

fn agent(
    fetcher: &Fetcher,
    url: &str,
    attempt_timeout: Option<Duration>,
) -> Result<ureq::Agent, FetchError> {
    let options = &fetcher.options;
    let mut client = wellcar_http::ClientOptions::new(options.user_agent.clone());
    client.connect_timeout = options.timeouts.connect;
    // ureq needs a value: "no bound" is a very long one.
    client.response_timeout = options
        .timeouts
        .response_headers
        .unwrap_or(Duration::from_secs(u32::MAX.into()));
    let uri: ureq::http::Uri =
        url.parse()
            .map_err(|e: ureq::http::uri::InvalidUri| FetchError::BadUrl {
                url: short_url(url),
                reason: e.to_string(),
            })?;
    let proxy = proxy_for(
        &options.proxy,
        uri.scheme_str().unwrap_or("http"),
        uri.host().unwrap_or(""),
    )
    .map(|p| {
        let p = if p.contains("://") {
            p.to_string()
        } else {
            format!("http://{p}")
        };
        ureq::Proxy::new(&p).map_err(|e| FetchError::Request {
            url: short_url(url),
            reason: format!("proxy {p}: {e}"),
        })
    })
    .transpose()?;
    let builder =
        wellcar_http::config_builder(&client, &fetcher.roots).map_err(|e| FetchError::Request {
            url: short_url(url),
            reason: e.to_string(),
        })?;
    Ok(builder
        .proxy(proxy)
        .max_redirects(fetcher.options.max_redirects)
        .max_redirects_will_error(true)
        .timeout_global(attempt_timeout)
        .build()
        .into())
}

/// Sends `method url` with `headers`, retrying as the module docs say, and hands a 200/204
/// body to `consume`.
pub(crate) fn fetch(
    fetcher: &Fetcher,
    method: &str,
    url: &str,
    headers: &[(String, String)],
    consume: &mut dyn FnMut(&mut dyn Read) -> Result<(), FetchError>,
) -> Result<(), FetchError> {
    let options = &fetcher.options;
    let start = Instant::now();
    let bound = options.timeouts.total.or(options.retry.give_up_after);
    let deadline = bound.map(|b| start + b);
    let mut backoff = options.retry.initial_backoff;
    let mut attempt = 0_u32;
    loop {
        attempt += 1;
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        // Only httpTotal bounds the attempt itself (the body included); give_up_after only
        // stops further retries.
        let attempt_timeout = options.timeouts.total.and(remaining);
        let agent = agent(fetcher, url, attempt_timeout)?;
        tracing::info!("{method} {}: attempt #{attempt}", short_url(url));
        let mut request = ureq::http::Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let request = request.body(()).map_err(|e| FetchError::BadUrl {
            url: short_url(url),
            reason: format!("bad request (header?): {e}"),
        })?;
        let last = match agent.run(request) {
            Ok(response) => {
                let status = response.status().as_u16();
                tracing::info!("{method} {}: HTTP {status}", short_url(url));
                match status {
                    200 | 204 => {
                        let mut body = response.into_body().into_reader();
                        return consume(&mut body);
                    }
                    404 => {
                        return Err(FetchError::NotFound {
                            url: short_url(url),
                        })
                    }
                    500.. => format!("HTTP {status}"),
                    _ => {
                        return Err(FetchError::HttpStatus {
                            url: short_url(url),
                            status,
                        })
                    }
                }
            }
            Err(e) => match classify(url, fetcher, e) {
                Attempt::Fatal(e) => return Err(e),
                Attempt::Retry(reason) => reason,
            },
        };
        tracing::info!("{method} {}: {last}; retrying", short_url(url));
        backoff = (backoff * 2).min(options.retry.max_backoff);
        let wait = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left <= backoff {
                    return Err(FetchError::GaveUp {
                        url: short_url(url),
                        attempts: attempt,
                        seconds: bound.unwrap_or_default().as_secs(),
                        last,
                    });
                }
                backoff
            }
            None => backoff,
        };
        std::thread::sleep(wait);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_choice_follows_go_httpproxy() {
        let s = ProxySettings {
            http_proxy: Some("http://p:3128".into()),
            https_proxy: Some("http://ps:3128".into()),
            no_proxy: vec![
                "internal.example".into(),
                ".corp".into(),
                "10.0.0.0/8".into(),
                "192.0.2.7".into(),
            ],
        };
        assert_eq!(proxy_for(&s, "http", "example.com"), Some("http://p:3128"));
        assert_eq!(
            proxy_for(&s, "https", "example.com"),
            Some("http://ps:3128")
        );
        assert_eq!(proxy_for(&s, "http", "internal.example"), None);
        assert_eq!(proxy_for(&s, "http", "a.internal.example"), None);
        assert_eq!(
            proxy_for(&s, "http", "notinternal.example"),
            Some("http://p:3128")
        );
        assert_eq!(proxy_for(&s, "http", "x.corp"), None);
        assert_eq!(proxy_for(&s, "http", "corp"), Some("http://p:3128"));
        assert_eq!(proxy_for(&s, "http", "10.1.2.3"), None);
        assert_eq!(proxy_for(&s, "http", "11.1.2.3"), Some("http://p:3128"));
        assert_eq!(proxy_for(&s, "http", "192.0.2.7"), None);
        assert_eq!(proxy_for(&s, "http", "localhost"), None);
        let none = ProxySettings::default();
        assert_eq!(proxy_for(&none, "http", "example.com"), None);
    }
}
