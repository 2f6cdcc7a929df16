//! The crate's error type.

/// What can go wrong while programming the dataplane.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A transaction held a name or text nft cannot read.
    #[error("invalid {what} {name:?}: nft cannot read it")]
    InvalidName {
        /// What it was (chain, set, rule, …).
        what: String,
        /// The offending text.
        name: String,
    },
    /// `nft` refused a transaction (nothing was changed) or a listing.
    #[error("nft failed: {0}")]
    Nft(String),
    /// A program could not be run at all.
    #[error("running {program}: {message}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        message: String,
    },
    /// `nft -j` printed something unexpected.
    #[error("reading nft's JSON output: {0}")]
    Parse(String),
    /// The in-memory backend refused a transaction (as nft would).
    #[error("fake nft: {0}")]
    Fake(String),
    /// A sysctl could not be read or written.
    #[error("sysctl {path}: {message}")]
    Sysctl {
        /// The file under `/proc/sys`.
        path: String,
        /// Why.
        message: String,
    },
}

impl Error {
    /// A short stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::InvalidName { .. } => "invalid_name",
            Error::Nft(_) => "nft",
            Error::Spawn { .. } => "spawn",
            Error::Parse(_) => "parse",
            Error::Fake(_) => "fake",
            Error::Sysctl { .. } => "sysctl",
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
