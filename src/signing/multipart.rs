//! Presigned URLs for a multipart upload the operator created: one per part,
//! in a compact form, and the URLs that complete and abort the upload.
//!
//! Part URLs differ only in `partNumber` and `X-Amz-Signature`, so the
//! Secret holds one URL template and one signature per part: 10,000 parts
//! with an AWS-sized session token fit a Secret (see `PartUrls`).

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::sigv4::{QuerySigner, encode};
use super::{Presigner, SecretUrl, SigningError};
use crate::api::S3Target;

/// Longest one S3 call of the operator's own (create, list, look, abort)
/// may take, retries included: after it, a create can no longer start an
/// upload, which bounds the window a crash leaves unrecorded.
pub const S3_OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

/// The placeholders of the part URL template. Neither can occur elsewhere in
/// a URL: the signer percent-encodes `{` and `}`.
pub const PART_NUMBER_PLACEHOLDER: &str = "{partNumber}";
pub const SIGNATURE_PLACEHOLDER: &str = "{signature}";

/// What to sign for an upload that exists.
#[derive(Debug, Clone)]
pub struct MultipartInput<'a> {
    pub bucket: &'a str,
    pub key: &'a str,
    pub upload_id: &'a str,
    pub parts: u32,
    pub part_size: u64,
    pub signed_at: SystemTime,
    pub expires_in: Duration,
}

/// The part URLs, compactly: part N (1-based) is `url` with
/// `{partNumber}` replaced by N and `{signature}` by `signatures[N-1]`.
/// This is the Secret's `parts` key as JSON. No `Debug` of the contents:
/// with a signature, the template is a working URL.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartUrls {
    pub count: u32,
    pub part_size: u64,
    pub url: String,
    pub signatures: Vec<String>,
}

impl PartUrls {
    /// The URL of part `n` (1-based).
    pub fn url(&self, n: u32) -> Option<String> {
        let signature = self
            .signatures
            .get(usize::try_from(n).ok()?.checked_sub(1)?)?;
        Some(
            self.url
                .replace(PART_NUMBER_PLACEHOLDER, &n.to_string())
                .replace(SIGNATURE_PLACEHOLDER, signature),
        )
    }
}

/// A signed multipart upload: what the Secret of a multipart grant holds.
#[derive(Clone, PartialEq, Eq)]
pub struct PresignedMultipart {
    pub upload_id: String,
    /// Where the upload is: the bucket and key it assembles.
    pub bucket: String,
    pub key: String,
    pub parts: PartUrls,
    /// CompleteMultipartUpload: POST with the XML list of parts.
    pub complete: SecretUrl,
    /// AbortMultipartUpload: DELETE.
    pub abort: SecretUrl,
}

impl PresignedMultipart {
    /// A short hash that tells signings apart without revealing one.
    pub fn fingerprint(&self) -> String {
        let mut hash = Sha256::new();
        for part in [
            self.upload_id.as_str(),
            self.parts.url.as_str(),
            self.complete.expose(),
            self.abort.expose(),
        ] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part.as_bytes());
        }
        for s in &self.parts.signatures {
            hash.update(s.as_bytes());
        }
        format!("sha256:{}", &hex::encode(hash.finalize())[..16])
    }

    /// `text` with every URL and signature replaced, for messages that
    /// might quote what was sent.
    pub fn redact(&self, text: &str) -> String {
        let mut text = text
            .replace(self.complete.expose(), "<url>")
            .replace(self.abort.expose(), "<url>")
            .replace(&self.parts.url, "<url>");
        for s in &self.parts.signatures {
            text = text.replace(s.as_str(), "<signature>");
        }
        text
    }
}

impl std::fmt::Debug for PresignedMultipart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresignedMultipart")
            .field("upload_id", &self.upload_id)
            .field("parts", &self.parts.count)
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

impl Presigner {
    /// Signs the part, complete and abort URLs of an existing upload.
    pub async fn presign_multipart(
        &self,
        target: &S3Target,
        credentials: &Credentials,
        input: &MultipartInput<'_>,
    ) -> Result<PresignedMultipart, SigningError> {
        if input.upload_id.is_empty() {
            return Err(SigningError("the upload id is empty".into()));
        }
        let route = self.endpoints.route(target, input.bucket).await?;
        let signer = QuerySigner::new(
            &route,
            credentials,
            input.key,
            input.signed_at,
            input.expires_in,
            &self.keys,
        )?;
        let upload_id = encode(input.upload_id);
        let upload = ("uploadId", upload_id.as_str());
        let mut signatures = Vec::with_capacity(input.parts as usize);
        for n in 1..=input.parts {
            let n = n.to_string();
            signatures.push(signer.signature("PUT", &[("partNumber", &n), upload]));
        }
        let url = signer.url(
            &[("partNumber", PART_NUMBER_PLACEHOLDER), upload],
            SIGNATURE_PLACEHOLDER,
        );
        let sign = |method: &str| {
            let signature = signer.signature(method, &[upload]);
            SecretUrl::new(signer.url(&[upload], &signature))
        };
        Ok(PresignedMultipart {
            upload_id: input.upload_id.to_owned(),
            bucket: input.bucket.to_owned(),
            key: input.key.to_owned(),
            parts: PartUrls {
                count: input.parts,
                part_size: input.part_size,
                url,
                signatures,
            },
            complete: sign("POST"),
            abort: sign("DELETE"),
        })
    }

    /// An S3 client for `target` signing with `credentials`: the operator's
    /// own calls on an upload (create, list parts, abort, head). Endpoint
    /// settings come from the same shared config the presigner reads.
    pub fn s3_client(&self, target: &S3Target, credentials: Credentials) -> aws_sdk_s3::Client {
        use aws_sdk_s3::config::{
            Region, RequestChecksumCalculation, ResponseChecksumValidation, timeout::TimeoutConfig,
        };
        // A store that never answers holds no pass (and no worker) forever.
        let timeouts = TimeoutConfig::builder()
            .operation_timeout(S3_OPERATION_TIMEOUT)
            .operation_attempt_timeout(S3_OPERATION_TIMEOUT / 3)
            .build();
        let mut config = aws_sdk_s3::config::Builder::from(&self.base)
            .timeout_config(timeouts)
            .region(Region::new(target.region.clone()))
            .force_path_style(target.force_path_style)
            .credentials_provider(credentials)
            // No checksum algorithm on the upload: the part URLs carry none.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(endpoint) = &target.endpoint {
            config = config.endpoint_url(endpoint.clone());
        }
        aws_sdk_s3::Client::from_conf(config.build())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::tests::{presigner, target};

    fn input(parts: u32) -> MultipartInput<'static> {
        MultipartInput {
            bucket: "reports",
            key: "a b/c.bin",
            upload_id: "abc_DEF-1/2+=",
            parts,
            part_size: 5 << 20,
            signed_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            expires_in: Duration::from_secs(900),
        }
    }

    #[tokio::test]
    async fn the_template_gives_each_part_its_own_signed_url() {
        let creds = Credentials::new("AKIDEXAMPLE", "secret", Some("tok/en".into()), None, "t");
        let signed = presigner()
            .presign_multipart(&target(), &creds, &input(3))
            .await
            .expect("signs");
        let p = &signed.parts;
        assert_eq!((p.count, p.signatures.len()), (3, 3));
        let one = p.url(1).expect("part 1");
        assert!(
            one.starts_with("http://127.0.0.1:9000/reports/a%20b/c.bin?partNumber=1&uploadId=abc_DEF-1%2F2%2B%3D&X-Amz-Algorithm="),
            "{one}"
        );
        assert!(one.contains(&format!("X-Amz-Signature={}", p.signatures[0])));
        assert!(one.contains("X-Amz-Security-Token=tok%2Fen"), "{one}");
        assert_ne!(p.signatures[0], p.signatures[1], "partNumber is signed");
        assert_eq!(p.url(0), None);
        assert_eq!(p.url(4), None);
        assert!(
            signed
                .complete
                .expose()
                .contains("?uploadId=abc_DEF-1%2F2%2B%3D&X-Amz-Algorithm=")
        );
        assert_ne!(signed.complete, signed.abort, "the method is signed");
        let shown = format!("{signed:?}");
        assert!(
            !shown.contains(&p.signatures[0]) && !shown.contains("X-Amz"),
            "{shown}"
        );
    }
}
