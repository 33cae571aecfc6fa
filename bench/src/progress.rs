//! Progress bars on stderr for the long phases (filling, producing, draining), drawn only
//! when stderr is a terminal: a suite script that logs to a file gets none of them.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar counting `len` items, labelled `what`; hidden when stderr is not a terminal.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    let style = ProgressStyle::with_template(
        "{prefix:>24} [{bar:32}] {human_pos}/{human_len} {per_sec} {elapsed_precise}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    pb.set_style(style);
    pb.set_prefix(what.to_owned());
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}
