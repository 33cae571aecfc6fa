//! Engine events on stderr: a tiny `tracing` subscriber, so a reconnect or a failed
//! connection attempt shows up as `ringq: warning: ...` without pulling in a logging
//! framework. `RINGQ_LOG=off|error|warn|info|debug|trace` sets the most verbose level
//! shown (default `warn`).
//!
//! The engine logs its fatal error once when it stops (`stopping: ...`); the same error
//! comes back from `Running::wait` and is printed as the `ringq: ...` exit line, so that
//! one event is left out rather than shown twice.

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Installs the stderr subscriber as the global default (once, at start-up).
pub fn install() {
    let max = match std::env::var("RINGQ_LOG").ok().as_deref().map(str::trim) {
        Some("off") => LevelFilter::OFF,
        Some("error") => LevelFilter::ERROR,
        Some("info") => LevelFilter::INFO,
        Some("debug") => LevelFilter::DEBUG,
        Some("trace") => LevelFilter::TRACE,
        None | Some("warn" | "") => LevelFilter::WARN,
        Some(other) => {
            eprintln!(
                "ringq: warning: RINGQ_LOG={other:?} is not a level \
                 (off, error, warn, info, debug, trace); using warn"
            );
            LevelFilter::WARN
        }
    };
    if max != LevelFilter::OFF {
        let _ = tracing::subscriber::set_global_default(Stderr {
            max,
            next_span: AtomicU64::new(1),
        });
    }
}

struct Stderr {
    max: LevelFilter,
    next_span: AtomicU64,
}

/// Collects an event's message and its other fields as `key=value`.
#[derive(Default)]
struct Line {
    message: String,
    fields: String,
}

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            if !self.fields.is_empty() {
                self.fields.push_str(", ");
            }
            let _ = write!(self.fields, "{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.record_debug(field, &format_args!("{value}"));
        }
    }
}

impl Subscriber for Stderr {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        // The engine's lines that an event says too (a gap, drops, pops possibly lost):
        // the CLI prints the event itself, one line each.
        metadata.is_event()
            && *metadata.level() <= self.max
            && metadata.target() != ringq::EVENT_TARGET
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.max)
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed).max(1))
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut line = Line::default();
        event.record(&mut line);
        let level = *event.metadata().level();
        if level == Level::ERROR && line.message.starts_with("stopping: ") {
            return;
        }
        let label = match level {
            Level::ERROR => "error",
            Level::WARN => "warning",
            Level::INFO => "info",
            Level::DEBUG => "debug",
            Level::TRACE => "trace",
        };
        let mut err = std::io::stderr().lock();
        let _ = if line.fields.is_empty() {
            writeln!(err, "ringq: {label}: {}", line.message)
        } else {
            writeln!(err, "ringq: {label}: {} ({})", line.message, line.fields)
        };
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}
