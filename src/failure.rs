//! Why the relay could not run, and so its exit status.

/// Why the relay could not run, and so its exit status.
#[derive(Debug)]
pub enum Failure {
    /// Bad command line: exit status 2.
    Usage(String),
    /// Start-up or runtime failure: exit status 1.
    Startup(String),
}

impl Failure {
    /// The exit status the specification gives this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => 2,
            Failure::Startup(_) => 1,
        }
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        match self {
            Failure::Usage(m) | Failure::Startup(m) => m,
        }
    }
}
