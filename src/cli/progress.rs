//! The progress bar: done/total, rate and ETA on stderr, only when stderr
//! is a terminal.

use crate::engine::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

pub struct Bar {
    bar: ProgressBar,
}

impl Bar {
    /// A bar, or `None` when stderr is not a terminal.
    pub fn for_terminal(total: u64) -> Option<Bar> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let bar =
            ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(10));
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} shards {per_sec} eta {eta} {msg}",
            )
            .expect("valid template"),
        );
        Some(Bar { bar })
    }
}

impl Progress for Bar {
    fn update(&self, done: u64, failed: u64, _total: u64) {
        self.bar.set_position(done + failed);
        if failed > 0 {
            self.bar.set_message(format!("({failed} failed)"));
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
