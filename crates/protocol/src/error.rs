use serde::Serialize;

/// The stable error codes of docs/protocol.md; clients switch on these strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not JSON (or a binary WebSocket frame).
    InvalidJson,
    /// The `type` is not one the gateway knows.
    UnknownType,
    /// A field is missing, has the wrong type or breaks its rule.
    InvalidField,
    /// No or bad credentials.
    Unauthorized,
    /// Credentials do not allow this (e.g. another user's `userId`).
    Forbidden,
    /// Over the per-user message budget; carries `retryAfterMs`.
    RateLimited,
    /// Over `WS_MAX_SUBSCRIPTIONS`.
    TooManySubscriptions,
    /// A frame over `WS_MAX_MESSAGE_BYTES`.
    MessageTooLarge,
    /// A transport frame that cannot be decoded (WebTransport).
    InvalidFrame,
    /// An area over `GEO_MAX_AREA_KM` (box diagonal or circle diameter):
    /// the app should zoom in.
    AreaTooLarge,
    /// A dependency needed for this request is down.
    Unavailable,
    /// A bug or an unexpected failure on our side.
    Internal,
}

impl ErrorCode {
    /// Every code, for metrics pre-registration and tests.
    pub const ALL: [ErrorCode; 12] = [
        Self::InvalidJson,
        Self::UnknownType,
        Self::InvalidField,
        Self::Unauthorized,
        Self::Forbidden,
        Self::RateLimited,
        Self::TooManySubscriptions,
        Self::MessageTooLarge,
        Self::InvalidFrame,
        Self::AreaTooLarge,
        Self::Unavailable,
        Self::Internal,
    ];

    /// The wire spelling of the code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::UnknownType => "unknown_type",
            Self::InvalidField => "invalid_field",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::RateLimited => "rate_limited",
            Self::TooManySubscriptions => "too_many_subscriptions",
            Self::MessageTooLarge => "message_too_large",
            Self::InvalidFrame => "invalid_frame",
            Self::AreaTooLarge => "area_too_large",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
