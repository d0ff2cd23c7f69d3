//! Ignition's `fetch-offline` → `neednet` decision: the initramfs brings the network up only
//! when a config source or a config's references need it.
//!
//! A URL needs the network when its scheme is `http`, `https`, `tftp`, `s3`, `arn` or `gs`;
//! `data:` URLs and empty sources do not. A config needs it when any of its
//! `ignition.config.merge`/`replace`, `ignition.security.tls.certificateAuthorities`,
//! `storage.files[].contents` or `storage.files[].append` sources does.

use wellcar_ignition::model::Resource;
use wellcar_ignition::Config;

/// Schemes fetched over the network.
const REMOTE_SCHEMES: [&str; 6] = ["http", "https", "tftp", "s3", "arn", "gs"];

/// Whether fetching `url` needs the network.
pub fn url_needs_network(url: &str) -> bool {
    url.split_once(':').is_some_and(|(scheme, _)| {
        REMOTE_SCHEMES
            .iter()
            .any(|s| s.eq_ignore_ascii_case(scheme))
    })
}

fn resource_needs_network(resource: &Resource) -> bool {
    resource.source.as_deref().is_some_and(url_needs_network)
}

/// Whether rendering and applying `config` fetches anything over the network; the URLs that
/// do, for the log.
pub fn remote_sources(config: &Config) -> Vec<String> {
    let ignition = &config.ignition;
    let resources = ignition
        .config
        .merge
        .iter()
        .chain(std::iter::once(&ignition.config.replace))
        .chain(ignition.security.tls.certificate_authorities.iter())
        .chain(
            config
                .storage
                .files
                .iter()
                .flat_map(|f| std::iter::once(&f.contents).chain(f.append.iter())),
        );
    resources
        .filter(|r| resource_needs_network(r))
        .filter_map(|r| r.source.clone())
        .collect()
}

/// Whether `config` needs the network (see [`remote_sources`]).
pub fn config_needs_network(config: &Config) -> bool {
    !remote_sources(config).is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Config {
        wellcar_ignition::parse_config(json.as_bytes())
            .unwrap()
            .config
    }

    #[test]
    fn local_configs_need_no_network() {
        let config = parse(
            r#"{"ignition":{"version":"3.4.0"},"storage":{"files":[{"path":"/etc/a","contents":{"source":"data:,x"}}]}}"#,
        );
        assert!(!config_needs_network(&config));
    }

    #[test]
    fn merges_cas_files_and_appends_need_the_network() {
        let cases = [
            r#"{"ignition":{"version":"3.4.0","config":{"merge":[{"source":"https://h/m.ign"}]}}}"#,
            r#"{"ignition":{"version":"3.4.0","config":{"replace":{"source":"tftp://h/r.ign"}}}}"#,
            r#"{"ignition":{"version":"3.4.0","security":{"tls":{"certificateAuthorities":[{"source":"http://h/ca.pem"}]}}}}"#,
            r#"{"ignition":{"version":"3.4.0"},"storage":{"files":[{"path":"/etc/a","contents":{"source":"s3://b/k"}}]}}"#,
            r#"{"ignition":{"version":"3.4.0"},"storage":{"files":[{"path":"/etc/a","append":[{"source":"gs://b/k"}]}]}}"#,
        ];
        for json in cases {
            let config = parse(json);
            assert_eq!(remote_sources(&config).len(), 1, "{json}");
        }
        assert!(url_needs_network("HTTPS://x"));
        assert!(!url_needs_network("data:,x"));
        assert!(!url_needs_network(""));
    }
}
