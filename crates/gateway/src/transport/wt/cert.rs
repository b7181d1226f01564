//! The WebTransport server certificate.
//!
//! Production deployments give `WT_CERT`/`WT_KEY` (PEM); the files are
//! re-read when they change. Without them the gateway makes a self-signed
//! ECDSA P-256 certificate valid for under 14 days, the only kind a browser
//! accepts by hash (`serverCertificateHashes`), publishes its SHA-256 at
//! `GET /wt/cert-hash`, and renews it while running: half-way through its
//! life the next certificate is made and its hash published as `next`, at
//! three quarters the endpoint switches to it. Sessions already open keep
//! their connection; a client that fetched both hashes connects across the
//! switch.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::RwLock;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;
use wtransport::Identity;

use crate::config::WebTransportConfig;

/// How often `WT_CERT`/`WT_KEY` are checked for changes.
const FILE_POLL: Duration = Duration::from_secs(60);
/// Retry delay after a failed renewal.
const RETRY: Duration = Duration::from_secs(60);
/// Longest single sleep: wall-clock targets are re-checked at least this
/// often, so a suspended machine or a clock step cannot oversleep a renewal.
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// Where the certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// PEM files: certificate chain and private key.
    Files {
        /// `WT_CERT`.
        cert: PathBuf,
        /// `WT_KEY`.
        key: PathBuf,
    },
    /// A self-signed certificate, renewed while running.
    SelfSigned {
        /// Total validity (not before to not after), under 14 days.
        validity: Duration,
    },
}

impl CertSource {
    /// The source the configuration asks for.
    pub fn from_config(config: &WebTransportConfig) -> Self {
        match (&config.cert, &config.key) {
            (Some(cert), Some(key)) => Self::Files { cert: cert.clone(), key: key.clone() },
            _ => Self::SelfSigned { validity: config.cert_validity() },
        }
    }
}

/// A certificate that cannot be loaded or made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// The PEM files could not be read or do not hold a usable identity.
    #[error("cannot load WT_CERT {cert:?} / WT_KEY {key:?}: {message}")]
    Load {
        /// `WT_CERT`.
        cert: PathBuf,
        /// `WT_KEY`.
        key: PathBuf,
        /// Why.
        message: String,
    },
    /// The leaf certificate is not parsable X.509.
    #[error("the WebTransport certificate is not valid X.509: {0}")]
    Parse(String),
    /// The self-signed certificate could not be made.
    #[error("cannot make a self-signed WebTransport certificate: {0}")]
    Generate(String),
}

/// One certificate as `/wt/cert-hash` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// SHA-256 of the leaf certificate's DER.
    pub sha256: [u8; 32],
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl CertInfo {
    /// Describes an identity's leaf certificate.
    pub fn of(identity: &Identity) -> Result<Self, CertError> {
        let leaf = identity
            .certificate_chain()
            .as_slice()
            .first()
            .ok_or_else(|| CertError::Parse("empty certificate chain".into()))?;
        let (_, x509) = x509_parser::parse_x509_certificate(leaf.der()).map_err(|e| CertError::Parse(e.to_string()))?;
        let validity = x509.validity();
        Ok(Self {
            sha256: *leaf.hash().as_ref(),
            not_before: validity.not_before.to_datetime(),
            not_after: validity.not_after.to_datetime(),
        })
    }

    /// The hash as lowercase hex.
    pub fn hex(&self) -> String {
        self.sha256.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn to_json(&self) -> Value {
        json!({
            "algorithm": "sha-256",
            "value": self.hex(),
            "notAfter": self.not_after.format(&Rfc3339).unwrap_or_default(),
        })
    }
}

#[derive(Debug, Clone)]
struct Published {
    current: CertInfo,
    next: Option<CertInfo>,
}

/// The certificate being served and, during a rotation, the next one.
/// Written by the listener, read by `GET /wt/cert-hash`.
#[derive(Debug, Default)]
pub struct CertStore(RwLock<Option<Published>>);

impl CertStore {
    /// The certificate the endpoint presents now.
    pub fn current(&self) -> Option<CertInfo> {
        self.0.read().as_ref().map(|p| p.current.clone())
    }

    /// The certificate that will replace it, once made.
    pub fn next(&self) -> Option<CertInfo> {
        self.0.read().as_ref().and_then(|p| p.next.clone())
    }

    /// The `/wt/cert-hash` body; `None` while WebTransport is not serving.
    pub fn to_json(&self) -> Option<Value> {
        let published = self.0.read().clone()?;
        let mut body = published.current.to_json();
        if let (Some(next), Value::Object(map)) = (&published.next, &mut body) {
            map.insert("next".into(), next.to_json());
        }
        Some(body)
    }

    pub(super) fn set_current(&self, current: CertInfo) {
        *self.0.write() = Some(Published { current, next: None });
    }

    fn set_next(&self, next: CertInfo) {
        if let Some(p) = self.0.write().as_mut() {
            p.next = Some(next);
        }
    }
}

/// Loads or makes the identity the source names.
pub async fn load(source: &CertSource) -> Result<Identity, CertError> {
    match source {
        CertSource::Files { cert, key } => Identity::load_pemfiles(cert, key).await.map_err(|e| CertError::Load {
            cert: cert.clone(),
            key: key.clone(),
            message: e.to_string(),
        }),
        CertSource::SelfSigned { validity } => self_signed(*validity, OffsetDateTime::now_utc()),
    }
}

/// A self-signed ECDSA P-256 certificate for localhost, valid for
/// `validity` in total, starting a little before `now` (up to an hour, a
/// tenth of the validity at most) to absorb clients' clock skew.
pub fn self_signed(validity: Duration, now: OffsetDateTime) -> Result<Identity, CertError> {
    let backdate = (validity / 10).min(Duration::from_secs(3600));
    let not_before = now - backdate;
    let not_after = not_before + validity;
    Identity::self_signed_builder()
        .subject_alt_names(["localhost", "127.0.0.1", "::1"])
        .validity_period(not_before, not_after)
        .build()
        .map_err(|e| CertError::Generate(e.to_string()))
}

/// When to publish the next self-signed certificate (half-way through the
/// current one's life) and when to switch to it (three quarters): clients
/// that fetched the hash during the first half and reconnect after the
/// switch must fetch again; everyone else is covered by `next`.
pub fn schedule(current: &CertInfo) -> (OffsetDateTime, OffsetDateTime) {
    let life = current.not_after - current.not_before;
    (current.not_before + life / 2, current.not_before + life * 3 / 4)
}

/// Sleeps until the wall-clock `at`; false if shutdown came first.
async fn sleep_until(at: OffsetDateTime, shutdown: &CancellationToken) -> bool {
    loop {
        let left = at - OffsetDateTime::now_utc();
        if left <= time::Duration::ZERO {
            return true;
        }
        let nap = Duration::try_from(left).unwrap_or(MAX_SLEEP).min(MAX_SLEEP);
        tokio::select! {
            () = tokio::time::sleep(nap) => {}
            () = shutdown.cancelled() => return false,
        }
    }
}

async fn sleep_for(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => true,
        () = shutdown.cancelled() => false,
    }
}

/// Keeps the endpoint's certificate fresh until shutdown: renews a
/// self-signed one, reloads changed PEM files. `reload` installs a new
/// identity on the endpoint without touching open sessions.
pub async fn keep_fresh<F>(source: CertSource, store: Arc<CertStore>, reload: F, shutdown: CancellationToken)
where
    F: Fn(Identity) -> Result<(), String>,
{
    match source {
        CertSource::SelfSigned { validity } => loop {
            let Some(current) = store.current() else { return };
            let (publish_at, switch_at) = schedule(&current);
            if !sleep_until(publish_at, &shutdown).await {
                return;
            }
            let next = match self_signed(validity, OffsetDateTime::now_utc()).and_then(|id| {
                let info = CertInfo::of(&id)?;
                Ok((id, info))
            }) {
                Ok(next) => next,
                Err(e) => {
                    tracing::error!(error = %e, "WebTransport certificate renewal failed; retrying");
                    if !sleep_for(RETRY, &shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            store.set_next(next.1.clone());
            tracing::info!(next = %next.1.hex(), "WebTransport: next certificate published at /wt/cert-hash");
            if !sleep_until(switch_at, &shutdown).await {
                return;
            }
            while let Err(e) = reload(next.0.clone_identity()) {
                tracing::error!(error = %e, "WebTransport certificate reload failed; retrying");
                if !sleep_for(RETRY, &shutdown).await {
                    return;
                }
            }
            tracing::info!(current = %next.1.hex(), not_after = %next.1.not_after, "WebTransport certificate renewed");
            store.set_current(next.1);
        },
        CertSource::Files { ref cert, ref key } => {
            let stamp = || {
                let m = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
                (m(cert), m(key))
            };
            let mut seen: (Option<SystemTime>, Option<SystemTime>) = stamp();
            while sleep_for(FILE_POLL, &shutdown).await {
                let now = stamp();
                if now == seen {
                    continue;
                }
                let loaded = load(&source).await.and_then(|id| {
                    let info = CertInfo::of(&id)?;
                    Ok((id, info))
                });
                match loaded {
                    Ok((id, info)) => match reload(id) {
                        Ok(()) => {
                            tracing::info!(hash = %info.hex(), "WebTransport certificate reloaded from WT_CERT/WT_KEY");
                            store.set_current(info);
                            seen = now;
                        }
                        Err(e) => tracing::error!(error = %e, "WebTransport certificate reload failed"),
                    },
                    // Possibly caught half-written: try again next poll.
                    Err(e) => tracing::warn!(error = %e, "WT_CERT/WT_KEY changed but cannot be loaded yet"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_meets_the_browser_rules() {
        let now = OffsetDateTime::now_utc();
        let validity = Duration::from_secs(13 * 86_400);
        let id = self_signed(validity, now).unwrap_or_else(|e| panic!("{e}"));
        let info = CertInfo::of(&id).unwrap_or_else(|e| panic!("{e}"));
        // X.509 has second precision: allow for the truncation.
        assert!((info.not_after - info.not_before) <= time::Duration::days(13));
        let backdated = now - info.not_before;
        assert!(backdated >= time::Duration::hours(1) && backdated < time::Duration::seconds(3601), "{backdated}");
        let der = &id.certificate_chain().as_slice()[0];
        let (_, x509) = x509_parser::parse_x509_certificate(der.der()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(x509.public_key().algorithm.algorithm, x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY);
        assert_eq!(info.hex().len(), 64);
    }

    #[test]
    fn next_is_published_at_half_life_and_switched_at_three_quarters() {
        let t0 = OffsetDateTime::UNIX_EPOCH;
        let info = CertInfo { sha256: [0; 32], not_before: t0, not_after: t0 + time::Duration::days(12) };
        let (publish, switch) = schedule(&info);
        assert_eq!(publish, t0 + time::Duration::days(6));
        assert_eq!(switch, t0 + time::Duration::days(9));
    }

    #[test]
    fn the_store_publishes_current_and_next() {
        let store = CertStore::default();
        assert_eq!(store.to_json(), None);
        let t0 = OffsetDateTime::UNIX_EPOCH;
        let info = |b| CertInfo { sha256: [b; 32], not_before: t0, not_after: t0 + time::Duration::days(1) };
        store.set_current(info(0xab));
        let body = store.to_json().unwrap_or_default();
        assert_eq!(body["algorithm"], "sha-256");
        assert_eq!(body["value"], "ab".repeat(32));
        assert_eq!(body["notAfter"], "1970-01-02T00:00:00Z");
        assert!(body.get("next").is_none());
        store.set_next(info(0x01));
        assert_eq!(store.to_json().unwrap_or_default()["next"]["value"], "01".repeat(32));
        store.set_current(info(0x01));
        assert!(store.to_json().unwrap_or_default().get("next").is_none());
    }
}
