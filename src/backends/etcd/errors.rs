//! etcd client errors as wayfinder errors that say what failed and where ("etcd
//! 127.0.0.1:2379 refused the connection (list)"), not the gRPC stack's internals.

use super::members::{CANCELLED, DEADLINE_EXCEEDED, UNAVAILABLE, UNKNOWN};
use super::{status_code, INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, UNAUTHENTICATED};
use crate::error::{Error, ErrorKind};

/// The error of `action` failing at the member `endpoint` (or at an unnamed one).
pub(crate) fn etcd_error_at(
    endpoint: Option<&str>,
    action: &str,
    err: etcd_client::Error,
) -> Error {
    let place = endpoint
        .map(|e| format!(" {}", member(e)))
        .unwrap_or_default();
    let message = format!("etcd{place} {} ({action})", phrase(&err));
    Error::new(kind(&err), message).with_source(err)
}

/// A member as errors name it: its endpoint without the URL scheme.
pub(crate) fn member(endpoint: &str) -> &str {
    endpoint
        .trim_start_matches("http://")
        .trim_start_matches("https://")
}

/// The error of `action` failing at whichever member served it.
pub(crate) fn etcd_error(action: &str, err: etcd_client::Error) -> Error {
    etcd_error_at(None, action, err)
}

/// The error's kind: refused credentials, a bad request, something missing, or else the
/// registry being unavailable.
fn kind(err: &etcd_client::Error) -> ErrorKind {
    let text = err.to_string();
    let denied = text.contains("authentication failed") || text.contains("permission denied");
    match (status_code(err), err) {
        (Some(PERMISSION_DENIED | UNAUTHENTICATED), _) => ErrorKind::PermissionDenied,
        _ if denied => ErrorKind::PermissionDenied,
        (Some(INVALID_ARGUMENT), _) => ErrorKind::InvalidInput,
        (Some(NOT_FOUND), _) => ErrorKind::NotFound,
        (None, etcd_client::Error::InvalidArgs(_) | etcd_client::Error::InvalidUri(_)) => {
            ErrorKind::InvalidInput
        }
        _ => ErrorKind::Unavailable,
    }
}

/// What went wrong, as a phrase that follows "etcd HOST:PORT". Only connection failures are
/// put in words of their own; etcd's answers are quoted.
fn phrase(err: &etcd_client::Error) -> String {
    let connection_level = match err {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(_) => matches!(
            status_code(err),
            Some(CANCELLED | UNKNOWN | DEADLINE_EXCEEDED | UNAVAILABLE)
        ),
        _ => false,
    };
    if connection_level {
        let lower = chain(err).to_ascii_lowercase();
        let said = |needles: &[&str]| needles.iter().any(|n| lower.contains(n));
        if said(&["connection refused"]) {
            return "refused the connection".to_owned();
        }
        if said(&["timed out", "deadline has elapsed", "deadline exceeded"]) {
            return "did not answer in time".to_owned();
        }
        if said(&["connection reset", "broken pipe", "connection closed"]) {
            return "dropped the connection".to_owned();
        }
        if said(&[
            "dns error",
            "failed to lookup address",
            "name or service not known",
        ]) {
            return "could not be found by name".to_owned();
        }
        if said(&[
            "invalid peer certificate",
            "tls handshake",
            "certificate verify",
        ]) {
            return format!("failed the TLS handshake: {}", innermost(err));
        }
    }
    match err {
        etcd_client::Error::GRpcStatus(status) => {
            let message = status.message().trim_start_matches("etcdserver: ");
            format!("answered: {message}")
        }
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
            format!("could not be reached: {}", innermost(err))
        }
        other => other.to_string(),
    }
}

/// The error and every source under it, as one line.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// The deepest source's message (the operating system's, usually).
fn innermost(err: &(dyn std::error::Error + 'static)) -> String {
    let mut deepest: &(dyn std::error::Error + 'static) = err;
    while let Some(inner) = deepest.source() {
        deepest = inner;
    }
    deepest.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_etcd_messages_without_grpc_details() {
        let status = tonic::Status::permission_denied("etcdserver: permission denied");
        let error = etcd_error_at(
            Some("127.0.0.1:2379"),
            "register",
            etcd_client::Error::GRpcStatus(status),
        );
        assert_eq!(error.kind(), ErrorKind::PermissionDenied);
        assert_eq!(
            error.message(),
            "etcd 127.0.0.1:2379 answered: permission denied (register)"
        );
        let refused = tonic::Status::unavailable(
            "error trying to connect: tcp connect error: Connection refused (os error 111)",
        );
        let error = etcd_error_at(
            Some("http://127.0.0.1:2379"),
            "list",
            etcd_client::Error::GRpcStatus(refused),
        );
        assert_eq!(error.kind(), ErrorKind::Unavailable);
        assert_eq!(
            error.message(),
            "etcd 127.0.0.1:2379 refused the connection (list)"
        );
    }
}
