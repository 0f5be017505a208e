//! `airllm-eval`: the command-line entry point. Everything it does lives in the library; this file
//! only tunes the allocator, parses arguments, sets up logging and turns an error into a message
//! and an exit code.

use std::process::ExitCode;

use airllm_eval::cli;

fn main() -> ExitCode {
    keep_freed_memory_mapped();
    cli::init_logging();
    match cli::run(cli::parse(std::env::args_os())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// glibc serves every allocation above 32 MiB with a fresh mmap and unmaps it on free, so each
/// layer and each activation buffer costs its page faults again (about 5% of a forward pass here).
/// Serving them from the heap and never trimming it lets freed buffers be reused as they are; the
/// freed memory stays counted in RSS, which the bigger-than-memory benchmark keeps in view.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory_mapped() {
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_THRESHOLD: i32 = -3;
    unsafe extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    // SAFETY: mallopt only sets allocator tunables; it runs before any other thread exists.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 1 << 30);
        mallopt(M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory_mapped() {}
