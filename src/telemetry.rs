//! Structured logging.
//!
//! Libraries below the operator log request details at debug and trace: the
//! AWS signer prints canonical requests and strings to sign (with session
//! tokens), the SDK's orchestrator whole requests (with their Authorization
//! header), HTTP clients headers and bodies. Those targets are capped at
//! info whatever `--log-level` asks for, so no URL, signature or token can
//! reach the logs.
//!
//! The cap is a filter of its own, beside the one `--log-level` builds, and
//! an event is logged only if both let it through. Appending `TARGET=info`
//! to the user's directives would not do: an `EnvFilter` takes the most
//! specific directive (`aws_sigv4::http_request=trace` beats
//! `aws_sigv4=info`), and a directive naming a span or a field
//! (`[request]=trace`) enables events inside matching spans whatever the
//! target directives say. A level can lower a capped target
//! (`aws_sigv4=warn`), never raise it.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The most a capped target logs.
pub const CAP: LevelFilter = LevelFilter::INFO;

/// Targets that may log credentials, signatures, URLs or request bodies
/// below info. Each is a prefix: `aws_smithy_` covers every smithy crate,
/// `hyper` covers `hyper_util` and `hyper_rustls`.
pub const CAPPED_TARGETS: &[&str] = &[
    "aws_sigv4",
    "aws_smithy_",
    "aws_sdk_",
    "aws_config",
    "aws_runtime",
    "aws_credential_types",
    "aws_types",
    "hyper",
    "h2",
    "rustls",
    "tokio_rustls",
    "tower",
    "kube_client",
    "reqwest",
];

/// The filter `--log-level` asks for: a level such as `info` or `debug`, or
/// tracing directives. [`cap`] applies on top of it.
pub fn filter(level: &str) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    EnvFilter::try_new(level)
}

/// Lets every event through except those of [`CAPPED_TARGETS`] above
/// [`CAP`].
pub fn cap() -> Targets {
    Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_targets(CAPPED_TARGETS.iter().map(|t| (*t, CAP)))
}

pub fn init(
    format: LogFormat,
    level: &str,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let filter = filter(level)?;
    // Two global filters: an event must pass both.
    let registry = tracing_subscriber::registry().with(cap()).with(filter);
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
    use std::sync::{Arc, Mutex};

    use tracing::Level;
    use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

    /// Records the target and level of every event that reaches it.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<(String, Level)>>>);

    impl<S: tracing::Subscriber> Layer<S> for Seen {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            let meta = event.metadata();
            if let Ok(mut seen) = self.0.lock() {
                seen.push((meta.target().to_owned(), *meta.level()));
            }
        }
    }

    /// One event per level for `$target`.
    macro_rules! every_level {
        ($target:literal) => {
            tracing::trace!(target: $target, "t");
            tracing::debug!(target: $target, "d");
            tracing::info!(target: $target, "i");
            tracing::warn!(target: $target, "w");
        };
    }

    /// The events logged under `level`, as the operator sets logging up,
    /// each in a span named `request` with a field `uri` (for directives
    /// that name spans or fields).
    fn logged(level: &str) -> Vec<(String, Level)> {
        let seen = Seen::default();
        let subscriber = tracing_subscriber::registry()
            .with(super::cap())
            .with(super::filter(level).expect("a valid filter"))
            .with(seen.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info_span!("request", uri = "/b/k").in_scope(|| {
                every_level!("aws_sigv4::http_request::sign");
                every_level!("aws_smithy_runtime::client::orchestrator");
                every_level!("aws_config::profile::credentials");
                every_level!("hyper_util::client::legacy");
                every_level!("reqwest::connect");
                every_level!("upload_grant_operator::controller");
            });
        });
        seen.0.lock().expect("not poisoned").clone()
    }

    fn levels(logged: &[(String, Level)], target: &str) -> Vec<Level> {
        logged
            .iter()
            .filter(|(t, _)| t == target)
            .map(|(_, l)| *l)
            .collect()
    }

    const SIGNING: &[&str] = &[
        "aws_sigv4::http_request::sign",
        "aws_smithy_runtime::client::orchestrator",
        "aws_config::profile::credentials",
        "hyper_util::client::legacy",
        "reqwest::connect",
    ];
    const OPERATOR: &str = "upload_grant_operator::controller";

    #[test]
    fn no_level_or_directive_lifts_the_cap_on_signing_and_http_crates() {
        // (--log-level, what the operator's own target logs)
        let all = vec![Level::TRACE, Level::DEBUG, Level::INFO, Level::WARN];
        for (level, operator) in [
            ("trace", all.clone()),
            ("debug", all[1..].to_vec()),
            ("aws_sigv4=trace", vec![]),
            ("aws_sigv4::http_request=trace", vec![]),
            ("aws_sigv4::http_request::sign=trace,trace", all.clone()),
            ("aws_smithy_runtime::client::orchestrator=trace", vec![]),
            ("hyper_util=trace,reqwest=trace,aws_config=trace", vec![]),
            ("[request]=trace", all.clone()),
            ("[{uri}]=trace", all.clone()),
            ("aws_sigv4[request]=trace", vec![]),
            ("aws_sigv4::http_request[request{uri}]=trace", vec![]),
            ("info,upload_grant_operator=debug", all[1..].to_vec()),
        ] {
            let logged = logged(level);
            for target in SIGNING {
                let got = levels(&logged, target);
                assert!(
                    got.iter().all(|l| *l <= Level::INFO),
                    "--log-level {level:?}: {target} logged {got:?}"
                );
            }
            assert_eq!(levels(&logged, OPERATOR), operator, "--log-level {level:?}");
        }
    }

    #[test]
    fn the_cap_is_a_ceiling_not_a_level() {
        // Capped targets still log at info and above, and can be lowered.
        let at_trace = logged("trace");
        for target in SIGNING {
            assert_eq!(
                levels(&at_trace, target),
                [Level::INFO, Level::WARN],
                "{target}"
            );
        }
        let quiet = logged("trace,aws_sigv4=warn");
        assert_eq!(
            levels(&quiet, "aws_sigv4::http_request::sign"),
            [Level::WARN]
        );
        assert_eq!(
            levels(&quiet, "reqwest::connect"),
            [Level::INFO, Level::WARN]
        );
        assert!(super::filter("operator=loud").is_err());
    }
}
