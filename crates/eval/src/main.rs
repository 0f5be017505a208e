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
///
/// Other threads allocate from arenas of their own, whose 64 MiB heaps glibc unmaps whenever one
/// empties, whatever the trim threshold. The layer reader allocates every layer's buffers and the
/// compute threads free them, so each layer faulted its pages in again (HellaSwag: 130k faults,
/// 83k with one arena; 2% of the wall time in an A/B). One arena for every thread keeps them.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory_mapped() {
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_THRESHOLD: i32 = -3;
    const M_ARENA_MAX: i32 = -8;
    unsafe extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    // SAFETY: mallopt only sets allocator tunables; it runs before any other thread exists.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 1 << 30);
        mallopt(M_TRIM_THRESHOLD, i32::MAX);
        mallopt(M_ARENA_MAX, 1);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory_mapped() {}
