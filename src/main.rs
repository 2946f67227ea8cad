//! Command-line entry point: parse, run, map the outcome to an exit status.

use std::process::ExitCode;

use simpletcpunixrelay::{Failure, cli, log};

fn main() -> ExitCode {
    // Arguments as bytes: a path need not be UTF-8.
    let mut args = std::env::args_os();
    let program = args
        .next()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| "simpletcpunixrelay".into());
    let program = program
        .rsplit('/')
        .next()
        .unwrap_or("simpletcpunixrelay")
        .to_string();
    let args: Vec<std::ffi::OsString> = args.collect();
    // Before parsing, so that even a usage error is logged the journal's way.
    log::init(log::Level::Info);
    let result = match cli::parse(&program, &args) {
        Ok(cli::Command::Print(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Ok(cli::Command::Run(config)) => simpletcpunixrelay::run(*config),
        Err(failure) => Err(failure),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            let kind = match failure {
                Failure::Usage(_) => "usage error",
                Failure::Startup(_) => "error",
            };
            log::fatal(format_args!("{program}: {kind}: {}", failure.message()));
            ExitCode::from(failure.exit_code())
        }
    }
}
