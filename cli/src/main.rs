//! The `sluice` binary: parse the command line, set up logging (and trace export), run the
//! command.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    return_large_blocks_to_the_system();
    let cli = sluice_cli::Cli::parse();
    let telemetry = match sluice_cli::telemetry::init(cli.log_format, cli.serves()) {
        Ok(telemetry) => telemetry,
        Err(e) => return failed(&e),
    };
    let ran = sluice_cli::run(cli).await;
    telemetry.shutdown().await;
    match ran {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => failed(&e),
    }
}

fn failed(e: &anyhow::Error) -> std::process::ExitCode {
    eprintln!("error: {}", sluice_cli::error_line(e));
    std::process::ExitCode::FAILURE
}

/// Large blocks (request and response bodies, up to 16 MiB each) get mappings of their own and
/// go back to the system when freed. glibc raises this threshold each time a large block is
/// freed, after which such blocks come from its heaps and stay with the process: a burst of
/// large bodies would leave hundreds of MiB resident (see BENCHMARKS.md).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn return_large_blocks_to_the_system() {
    // SAFETY: mallopt only changes the allocator's tuning and is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_large_blocks_to_the_system() {}
