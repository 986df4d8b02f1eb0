//! The gateway's one error value and the one function that turns it into a response.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use outpost_pool::{Body, DispatchError};

/// Whose fault a failed request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The request itself is unacceptable.
    Client,
    /// The tenant's code failed or misbehaved.
    Tenant,
    /// A limit of the node was reached.
    Limit,
    /// Outpost itself failed.
    Internal,
}

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    BadRequest,
    BodyTooLarge,
    /// No app answers for the request's host and path.
    NoRoute,
    NoApp,
    Overloaded,
    Timeout,
    LimitExceeded,
    Exception,
    BadResponse,
    InstanceGone,
}

/// A failed request: what went wrong, whose fault it is (`fault`), whether retrying may help, and a
/// message safe to show the client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct GatewayError {
    pub kind: Kind,
    pub fault: Source,
    pub retryable: bool,
    pub message: String,
}

impl GatewayError {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        let (fault, retryable) = match kind {
            Kind::BadRequest | Kind::BodyTooLarge | Kind::NoRoute => (Source::Client, false),
            Kind::NoApp => (Source::Tenant, true),
            Kind::Overloaded => (Source::Limit, true),
            Kind::Timeout | Kind::LimitExceeded => (Source::Limit, false),
            Kind::Exception | Kind::BadResponse => (Source::Tenant, false),
            Kind::InstanceGone => (Source::Internal, true),
        };
        GatewayError {
            kind,
            fault,
            retryable,
            message: message.into(),
        }
    }

    /// The status code for this error.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            Kind::BadRequest => StatusCode::BAD_REQUEST,
            Kind::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::NoRoute => StatusCode::NOT_FOUND,
            Kind::NoApp | Kind::Overloaded | Kind::LimitExceeded => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Kind::Exception | Kind::BadResponse | Kind::InstanceGone => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The response sent to the client: a short plain-text body; details of tenant
    /// exceptions stay in the node's log.
    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let text = format!(
            "{} {}\n\n{}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            self.message
        );
        let mut response = Response::new(
            Full::new(Bytes::from(text))
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain;charset=UTF-8"),
        );
        headers.insert(
            "x-outpost-error",
            HeaderValue::from_static(self.kind.as_str()),
        );
        if self.retryable {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl Kind {
    /// A stable name, sent as the `x-outpost-error` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::BadRequest => "bad-request",
            Kind::BodyTooLarge => "body-too-large",
            Kind::NoRoute => "no-route",
            Kind::NoApp => "no-app",
            Kind::Overloaded => "overloaded",
            Kind::Timeout => "timeout",
            Kind::LimitExceeded => "limit-exceeded",
            Kind::Exception => "exception",
            Kind::BadResponse => "bad-response",
            Kind::InstanceGone => "instance-gone",
        }
    }
}

impl From<DispatchError> for GatewayError {
    fn from(e: DispatchError) -> Self {
        match e {
            DispatchError::Overloaded => GatewayError::new(Kind::Overloaded, e.to_string()),
            DispatchError::Exception(_) => GatewayError::new(
                Kind::Exception,
                "The app threw an exception while handling this request; its stack trace is in the node's log.",
            ),
            DispatchError::BadResponse(message) => GatewayError::new(Kind::BadResponse, message),
            DispatchError::LimitExceeded(message) => GatewayError::new(Kind::LimitExceeded, message),
            DispatchError::Timeout => GatewayError::new(
                Kind::Timeout,
                "The app did not start its response within the node's response timeout.",
            ),
            DispatchError::InstanceGone(_) => GatewayError::new(Kind::InstanceGone, e.to_string()),
            DispatchError::LoadFailed(_) => GatewayError::new(
                Kind::NoApp,
                "The app cannot be loaded; the node's log says why.",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_dispatch_errors_to_statuses() {
        let cases = [
            (DispatchError::Overloaded, 503, true),
            (
                DispatchError::Exception("Error: boom\n at x.js:1:1".into()),
                500,
                false,
            ),
            (
                DispatchError::BadResponse("returned undefined".into()),
                500,
                false,
            ),
            (DispatchError::InstanceGone("gone".into()), 500, true),
        ];
        for (error, status, retryable) in cases {
            let e = GatewayError::from(error);
            assert_eq!(e.status().as_u16(), status);
            assert_eq!(e.retryable, retryable);
        }
    }

    #[test]
    fn exception_details_stay_out_of_the_body() {
        let e = GatewayError::from(DispatchError::Exception("Error: secret at x.js:1:1".into()));
        assert!(!e.message.contains("secret"));
        let response = e.into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.headers()["x-outpost-error"], "exception");
    }
}
