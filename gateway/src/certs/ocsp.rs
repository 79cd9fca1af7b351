//! OCSP stapling: for a certificate whose Authority Information Access names a responder,
//! fetch a response in the background, check it (signed by the issuer or a responder the
//! issuer certified, about this certificate, status good, not expired), staple it, refresh
//! it halfway to `nextUpdate`. A failed fetch keeps the last good response until it expires;
//! handshakes never wait for a responder (they read whatever is stapled).
//!
//! The DER work (`request_for`, `check_response`) and the timing (`refresh_at`) are pure;
//! `fetch` and `run` are the I/O.

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::digest;
use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use rustls_pki_types::CertificateDer;
use x509_cert::der::asn1::{Null, OctetString};
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::{Decode, Encode};
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::Certificate;
use x509_ocsp::{
    BasicOcspResponse, CertId, CertStatus, OcspRequest, OcspResponse, OcspResponseStatus, Request,
    TbsRequest,
};

use super::{unix_now, ServerCerts};

const SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const OCSP_BASIC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.1");
const RESPONSE_LIMIT: usize = 64 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum OcspError {
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("OCSP response: {0}")]
    Response(String),
    #[error("OCSP responder {url}: {detail}")]
    Fetch { url: String, detail: String },
}

fn cert_err(e: impl std::fmt::Display) -> OcspError {
    OcspError::Certificate(e.to_string())
}
fn resp_err(e: impl std::fmt::Display) -> OcspError {
    OcspError::Response(e.to_string())
}

/// The responder URL a certificate names (AIA `id-ad-ocsp`, http only).
pub fn responder(leaf: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    parsed
        .extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityInfoAccess(aia) => {
                aia.accessdescs.iter().find_map(|d| {
                    match (
                        &d.access_location,
                        d.access_method
                            == x509_parser::oid_registry::OID_PKIX_ACCESS_DESCRIPTOR_OCSP,
                    ) {
                        (x509_parser::extensions::GeneralName::URI(uri), true)
                            if uri.starts_with("http://") =>
                        {
                            Some(uri.to_string())
                        }
                        _ => None,
                    }
                })
            }
            _ => None,
        })
}

fn sha1(bytes: &[u8]) -> Result<OctetString, OcspError> {
    OctetString::new(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, bytes).as_ref())
        .map_err(cert_err)
}

/// The CertID of `leaf` issued by `issuer` (SHA-1, as every responder understands).
pub fn cert_id(
    leaf: &CertificateDer<'_>,
    issuer: &CertificateDer<'_>,
) -> Result<CertId, OcspError> {
    let leaf = Certificate::from_der(leaf.as_ref()).map_err(cert_err)?;
    let issuer = Certificate::from_der(issuer.as_ref()).map_err(cert_err)?;
    let name = issuer.tbs_certificate.subject.to_der().map_err(cert_err)?;
    let key = issuer
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes();
    Ok(CertId {
        hash_algorithm: AlgorithmIdentifierOwned {
            oid: SHA1,
            parameters: Some(Null.into()),
        },
        issuer_name_hash: sha1(&name)?,
        issuer_key_hash: sha1(key)?,
        serial_number: leaf.tbs_certificate.serial_number,
    })
}

/// The DER request asking about `id`.
pub fn request_for(id: &CertId) -> Result<Vec<u8>, OcspError> {
    OcspRequest {
        tbs_request: TbsRequest {
            version: Default::default(),
            requestor_name: None,
            request_list: vec![Request {
                req_cert: id.clone(),
                single_request_extensions: None,
            }],
            request_extensions: None,
        },
        optional_signature: None,
    }
    .to_der()
    .map_err(cert_err)
}

/// A response fit to staple: its validity in unix seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub this_update: i64,
    pub next_update: Option<i64>,
}

fn unix(t: &x509_ocsp::OcspGeneralizedTime) -> i64 {
    t.0.to_unix_duration().as_secs() as i64
}

/// The verification algorithm for a signature algorithm and the signer's key.
fn algorithm(
    sig: &ObjectIdentifier,
    key: &SubjectPublicKeyInfoOwned,
) -> Option<&'static dyn VerificationAlgorithm> {
    let curve = key
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
        .map(|o| o.to_string());
    Some(match (sig.to_string().as_str(), curve.as_deref()) {
        ("1.2.840.113549.1.1.11", _) => &signature::RSA_PKCS1_2048_8192_SHA256,
        ("1.2.840.113549.1.1.12", _) => &signature::RSA_PKCS1_2048_8192_SHA384,
        ("1.2.840.113549.1.1.13", _) => &signature::RSA_PKCS1_2048_8192_SHA512,
        ("1.2.840.10045.4.3.2", Some("1.2.840.10045.3.1.7")) => &signature::ECDSA_P256_SHA256_ASN1,
        ("1.2.840.10045.4.3.2", Some("1.3.132.0.34")) => &signature::ECDSA_P384_SHA256_ASN1,
        ("1.2.840.10045.4.3.3", Some("1.2.840.10045.3.1.7")) => &signature::ECDSA_P256_SHA384_ASN1,
        ("1.2.840.10045.4.3.3", Some("1.3.132.0.34")) => &signature::ECDSA_P384_SHA384_ASN1,
        ("1.3.101.112", _) => &signature::ED25519,
        _ => return None,
    })
}

fn verify(
    signer: &SubjectPublicKeyInfoOwned,
    alg: &AlgorithmIdentifierOwned,
    message: &[u8],
    sig: &[u8],
) -> Result<(), OcspError> {
    let alg_impl = algorithm(&alg.oid, signer)
        .ok_or_else(|| resp_err(format!("unsupported signature algorithm {}", alg.oid)))?;
    UnparsedPublicKey::new(alg_impl, signer.subject_public_key.raw_bytes())
        .verify(message, sig)
        .map_err(|_| resp_err("bad signature"))
}

/// Checks a DER response about `id` from `issuer`'s responder at `now` (unix seconds).
pub fn check_response(
    der: &[u8],
    id: &CertId,
    issuer: &CertificateDer<'_>,
    now: i64,
) -> Result<Checked, OcspError> {
    let response = OcspResponse::from_der(der).map_err(resp_err)?;
    if response.response_status != OcspResponseStatus::Successful {
        return Err(resp_err(format!("status {:?}", response.response_status)));
    }
    let bytes = response
        .response_bytes
        .ok_or_else(|| resp_err("no response bytes"))?;
    if bytes.response_type != OCSP_BASIC {
        return Err(resp_err(format!("type {}", bytes.response_type)));
    }
    let basic = BasicOcspResponse::from_der(bytes.response.as_bytes()).map_err(resp_err)?;
    let issuer = Certificate::from_der(issuer.as_ref()).map_err(cert_err)?;
    let tbs = basic.tbs_response_data.to_der().map_err(resp_err)?;
    let sig = basic
        .signature
        .as_bytes()
        .ok_or_else(|| resp_err("signature is not whole bytes"))?;
    // Signed by the issuer itself, or by a responder certificate the issuer signed.
    let issuer_key = &issuer.tbs_certificate.subject_public_key_info;
    if verify(issuer_key, &basic.signature_algorithm, &tbs, sig).is_err() {
        let delegated = basic
            .certs
            .iter()
            .flatten()
            .find(|c| c.tbs_certificate.issuer == issuer.tbs_certificate.subject)
            .ok_or_else(|| resp_err("not signed by the issuer or a responder it certified"))?;
        let delegated_tbs = delegated.tbs_certificate.to_der().map_err(resp_err)?;
        let delegated_sig = delegated
            .signature
            .as_bytes()
            .ok_or_else(|| resp_err("responder certificate signature is not whole bytes"))?;
        verify(
            issuer_key,
            &delegated.signature_algorithm,
            &delegated_tbs,
            delegated_sig,
        )?;
        verify(
            &delegated.tbs_certificate.subject_public_key_info,
            &basic.signature_algorithm,
            &tbs,
            sig,
        )?;
    }
    let single = basic
        .tbs_response_data
        .responses
        .iter()
        .find(|r| {
            r.cert_id.serial_number == id.serial_number
                && r.cert_id.issuer_key_hash == id.issuer_key_hash
                && r.cert_id.issuer_name_hash == id.issuer_name_hash
        })
        .ok_or_else(|| resp_err("no answer about this certificate"))?;
    match &single.cert_status {
        CertStatus::Good(_) => {}
        CertStatus::Revoked(_) => return Err(resp_err("the certificate is REVOKED")),
        CertStatus::Unknown(_) => {
            return Err(resp_err("the responder does not know the certificate"))
        }
    }
    let checked = Checked {
        this_update: unix(&single.this_update),
        next_update: single.next_update.as_ref().map(unix),
    };
    // Five minutes of clock skew, as browsers allow.
    if checked.this_update > now + 300 {
        return Err(resp_err("thisUpdate is in the future"));
    }
    if checked.next_update.is_some_and(|next| next <= now) {
        return Err(resp_err("already past nextUpdate"));
    }
    Ok(checked)
}

/// When to fetch again after a good response: halfway between its thisUpdate and
/// nextUpdate (an hour on when it names no nextUpdate), never sooner than `min`.
pub fn refresh_at(checked: &Checked, now: i64, min: i64) -> i64 {
    let at = match checked.next_update {
        Some(next) => checked.this_update + (next - checked.this_update) / 2,
        None => now + 3600,
    };
    at.max(now + min)
}

/// Whether a stapled response may still be served at `now`.
pub fn still_valid(checked: &Checked, now: i64) -> bool {
    checked.next_update.is_none_or(|next| next > now)
}

/// POSTs `request` to an http:// responder; the body, bounded.
pub async fn fetch(url: &str, request: Vec<u8>) -> Result<Vec<u8>, OcspError> {
    let fail = |detail: String| OcspError::Fetch {
        url: url.to_owned(),
        detail,
    };
    let uri: http::Uri = url.parse().map_err(|e| fail(format!("bad URL: {e}")))?;
    let host = uri.host().ok_or_else(|| fail("no host".into()))?.to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let work = async {
        let stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| fail(e.to_string()))?;
        // Title-case header names: some responders (OpenSSL's among them) match them exactly.
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .title_case_headers(true)
            .handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| fail(e.to_string()))?;
        tokio::spawn(conn);
        let authority = uri.authority().map_or(host.clone(), |a| a.to_string());
        let req = http::Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(http::header::HOST, authority)
            .header(http::header::CONTENT_TYPE, "application/ocsp-request")
            .header(http::header::ACCEPT, "application/ocsp-response")
            .body(Full::new(Bytes::from(request)))
            .map_err(|e| fail(e.to_string()))?;
        let response = sender
            .send_request(req)
            .await
            .map_err(|e| fail(e.to_string()))?;
        if !response.status().is_success() {
            return Err(fail(format!("HTTP {}", response.status())));
        }
        let body = Limited::new(response.into_body(), RESPONSE_LIMIT)
            .collect()
            .await
            .map_err(|e| fail(e.to_string()))?;
        Ok(body.to_bytes().to_vec())
    };
    tokio::time::timeout(FETCH_TIMEOUT, work)
        .await
        .map_err(|_| fail(format!("no answer within {FETCH_TIMEOUT:?}")))?
}

/// `gateway_ocsp_*` series.
#[derive(Clone)]
pub struct OcspMetrics {
    pub fetches: IntCounterVec,
    pub this_update: IntGauge,
    pub next_update: IntGauge,
    pub stapled: IntGauge,
}

impl OcspMetrics {
    pub fn register(registry: &Registry) -> Result<OcspMetrics, prometheus::Error> {
        let metrics = OcspMetrics {
            fetches: IntCounterVec::new(
                Opts::new(
                    "gateway_ocsp_fetches_total",
                    "OCSP responder fetches, by result (success, error: the last good staple stays until it expires).",
                ),
                &["result"],
            )?,
            this_update: IntGauge::new(
                "gateway_ocsp_response_this_update_timestamp_seconds",
                "thisUpdate of the stapled OCSP response (its age is time() minus this); 0 when nothing is stapled.",
            )?,
            next_update: IntGauge::new(
                "gateway_ocsp_response_next_update_timestamp_seconds",
                "nextUpdate of the stapled OCSP response; 0 when none or nothing is stapled.",
            )?,
            stapled: IntGauge::new(
                "gateway_ocsp_stapled",
                "1 while an OCSP response is stapled to the served certificate.",
            )?,
        };
        registry.register(Box::new(metrics.fetches.clone()))?;
        registry.register(Box::new(metrics.this_update.clone()))?;
        registry.register(Box::new(metrics.next_update.clone()))?;
        registry.register(Box::new(metrics.stapled.clone()))?;
        Ok(metrics)
    }
}

/// Keeps the served certificate stapled while `enabled()` says so (`None`: the gateway is
/// gone, stop); restarts on every new certificate.
pub async fn run(
    certs: Arc<ServerCerts>,
    enabled: impl Fn() -> Option<bool>,
    metrics: OcspMetrics,
) {
    let mut changed = certs.subscribe();
    let mut good: Option<(CertificateDer<'static>, Checked)> = None;
    let mut retry = super::renewal::Backoff::new(Duration::from_secs(5), Duration::from_secs(600));
    loop {
        let Some(on) = enabled() else { return };
        let wait = match certs.current() {
            Some(installed) if on => {
                let leaf = installed.leaf().clone();
                if good.as_ref().is_some_and(|(l, _)| *l != leaf) {
                    good = None;
                }
                match (responder(&leaf), installed.key.cert.get(1)) {
                    (Some(url), Some(issuer)) => {
                        let now = unix_now();
                        let due = good
                            .as_ref()
                            .map_or(now, |(_, c)| refresh_at(c, c.this_update, 0));
                        if due <= now {
                            match staple_once(&url, &leaf, issuer, now).await {
                                Ok((der, checked)) => {
                                    certs.staple(&leaf, Some(der));
                                    metrics.fetches.with_label_values(&["success"]).inc();
                                    metrics.this_update.set(checked.this_update);
                                    metrics.next_update.set(checked.next_update.unwrap_or(0));
                                    metrics.stapled.set(1);
                                    retry.succeed();
                                    let next = refresh_at(&checked, now, 5);
                                    good = Some((leaf, checked));
                                    Duration::from_secs((next - now).max(1) as u64)
                                }
                                Err(e) => {
                                    metrics.fetches.with_label_values(&["error"]).inc();
                                    let keep =
                                        good.as_ref().is_some_and(|(_, c)| still_valid(c, now));
                                    if !keep {
                                        good = None;
                                        certs.staple(&leaf, None);
                                        metrics.stapled.set(0);
                                        metrics.this_update.set(0);
                                        metrics.next_update.set(0);
                                    }
                                    let wait = retry.fail();
                                    tracing::warn!(error = %e, kept_last_good = keep, retry_in = ?wait, "OCSP fetch failed");
                                    wait
                                }
                            }
                        } else {
                            Duration::from_secs((due - now).max(1) as u64)
                        }
                    }
                    _ => {
                        metrics.stapled.set(0);
                        Duration::from_secs(3600)
                    }
                }
            }
            _ => {
                metrics.stapled.set(0);
                Duration::from_secs(3600)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            result = changed.changed() => {
                if result.is_err() {
                    return;
                }
            }
        }
    }
}

async fn staple_once(
    url: &str,
    leaf: &CertificateDer<'_>,
    issuer: &CertificateDer<'_>,
    now: i64,
) -> Result<(Vec<u8>, Checked), OcspError> {
    let id = cert_id(leaf, issuer)?;
    let der = fetch(url, request_for(&id)?).await?;
    let checked = check_response(&der, &id, issuer, now)?;
    Ok((der, checked))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_halfway_to_next_update_and_never_in_a_tight_loop() {
        let c = Checked {
            this_update: 1000,
            next_update: Some(2000),
        };
        assert_eq!(refresh_at(&c, 1000, 5), 1500);
        assert_eq!(refresh_at(&c, 1600, 5), 1605);
        let open = Checked {
            this_update: 1000,
            next_update: None,
        };
        assert_eq!(refresh_at(&open, 1000, 5), 4600);
        assert!(still_valid(&c, 1999));
        assert!(!still_valid(&c, 2000));
        assert!(still_valid(&open, i64::MAX));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let issuer = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        let id = CertId {
            hash_algorithm: AlgorithmIdentifierOwned {
                oid: SHA1,
                parameters: None,
            },
            issuer_name_hash: OctetString::new(vec![0; 20]).expect("octets"),
            issuer_key_hash: OctetString::new(vec![0; 20]).expect("octets"),
            serial_number: x509_cert::serial_number::SerialNumber::new(&[1]).expect("serial"),
        };
        for bytes in [&b""[..], b"\x30\x00", b"\x30\x03\x0a\x01\x00", &[0xff; 64]] {
            assert!(check_response(bytes, &id, &issuer, 0).is_err());
        }
        assert!(request_for(&id).is_ok());
        assert!(cert_id(&issuer, &issuer).is_err());
        assert_eq!(responder(&issuer), None);
    }
}
