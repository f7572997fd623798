//! Ctrl-C and SIGTERM: the first one stops the run gracefully (in-flight
//! shards finish or are abandoned, the log is synced, exit 130); the run can
//! be resumed. The handler only sets a flag, which is async-signal-safe; a
//! watcher thread turns the flag into a stop.

use crate::sched::{Control, StopReason};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALLED.store(true, Ordering::SeqCst);
}

fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for signal in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: `on_signal` is an `extern "C"` function that only
            // stores to an atomic, which is async-signal-safe; the
            // sigaction struct is zero-initialised and fully set before use.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as *const () as usize;
                libc::sigemptyset(&mut action.sa_mask);
                action.sa_flags = libc::SA_RESTART;
                libc::sigaction(signal, &action, std::ptr::null_mut());
            }
        }
    });
}

/// Whether a signal arrived.
pub fn signalled() -> bool {
    SIGNALLED.load(Ordering::SeqCst)
}

/// Stops `control` (as interrupted) when SIGINT or SIGTERM arrives; the
/// watcher ends when `control` is dropped elsewhere and the run is over.
pub fn watch(control: &Arc<Control>) {
    install();
    let weak = Arc::downgrade(control);
    std::thread::Builder::new()
        .name("hxo-signals".into())
        .spawn(move || loop {
            let Some(control) = weak.upgrade() else {
                return;
            };
            if signalled() {
                control.stop(StopReason::Interrupted);
                return;
            }
            drop(control);
            std::thread::sleep(Duration::from_millis(50));
        })
        .expect("spawning the signal watcher");
}

/// Installs the handlers without a run (for `serve`).
pub fn install_handlers() {
    install();
}
