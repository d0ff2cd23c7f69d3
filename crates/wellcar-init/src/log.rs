//! Boot messages and step timing.
//!
//! Contract: [`Log::info`] writes one line to the kernel log (`/dev/kmsg`, so `dmesg` shows
//! it with the kernel's timestamp) and, if the kernel log is not open yet, to the console.
//! [`Log::step`] runs a closure and logs `<step> done in <ms> ms` with the time since `/init`
//! started, which is how a boot is profiled. [`Log::console`] writes to the console and the
//! kernel log, for the one line a failure prints.

use std::fs::File;
use std::io::Write;
use std::time::{Duration, Instant};

/// Where boot messages go.
#[derive(Debug)]
pub struct Log {
    kmsg: Option<File>,
    started: Instant,
}

impl Default for Log {
    fn default() -> Self {
        Self::new()
    }
}

impl Log {
    /// A log whose clock starts now; call [`Log::open_kmsg`] once `/dev` is mounted.
    pub fn new() -> Self {
        Log {
            kmsg: None,
            started: Instant::now(),
        }
    }

    /// Opens `/dev/kmsg` (quietly keeps using the console if that fails).
    pub fn open_kmsg(&mut self) {
        self.kmsg = File::options().write(true).open("/dev/kmsg").ok();
    }

    /// Time since `/init` started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// One line of the boot's progress, at kernel log level 5 (notice): on the console with
    /// the image's default `loglevel=6`, which hides the kernel's own informational lines.
    pub fn info(&mut self, message: &str) {
        let line = format!("<5>wellcar-init: {message}\n");
        match self.kmsg.as_mut().map(|k| k.write_all(line.as_bytes())) {
            Some(Ok(())) => {}
            _ => {
                let _ = std::io::stdout().write_all(&line.as_bytes()[3..]);
            }
        }
    }

    /// A line that must reach the console (also logged at level 2, critical).
    pub fn console(&mut self, message: &str) {
        let _ = writeln!(std::io::stdout(), "wellcar-init: {message}");
        let _ = std::io::stdout().flush();
        if let Some(k) = self.kmsg.as_mut() {
            let _ = k.write_all(format!("<2>wellcar-init: {message}\n").as_bytes());
        }
    }

    /// Runs `work`, logging how long it took; errors are tagged with `step`.
    pub fn step<T, E>(
        &mut self,
        step: &'static str,
        work: impl FnOnce(&mut Self) -> Result<T, E>,
    ) -> Result<T, crate::BootError>
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let start = Instant::now();
        let result = work(self).map_err(|e| crate::BootError {
            step,
            source: e.into(),
        });
        if result.is_ok() {
            let ms = start.elapsed().as_secs_f64() * 1000.0;
            let total = self.elapsed().as_secs_f64() * 1000.0;
            self.info(&format!("{step} done in {ms:.1} ms (t+{total:.1} ms)"));
        }
        result
    }
}
