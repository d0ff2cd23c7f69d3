//! Rollout policy decisions: pure functions over a group's policy, its counters and the clock.
//!
//! Contract: nothing here touches the database; callers pass the counters read inside the grant
//! transaction, so the decision and the grant are atomic.

use jiff::tz::TimeZone;
use jiff::Timestamp;

use crate::model::{Policy, Window};

const MINUTES_PER_WEEK: i64 = 7 * 24 * 60;

/// Why a policy refused to grant an update right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// An operator paused the group.
    Paused,
    /// The safe-mode brake halted the group.
    Halted,
    /// Outside every maintenance window.
    OutsideWindow,
    /// `max_updates_per_period` reached.
    PeriodLimit,
    /// `max_concurrent` reached.
    ConcurrencyLimit,
    /// Safe mode: the first instance is still updating.
    SafeModeFirstInProgress,
}

impl Denial {
    /// Short machine-readable reason (metrics label, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            Denial::Paused => "paused",
            Denial::Halted => "halted",
            Denial::OutsideWindow => "outside-window",
            Denial::PeriodLimit => "period-limit",
            Denial::ConcurrencyLimit => "concurrency-limit",
            Denial::SafeModeFirstInProgress => "safe-mode-first-in-progress",
        }
    }
}

/// Counters of a group, read in the grant transaction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RolloutCounters {
    /// Grants whose time is within the last period.
    pub granted_in_period: i64,
    /// Updates in progress and not timed out.
    pub in_progress: i64,
    /// Instances that completed the update to the current target version.
    pub succeeded_on_target: i64,
}

/// A policy value that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    /// Unknown IANA time zone.
    #[error("unknown time zone {0:?}")]
    TimeZone(String),
    /// Bad window day.
    #[error("window day {0:?} is not one of mon, tue, wed, thu, fri, sat, sun")]
    Day(String),
    /// Bad window start.
    #[error("window start {0:?} is not HH:MM")]
    Start(String),
    /// Zero or over-a-week length.
    #[error("window length {0} minutes must be between 1 and 10080")]
    Length(u32),
    /// A negative or zero number where a positive one is required.
    #[error("{field} must be {rule}, got {value}")]
    Number {
        /// Field name.
        field: &'static str,
        /// What is allowed.
        rule: &'static str,
        /// What was given.
        value: i64,
    },
}

fn day_index(day: &str) -> Result<i64, PolicyError> {
    let days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let lower = day.trim().to_ascii_lowercase();
    let short = lower.get(..3).unwrap_or(&lower);
    days.iter()
        .position(|d| *d == short)
        .map(|i| i as i64)
        .ok_or_else(|| PolicyError::Day(day.to_owned()))
}

fn start_minutes(start: &str) -> Result<i64, PolicyError> {
    let bad = || PolicyError::Start(start.to_owned());
    let (h, m) = start.split_once(':').ok_or_else(bad)?;
    let h: i64 = h.parse().map_err(|_| bad())?;
    let m: i64 = m.parse().map_err(|_| bad())?;
    if !(0..24).contains(&h) || !(0..60).contains(&m) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

/// Checks every value of a policy; the admin API calls this before storing one.
pub fn validate(policy: &Policy) -> Result<(), PolicyError> {
    TimeZone::get(&policy.timezone).map_err(|_| PolicyError::TimeZone(policy.timezone.clone()))?;
    for w in &policy.windows {
        for d in &w.days {
            day_index(d)?;
        }
        start_minutes(&w.start)?;
        if w.minutes == 0 || i64::from(w.minutes) > MINUTES_PER_WEEK {
            return Err(PolicyError::Length(w.minutes));
        }
    }
    for (field, value, rule, ok) in [
        (
            "period_secs",
            policy.period_secs,
            "positive",
            policy.period_secs > 0,
        ),
        (
            "update_timeout_secs",
            policy.update_timeout_secs,
            "positive",
            policy.update_timeout_secs > 0,
        ),
        (
            "max_updates_per_period",
            policy.max_updates_per_period,
            "zero (unlimited) or positive",
            policy.max_updates_per_period >= 0,
        ),
        (
            "max_concurrent",
            policy.max_concurrent,
            "zero (unlimited) or positive",
            policy.max_concurrent >= 0,
        ),
        (
            "safe_mode_failures",
            policy.safe_mode_failures,
            "at least 1",
            policy.safe_mode_failures >= 1,
        ),
    ] {
        if !ok {
            return Err(PolicyError::Number { field, rule, value });
        }
    }
    Ok(())
}

/// Whether `now_ms` falls inside any of the windows, read as wall-clock times in `timezone`.
/// No windows means always open. Invalid entries (rejected by [`validate`]) never match.
pub fn window_open(timezone: &str, windows: &[Window], now_ms: i64) -> bool {
    if windows.is_empty() {
        return true;
    }
    let Ok(tz) = TimeZone::get(timezone) else {
        return false;
    };
    let Ok(ts) = Timestamp::from_millisecond(now_ms) else {
        return false;
    };
    let local = ts.to_zoned(tz);
    let now_min = i64::from(local.weekday().to_monday_zero_offset()) * 1440
        + i64::from(local.hour()) * 60
        + i64::from(local.minute());
    windows.iter().any(|w| {
        let Ok(start) = start_minutes(&w.start) else {
            return false;
        };
        w.days.iter().any(|d| {
            let Ok(day) = day_index(d) else { return false };
            let begin = day * 1440 + start;
            (now_min - begin).rem_euclid(MINUTES_PER_WEEK) < i64::from(w.minutes)
        })
    })
}

/// Decides whether one more update may be granted in a group right now.
pub fn decide(
    policy: &Policy,
    halted: bool,
    counters: RolloutCounters,
    now_ms: i64,
) -> Result<(), Denial> {
    if !policy.updates_enabled {
        return Err(Denial::Paused);
    }
    if halted {
        return Err(Denial::Halted);
    }
    if !window_open(&policy.timezone, &policy.windows, now_ms) {
        return Err(Denial::OutsideWindow);
    }
    if policy.safe_mode && counters.succeeded_on_target == 0 && counters.in_progress >= 1 {
        return Err(Denial::SafeModeFirstInProgress);
    }
    if policy.max_concurrent > 0 && counters.in_progress >= policy.max_concurrent {
        return Err(Denial::ConcurrencyLimit);
    }
    if policy.max_updates_per_period > 0
        && counters.granted_in_period >= policy.max_updates_per_period
    {
        return Err(Denial::PeriodLimit);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc3339: &str) -> i64 {
        rfc3339.parse::<Timestamp>().unwrap().as_millisecond()
    }

    fn win(days: &[&str], start: &str, minutes: u32) -> Window {
        Window {
            days: days.iter().map(|d| d.to_string()).collect(),
            start: start.into(),
            minutes,
        }
    }

    #[test]
    fn windows_follow_the_group_time_zone() {
        // Saturday 2026-11-28 23:30 in Berlin is 22:30 UTC.
        let w = [win(&["sat"], "23:00", 60)];
        assert!(window_open("Europe/Berlin", &w, ms("2026-11-28T22:30:00Z")));
        assert!(!window_open("UTC", &w, ms("2026-11-28T22:30:00Z")));
        // The window runs past midnight into Sunday 00:00 local, then closes.
        assert!(!window_open(
            "Europe/Berlin",
            &w,
            ms("2026-11-28T23:00:00Z")
        ));
        assert!(window_open("Europe/Berlin", &w, ms("2026-11-28T22:59:00Z")));
    }

    #[test]
    fn window_from_sunday_wraps_into_monday() {
        let w = [win(&["Sunday"], "22:00", 240)];
        assert!(window_open("UTC", &w, ms("2026-11-30T01:00:00Z"))); // Monday 01:00
        assert!(!window_open("UTC", &w, ms("2026-11-30T02:00:00Z")));
        assert!(window_open("UTC", &[], ms("2026-11-30T02:00:00Z")));
    }

    #[test]
    fn validation_names_the_bad_value() {
        let mut p = Policy {
            timezone: "Mars/Olympus".into(),
            ..Policy::default()
        };
        assert_eq!(
            validate(&p),
            Err(PolicyError::TimeZone("Mars/Olympus".into()))
        );
        p.timezone = "UTC".into();
        p.windows = vec![win(&["fr1"], "09:00", 10)];
        assert_eq!(validate(&p), Err(PolicyError::Day("fr1".into())));
        p.windows = vec![win(&["fri"], "24:00", 10)];
        assert_eq!(validate(&p), Err(PolicyError::Start("24:00".into())));
        p.windows = vec![win(&["fri"], "09:00", 0)];
        assert_eq!(validate(&p), Err(PolicyError::Length(0)));
        p.windows.clear();
        p.period_secs = 0;
        assert!(matches!(
            validate(&p),
            Err(PolicyError::Number {
                field: "period_secs",
                ..
            })
        ));
        p.period_secs = 60;
        assert_eq!(validate(&p), Ok(()));
        p.safe_mode_failures = 0;
        assert!(matches!(
            validate(&p),
            Err(PolicyError::Number {
                field: "safe_mode_failures",
                value: 0,
                ..
            })
        ));
    }

    #[test]
    fn limits_and_safe_mode_deny_in_order() {
        let now = ms("2026-11-28T12:00:00Z");
        let mut p = Policy::default();
        let c = RolloutCounters::default();
        assert_eq!(decide(&p, false, c, now), Ok(()));
        assert_eq!(decide(&p, true, c, now), Err(Denial::Halted));
        p.safe_mode = true;
        let one = RolloutCounters {
            in_progress: 1,
            ..c
        };
        assert_eq!(
            decide(&p, false, one, now),
            Err(Denial::SafeModeFirstInProgress)
        );
        let proven = RolloutCounters {
            in_progress: 1,
            succeeded_on_target: 1,
            ..c
        };
        assert_eq!(decide(&p, false, proven, now), Ok(()));
        p.max_concurrent = 1;
        assert_eq!(
            decide(&p, false, proven, now),
            Err(Denial::ConcurrencyLimit)
        );
        p.max_concurrent = 0;
        p.max_updates_per_period = 2;
        let busy = RolloutCounters {
            granted_in_period: 2,
            succeeded_on_target: 1,
            ..c
        };
        assert_eq!(decide(&p, false, busy, now), Err(Denial::PeriodLimit));
        p.windows = vec![win(&["mon"], "00:00", 1)];
        assert_eq!(decide(&p, false, c, now), Err(Denial::OutsideWindow));
        p.updates_enabled = false;
        assert_eq!(decide(&p, false, c, now), Err(Denial::Paused));
    }
}
