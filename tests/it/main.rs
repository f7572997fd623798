//! HXO's integration tests: one binary (ripgrep's layout), one module per
//! area, each with its own `check()`-style helpers in `support`.

mod cli;
mod crash;
mod deploy;
mod golden;
mod http;
mod lifecycle;
mod merkle;
mod plans;
mod run;
mod support;
mod workers;
