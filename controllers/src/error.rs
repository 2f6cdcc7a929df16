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
    /// The API server did not answer a write in time.
    #[error("the API server did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// A writer other than the API refused the write (`portico local`'s
    /// world: a reconciler asked for something the API server would refuse).
    #[error("write refused: {0}")]
    Refused(String),
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
            Error::Refused(_) => "refused",
            Error::Timeout(_) => "timeout",
        }
    }

    /// Whether the same write may succeed later: the API server was busy,
    /// failing or unreachable (5xx, 429, 409, a transport error). A 4xx
    /// that says the write itself is wrong (or its object gone), or an
    /// answer that does not parse, is not.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Kube(kube::Error::Api(status)) => {
                matches!(status.code, 409 | 429) || status.code >= 500 || status.code == 0
            }
            Error::Timeout(_) => true,
            // The connection, not the write: a timeout, a reset, no route.
            Error::Kube(
                kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_),
            ) => true,
            // An answer that does not parse, a request that cannot be
            // built, ...: the same write fails the same way again.
            Error::Kube(_) | Error::Config { .. } | Error::Serialize(_) | Error::Refused(_) => {
                false
            }
        }
    }
}

/// The longest pause a server's `Retry-After` may ask for.
pub const MAX_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

impl Error {
    /// The pause the API server asked for before a retry (a 429's, or a
    /// 5xx's, `retryAfterSeconds`, which the API server sends with its
    /// `Retry-After` header), at most [`MAX_RETRY_AFTER`].
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Error::Kube(kube::Error::Api(status)) => status
                .details
                .as_ref()
                .map(|d| d.retry_after_seconds)
                .filter(|&s| s > 0)
                .map(|s| std::time::Duration::from_secs(u64::from(s)).min(MAX_RETRY_AFTER)),
            _ => None,
        }
    }

    /// The pause before sending a failed write again: `ours`, or longer if
    /// the server asked for longer.
    pub fn retry_pause(&self, ours: std::time::Duration) -> std::time::Duration {
        self.retry_after().map_or(ours, |asked| asked.max(ours))
    }

    /// Why a write failed, for `portico_controller_write_failures_total`:
    /// `conflict` (409), `throttled` (429), `server` (5xx), `refused`
    /// (another 4xx), `timeout`, `connection`, or `other`.
    pub fn write_reason(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(status)) => match status.code {
                409 => "conflict",
                429 => "throttled",
                c if c >= 500 => "server",
                0 => "connection",
                _ => "refused",
            },
            Error::Kube(
                kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_),
            ) => "connection",
            Error::Timeout(_) => "timeout",
            Error::Refused(_) => "refused",
            Error::Kube(_) | Error::Config { .. } | Error::Serialize(_) => "other",
        }
    }
}

/// Result with the controllers' [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
