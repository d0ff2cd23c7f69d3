//! Limits on `ignition.config` references: depth ([`MAX_REFERENCE_DEPTH`]) and the total count
//! over the whole tree ([`MAX_REFERENCED_CONFIGS`]), each refused with the reference chain.

use std::io::Write;

use base64::Engine;

use crate::{
    parse_config, resolve_references, ResolveError, MAX_REFERENCED_CONFIGS, MAX_REFERENCE_DEPTH,
};

/// A gzip+base64 `data:` reference to `json`; `n` (an ignored media-type parameter) keeps
/// sibling sources distinct, so 8 references to one payload compress to about one.
fn reference_n(json: &str, n: usize) -> serde_json::Value {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(json.as_bytes()).unwrap();
    let data = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
    serde_json::json!({ "source": format!("data:;n={n};base64,{data}"), "compression": "gzip" })
}

fn reference(json: &str) -> serde_json::Value {
    reference_n(json, 0)
}

fn config_merging(references: Vec<serde_json::Value>, file: &str) -> String {
    serde_json::json!({
        "ignition": { "version": "3.3.0", "config": { "merge": references } },
        "storage": { "files": [ { "path": file } ] }
    })
    .to_string()
}

fn resolve(json: &str) -> Result<crate::Config, ResolveError> {
    resolve_references(parse_config(json.as_bytes()).unwrap().config)
}

#[test]
fn eight_merges_per_level_ten_deep_is_refused_by_the_total_budget() {
    // Level 0 is a leaf; level k merges level k-1 eight times: 8^10 configs if unbounded.
    let mut config = config_merging(Vec::new(), "/leaf");
    for level in 1..=MAX_REFERENCE_DEPTH {
        config = config_merging(
            (0..8).map(|n| reference_n(&config, n)).collect(),
            &format!("/level{level}"),
        );
    }
    assert!(
        config.len() < 64 * 1024,
        "test config is {} bytes",
        config.len()
    );
    let err = resolve(&config).unwrap_err();
    let ResolveError::TooMany { field } = &err else {
        panic!("expected TooMany, got {err}");
    };
    // Depth first: the first chain goes all the way down (10 fetches), then the budget runs
    // out among the siblings; the error names the whole chain of the 65th reference.
    assert!(field.starts_with("ignition.config.merge.0 > "), "{field}");
    assert!(err
        .to_string()
        .contains(&format!("more than {MAX_REFERENCED_CONFIGS}")));
}

#[test]
fn sixty_four_references_are_allowed_and_the_sixty_fifth_is_named() {
    let leaf = |i: usize| reference_n(&config_merging(Vec::new(), &format!("/f{i}")), i);
    let allowed = config_merging((0..MAX_REFERENCED_CONFIGS).map(leaf).collect(), "/top");
    let merged = resolve(&allowed).unwrap();
    assert_eq!(merged.storage.files.len(), MAX_REFERENCED_CONFIGS + 1);

    let over = config_merging((0..=MAX_REFERENCED_CONFIGS).map(leaf).collect(), "/top");
    let err = resolve(&over).unwrap_err();
    assert!(
        matches!(&err, ResolveError::TooMany { field } if field == "ignition.config.merge.64"),
        "{err}"
    );
}

#[test]
fn references_deeper_than_the_limit_are_refused_naming_the_chain() {
    let mut config = config_merging(Vec::new(), "/leaf");
    for level in 1..=MAX_REFERENCE_DEPTH + 1 {
        config = config_merging(vec![reference(&config)], &format!("/level{level}"));
    }
    let err = resolve(&config).unwrap_err();
    let ResolveError::TooDeep { field } = &err else {
        panic!("expected TooDeep, got {err}");
    };
    assert_eq!(
        field.matches("ignition.config.merge.0").count(),
        MAX_REFERENCE_DEPTH + 1,
        "{field}"
    );
}
