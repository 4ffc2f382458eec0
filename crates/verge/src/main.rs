//! The `verge` binary: parse the command line and hand over to [`app`].

mod app;
mod cli;
#[cfg(feature = "cloud")]
mod cloud;
mod config;
mod ctl;
mod device;
mod node;
mod release;
mod simulate;
#[cfg(feature = "cloud")]
mod up;

use std::process::ExitCode;
use std::sync::LazyLock;

use clap::Parser;

/// The version this build reports (`--version`, the heartbeat, the join):
/// the crate's, plus `+{tag}` when `VERGE_BUILD_TAG` was set at compile
/// time (two builds of one source that differ in their version, for the
/// self-update test). Read here only, so a tagged build recompiles this
/// crate alone.
pub static BUILD_VERSION: LazyLock<String> =
    LazyLock::new(
        || match option_env!("VERGE_BUILD_TAG").filter(|t| !t.is_empty()) {
            Some(tag) => format!("{}+{tag}", env!("CARGO_PKG_VERSION")),
            None => env!("CARGO_PKG_VERSION").to_owned(),
        },
    );

fn main() -> ExitCode {
    keep_large_blocks_mapped();
    verge_agent::release::set_build_version(&BUILD_VERSION);
    let cli = cli::Cli::parse();
    match app::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Keep glibc from growing its mmap threshold. By default, after a large
/// block that was mmapped is freed, glibc raises the threshold to that
/// size, so later blocks of that size come from per-thread arenas and stay
/// resident after they are freed. Each argon2 check or hash (devices' and
/// nodes' secrets) works in 19 MiB: a cloud center that had hashed four
/// secrets on blocking threads sat at 97 MB RSS, `verge up` at 139 MB;
/// with a fixed 128 KiB threshold (glibc's default start value) such blocks
/// are mmapped and returned on free, and `verge up` stays at 25 MB
/// (BENCHMARKS.md).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn keep_large_blocks_mapped() {
    // SAFETY: `mallopt` only sets an allocator parameter; it is called
    // first thing in `main`, before any other thread exists, with a valid
    // option and value. Its result (1 = done, 0 = refused) changes nothing
    // about correctness, so it is ignored.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_large_blocks_mapped() {}
