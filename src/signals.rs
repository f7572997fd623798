//! SIGINT and SIGTERM. The first one asks the process to stop gracefully:
//! runs end as interrupted (in-flight shards finish or are abandoned, the
//! log is synced), and the plans can be resumed. Neither front-end owns
//! this: the CLI turns a signal into stopping its run, `hxo serve` into
//! shutting the service down.
//!
//! The handler only sets a flag, which is async-signal-safe; [`signalled`]
//! reads it, and [`on_signal`] runs a callback from a watcher thread once
//! it is set.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

/// Set by the handler.
// Memory ordering: SeqCst, the handler's store and every reader's load
// form one order; the flag guards no other data, so Relaxed would do too,
// and this is read a few times a second at most.
static SIGNALLED: AtomicBool = AtomicBool::new(false);

/// How often the watcher thread looks at the flag.
const WATCH_INTERVAL: Duration = Duration::from_millis(50);

extern "C" fn handle(_: libc::c_int) {
    SIGNALLED.store(true, Ordering::SeqCst);
}

/// Installs the handlers (once per process).
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for signal in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: `handle` is an `extern "C"` function that only stores
            // to an atomic, which is async-signal-safe; the sigaction struct
            // is zero-initialised and fully set before use.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = handle as *const () as usize;
                libc::sigemptyset(&mut action.sa_mask);
                action.sa_flags = libc::SA_RESTART;
                libc::sigaction(signal, &action, std::ptr::null_mut());
            }
        }
    });
}

/// Whether SIGINT or SIGTERM arrived.
pub fn signalled() -> bool {
    SIGNALLED.load(Ordering::SeqCst)
}

/// A watcher started by [`on_signal`]; dropping it ends the watch.
pub struct Watch {
    over: Arc<AtomicBool>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.over.store(true, Ordering::SeqCst);
    }
}

/// Installs the handlers and calls `then` once, from a thread of its own,
/// when a signal arrives, unless the returned [`Watch`] was dropped first.
pub fn on_signal(then: impl FnOnce() + Send + 'static) -> std::io::Result<Watch> {
    install();
    let over = Arc::new(AtomicBool::new(false));
    let watching = over.clone();
    std::thread::Builder::new()
        .name("hxo-signals".into())
        .spawn(move || {
            while !watching.load(Ordering::SeqCst) {
                if signalled() {
                    then();
                    return;
                }
                std::thread::sleep(WATCH_INTERVAL);
            }
        })?;
    Ok(Watch { over })
}
