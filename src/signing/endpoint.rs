//! Where a presigned URL points and what it is signed for, decided by
//! aws-sdk-s3's own endpoint rules so that virtual-host or path style,
//! partitions, FIPS and dual-stack come out exactly as the SDK has them.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use aws_sdk_s3::config::endpoint::{DefaultResolver, Params, ResolveEndpoint};
use aws_smithy_types::Document;
use aws_types::service_config::ServiceConfigKey;

use super::SigningError;
use crate::api::S3Target;

/// Resolved routes kept per target; more buckets than this start the
/// target's map afresh, so a stream of distinct buckets cannot grow it.
const MAX_BUCKETS_PER_TARGET: usize = 1024;

/// The URL prefix and SigV4 scope for one bucket of one target.
#[derive(Debug)]
pub(crate) struct Route {
    /// `scheme://authority`.
    pub origin: String,
    /// The path before the object key, without a trailing slash: the start
    /// of both the URL's path and the canonical URI.
    pub path_prefix: String,
    /// The Host header value the signature covers.
    pub host: String,
    pub region: String,
    pub service: String,
}

/// The endpoint settings aws-sdk-s3 would take from the shared config; the
/// region, endpoint and addressing style come from each target.
struct Settings {
    endpoint_url: Option<String>,
    use_fips: Option<bool>,
    use_dual_stack: Option<bool>,
    disable_s3_express_session_auth: Option<bool>,
}

impl Settings {
    /// What `aws_sdk_s3::config::Builder::from(&SdkConfig)` reads, the same
    /// way: `AWS_ENDPOINT_URL_S3` and friends win over a global endpoint
    /// unless that was set in code.
    fn from_sdk_config(base: &aws_config::SdkConfig) -> Self {
        let service = |env, profile| {
            let key = ServiceConfigKey::builder()
                .service_id("S3")
                .env(env)
                .profile(profile)
                .build()
                .ok()?;
            base.service_config()?.load_config(key)
        };
        let endpoint_url = if base.get_origin("endpoint_url").is_client_config() {
            base.endpoint_url().map(str::to_owned)
        } else {
            service("AWS_ENDPOINT_URL", "endpoint_url")
                .or_else(|| base.endpoint_url().map(str::to_owned))
        };
        Settings {
            endpoint_url,
            use_fips: base.use_fips(),
            use_dual_stack: base.use_dual_stack(),
            disable_s3_express_session_auth: service(
                "AWS_S3_DISABLE_EXPRESS_SESSION_AUTH",
                "s3_disable_express_session_auth",
            )
            .and_then(|v| v.parse().ok()),
        }
    }
}

/// Resolves and caches routes. Resolving runs the SDK's rule engine, which
/// takes about as long as the rest of a signature, and its answer only
/// changes with the target and bucket.
pub(crate) struct Endpoints {
    settings: Settings,
    resolver: DefaultResolver,
    routes: RwLock<HashMap<S3Target, HashMap<String, Arc<Route>>>>,
}

impl Endpoints {
    pub fn new(base: &aws_config::SdkConfig) -> Self {
        Endpoints {
            settings: Settings::from_sdk_config(base),
            resolver: DefaultResolver::new(),
            routes: RwLock::new(HashMap::new()),
        }
    }

    pub async fn route(&self, target: &S3Target, bucket: &str) -> Result<Arc<Route>, SigningError> {
        if let Some(route) = self
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(target)
            .and_then(|buckets| buckets.get(bucket))
        {
            return Ok(route.clone());
        }
        let route = Arc::new(self.resolve(target, bucket).await?);
        let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
        let buckets = routes.entry(target.clone()).or_default();
        if buckets.len() >= MAX_BUCKETS_PER_TARGET {
            buckets.clear();
        }
        buckets.insert(bucket.to_owned(), route.clone());
        Ok(route)
    }

    /// The parameters are those the SDK's object operations pass, less the
    /// object key: S3's rules never read it.
    async fn resolve(&self, target: &S3Target, bucket: &str) -> Result<Route, SigningError> {
        let s = &self.settings;
        let params = Params::builder()
            .region(target.region.clone())
            .set_use_fips(s.use_fips)
            .set_use_dual_stack(s.use_dual_stack)
            .set_endpoint(target.endpoint.clone().or_else(|| s.endpoint_url.clone()))
            .force_path_style(target.force_path_style)
            .set_disable_s3_express_session_auth(s.disable_s3_express_session_auth)
            .bucket(bucket)
            .build()
            .map_err(|e| SigningError(format!("endpoint parameters: {e}")))?;
        let endpoint = self
            .resolver
            .resolve_endpoint(&params)
            .await
            .map_err(|e| SigningError(format!("resolving the S3 endpoint: {e}")))?;
        route_from(&endpoint, &target.region)
    }
}

fn route_from(
    endpoint: &aws_sdk_s3::config::endpoint::Endpoint,
    region: &str,
) -> Result<Route, SigningError> {
    let unsupported = |what: &str| SigningError(format!("unsupported S3 endpoint: {what}"));
    if endpoint.headers().next().is_some() {
        return Err(unsupported("it requires extra headers"));
    }
    let (region, service) = match endpoint.auth_schemes().first() {
        None => (region.to_owned(), "s3".to_owned()),
        Some(scheme) if scheme.name() == "sigv4" => {
            if let Some(Document::Bool(false)) = scheme.get("disableDoubleEncoding") {
                return Err(unsupported("it needs double URI encoding"));
            }
            let text = |name| match scheme.get(name) {
                Some(Document::String(s)) => Some(s.clone()),
                _ => None,
            };
            (
                text("signingRegion").unwrap_or_else(|| region.to_owned()),
                text("signingName").unwrap_or_else(|| "s3".to_owned()),
            )
        }
        // S3 Express session auth and SigV4a (multi-region access points).
        Some(scheme) => return Err(unsupported(&format!("auth scheme {}", scheme.name()))),
    };
    let uri: http::Uri = endpoint
        .url()
        .parse()
        .map_err(|e| unsupported(&format!("{e}")))?;
    let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
        return Err(unsupported("no scheme or host"));
    };
    // As aws-sigv4: a default port is left out of the signed Host header.
    let default_port = matches!(
        (scheme.as_str(), uri.port_u16()),
        ("http", Some(80)) | ("https", Some(443))
    );
    let host = if default_port {
        authority.host()
    } else {
        authority.as_str()
    }
    .to_owned();
    // As aws-smithy-runtime's merge of endpoint and request paths.
    let path = uri.path();
    let path_prefix = path.strip_suffix('/').unwrap_or(path).to_owned();
    Ok(Route {
        origin: format!("{scheme}://{authority}"),
        path_prefix,
        host,
        region,
        service,
    })
}
