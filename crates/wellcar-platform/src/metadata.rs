//! Cloud metadata services: user data (the Ignition config) and the attributes afterburn
//! applies (hostname, ssh keys).
//!
//! Requests, relative to the base URL (`http://169.254.169.254` on every platform here):
//!
//! | platform | user data | attributes |
//! |----------|-----------|------------|
//! | aws | `PUT latest/api/token` (`X-aws-ec2-metadata-token-ttl-seconds: 21600`) then `GET 2009-04-04/user-data` (`X-aws-ec2-metadata-token`) | `2009-04-04/meta-data/hostname`, `…/public-keys` (`0=name` lines), `…/public-keys/<i>/openssh-key` |
//! | gcp | `computeMetadata/v1/instance/attributes/user-data` (`Metadata-Flavor: Google`) | `…/instance/hostname`, `…/instance/attributes/ssh-keys`, `…/project/attributes/ssh-keys` unless `block-project-ssh-keys` is `true`; lines `user:key` |
//! | digitalocean | `metadata/v1/user-data` | `metadata/v1.json`: `hostname`, `public_keys` |
//! | openstack | `openstack/latest/user_data` | `openstack/latest/meta_data.json`: `hostname`, `public_keys` (name → key) |
//!
//! On AWS a token request answered 403, 404 or 405 falls back to IMDSv1 (no token header).
//! Transport failures (connection refused, timeouts: the link may still be coming up) are
//! retried with doubling back-off, as Ignition does, up to [`Retry::attempts`]; HTTP answers are
//! not retried. 404 on user data is "no config"; 404 on an attribute is "not set". Bodies are
//! bounded by [`MAX_BODY`].

use std::time::Duration;

use crate::attributes::Attributes;
use crate::{configdrive, Platform, PlatformError};

/// The link-local metadata address every platform here uses.
pub const DEFAULT_BASE: &str = "http://169.254.169.254";
/// Largest metadata answer read (user data is 16 KiB on AWS, 256 KiB on GCP; configs stay small).
pub const MAX_BODY: u64 = 16 << 20;
/// IMDSv2 token lifetime asked for (six hours, the maximum).
pub const AWS_TOKEN_TTL: &str = "21600";

/// How transport failures are retried.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Tries in all (1: no retry).
    pub attempts: u32,
    /// Pause after the first failure; doubles each time up to `max_delay`.
    pub first_delay: Duration,
    /// Longest pause.
    pub max_delay: Duration,
}

impl Default for Retry {
    /// 12 tries, 100 ms doubling to 5 s: about 30 s for a link or a service to come up.
    fn default() -> Self {
        Retry {
            attempts: 12,
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
        }
    }
}

/// A metadata service at a base URL.
#[derive(Debug, Clone)]
pub struct MetadataClient {
    base: String,
    agent: ureq::Agent,
    retry: Retry,
}

/// An HTTP answer: status and body.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl MetadataClient {
    /// A client for the service at `base` (no trailing slash needed), using `agent`
    /// (from `wellcar_http`, which answers non-2xx statuses rather than failing).
    pub fn new(base: impl Into<String>, agent: ureq::Agent, retry: Retry) -> MetadataClient {
        let base = base.into().trim_end_matches('/').to_string();
        MetadataClient { base, agent, retry }
    }

    /// The full URL of `path` (relative to the base).
    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }

    fn request(
        &self,
        method: &'static str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Answer, PlatformError> {
        let url = self.url(path);
        let mut delay = self.retry.first_delay;
        let mut attempt = 1;
        loop {
            match self.request_once(method, &url, headers) {
                Err(PlatformError::Http { source, .. })
                    if attempt < self.retry.attempts && is_transient(&source) =>
                {
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(self.retry.max_delay);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn request_once(
        &self,
        method: &'static str,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Answer, PlatformError> {
        let http = |source| PlatformError::Http {
            method,
            url: url.to_string(),
            source,
        };
        let mut response = if method == "PUT" {
            let mut req = self.agent.put(url);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            req.send_empty()
        } else {
            let mut req = self.agent.get(url);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            req.call()
        }
        .map_err(http)?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => PlatformError::TooLarge {
                    url: url.to_string(),
                    limit: MAX_BODY,
                },
                other => http(other),
            })?;
        Ok(Answer { status, body })
    }

    /// `GET path`: the body on 2xx, `None` on 404, an error naming the status otherwise.
    fn get_optional(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Option<Vec<u8>>, PlatformError> {
        let answer = self.request("GET", path, headers)?;
        match answer.status {
            200..=299 => Ok(Some(answer.body)),
            404 => Ok(None),
            status => Err(PlatformError::Status {
                method: "GET",
                url: self.url(path),
                status,
            }),
        }
    }

    fn get_text(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Option<String>, PlatformError> {
        self.get_optional(path, headers)?
            .map(|body| {
                String::from_utf8(body).map_err(|_| PlatformError::BadMetadata {
                    what: self.url(path),
                    reason: "not UTF-8 text".into(),
                })
            })
            .transpose()
    }

    /// An IMDSv2 session token, or `None` where the service only speaks IMDSv1.
    pub fn aws_token(&self) -> Result<Option<String>, PlatformError> {
        let path = "latest/api/token";
        let answer = self.request(
            "PUT",
            path,
            &[("X-aws-ec2-metadata-token-ttl-seconds", AWS_TOKEN_TTL)],
        )?;
        match answer.status {
            200..=299 => String::from_utf8(answer.body)
                .map(|t| Some(t.trim().to_string()))
                .map_err(|_| PlatformError::BadMetadata {
                    what: self.url(path),
                    reason: "token is not text".into(),
                }),
            403..=405 => Ok(None),
            status => Err(PlatformError::Status {
                method: "PUT",
                url: self.url(path),
                status,
            }),
        }
    }

    /// The platform's user data: `Ok(None)` when it has none (404).
    pub fn user_data(&self, platform: Platform) -> Result<Option<Vec<u8>>, PlatformError> {
        match platform {
            Platform::Aws => {
                let token = self.aws_token()?;
                let headers: Vec<(&str, &str)> = token
                    .as_deref()
                    .map(|t| ("X-aws-ec2-metadata-token", t))
                    .into_iter()
                    .collect();
                self.get_optional("2009-04-04/user-data", &headers)
            }
            Platform::Gcp => self.get_optional(
                "computeMetadata/v1/instance/attributes/user-data",
                &[GOOGLE_FLAVOR],
            ),
            Platform::DigitalOcean => self.get_optional("metadata/v1/user-data", &[]),
            Platform::OpenStack => self.get_optional("openstack/latest/user_data", &[]),
            Platform::Qemu | Platform::Metal => Ok(None),
        }
    }

    /// Hostname and ssh keys the platform's metadata gives (empty where it gives none).
    pub fn attributes(&self, platform: Platform) -> Result<Attributes, PlatformError> {
        match platform {
            Platform::Aws => self.aws_attributes(),
            Platform::Gcp => self.gcp_attributes(),
            Platform::DigitalOcean => {
                let path = "metadata/v1.json";
                match self.get_optional(path, &[])? {
                    Some(body) => Attributes::from_digitalocean_json(&self.url(path), &body),
                    None => Ok(Attributes::default()),
                }
            }
            Platform::OpenStack => {
                let path = "openstack/latest/meta_data.json";
                match self.get_optional(path, &[])? {
                    Some(body) => configdrive::parse_meta_data(&self.url(path), &body),
                    None => Ok(Attributes::default()),
                }
            }
            Platform::Qemu | Platform::Metal => Ok(Attributes::default()),
        }
    }

    fn aws_attributes(&self) -> Result<Attributes, PlatformError> {
        let token = self.aws_token()?;
        let headers: Vec<(&str, &str)> = token
            .as_deref()
            .map(|t| ("X-aws-ec2-metadata-token", t))
            .into_iter()
            .collect();
        let hostname = self
            .get_text("2009-04-04/meta-data/hostname", &headers)?
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty());
        let mut ssh_keys = Vec::new();
        let list = self
            .get_text("2009-04-04/meta-data/public-keys", &headers)?
            .unwrap_or_default();
        for line in list.lines().filter(|l| !l.trim().is_empty()) {
            let index = line.split_once('=').map_or(line, |(i, _)| i).trim();
            if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
                return Err(PlatformError::BadMetadata {
                    what: self.url("2009-04-04/meta-data/public-keys"),
                    reason: format!("line {line:?} is not <index>=<name>"),
                });
            }
            let path = format!("2009-04-04/meta-data/public-keys/{index}/openssh-key");
            if let Some(key) = self.get_text(&path, &headers)? {
                ssh_keys.extend(non_empty_lines(&key));
            }
        }
        Ok(Attributes { hostname, ssh_keys })
    }

    fn gcp_attributes(&self) -> Result<Attributes, PlatformError> {
        let h = [GOOGLE_FLAVOR];
        let hostname = self
            .get_text("computeMetadata/v1/instance/hostname", &h)?
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        let mut lines = self
            .get_text("computeMetadata/v1/instance/attributes/ssh-keys", &h)?
            .unwrap_or_default();
        let block_project = self
            .get_text(
                "computeMetadata/v1/instance/attributes/block-project-ssh-keys",
                &h,
            )?
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        if !block_project {
            if let Some(project) =
                self.get_text("computeMetadata/v1/project/attributes/ssh-keys", &h)?
            {
                lines.push('\n');
                lines.push_str(&project);
            }
        }
        // `user:key`: the key is everything after the first colon.
        let ssh_keys = non_empty_lines(&lines)
            .into_iter()
            .filter_map(|l| l.split_once(':').map(|(_, k)| k.trim().to_string()))
            .filter(|k| !k.is_empty())
            .collect();
        Ok(Attributes { hostname, ssh_keys })
    }
}

/// The header every GCP metadata request carries (requests without it are refused).
const GOOGLE_FLAVOR: (&str, &str) = ("Metadata-Flavor", "Google");

fn non_empty_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Transport failures worth retrying (the network or the service may not be up yet).
fn is_transient(e: &ureq::Error) -> bool {
    matches!(
        e,
        ureq::Error::Io(_) | ureq::Error::Timeout(_) | ureq::Error::ConnectionFailed
    )
}

#[cfg(test)]
mod tests;
