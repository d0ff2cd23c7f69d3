//! The `ignition` section (config merge and replace sources, TLS certificate authorities,
//! proxies) and the rules for one fetchable `Resource`, which `storage.files` and LUKS key files
//! reuse.
//!
//! A resource's source URL must have a scheme Ignition can fetch in the config's spec version
//! (`gs://` since 3.2, `arn:` S3 ARNs since 3.4), a data URL must decode, compression is `gzip`
//! or none, a verification hash needs a source and a known function (`sha256` since 3.1) with a
//! sum of the right length, and HTTP headers need a name, a value and an http(s) source.
//! Nothing is fetched.

use super::{url_scheme, Validator};
use crate::model::{Ignition, Resource};
use crate::version::Spec;

fn arn_ok(url: &str) -> bool {
    // arn:partition:s3:region:account:resource
    let parts: Vec<&str> = url.splitn(6, ':').collect();
    if parts.len() != 6 || parts[2] != "s3" {
        return false;
    }
    let resource = parts[5];
    if let Some(rest) = resource.strip_prefix("accesspoint/") {
        return match rest.split_once("/object/") {
            Some((ap, key)) => !ap.is_empty() && !key.is_empty(),
            None => false,
        };
    }
    match resource.split_once('/') {
        Some((bucket, key)) => !bucket.is_empty() && !key.is_empty(),
        None => false,
    }
}

impl Validator {
    /// Returns Ignition's message for a bad URL, or `None` when it is acceptable.
    fn url_problem(&self, url: &str) -> Option<&'static str> {
        if url.is_empty() {
            return None;
        }
        if url.chars().any(|c| c.is_control() || c == ' ') {
            return Some("unable to parse url");
        }
        let Some(scheme) = url_scheme(url) else {
            return Some("invalid url scheme");
        };
        match scheme {
            "http" | "https" | "tftp" => None,
            "gs" if self.spec >= Spec::V3_2 => None,
            "arn" if self.spec >= Spec::V3_4 => (!arn_ok(url)).then_some("invalid S3 ARN format"),
            "s3" => {
                let query = url.split_once('?').map(|(_, q)| q).unwrap_or("");
                let empty_version = query
                    .split('&')
                    .any(|kv| kv == "versionId" || kv == "versionId=");
                empty_version.then_some("invalid S3 object VersionId")
            }
            "data" => crate::fetch::decode_data_url(url)
                .err()
                .map(|_| "unable to parse url"),
            _ => Some("invalid url scheme"),
        }
    }

    fn hash(&mut self, at: String, hash: &str) {
        let Some((func, sum)) = hash.split_once('-') else {
            return self.err(at, "malformed hash specifier");
        };
        let len = match func {
            "sha512" => 128,
            "sha256" if self.spec >= Spec::V3_1 => 64,
            _ => return self.err(at, "unrecognized hash function"),
        };
        if sum.len() != len {
            self.err(at, "incorrect size for hash sum");
        } else if !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
            self.err(at, "malformed hash specifier");
        }
    }

    pub(super) fn resource(&mut self, at: &str, r: &Resource, source_required: bool) {
        match &r.source {
            None if source_required => self.err(at.to_string(), "source is required"),
            None => {}
            Some(url) => {
                if let Some(problem) = self.url_problem(url) {
                    self.err(format!("{at}.source"), problem);
                }
            }
        }
        if let Some(c) = &r.compression {
            if !c.is_empty() && c != "gzip" {
                self.err(format!("{at}.compression"), "invalid compression method");
            }
        }
        if let Some(h) = &r.verification.hash {
            if r.source.is_none() {
                self.err(
                    format!("{at}.verification.hash"),
                    "source must be specified if verification is specified",
                );
            } else {
                self.hash(format!("{at}.verification.hash"), h);
            }
        }
        for (i, h) in r.http_headers.iter().enumerate() {
            if h.name.is_empty() {
                self.err(
                    format!("{at}.httpHeaders.{i}.name"),
                    "HTTP header name can't be empty",
                );
            }
            if h.value.as_deref() == Some("") {
                self.err(
                    format!("{at}.httpHeaders.{i}.value"),
                    "unable to parse HTTP header",
                );
            }
        }
        if !r.http_headers.is_empty() {
            let scheme = r.source.as_deref().and_then(url_scheme);
            if !matches!(scheme, Some("http") | Some("https")) {
                self.err(
                    format!("{at}.httpHeaders"),
                    "cannot use HTTP headers with this source scheme",
                );
            }
        }
    }

    pub(super) fn ignition(&mut self, ig: &Ignition) {
        for (i, r) in ig.config.merge.iter().enumerate() {
            self.resource(&format!("ignition.config.merge.{i}"), r, true);
        }
        self.resource("ignition.config.replace", &ig.config.replace, false);
        for (i, r) in ig.security.tls.certificate_authorities.iter().enumerate() {
            self.resource(
                &format!("ignition.security.tls.certificateAuthorities.{i}"),
                r,
                true,
            );
        }
        for (key, value) in [
            ("httpProxy", &ig.proxy.http_proxy),
            ("httpsProxy", &ig.proxy.https_proxy),
        ] {
            let Some(url) = value else { continue };
            match url_scheme(url) {
                Some("http") if key == "httpsProxy" => self.warn(
                    format!("ignition.proxy.{key}"),
                    "insecure plaintext HTTP proxy specified for HTTPS resources",
                ),
                Some("http") | Some("https") => {}
                _ => self.err(format!("ignition.proxy.{key}"), "proxies must be http(s)"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arn_forms() {
        assert!(arn_ok("arn:aws:s3:::bucket/key"));
        assert!(arn_ok(
            "arn:aws:s3:us-west-1:123456789012:accesspoint/test/object/some/path"
        ));
        assert!(!arn_ok("arn:aws:s3:::bucket-name-but-no-key"));
        assert!(!arn_ok("arn:aws:iam:::bucket/key"));
    }
}
