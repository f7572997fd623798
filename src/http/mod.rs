//! The REST service (`hxo serve`): the guide's `/api/hxo` routes with real
//! roles, live status, an event stream, Prometheus metrics and a dashboard.
//!
//! Codemap:
//! - `server.rs`: the thin adapter over tiny_http (the only file that
//!   names it): a fixed pool of worker threads, `server::Exchange` and
//!   `server::Reply`, raw chunked streams for SSE.
//! - `routes.rs`: [`ROUTES`] (the table the router matches and
//!   `openapi.json` describes), the order of checks, one handler per route.
//! - `auth.rs`: roles, constant-time token checks, the generated token.
//! - `runs.rs`: plans running in background threads, rehydration on start,
//!   stopping them on shutdown.
//! - `sse.rs`: the event stream and the event backlog.
//! - `metrics.rs`: `/metrics`.
//! - `dashboard.rs` and `dashboard.html`: the page at `/`.
//!
//! The service calls the engine for everything about plans; it keeps only
//! what is about HTTP (tokens, which plans it runs, streams, counters).
//!
//! Deliberately absent: TLS (bind to loopback, the default, or put a TLS
//! proxy in front), CORS (the dashboard is served from the same origin),
//! HTTP/2.

mod auth;
mod dashboard;
mod metrics;
mod routes;
mod runs;
mod server;
mod sse;

pub use routes::ROUTES;

use crate::cli::{exit, signals, CliError};
use crate::engine::Engine;
use crate::settings::Settings;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the request handlers share.
pub struct App {
    pub engine: Arc<Engine>,
    runs: Arc<runs::Runs>,
    tokens: auth::Tokens,
    /// Relative config paths of posted plans resolve against this.
    root: PathBuf,
    /// Set on shutdown: workers and streams end.
    stopping: AtomicBool,
    /// Event streams open now.
    streams: AtomicUsize,
    /// Requests answered, by status class 2xx..5xx.
    requests: [AtomicU64; 4],
    /// Serialises submit, abort and replay decisions.
    ops: Mutex<()>,
}

/// `hxo serve`: serves until SIGINT or SIGTERM, then stops running plans
/// as interrupted (resumable: the next start rehydrates them), closes the
/// engine and exits 130 if a plan was interrupted, else 0.
pub fn serve_cli(
    settings: Settings,
    bind: &str,
    root: &Path,
    salvage: bool,
) -> Result<u8, CliError> {
    let root = root
        .canonicalize()
        .ok()
        .filter(|r| r.is_dir())
        .ok_or_else(|| CliError::Usage(format!("--root {}: not a directory", root.display())))?;
    // Equal tokens would make every captain an admiral.
    if settings.admiral_token.is_some() && settings.admiral_token == settings.captain_token {
        return Err(CliError::Usage(
            "HXO_ADMIRAL_TOKEN and HXO_CAPTAIN_TOKEN are the same: a captain would be an admiral"
                .into(),
        ));
    }
    let (tokens, token_file) = auth::load(&settings).map_err(|e| {
        CliError::Internal(anyhow::anyhow!(
            "the admiral token file {}: {e}",
            auth::token_path(&settings).display()
        ))
    })?;
    let engine = Engine::open(settings, salvage)?;
    let server = match server::Server::bind(bind) {
        Ok(server) => server,
        Err(message) => {
            engine.close()?;
            return Err(CliError::Usage(message));
        }
    };
    signals::install_handlers();
    if let Some(path) = token_file {
        tracing::warn!(path = %path.display(), "no HXO_ADMIRAL_TOKEN or HXO_CAPTAIN_TOKEN: using the generated admiral token");
        eprintln!(
            "hxo: no HXO_ADMIRAL_TOKEN or HXO_CAPTAIN_TOKEN set: the admiral token is in {} (mode 0600); send it as Authorization: Bearer TOKEN",
            path.display()
        );
    }
    // Event pages and SSE replay read per-shard events after the fact.
    engine.bus.retain_shard_events();
    let app = Arc::new(App {
        runs: runs::Runs::new(engine.clone()),
        engine,
        tokens,
        root,
        stopping: AtomicBool::new(false),
        streams: AtomicUsize::new(0),
        requests: Default::default(),
        ops: Mutex::new(()),
    });
    if app.engine.settings.enabled {
        let resumed = app.runs.rehydrate();
        if resumed > 0 {
            eprintln!("hxo: rehydrated {resumed} plan(s)");
        }
    } else {
        eprintln!("hxo: HXO_ENABLED=false: /api/hxo routes answer 503 and no plan is rehydrated");
    }
    eprintln!(
        "hxo: serving on http://{}/ (dashboard at /, API under /api/hxo/)",
        server.local_addr()
    );
    std::thread::scope(|scope| {
        scope.spawn(|| {
            server.serve(crate::limits::HTTP_WORKERS, &app.stopping, &|exchange| {
                routes::handle(&app, exchange)
            })
        });
        while !signals::signalled() {
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("hxo: shutting down: stopping running plans (resumable)");
        app.stopping.store(true, Ordering::SeqCst);
    });
    let interrupted = app.runs.stop_all();
    let deadline = Instant::now() + Duration::from_secs(2);
    while app.streams.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    app.engine.close()?;
    Ok(if interrupted > 0 {
        exit::INTERRUPTED
    } else {
        exit::SUCCESS
    })
}
