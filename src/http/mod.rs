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
//! - `rehydrate.rs`: resuming the store's submitted and interrupted plans
//!   on start, as run slots free up.
//! - `sse.rs`: the event stream and the event backlog.
//! - `metrics.rs`: `/metrics`.
//! - `dashboard.rs` and `dashboard.html`: the page at `/`.
//!
//! The service calls the engine for everything about plans (the engine
//! owns their lifecycle and their runs); it keeps only what is about HTTP
//! (tokens, streams, counters). [`Service::start`] and [`Service::wait`]
//! are all a front-end needs; exit codes and flags are the CLI's.
//!
//! Deliberately absent: TLS (bind to loopback, the default, or put a TLS
//! proxy in front), CORS (the dashboard is served from the same origin),
//! HTTP/2.

mod auth;
mod dashboard;
mod metrics;
mod rehydrate;
mod routes;
mod server;
mod sse;

pub use routes::ROUTES;

use crate::engine::Engine;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How the service is set up.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// Address to bind (`127.0.0.1:8000`).
    pub bind: String,
    /// Directory that relative config paths of posted plans resolve
    /// against; partition paths may not escape it.
    pub root: PathBuf,
}

/// Why the service did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("--root {}: not a directory", .0.display())]
    Root(PathBuf),
    #[error("HXO_ADMIRAL_TOKEN and HXO_CAPTAIN_TOKEN are the same: a captain would be an admiral")]
    SameTokens,
    #[error("the admiral token file {}", path.display())]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Bind(String),
    #[error("cannot start a service thread")]
    Spawn(#[source] std::io::Error),
}

/// How the service ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceEnd {
    /// Runs that ended interrupted (resumable), by shutdown or a failure
    /// to record their outcomes.
    pub interrupted_runs: usize,
}

/// What the request handlers share.
pub struct App {
    pub engine: Arc<Engine>,
    tokens: auth::Tokens,
    /// Relative config paths of posted plans resolve against this.
    root: PathBuf,
    /// Set on shutdown: workers, streams and the rehydrator end.
    stopping: AtomicBool,
    /// Event streams open now.
    streams: AtomicUsize,
    /// Requests answered, by status class 2xx..5xx.
    requests: [AtomicU64; 4],
    /// Plans this server found but could not resume on start.
    rehydration_failures: AtomicU64,
}

/// A running service: the server threads and the rehydrator.
pub struct Service {
    app: Arc<App>,
    address: SocketAddr,
    token_file: Option<PathBuf>,
    rehydrating: usize,
    threads: Vec<JoinHandle<()>>,
}

impl Service {
    /// Binds, starts answering requests and starts resuming the store's
    /// submitted and interrupted plans (unless `HXO_ENABLED=false`). At
    /// most `HTTP_RUNS_MAX` plans run at once; a start beyond that is
    /// refused (503) and rehydration waits for a free slot.
    pub fn start(engine: Arc<Engine>, config: ServiceConfig) -> Result<Service, ServiceError> {
        let root = Service::check(&engine.settings, &config)?;
        let settings = &engine.settings;
        let (tokens, token_file) =
            auth::load(settings).map_err(|source| ServiceError::TokenFile {
                path: auth::token_path(settings),
                source,
            })?;
        let server = server::Server::bind(&config.bind).map_err(ServiceError::Bind)?;
        let address = server.local_addr();
        engine.set_runs_max(crate::limits::HTTP_RUNS_MAX);
        // Event pages and SSE replay read per-shard events after the fact.
        engine.bus.retain_shard_events();
        let app = Arc::new(App {
            engine,
            tokens,
            root,
            stopping: AtomicBool::new(false),
            streams: AtomicUsize::new(0),
            requests: Default::default(),
            rehydration_failures: AtomicU64::new(0),
        });
        let mut threads = Vec::new();
        let serving = app.clone();
        threads.push(
            std::thread::Builder::new()
                .name("hxo-http".into())
                .spawn(move || {
                    server.serve(
                        crate::limits::HTTP_WORKERS,
                        &serving.stopping,
                        &|exchange| routes::handle(&serving, exchange),
                    )
                })
                .map_err(ServiceError::Spawn)?,
        );
        let queue = if app.engine.settings.enabled {
            app.engine.resumable_plans()
        } else {
            Vec::new()
        };
        let rehydrating = queue.len();
        if !queue.is_empty() {
            let resuming = app.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("hxo-rehydrate".into())
                    .spawn(move || rehydrate::run(&resuming, queue))
                    .map_err(ServiceError::Spawn)?,
            );
        }
        Ok(Service {
            app,
            address,
            token_file,
            rehydrating,
            threads,
        })
    }

    /// Checks what can be checked before a store is opened: the root is
    /// a directory (returned canonical), and the two tokens differ (equal
    /// tokens would make every captain an admiral).
    pub fn check(
        settings: &crate::settings::Settings,
        config: &ServiceConfig,
    ) -> Result<PathBuf, ServiceError> {
        let root = config
            .root
            .canonicalize()
            .ok()
            .filter(|r| r.is_dir())
            .ok_or_else(|| ServiceError::Root(config.root.clone()))?;
        if settings.admiral_token.is_some() && settings.admiral_token == settings.captain_token {
            return Err(ServiceError::SameTokens);
        }
        Ok(root)
    }

    /// The address the service listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Where the generated admiral token is, when no token was set.
    pub fn token_file(&self) -> Option<&std::path::Path> {
        self.token_file.as_deref()
    }

    /// Plans found to resume on start.
    pub fn rehydrating(&self) -> usize {
        self.rehydrating
    }

    /// Serves until `stop` says so (polled every 100 ms), then stops the
    /// running plans as interrupted (resumable: the next start rehydrates
    /// them) and waits for them, the server and open streams (at most 2 s).
    /// The caller closes the engine after.
    pub fn wait(self, stop: &dyn Fn() -> bool) -> ServiceEnd {
        while !stop() {
            std::thread::sleep(Duration::from_millis(100));
        }
        self.app.stopping.store(true, Ordering::SeqCst);
        for thread in self.threads {
            let _ = thread.join();
        }
        self.app.engine.interrupt_all();
        let interrupted_runs = self.app.engine.wait_runs();
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.app.streams.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        ServiceEnd { interrupted_runs }
    }
}
