//! Progress of long steps on stderr: indicatif spinners and bars when stderr is a terminal,
//! plain lines otherwise (CI, logs), where package counts and upload progress show at most
//! every few seconds.

use std::cell::{Cell, RefCell};
use std::io::IsTerminal as _;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use wellcar_image::{BuildEvent, PackageStep, RootfsProgress};
use wellcar_server::client::{OnUpload, UploadProgress};

/// Whether to draw bars: stderr is a terminal.
fn terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// Renders a build's events on stderr.
pub enum BuildProgress {
    /// Spinners and bars.
    Terminal(TerminalBuild),
    /// One line per event.
    Plain(PlainBuild),
}

impl BuildProgress {
    /// Bars on a terminal, else plain lines.
    pub fn for_stderr() -> Self {
        if terminal() {
            Self::Terminal(TerminalBuild::default())
        } else {
            Self::Plain(PlainBuild::default())
        }
    }

    /// Shows `e`.
    pub fn event(&self, e: BuildEvent) {
        match self {
            Self::Terminal(t) => t.event(e),
            Self::Plain(p) => {
                if let Some(line) = p.line(&e, Instant::now()) {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// Plain lines: every event but package counts, which show when a step of a stage is complete
/// or has passed another tenth [`PlainBuild::EVERY`] after the last line.
#[derive(Debug, Default)]
pub struct PlainBuild {
    /// When the last line was shown.
    last: Cell<Option<Instant>>,
    /// Per [`PackageStep`], the tenths shown in this stage.
    tenths: Cell<[u32; 3]>,
}

impl PlainBuild {
    /// Least time between two package count lines.
    const EVERY: Duration = Duration::from_secs(5);

    /// The line for `e` at `now`, if it gets one.
    pub fn line(&self, e: &BuildEvent, now: Instant) -> Option<String> {
        let line = match e {
            BuildEvent::PhaseStarted { .. } => e.to_string(),
            BuildEvent::Rootfs(RootfsProgress::Package { step, done, total }) => {
                let mut shown = self.tenths.get();
                let tenths = done * 10 / total.max(&1);
                let due = self.last.get().is_none_or(|t| now - t >= Self::EVERY);
                if tenths <= shown[*step as usize] || !(due || done == total) {
                    return None;
                }
                shown[*step as usize] = tenths;
                self.tenths.set(shown);
                format!("    {e} ({}%)", done * 100 / total)
            }
            _ => {
                if let BuildEvent::Rootfs(RootfsProgress::Stage(_)) = e {
                    self.tenths.set([0; 3]);
                }
                format!("    {e}")
            }
        };
        self.last.set(Some(now));
        Some(line)
    }
}

/// A spinner per phase; mmdebstrap's package counts as a bar (downloads, then unpacking and
/// setting up together, as dpkg interleaves them).
#[derive(Debug, Default)]
pub struct TerminalBuild {
    bar: RefCell<Option<ProgressBar>>,
    /// The current mmdebstrap stage.
    stage: RefCell<String>,
    /// Per [`PackageStep`], packages done in this stage.
    counts: Cell<[u32; 3]>,
}

impl TerminalBuild {
    fn event(&self, e: BuildEvent) {
        let mut bar = self.bar.borrow_mut();
        match (&e, bar.as_ref()) {
            (BuildEvent::PhaseStarted { name }, _) => {
                let pb = bars().add(
                    ProgressBar::new_spinner()
                        .with_style(spinner_style())
                        .with_prefix(*name),
                );
                pb.enable_steady_tick(Duration::from_millis(100));
                *bar = Some(pb);
            }
            (BuildEvent::PhaseDone { .. } | BuildEvent::PhaseFailed { .. }, _) => {
                if let Some(pb) = bar.take() {
                    pb.finish_and_clear();
                }
                eprintln!("{e}");
            }
            (BuildEvent::Rootfs(RootfsProgress::Stage(stage)), Some(pb)) => {
                pb.set_style(spinner_style());
                pb.unset_length();
                pb.set_message(stage.clone());
                *self.stage.borrow_mut() = stage.clone();
                self.counts.set([0; 3]);
            }
            (BuildEvent::Rootfs(RootfsProgress::Package { step, done, total }), Some(pb)) => {
                let mut counts = self.counts.get();
                counts[*step as usize] = *done;
                self.counts.set(counts);
                let [downloaded, unpacked, set_up] = counts;
                let (pos, len, what) = match step {
                    PackageStep::Download => (
                        downloaded,
                        *total,
                        format!("{downloaded}/{total} downloaded"),
                    ),
                    _ => (
                        unpacked + set_up,
                        2 * total,
                        format!("{unpacked}/{total} unpacked, {set_up}/{total} set up"),
                    ),
                };
                if pb.length() != Some(u64::from(len)) {
                    pb.set_style(package_style());
                    pb.set_length(u64::from(len));
                }
                pb.set_position(u64::from(pos));
                pb.set_message(format!("{what} · {}", self.stage.borrow()));
            }
            _ => bars().suspend(|| eprintln!("    {e}")),
        }
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner:.green} {prefix:<10.bold} {elapsed_precise} {msg}")
        .expect("valid template")
}

fn package_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{spinner:.green} {prefix:<10.bold} {elapsed_precise} [{bar:24.cyan/blue}] {wide_msg}",
    )
    .expect("valid template")
    .progress_chars("=> ")
}

/// Every bar draws through this, so that log lines can be written between two redraws.
fn bars() -> &'static MultiProgress {
    static BARS: OnceLock<MultiProgress> = OnceLock::new();
    BARS.get_or_init(MultiProgress::new)
}

/// Stderr for log lines (`tracing`): written while the progress bars are hidden.
pub struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        bars().suspend(|| std::io::stderr().write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// An upload progress reporter for stderr: a bar with bytes and rate on a terminal, else a
/// line every few seconds and one at the end.
pub fn upload() -> OnUpload {
    if terminal() {
        let bar = Mutex::new(None::<ProgressBar>);
        Arc::new(move |p: UploadProgress| {
            let mut bar = bar.lock().unwrap_or_else(|e| e.into_inner());
            let pb = bar.get_or_insert_with(|| {
                bars().add(ProgressBar::new(p.total)).with_style(
                    ProgressStyle::with_template(
                        "uploading [{bar:30.cyan/blue}] {binary_bytes}/{binary_total_bytes} ({percent}%), {binary_bytes_per_sec}, {eta} left",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                )
            });
            pb.set_position(p.sent);
            if p.sent >= p.total {
                pb.finish();
            }
        })
    } else {
        let plain = Mutex::new(PlainUpload::new(Instant::now()));
        Arc::new(move |p| {
            let line = plain
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .line(p, Instant::now());
            if let Some(line) = line {
                eprintln!("{line}");
            }
        })
    }
}

/// Plain upload lines: at most one per [`PlainUpload::EVERY`], and the last one.
#[derive(Debug)]
pub struct PlainUpload {
    start: Instant,
    last: Option<Instant>,
}

impl PlainUpload {
    /// Time between two lines.
    const EVERY: Duration = Duration::from_secs(2);

    /// An upload that started at `start`.
    pub fn new(start: Instant) -> Self {
        Self { start, last: None }
    }

    /// The line for `p` at `now`, if one is due.
    pub fn line(&mut self, p: UploadProgress, now: Instant) -> Option<String> {
        let due = self.last.is_none_or(|t| now - t >= Self::EVERY);
        if !due && p.sent < p.total {
            return None;
        }
        self.last = Some(now);
        let secs = (now - self.start).as_secs_f64().max(1e-3);
        Some(format!(
            "uploaded {} / {} ({}%), {}/s",
            mib(p.sent),
            mib(p.total),
            (p.sent * 100).checked_div(p.total).unwrap_or(100),
            mib((p.sent as f64 / secs) as u64)
        ))
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use wellcar_image::Output;

    #[test]
    fn plain_build_shows_stages_and_package_counts_now_and_then() {
        let plain = PlainBuild::default();
        let start = Instant::now();
        let stage = |s: &str| BuildEvent::Rootfs(RootfsProgress::Stage(s.into()));
        let pkg = |step, done| {
            BuildEvent::Rootfs(RootfsProgress::Package {
                step,
                done,
                total: 20,
            })
        };
        // (seconds since start, event)
        let mut events = vec![
            (0, BuildEvent::PhaseStarted { name: "rootfs" }),
            (0, stage("downloading packages with apt")),
        ];
        // Fast downloads: only the last count shows.
        events.extend((1..=20).map(|n| (1, pkg(PackageStep::Download, n))));
        events.push((2, stage("installing essential packages")));
        // One package a second: a line every five seconds, once past a new tenth.
        events.extend((1..=20).map(|n| (2 + n, pkg(PackageStep::Unpack, n))));
        events.extend((1..=3).map(|n| (30 + n, pkg(PackageStep::Configure, n))));
        events.push((40, stage("installing remaining packages inside the chroot")));
        events.push((50, pkg(PackageStep::Configure, 2)));
        events.push((
            60,
            BuildEvent::PhaseDone {
                name: "rootfs",
                secs: 98.31,
                outputs: vec![Output {
                    path: PathBuf::from("/cache/key/tree"),
                    bytes: 512 << 20,
                }],
            },
        ));
        let lines: Vec<String> = events
            .iter()
            .filter_map(|(t, e)| plain.line(e, start + Duration::from_secs(u64::from(*t))))
            .collect();
        assert_eq!(
            lines,
            [
                "==> rootfs",
                "    mmdebstrap: downloading packages with apt",
                "    mmdebstrap: downloaded 20/20 packages (100%)",
                "    mmdebstrap: installing essential packages",
                "    mmdebstrap: unpacked 5/20 packages (25%)",
                "    mmdebstrap: unpacked 10/20 packages (50%)",
                "    mmdebstrap: unpacked 15/20 packages (75%)",
                "    mmdebstrap: unpacked 20/20 packages (100%)",
                "    mmdebstrap: set up 2/20 packages (10%)",
                "    mmdebstrap: installing remaining packages inside the chroot",
                // A new stage counts afresh.
                "    mmdebstrap: set up 2/20 packages (10%)",
                "    rootfs done in 98.3 s: tree 512.0 MiB",
            ]
        );
    }

    #[test]
    fn plain_upload_lines_are_spaced_and_end_with_the_total() {
        let start = Instant::now();
        let mut up = PlainUpload::new(start);
        let total = 136 << 20;
        let at = |ms| start + Duration::from_millis(ms);
        let p = |mib: u64| UploadProgress {
            sent: mib << 20,
            total,
        };
        assert_eq!(
            up.line(p(40), at(500)).as_deref(),
            Some("uploaded 40.0 MiB / 136.0 MiB (29%), 80.0 MiB/s")
        );
        assert_eq!(up.line(p(60), at(1500)), None);
        assert!(up.line(p(100), at(2500)).is_some());
        assert_eq!(
            up.line(p(136), at(2600)).as_deref(),
            Some("uploaded 136.0 MiB / 136.0 MiB (100%), 52.3 MiB/s")
        );
    }
}
