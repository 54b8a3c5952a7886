//! `esf`: the ESF node (`esf serve`) and its command-line client.
//!
//! Client commands talk to `--endpoints` (env `ESF_ENDPOINTS`) through
//! esf-client, print a table or JSON (`-o`), and exit non-zero with a
//! one-line reason on failure.

mod admin;
mod audit;
mod cli;
mod config;
mod convert;
mod events;
mod field_index;
mod observer;
mod partitions;
mod placement;
mod query;
mod registry;
mod retention;
mod server;
mod service;
mod snapshot;
mod subscriptions;
mod transport;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(cli::run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::from(1)
        }
    }
}
