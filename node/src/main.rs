//! `esf`: the ESF node (`esf serve`) and its command-line client (the
//! code is the esf-node library: see its crate doc for the layout).
//!
//! Client commands talk to `--endpoints` (env `ESF_ENDPOINTS`) through
//! esf-client, print a table or JSON (`-o`), and exit non-zero with a
//! one-line reason on failure.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc malloc: under 64 writers glibc's malloc and
/// free (with its chunk consolidation) took about 11% of all CPU in the
/// profile, most of it Rust's allocations (see docs/benchmarks.md for the
/// measured difference).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = esf_node::cli::Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(esf_node::cli::run(args)) {
        Ok(code) => code,
        Err(e) => {
            // `eprintln!` would panic if stderr is closed.
            let _ = writeln!(std::io::stderr(), "error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::from(1)
        }
    }
}
