//! The dashboard page at `/`: one static HTML file with inline script and
//! no build step, compiled into the binary. The page itself is public; its
//! data calls carry a token the user types in (kept in `sessionStorage`,
//! or taken once from a `#token=...` fragment, which never reaches the
//! server) as `Authorization: Bearer`, and as the `token` query parameter
//! of the event stream, since EventSource cannot send headers.

use super::server::Reply;

const PAGE: &str = include_str!("dashboard.html");

pub fn page() -> Reply {
    Reply::text(200, "text/html; charset=utf-8", PAGE).with_header(
        "Content-Security-Policy",
        "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
         connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    )
}
