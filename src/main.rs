//! The `hxo` binary: parse arguments, run the command, map the outcome to
//! an exit code (`cli::exit`). All the work is in the library.

use clap::Parser;
use std::io::Write;
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
        .with_ansi(colour_on_stderr())
        // Its own report of a failed write is an `eprintln!`, which panics
        // when stderr is a closed pipe: a log line that cannot be written
        // is dropped instead.
        .log_internal_errors(false)
        .init();
    let json = cli.global.json;
    match hxo::cli::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            hxo::note!("hxo: error: {error}");
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                hxo::note!("  caused by: {cause}");
                source = cause.source();
            }
            if json {
                print_json_error(&error);
            }
            ExitCode::from(error.exit_code())
        }
    }
}

/// ANSI colour in logs only for a person at a terminal who did not ask
/// for none (`NO_COLOR`, no-color.org): never into files and pipes.
fn colour_on_stderr() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Under `--json` an error is one JSON object on stdout (commands print
/// nothing there before failing), so a script reads stdout either way.
/// The exit code says it failed; a closed stdout has nobody to tell.
fn print_json_error(error: &hxo::cli::CliError) {
    let object = serde_json::Value::Object(error.to_json());
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{object:#}").and_then(|()| stdout.flush());
}
