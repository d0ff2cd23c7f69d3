//! HTTP for the agent: Omaha POSTs and ranged payload GETs (blocking, ureq).
//!
//! Contract: an Omaha answer is read only from a 200 response, at most
//! [`wellcar_omaha::MAX_RESPONSE_BYTES`] of body (a longer one is an error, never truncated),
//! together with its [`RESPONSE_SIGNATURE`] header; checking that signature is the caller's
//! job ([`crate::agent`]).

use std::io::Read;

use wellcar_omaha::headers::RESPONSE_SIGNATURE;

/// An HTTP failure, naming the URL.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Connection, TLS, protocol or body read failure.
    #[error("{method} {url}: {reason}")]
    Transport {
        /// `GET`/`POST`.
        method: &'static str,
        /// The URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// A non-success status.
    #[error("{method} {url}: HTTP status {status}")]
    Status {
        /// `GET`/`POST`.
        method: &'static str,
        /// The URL.
        url: String,
        /// The status.
        status: u16,
    },
}

impl HttpError {
    /// The HTTP status, if the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            Self::Transport { .. } => None,
        }
    }
}

/// A reusable HTTP client.
#[derive(Debug, Clone)]
pub struct Http {
    agent: ureq::Agent,
}

impl Default for Http {
    fn default() -> Self {
        Self::new()
    }
}

/// A 200 answer to an Omaha POST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OmahaReply {
    /// The body, exactly as received.
    pub body: Vec<u8>,
    /// The [`RESPONSE_SIGNATURE`] header, if present and text.
    pub signature: Option<String>,
}

impl Http {
    /// The workspace's client ([`wellcar_http`]) with its connect and response-head timeouts
    /// (15 s, 60 s; no total timeout: payloads are large), trusting the system's CA store
    /// (`/etc/ssl/certs`, where Ignition can add a private CA for a private update server).
    pub fn new() -> Self {
        let options = wellcar_http::ClientOptions::new(concat!(
            "wellcar-update-agent/",
            env!("CARGO_PKG_VERSION")
        ));
        Self {
            agent: wellcar_http::system_client(&options),
        }
    }

    /// POSTs an Omaha request with `headers` added; returns a 200 answer.
    pub fn post_omaha(
        &self,
        url: &str,
        xml: &str,
        headers: &[(&str, &str)],
    ) -> Result<OmahaReply, HttpError> {
        let transport = |reason: String| HttpError::Transport {
            method: "POST",
            url: url.to_owned(),
            reason,
        };
        let mut request = self.agent.post(url).header("Content-Type", "text/xml");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send(xml).map_err(|e| transport(e.to_string()))?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(HttpError::Status {
                method: "POST",
                url: url.to_owned(),
                status,
            });
        }
        let signature = response
            .headers()
            .get(RESPONSE_SIGNATURE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response
            .into_body()
            .into_with_config()
            .limit(wellcar_omaha::MAX_RESPONSE_BYTES as u64)
            .read_to_vec()
            .map_err(|e| {
                transport(format!(
                    "reading the answer (at most {} bytes): {e}",
                    wellcar_omaha::MAX_RESPONSE_BYTES
                ))
            })?;
        Ok(OmahaReply { body, signature })
    }

    /// GETs `url` from byte `start` (to `end`, inclusive, if given). A server that ignores
    /// the range and answers 200 is handled by skipping the first `start` bytes.
    pub fn get_range(
        &self,
        url: &str,
        start: u64,
        end: Option<u64>,
    ) -> Result<Box<dyn Read + Send>, HttpError> {
        let transport = |reason: String| HttpError::Transport {
            method: "GET",
            url: url.to_owned(),
            reason,
        };
        let mut request = self.agent.get(url);
        if start > 0 || end.is_some() {
            let range = match end {
                Some(end) => format!("bytes={start}-{end}"),
                None => format!("bytes={start}-"),
            };
            request = request.header("Range", range);
        }
        let response = request.call().map_err(|e| transport(e.to_string()))?;
        let status = response.status().as_u16();
        let mut reader: Box<dyn Read + Send> = Box::new(
            response
                .into_body()
                .into_with_config()
                .limit(u64::MAX)
                .reader(),
        );
        match status {
            206 => Ok(reader),
            200 => {
                if start > 0 {
                    let skipped =
                        std::io::copy(&mut (&mut reader).take(start), &mut std::io::sink())
                            .map_err(|e| transport(e.to_string()))?;
                    if skipped != start {
                        return Err(transport(format!(
                            "body ended after {skipped} bytes, before the requested start {start}"
                        )));
                    }
                }
                Ok(match end {
                    Some(end) => Box::new(reader.take(end + 1 - start)),
                    None => reader,
                })
            }
            other => Err(HttpError::Status {
                method: "GET",
                url: url.to_owned(),
                status: other,
            }),
        }
    }
}
