//! The `verge` binary: parse the command line and hand over to [`app`].

mod app;
mod bench;
mod cli;
mod config;
mod device;
mod node;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match app::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
