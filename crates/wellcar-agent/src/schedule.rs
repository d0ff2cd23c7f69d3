//! When to check next: the first check a configurable delay after start, then the configured
//! interval (or the server's `PollInterval`), each with ±1/9 jitter (update_engine's 45 ± 5
//! minutes); after failed checks the retry delay doubles per consecutive failure, up to
//! [`MAX_BACKOFF`].

use std::time::Duration;

use crate::config::Config;

/// Longest delay between checks while failing (update_engine's 4 hours).
pub const MAX_BACKOFF: Duration = Duration::from_secs(4 * 3600);

/// A uniform value in `[-1, 1]` from the OS random source.
pub fn random_unit() -> f64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return 0.0;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
}

/// `base` moved by up to ±1/9 of itself; `unit` is in `[-1, 1]`.
pub fn jitter(base: Duration, unit: f64) -> Duration {
    let unit = unit.clamp(-1.0, 1.0);
    base.mul_f64(1.0 + unit / 9.0)
}

/// Delay before the first check after start.
pub fn first_delay(config: &Config, unit: f64) -> Duration {
    jitter(config.first_check_delay, unit)
}

/// Delay before the next check, given consecutive failures so far and the server's poll
/// interval from the last answer.
pub fn next_delay(
    config: &Config,
    consecutive_failures: u32,
    poll_interval: Option<u32>,
    unit: f64,
) -> Duration {
    if consecutive_failures > 0 {
        let factor = 1u32 << (consecutive_failures - 1).min(20);
        let backoff = config.retry_delay.saturating_mul(factor).min(MAX_BACKOFF);
        return jitter(backoff, unit);
    }
    let base = poll_interval
        .filter(|s| *s > 0)
        .map(|s| Duration::from_secs(u64::from(s)))
        .unwrap_or(config.check_interval);
    jitter(base, unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_jitter_stays_within_a_ninth() {
        let config = Config::default();
        assert_eq!(next_delay(&config, 0, None, 0.0), Duration::from_secs(2700));
        assert_eq!(next_delay(&config, 0, None, 1.0), Duration::from_secs(3000));
        assert_eq!(
            next_delay(&config, 0, None, -1.0),
            Duration::from_secs(2400)
        );
        for _ in 0..100 {
            let u = random_unit();
            assert!((-1.0..=1.0).contains(&u));
        }
    }

    #[test]
    fn server_poll_interval_overrides_the_configured_one() {
        let config = Config::default();
        assert_eq!(
            next_delay(&config, 0, Some(600), 0.0),
            Duration::from_secs(600)
        );
        assert_eq!(
            next_delay(&config, 0, Some(0), 0.0),
            Duration::from_secs(2700)
        );
    }

    #[test]
    fn failures_back_off_exponentially_up_to_four_hours() {
        let config = Config {
            retry_delay: Duration::from_secs(60),
            ..Config::default()
        };
        let delays: Vec<u64> = (1..=10)
            .map(|n| next_delay(&config, n, Some(10), 0.0).as_secs())
            .collect();
        assert_eq!(
            delays,
            [60, 120, 240, 480, 960, 1920, 3840, 7680, 14400, 14400]
        );
    }
}
