//! Structured logging.
//!
//! Libraries below the operator log request details at debug level: the AWS
//! signer prints canonical requests (with session tokens) and HTTP clients
//! print bodies. Those targets are capped at info whatever level is asked
//! for, so no URL, signature or token can reach the logs.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Targets that may log credentials or request bodies below info.
pub const CAPPED_TARGETS: &[&str] = &[
    "aws_sigv4",
    "aws_smithy_runtime",
    "aws_smithy_runtime_api",
    "aws_smithy_http_client",
    "aws_sdk_s3",
    "aws_sdk_sts",
    "aws_sdk_sso",
    "aws_config",
    "aws_runtime",
    "hyper",
    "hyper_util",
    "h2",
    "rustls",
    "tower",
    "tower_http",
    "kube_client",
    "reqwest",
];

/// The filter for a level such as `info` or `debug`.
pub fn filter(level: &str) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    let mut directives = vec![level.to_owned()];
    directives.extend(CAPPED_TARGETS.iter().map(|t| format!("{t}=info")));
    EnvFilter::try_new(directives.join(","))
}

pub fn init(
    format: LogFormat,
    level: &str,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let filter = filter(level)?;
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json().flatten_event(true))
            .try_init()?,
        LogFormat::Text => registry.with(tracing_subscriber::fmt::layer()).try_init()?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn capped_targets_stay_at_info_even_at_trace() {
        let f = super::filter("trace").expect("valid").to_string();
        assert!(
            f.contains("aws_sigv4=info") && f.contains("kube_client=info"),
            "{f}"
        );
        assert!(super::filter("operator=loud").is_err());
    }
}
