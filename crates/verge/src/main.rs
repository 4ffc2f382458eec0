//! The `verge` binary: parse the command line and hand over to [`app`].

mod app;
mod bench;
mod cli;
mod cloud;
mod config;
mod ctl;
mod device;
mod node;
mod simulate;
mod up;

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
