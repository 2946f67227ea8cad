//! The program; everything is in the library (see `startup`).

fn main() -> std::process::ExitCode {
    simpletcpunixrelay::main()
}
