//! The controllers' error type.

use thiserror::Error;

/// Errors of the controllers crate.
#[derive(Debug, Error)]
pub enum Error {
    /// A network flag (`--service-cluster-ip-range`, `--cluster-cidr`) is invalid.
    #[error("{flag}: {message}")]
    Config {
        /// The flag that holds the bad value.
        flag: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The Kubernetes API refused or failed a write.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A patch body could not be built.
    #[error("serializing a patch: {0}")]
    Serialize(#[from] serde_json::Error),
}

impl Error {
    /// A short, stable label for metrics (never `Debug` output).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Config { .. } => "config",
            Error::Kube(_) => "kube",
            Error::Serialize(_) => "serialize",
        }
    }
}

/// Result with the controllers' [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
