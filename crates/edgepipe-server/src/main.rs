//! `edgepipe`: parse, build, run; the logic lives in the library.

use clap::Parser;

/// jemalloc, with its background purge threads: glibc's malloc kept the memory of a load burst
/// (freed per-reading buffers in per-thread arenas) and the server stayed at 0.7–2.4 GB after
/// the ingest benchmark's load phases; jemalloc returns freed pages within seconds. Without the
/// `jemalloc` feature the system allocator is used (heap profilers such as heaptrack see it).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EDGEPIPE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // EDGEPIPE_LOG_FORMAT=json: one JSON object per line, for log shippers.
    if std::env::var("EDGEPIPE_LOG_FORMAT").is_ok_and(|f| f == "json") {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    } else {
        // Colours only on a terminal: a log going to a file, a pipe or journald stays plain.
        use std::io::IsTerminal;
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .init();
    }
    let cli = edgepipe_server::cli::Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("edgepipe: cannot start the runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match rt.block_on(edgepipe_server::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgepipe: error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
