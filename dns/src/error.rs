//! The DNS crate's error type.

use thiserror::Error;

/// Errors of the DNS server.
#[derive(Debug, Error)]
pub enum Error {
    /// A configuration value is invalid.
    #[error("dns config: {0}")]
    Config(String),
    /// A socket could not be opened or failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// A short, stable label for metrics (never `Debug` output).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::Io { .. } => "io",
        }
    }
}

/// Result with the DNS crate's [`Error`](enum@Error).
pub type Result<T, E = Error> = std::result::Result<T, E>;
