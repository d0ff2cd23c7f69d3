//! Reboot windows in locksmith's syntax: a start of `HH:MM` (every day) or `Day HH:MM` (every
//! week; `Sun`..`Sat` or full names, any case) in local time, plus a length.
//!
//! Contract: a window is open at `t` when some window start `s <= t` has `t < s + length`.
//! Starts are computed in calendar terms in the given time zone, so a window that crosses
//! midnight or the end of the week is open on both sides of the boundary, and a daylight
//! saving change moves the instant, not the wall-clock start.

use std::time::Duration;

use jiff::civil::{Date, Weekday};
use jiff::{Span, Timestamp, Zoned};

/// A malformed window start.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WindowError {
    /// Not `HH:MM` or `Day HH:MM`.
    #[error("window start {0:?} is not \"HH:MM\" or \"Day HH:MM\"")]
    Syntax(String),
    /// An unknown day name.
    #[error("unknown day {0:?} (expected Sun, Mon, Tue, Wed, Thu, Fri or Sat)")]
    Day(String),
    /// Hour or minute out of range.
    #[error("time {0:?} is out of range (00:00 to 23:59)")]
    Time(String),
    /// Zero length.
    #[error("window length must be greater than zero")]
    ZeroLength,
}

/// A recurring reboot window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebootWindow {
    /// Day of the week, or `None` for every day.
    pub day: Option<Weekday>,
    /// Start hour (local time).
    pub hour: i8,
    /// Start minute.
    pub minute: i8,
    /// How long the window stays open.
    pub length: Duration,
}

fn parse_day(s: &str) -> Option<Weekday> {
    let lower = s.to_ascii_lowercase();
    let days = [
        ("sun", Weekday::Sunday),
        ("mon", Weekday::Monday),
        ("tue", Weekday::Tuesday),
        ("wed", Weekday::Wednesday),
        ("thu", Weekday::Thursday),
        ("fri", Weekday::Friday),
        ("sat", Weekday::Saturday),
    ];
    days.iter().find_map(|(short, day)| {
        let full_ok = lower.len() >= 3
            && lower.starts_with(short)
            && format!("{day:?}").to_ascii_lowercase().starts_with(&lower);
        full_ok.then_some(*day)
    })
}

impl RebootWindow {
    /// Parses a start (`"04:00"`, `"Thu 04:00"`) with a length.
    pub fn parse(start: &str, length: Duration) -> Result<Self, WindowError> {
        if length.is_zero() {
            return Err(WindowError::ZeroLength);
        }
        let parts: Vec<&str> = start.split_whitespace().collect();
        let (day, time) = match parts.as_slice() {
            [time] => (None, *time),
            [day, time] => (
                Some(parse_day(day).ok_or_else(|| WindowError::Day((*day).to_owned()))?),
                *time,
            ),
            _ => return Err(WindowError::Syntax(start.to_owned())),
        };
        let (h, m) = time
            .split_once(':')
            .ok_or_else(|| WindowError::Syntax(start.to_owned()))?;
        let digits = |s: &str, max_len: usize| {
            (!s.is_empty() && s.len() <= max_len && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<i8>().ok())
                .flatten()
        };
        let (Some(hour), Some(minute)) = (digits(h, 2), digits(m, 2)) else {
            return Err(WindowError::Time(time.to_owned()));
        };
        if !(0..24).contains(&hour) || !(0..60).contains(&minute) || m.len() != 2 {
            return Err(WindowError::Time(time.to_owned()));
        }
        Ok(Self {
            day,
            hour,
            minute,
            length,
        })
    }

    fn period_days(&self) -> i64 {
        if self.day.is_some() {
            7
        } else {
            1
        }
    }

    fn start_on(&self, date: Date, like: &Zoned) -> Zoned {
        date.at(self.hour, self.minute, 0, 0)
            .to_zoned(like.time_zone().clone())
            .expect("a window start within the supported date range")
    }

    /// The latest window start at or before `now`.
    pub fn latest_start(&self, now: &Zoned) -> Zoned {
        let mut date = now.date();
        if let Some(day) = self.day {
            let back =
                (now.weekday().to_sunday_zero_offset() - day.to_sunday_zero_offset()).rem_euclid(7);
            date = date
                .checked_sub(Span::new().days(back))
                .expect("date in range");
        }
        let start = self.start_on(date, now);
        if start.timestamp() <= now.timestamp() {
            return start;
        }
        let earlier = date
            .checked_sub(Span::new().days(self.period_days()))
            .expect("date in range");
        self.start_on(earlier, now)
    }

    fn end_of(&self, start: &Zoned) -> Timestamp {
        let len = i64::try_from(self.length.as_secs()).unwrap_or(i64::MAX / 2);
        Timestamp::from_second(start.timestamp().as_second().saturating_add(len))
            .unwrap_or(Timestamp::MAX)
    }

    /// Whether a window is open at `now`.
    pub fn is_open(&self, now: &Zoned) -> bool {
        let latest = self.latest_start(now);
        if now.timestamp() < self.end_of(&latest) {
            return true;
        }
        // A window longer than its period overlaps the next start.
        let previous = latest
            .date()
            .checked_sub(Span::new().days(self.period_days()))
            .map(|d| self.start_on(d, now));
        previous.is_ok_and(|p| now.timestamp() < self.end_of(&p))
    }

    /// The next window start strictly after `now`.
    pub fn next_start(&self, now: &Zoned) -> Zoned {
        let latest = self.latest_start(now);
        let next = latest
            .date()
            .checked_add(Span::new().days(self.period_days()))
            .expect("date in range");
        self.start_on(next, now)
    }

    /// How long from `now` until a window is open: zero if one is open now.
    pub fn wait_from(&self, now: &Zoned) -> Duration {
        if self.is_open(now) {
            return Duration::ZERO;
        }
        let next = self.next_start(now);
        let secs = next.timestamp().as_second() - now.timestamp().as_second();
        Duration::from_secs(secs.max(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::tz::TimeZone;

    fn at(text: &str) -> Zoned {
        // 2026-11-26 is a Thursday.
        let dt: jiff::civil::DateTime = text.parse().unwrap();
        dt.to_zoned(TimeZone::UTC).unwrap()
    }

    fn hours(h: u64) -> Duration {
        Duration::from_secs(h * 3600)
    }

    #[test]
    fn parses_locksmith_syntax() {
        let w = RebootWindow::parse("Thu 04:00", hours(1)).unwrap();
        assert_eq!((w.day, w.hour, w.minute), (Some(Weekday::Thursday), 4, 0));
        let w = RebootWindow::parse("sunday 23:30", hours(1)).unwrap();
        assert_eq!(w.day, Some(Weekday::Sunday));
        assert_eq!(RebootWindow::parse("04:05", hours(1)).unwrap().day, None);
        assert_eq!(
            RebootWindow::parse("Funday 04:00", hours(1)),
            Err(WindowError::Day("Funday".into()))
        );
        assert!(matches!(
            RebootWindow::parse("24:00", hours(1)),
            Err(WindowError::Time(_))
        ));
        assert!(matches!(
            RebootWindow::parse("4:7", hours(1)),
            Err(WindowError::Time(_))
        ));
        assert!(matches!(
            RebootWindow::parse("Thu 04:00 extra", hours(1)),
            Err(WindowError::Syntax(_))
        ));
        assert_eq!(
            RebootWindow::parse("04:00", Duration::ZERO),
            Err(WindowError::ZeroLength)
        );
    }

    #[test]
    fn daily_window() {
        let w = RebootWindow::parse("04:00", hours(1)).unwrap();
        assert!(!w.is_open(&at("2026-11-26T03:59:59")));
        assert!(w.is_open(&at("2026-11-26T04:00:00")));
        assert!(w.is_open(&at("2026-11-26T04:59:59")));
        assert!(!w.is_open(&at("2026-11-26T05:00:00")));
        assert_eq!(
            w.wait_from(&at("2026-11-26T03:00:00")),
            Duration::from_secs(3600)
        );
        assert_eq!(w.wait_from(&at("2026-11-26T04:30:00")), Duration::ZERO);
        // After today's window: tomorrow's.
        assert_eq!(
            w.next_start(&at("2026-11-26T05:00:00")),
            at("2026-11-27T04:00:00")
        );
        assert_eq!(w.wait_from(&at("2026-11-26T05:00:00")), hours(23));
    }

    #[test]
    fn daily_window_crossing_midnight() {
        let w = RebootWindow::parse("23:00", hours(2)).unwrap();
        assert!(w.is_open(&at("2026-11-26T23:30:00")));
        // After midnight the window that started yesterday is still open.
        assert!(w.is_open(&at("2026-11-27T00:59:00")));
        assert!(!w.is_open(&at("2026-11-27T01:00:00")));
        assert_eq!(
            w.latest_start(&at("2026-11-27T00:30:00")),
            at("2026-11-26T23:00:00")
        );
        assert_eq!(w.wait_from(&at("2026-11-27T01:00:00")), hours(22));
    }

    #[test]
    fn weekly_window() {
        // Thursday 04:00 for 1 hour; 2026-11-26 is a Thursday.
        let w = RebootWindow::parse("Thu 04:00", hours(1)).unwrap();
        assert!(w.is_open(&at("2026-11-26T04:10:00")));
        assert!(!w.is_open(&at("2026-11-25T04:10:00")), "wednesday");
        assert!(!w.is_open(&at("2026-11-27T04:10:00")), "friday");
        assert_eq!(
            w.next_start(&at("2026-11-26T05:00:00")),
            at("2026-12-03T04:00:00")
        );
        assert_eq!(w.wait_from(&at("2026-11-25T04:00:00")), hours(24));
    }

    #[test]
    fn weekly_window_crossing_the_week_boundary() {
        // Saturday 23:00 for 3 hours: open into Sunday, the first day of locksmith's week.
        let w = RebootWindow::parse("Sat 23:00", hours(3)).unwrap();
        assert!(w.is_open(&at("2026-11-28T23:30:00")), "saturday night");
        assert!(w.is_open(&at("2026-11-29T01:59:00")), "sunday morning");
        assert!(!w.is_open(&at("2026-11-29T02:00:00")));
        assert_eq!(
            w.latest_start(&at("2026-11-29T01:00:00")),
            at("2026-11-28T23:00:00")
        );
        // Sunday after the window: next Saturday.
        assert_eq!(
            w.next_start(&at("2026-11-29T03:00:00")),
            at("2026-12-05T23:00:00")
        );
        // Across the year boundary too.
        let w = RebootWindow::parse("Thu 22:00", hours(4)).unwrap();
        assert!(
            w.is_open(&at("2027-01-01T01:00:00")),
            "2026-12-31 is a thursday"
        );
    }

    #[test]
    fn window_longer_than_its_period_stays_open() {
        let w = RebootWindow::parse("12:00", hours(30)).unwrap();
        assert!(w.is_open(&at("2026-11-27T11:00:00")));
        assert_eq!(w.wait_from(&at("2026-11-27T11:00:00")), Duration::ZERO);
    }

    #[test]
    fn dst_keeps_the_wall_clock_start() {
        let tz = TimeZone::get("Europe/Berlin");
        let Ok(tz) = tz else {
            return; // no tzdata on this machine; covered by the UTC tests
        };
        let w = RebootWindow::parse("Sun 04:00", hours(1)).unwrap();
        // 2026-10-25 is the Sunday clocks go back in Europe.
        let now: jiff::civil::DateTime = "2026-10-25T04:30:00".parse().unwrap();
        let now = now.to_zoned(tz).unwrap();
        assert!(w.is_open(&now));
        assert_eq!(w.latest_start(&now).time(), jiff::civil::time(4, 0, 0, 0));
    }
}
