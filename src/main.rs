//! The `hxo` binary: parse arguments, run the command, map the outcome to
//! an exit code (`cli::exit`). All the work is in the library.

use clap::Parser;
use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: hxo::alloc::HugePageHintAlloc = hxo::alloc::HugePageHintAlloc;

fn main() -> ExitCode {
    let cli = match hxo::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let code = if error.use_stderr() {
                hxo::cli::exit::USAGE
            } else {
                hxo::cli::exit::SUCCESS
            };
            let _ = error.print();
            return ExitCode::from(code);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match hxo::cli::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("hxo: error: {error}");
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::from(error.exit_code())
        }
    }
}
