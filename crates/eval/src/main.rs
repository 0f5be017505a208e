//! `airllm-eval`: the command-line entry point. Everything it does lives in the library; this file
//! only parses arguments, sets up logging and turns an error into a message and an exit code.

use std::process::ExitCode;

use airllm_eval::cli;

fn main() -> ExitCode {
    cli::init_logging();
    match cli::run(cli::parse(std::env::args_os())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
