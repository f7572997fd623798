//! The thin adapter over tiny_http: the only file that names it. The rest
//! of the service sees an [`Exchange`] (one request and the means to answer
//! it) and a [`Reply`], so the HTTP library can be swapped by rewriting
//! this file alone.
//!
//! Concurrency: a fixed pool of `workers` threads pulls requests from
//! tiny_http's queue, so at most that many requests are handled at once;
//! the rest wait in the queue. Long-lived event streams leave the pool: the
//! handler takes the raw connection ([`Exchange::into_stream`]) and moves
//! it to a thread of its own (see `sse.rs`).
//!
//! Limits that belong to the HTTP library rather than to us (header size,
//! header count, idle time, open connections) are those of tiny_http as
//! patched in `vendor/tiny_http` (its `HXO_PATCHES.md`): 8 KiB per header
//! line, 100 headers, 30 s of silence, 1024 connections.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long a worker waits for a request before it looks at the stop flag.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// An answer with a complete body.
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn json(status: u16, value: &serde_json::Value) -> Reply {
        let mut body = serde_json::to_vec_pretty(value).unwrap_or_else(|_| b"{}".to_vec());
        body.push(b'\n');
        Reply {
            status,
            content_type: "application/json",
            body,
            headers: Vec::new(),
        }
    }

    pub fn text(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            content_type,
            body: body.into(),
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }
}

/// Why a body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// Over the limit (declared or actually sent).
    TooLarge,
    Io(std::io::Error),
}

/// One request and the means to answer it.
pub struct Exchange {
    request: tiny_http::Request,
}

impl Exchange {
    pub fn method(&self) -> &str {
        self.request.method().as_str()
    }

    /// Path and query, as sent.
    pub fn url(&self) -> &str {
        self.request.url()
    }

    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.request
            .headers()
            .iter()
            .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// The declared body length, if any (absent for chunked bodies).
    pub fn content_length(&self) -> Option<u64> {
        self.request.body_length().map(|n| n as u64)
    }

    /// Reads the body, refusing more than `max` bytes: a declared length
    /// over `max` is refused before anything is read, and an undeclared
    /// (chunked) body is cut at `max + 1` bytes.
    pub fn read_body(&mut self, max: u64) -> Result<Vec<u8>, BodyError> {
        if self.content_length().is_some_and(|n| n > max) {
            return Err(BodyError::TooLarge);
        }
        let capacity = self.content_length().unwrap_or(0).min(max) as usize;
        let mut body = Vec::with_capacity(capacity);
        self.request
            .as_reader()
            .take(max + 1)
            .read_to_end(&mut body)
            .map_err(BodyError::Io)?;
        if body.len() as u64 > max {
            return Err(BodyError::TooLarge);
        }
        Ok(body)
    }

    pub fn respond(self, reply: Reply) {
        let mut response = tiny_http::Response::from_data(reply.body)
            .with_status_code(reply.status)
            // Always send Content-Length: clients need not decode chunks.
            .with_chunked_threshold(usize::MAX);
        let mut headers = vec![
            ("Content-Type", reply.content_type.to_string()),
            ("Cache-Control", "no-store".to_string()),
            ("X-Content-Type-Options", "nosniff".to_string()),
        ];
        headers.extend(reply.headers);
        for (name, value) in headers {
            if let Ok(header) = tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
                response.add_header(header);
            }
        }
        // A client that went away is not an error of ours.
        let _ = self.request.respond(response);
    }

    /// Takes the raw connection for a streamed response: writes the status
    /// line and `headers` with `Transfer-Encoding: chunked` and returns a
    /// writer of chunks. Nothing is buffered beyond what [`Chunked::flush`]
    /// sends.
    pub fn into_stream(self, headers: &[(&str, &str)]) -> std::io::Result<Chunked> {
        let mut writer = self.request.into_writer();
        let mut head = String::from("HTTP/1.1 200 OK\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("Transfer-Encoding: chunked\r\n\r\n");
        writer.write_all(head.as_bytes())?;
        writer.flush()?;
        Ok(Chunked { writer })
    }
}

/// A chunked response body written straight to the connection.
pub struct Chunked {
    writer: Box<dyn Write + Send>,
}

impl Chunked {
    /// Sends `data` as one chunk and flushes it.
    pub fn send(&mut self, data: &[u8]) -> std::io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        write!(self.writer, "{:x}\r\n", data.len())?;
        self.writer.write_all(data)?;
        self.writer.write_all(b"\r\n")?;
        self.writer.flush()
    }

    /// Ends the body (the zero-length chunk), so the client sees the end
    /// of the response even though the connection may stay open.
    pub fn finish(mut self) -> std::io::Result<()> {
        self.writer.write_all(b"0\r\n\r\n")?;
        self.writer.flush()
    }
}

/// A listening HTTP server.
pub struct Server {
    inner: tiny_http::Server,
}

impl Server {
    pub fn bind(address: &str) -> Result<Server, String> {
        tiny_http::Server::http(address)
            .map(|inner| Server { inner })
            .map_err(|e| format!("cannot listen on {address}: {e}"))
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.inner
            .server_addr()
            .to_ip()
            .expect("the server listens on an IP address")
    }

    /// Serves requests on `workers` threads until `stop` is set. A panic in
    /// `handler` is caught: the request it was handling gets a 500.
    pub fn serve(&self, workers: usize, stop: &AtomicBool, handler: &(dyn Fn(Exchange) + Sync)) {
        std::thread::scope(|scope| {
            for index in 0..workers.max(1) {
                std::thread::Builder::new()
                    .name(format!("hxo-http-{index}"))
                    .spawn_scoped(scope, move || {
                        while !stop.load(Ordering::SeqCst) {
                            let request = match self.inner.recv_timeout(POLL_INTERVAL) {
                                Ok(Some(request)) => request,
                                Ok(None) => continue,
                                Err(error) => {
                                    tracing::warn!("http: receiving a request: {error}");
                                    std::thread::sleep(POLL_INTERVAL);
                                    continue;
                                }
                            };
                            let exchange = Exchange { request };
                            let outcome =
                                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                    handler(exchange)
                                }));
                            if outcome.is_err() {
                                tracing::error!("http: a request handler panicked (answered 500)");
                            }
                        }
                    })
                    .expect("spawning an HTTP worker");
            }
        });
    }
}
