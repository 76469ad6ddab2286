//! What the API server said, as a [`ProviderError`]: refusals keep their code, reason and
//! message, so the gateway can tell an invalid object from missing permissions, and say which.

use sluice_core::ProviderError;

/// A failed API call as the provider reports it.
pub(crate) fn from_kube(e: kube::Error) -> ProviderError {
    match e {
        kube::Error::Api(status) => ProviderError::Refused {
            code: status.code,
            reason: status.reason.clone(),
            message: if status.message.is_empty() {
                format!(
                    "the Kubernetes API answered {} {}",
                    status.code, status.reason
                )
            } else {
                status.message.clone()
            },
        },
        kube::Error::Service(e) => ProviderError::Unavailable(e.to_string()),
        kube::Error::HyperError(e) => ProviderError::Unavailable(e.to_string()),
        other => ProviderError::Internal(other.to_string()),
    }
}

/// Whether the API server said the object does not exist.
pub(crate) fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_not_found())
}

/// Whether a write lost a race (a stale `resourceVersion`) or found the object there already.
pub(crate) fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_conflict() || s.is_already_exists())
}
