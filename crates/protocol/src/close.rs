use std::borrow::Cow;

/// A close of the client connection, with a code of docs/protocol.md.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// WebSocket close code (also used for WebTransport session close).
    pub code: u16,
    /// Short reason for people; ≤ 123 bytes to fit a close frame.
    pub reason: Cow<'static, str>,
}

impl Close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The server is going away (shutdown).
    pub const GOING_AWAY: u16 = 1001;
    /// Invalid UTF-8 in a text frame.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy violation (auth, abuse).
    pub const POLICY: u16 = 1008;
    /// A frame over the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// Internal error.
    pub const INTERNAL: u16 = 1011;
    /// Try again later: over capacity or a slow consumer.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The client stopped answering heartbeats.
    pub const HEARTBEAT_TIMEOUT: u16 = 4000;
    /// The connection's token expired and no `refresh` came in time.
    pub const TOKEN_EXPIRED: u16 = 4001;

    /// A close with a static reason.
    pub const fn new(code: u16, reason: &'static str) -> Self {
        Self { code, reason: Cow::Borrowed(reason) }
    }
}
