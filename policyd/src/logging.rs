//! Structured log lines on stderr: `ts level target: message`, where the
//! message itself is `key=value` pairs wherever it describes a fact.

use std::io::Write;

struct StderrLogger {
    level: log::LevelFilter,
}

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= self.level
    }
    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let _ = writeln!(
            std::io::stderr().lock(),
            "{}.{:03} {:<5} {}: {}",
            now.as_secs(),
            now.subsec_millis(),
            r.level(),
            r.target(),
            r.args()
        );
    }
    fn flush(&self) {}
}

/// Install the logger; `WEIR_LOG` (error|warn|info|debug|trace) sets the level.
pub fn init() {
    let level = std::env::var("WEIR_LOG").ok().and_then(|v| v.parse().ok()).unwrap_or(log::LevelFilter::Info);
    let _ = log::set_boxed_logger(Box::new(StderrLogger { level })).map(|()| log::set_max_level(level));
}
