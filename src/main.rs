//! `upload-grant-operator`: runs the controller with KUBECONFIG or the
//! in-cluster config, and AWS credentials from the default chain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Parser;
use upload_grant_operator::controller::{self, Settings};
use upload_grant_operator::drain;
use upload_grant_operator::fence::Fence;
use upload_grant_operator::kube_client;
use upload_grant_operator::leader::{self, LeaseSettings};
use upload_grant_operator::metrics::Metrics;
use upload_grant_operator::server::{self, Readiness};
use upload_grant_operator::shard::{Shards, membership};
use upload_grant_operator::signing::{CredentialSnapshot, Presigner};
use upload_grant_operator::telemetry::{self, LogFormat};

/// Issues, renews and revokes S3 presigned URLs for UploadGrants, as Secrets.
///
/// Kubernetes access comes from KUBECONFIG or the in-cluster service account;
/// AWS credentials from the default chain (IRSA, EKS Pod Identity or static
/// keys).
#[derive(Debug, Parser)]
#[command(name = "upload-grant-operator", version, about, long_about = None)]
struct Cli {
    /// ClusterGrantIssuer for grants that set no spec.issuerRef.
    #[arg(long, env = "UPLOAD_GRANT_DEFAULT_ISSUER")]
    default_issuer: Option<String>,

    /// Address for /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "UPLOAD_GRANT_LISTEN_ADDRESS",
        default_value = "0.0.0.0:8080"
    )]
    listen_address: SocketAddr,

    /// Log format.
    #[arg(
        long,
        env = "UPLOAD_GRANT_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,

    /// Log level (error, warn, info, debug, trace) or tracing directives.
    /// The AWS SDK, HTTP and TLS crates stay capped at info whatever it says.
    #[arg(long, env = "UPLOAD_GRANT_LOG_LEVEL", default_value = "info")]
    log_level: String,

    /// Only handle grants in these namespaces (default: all namespaces):
    /// comma-separated, and the flag may be repeated. Then the operator needs
    /// access to grants and Secrets in these namespaces only.
    #[arg(
        long = "namespace",
        env = "UPLOAD_GRANT_WATCH_NAMESPACE",
        value_name = "NS[,NS…]",
        value_delimiter = ',',
        value_parser = namespace_name
    )]
    namespaces: Vec<String>,

    /// Elect a leader with a Lease, so only one of several replicas writes.
    #[arg(long, env = "UPLOAD_GRANT_LEADER_ELECT", default_value_t = false)]
    leader_elect: bool,

    /// Run active-active: the replicas split the grants between them by
    /// shard, each shard a Lease, and each watches and writes only its own
    /// (server-side with Kubernetes 1.36's ShardedListAndWatch gate, else
    /// filtered here). One replica behaves as without it.
    #[arg(
        long,
        env = "UPLOAD_GRANT_SHARDING",
        default_value_t = false,
        conflicts_with = "leader_elect"
    )]
    sharding: bool,

    /// How many shards --sharding cuts the grants into. A power of two up
    /// to 1024, at least the most replicas that will run; every replica
    /// must use the same count.
    #[arg(long, env = "UPLOAD_GRANT_SHARDS", default_value_t = 64, value_parser = shard_count)]
    shards: u32,

    /// With --sharding, ask the apiserver for this replica's grants only
    /// (shardSelector, honoured by Kubernetes 1.36+ with the
    /// ShardedListAndWatch gate, ignored by others). Off, every replica
    /// reads every grant; each filters by shard in either case.
    #[arg(long, env = "UPLOAD_GRANT_SHARD_SELECTOR", default_value_t = true, action = clap::ArgAction::Set)]
    shard_selector: bool,

    /// Name of the Lease used for leader election; with --sharding, what
    /// every shard's and replica's Lease name starts with.
    #[arg(
        long,
        env = "UPLOAD_GRANT_LEASE_NAME",
        default_value = "upload-grant-operator"
    )]
    lease_name: String,

    /// Namespace of the Lease (default: the pod's namespace, else "default").
    #[arg(long, env = "UPLOAD_GRANT_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,

    /// Seconds a leader's lease lasts without renewal; a standby takes over
    /// within this long after the leader dies.
    #[arg(long, env = "UPLOAD_GRANT_LEASE_DURATION", default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=300))]
    lease_duration: u64,

    /// Upper bound on requests per second to the Kubernetes API (0: none).
    /// Leader election is not counted against it.
    #[arg(long, env = "UPLOAD_GRANT_KUBE_API_QPS", default_value_t = 100)]
    kube_api_qps: u32,

    /// How long a renewed URL may take to reach pods that mount the Secret
    /// (Go duration). Renewals land at least this long before expiry, and
    /// grants with a ttl under 1.5 times it are refused. The default covers
    /// the kubelet's default sync period; 0s if consumers read the Secret
    /// through the API.
    #[arg(long, env = "UPLOAD_GRANT_PROPAGATION_BUDGET", default_value = "2m", value_parser = propagation_budget)]
    propagation_budget: Duration,

    /// Restart the workloads a grant lists in spec.secret.rolloutRestartTargets
    /// when a new URL replaces one (needs get and patch on Deployments,
    /// StatefulSets and DaemonSets; Helm: rolloutRestarts.enabled).
    #[arg(long, env = "UPLOAD_GRANT_ROLLOUT_RESTARTS", default_value_t = false)]
    rollout_restarts: bool,

    /// Restart each workload at most once in this window (Go duration):
    /// grants renewed close together cost one restart. It delays a restart
    /// by up to this long, so keep it well under the grants' refreshBefore.
    #[arg(long, env = "UPLOAD_GRANT_ROLLOUT_RESTART_DEBOUNCE", default_value = "1m", value_parser = debounce)]
    rollout_restart_debounce: Duration,

    /// How often an open multipart upload is looked at (ListParts, then
    /// HeadObject) to notice that the client completed it (Go duration,
    /// 1s..24h). Only multipart grants are looked at; S3 sends no
    /// notification here.
    #[arg(long, env = "UPLOAD_GRANT_MULTIPART_CHECK_INTERVAL", default_value = "5m", value_parser = multipart_check_interval)]
    multipart_check_interval: Duration,

    /// Answer renew requests (`kubectl grant renew`) at most once per grant
    /// in this window (Go duration, 1s..1h), counted from the grant's last
    /// URL: requests in between coalesce into one renewal at its end. Each
    /// renewal rewrites the grant's Secret, so this bounds what a loop of
    /// requests costs etcd.
    #[arg(long, env = "UPLOAD_GRANT_RENEW_REQUEST_INTERVAL", default_value = "1m", value_parser = renew_request_interval)]
    renew_request_interval: Duration,
    /// Also publish a Normal Event for every URL issued or renewed. Off by
    /// default: they are counted in upload_grant_issued_total, and each
    /// Event is one more apiserver write per issuance and per renewal.
    /// Events users act on (Revoked, Denied, Failed …) are always published.
    #[arg(long, env = "UPLOAD_GRANT_LIFECYCLE_EVENTS", default_value_t = false)]
    lifecycle_events: bool,

    #[command(subcommand)]
    command: Option<Command>,

    /// How many grants are reconciled at the same time.
    #[arg(long, env = "UPLOAD_GRANT_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    concurrency: u16,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Print the AWS policies that allow no more than the ClusterGrantIssuers
    /// do: the IAM policy for the operator's role, or a guardrail bucket
    /// policy per bucket. Reads the issuers from the cluster, or from files.
    Policy {
        #[command(subcommand)]
        what: PolicyKind,
        /// Read issuers from these YAML files instead of the cluster.
        #[arg(short = 'f', long = "file", global = true)]
        files: Vec<std::path::PathBuf>,
        /// Only these issuers (default: all).
        #[arg(long = "issuer", global = true)]
        issuers: Vec<String>,
        /// The ARN partition.
        #[arg(long, default_value = "aws", global = true)]
        partition: String,
    },
    /// Scale the operator's Deployment to zero and wait until its pods are
    /// gone, so that they release the Lease while they still may (the chart
    /// runs this as a pre-delete hook of `helm uninstall`).
    Drain {
        /// The Deployment's namespace (default: the current one).
        #[arg(long)]
        namespace: Option<String>,
        #[arg(long)]
        deployment: String,
        /// Only pods with these labels too (k=v[,k=v…]; the chart passes the
        /// release's): nothing else in the namespace is listed. Default: the
        /// Deployment's selector alone.
        #[arg(long, env = "UPLOAD_GRANT_DRAIN_SELECTOR", value_parser = drain::parse_selector)]
        selector: Option<drain::Labels>,
        /// The leader-election Lease its pods hold: drained once every pod is
        /// terminating and the Lease is released.
        #[arg(long)]
        lease: Option<String>,
        /// Seconds to wait for its pods to stop.
        #[arg(long, default_value_t = 90)]
        timeout: u64,
    },
}

#[derive(Debug, clap::Subcommand)]
enum PolicyKind {
    /// The IAM policy for the operator's role: per S3 action, the objects
    /// some allow rule reaches, with {namespace} as each namespace the rule
    /// applies to (read from the cluster, or with -f from Namespace objects
    /// in the files and --namespaces) and {name} as * after it. What it
    /// leaves out, and why, goes to stderr.
    Iam {
        /// With -f: the namespaces that exist, by name (comma-separated or
        /// repeated). Only their names are known, so a rule's namespaces
        /// selector may use only the kubernetes.io/metadata.name label; for
        /// other labels, add the Namespace objects to the -f files instead
        /// (kubectl get namespaces -o yaml).
        #[arg(long, value_delimiter = ',', value_parser = namespace_name)]
        namespaces: Vec<String>,
    },
    /// Guardrail bucket policies: deny presigned requests older than the
    /// longest maxTtl allowed on the bucket and requests not signed with
    /// SigV4. One bucket's policy with --bucket, else a JSON object of all.
    Bucket {
        #[arg(long)]
        bucket: Option<String>,
        /// Apply the denials only to requests signed by this role.
        #[arg(long)]
        role_arn: Option<String>,
        /// Also deny requests that do not come through this VPC endpoint.
        #[arg(long)]
        vpce: Option<String>,
    },
}

/// A namespace name (RFC 1123 label), so a typo fails at start instead of
/// watching a namespace that cannot exist.
fn namespace_name(s: &str) -> Result<String, String> {
    let name = s.trim();
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a namespace name (lowercase letters, digits and '-', at most 63)"
        ))
    }
}

/// A shard count `shard::Shards` takes.
fn shard_count(s: &str) -> Result<u32, String> {
    let n: u32 = s.trim().parse().map_err(|e| format!("{s:?}: {e}"))?;
    Shards::new(n).map(|_| n).map_err(|e| e.to_string())
}

/// The namespaces to watch, each once, in order.
fn watch_namespaces(mut namespaces: Vec<String>) -> Vec<String> {
    namespaces.sort();
    namespaces.dedup();
    namespaces
}

/// A Go duration up to a day: longer would refuse every ttl under 36h.
fn propagation_budget(s: &str) -> Result<Duration, String> {
    let d = upload_grant_operator::api::duration::parse_duration(s)?;
    if d > Duration::from_secs(24 * 3600) {
        return Err(format!("{s} is longer than 24h"));
    }
    Ok(d)
}

/// A Go duration from a second to an hour.
fn renew_request_interval(s: &str) -> Result<Duration, String> {
    let d = upload_grant_operator::api::duration::parse_duration(s)?;
    if d < Duration::from_secs(1) || d > Duration::from_secs(3600) {
        return Err(format!("{s} is not between 1s and 1h"));
    }
    Ok(d)
}

/// A Go duration from a second to a day: never a tight poll.
fn multipart_check_interval(s: &str) -> Result<Duration, String> {
    let d = upload_grant_operator::api::duration::parse_duration(s)?;
    if d < Duration::from_secs(1) || d > Duration::from_secs(24 * 3600) {
        return Err(format!("{s} is not between 1s and 24h"));
    }
    Ok(d)
}

/// A Go duration up to an hour: a longer window would hold restarts past
/// most URLs' lifetimes.
fn debounce(s: &str) -> Result<Duration, String> {
    let d = upload_grant_operator::api::duration::parse_duration(s)?;
    if d > Duration::from_secs(3600) {
        return Err(format!("{s} is longer than 1h"));
    }
    Ok(d)
}

fn main() -> std::process::ExitCode {
    // Before the runtime's threads exist: they take their arenas at once.
    let tuned = upload_grant_operator::malloc::tune();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("upload-grant-operator: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(async_main(tuned))
}

async fn async_main(
    tuned: Result<upload_grant_operator::malloc::Tuned, &'static str>,
) -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Err(e) = telemetry::init(cli.log_format, &cli.log_level) {
        eprintln!("upload-grant-operator: invalid logging settings: {e}");
        return std::process::ExitCode::from(2);
    }
    if let Err(setting) = tuned {
        tracing::warn!(
            setting,
            "glibc refused a malloc setting; memory may run higher"
        );
    }
    let outcome = match cli.command {
        Some(Command::Drain {
            namespace,
            deployment,
            selector,
            lease,
            timeout,
        }) => {
            let timeout = Duration::from_secs(timeout);
            let labels = selector.unwrap_or_default();
            run_drain(namespace, &deployment, &labels, lease.as_deref(), timeout).await
        }
        Some(Command::Policy {
            what,
            files,
            issuers,
            partition,
        }) => {
            // A command's error goes to stderr as text: stdout is the
            // policy, often redirected into a file.
            return match run_policy(what, &files, &issuers, partition).await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("upload-grant-operator policy: {e}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
        None => run(cli).await,
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "upload-grant-operator stopped");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Prints the policy as JSON on stdout, for `aws iam put-role-policy` or
/// `aws s3api put-bucket-policy`.
async fn run_policy(
    what: PolicyKind,
    files: &[std::path::PathBuf],
    names: &[String],
    partition: String,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use upload_grant_operator::policy::{self, iam};
    let mut options = iam::Options {
        partition,
        role_arn: None,
        vpce: None,
    };
    let document = match what {
        PolicyKind::Iam { namespaces } => {
            let input = policy::load(files, names, &namespaces, true).await?;
            let policy = iam::iam_policy(&input.issuers, input.namespaces.as_deref(), &options)?;
            for note in &policy.notes {
                eprintln!("upload-grant-operator policy iam: {note}");
            }
            policy.document
        }
        PolicyKind::Bucket {
            bucket,
            role_arn,
            vpce,
        } => {
            options.role_arn = role_arn;
            options.vpce = vpce;
            let issuers = policy::load(files, names, &[], false).await?.issuers;
            let mut all = iam::bucket_policies(&issuers, &options);
            match bucket {
                Some(b) => all
                    .remove(&b)
                    .ok_or_else(|| format!("no allow rule names bucket {b:?}"))?,
                None => serde_json::to_value(all)?,
            }
        }
    };
    println!("{}", serde_json::to_string_pretty(&document)?);
    Ok(())
}

/// A drain that times out still succeeds: `helm uninstall` should go on, and
/// a Lease left held expires on its own.
async fn run_drain(
    namespace: Option<String>,
    deployment: &str,
    labels: &drain::Labels,
    lease: Option<&str>,
    timeout: Duration,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let client = kube::Client::try_default().await?;
    let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
    // A little past drain's own deadline: this one covers a request that
    // never answers.
    let drained = tokio::time::timeout(
        timeout + Duration::from_secs(5),
        drain::drain(client, &namespace, deployment, labels, lease, timeout),
    )
    .await
    .unwrap_or_else(|_| Ok(drain::Drained::TimedOut(Vec::new())))?;
    match drained {
        drain::Drained::PodsGone => tracing::info!(deployment, "drained: no pod left"),
        drain::Drained::LeaseReleased => {
            tracing::info!(deployment, "drained: the lease is released")
        }
        drain::Drained::TimedOut(pods) => {
            tracing::warn!(deployment, ?pods, ?timeout, "pods still there; going on")
        }
    }
    Ok(())
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    upload_grant_operator::hardening::harden_and_log();
    let config = kube::Config::infer().await?;
    // Leader election keeps an unbounded client of its own (see kube_client).
    let lease_client = kube::Client::try_from(config.clone())?;
    let lease_namespace = cli
        .lease_namespace
        .clone()
        .unwrap_or_else(|| lease_client.default_namespace().to_owned());
    let lease = cli.leader_elect.then(|| LeaseSettings {
        name: cli.lease_name.clone(),
        namespace: lease_namespace.clone(),
        identity: identity(),
        duration: cli.lease_duration,
    });
    let sharding = match cli.sharding {
        true => Some(membership::Settings {
            prefix: cli.lease_name.clone(),
            namespace: lease_namespace,
            identity: identity(),
            duration: Duration::from_secs(cli.lease_duration),
            shards: Shards::new(cli.shards)?,
        }),
        false => None,
    };
    // Every write of the controller is fenced on holding the lease, or with
    // sharding on holding the Leases of the shards it serves.
    let fence = match (&lease, &sharding) {
        (Some(lease), _) => Fence::for_lease(&lease.identity, &lease.name),
        (None, Some(sharding)) => Fence::for_identity(&sharding.identity),
        (None, None) => Fence::open(),
    };
    let metrics = Arc::new(Metrics::default());
    let client = kube_client::bounded(
        config,
        cli.kube_api_qps,
        fence.clone(),
        metrics.kube_api_requests(cli.kube_api_qps),
    )?;
    let aws = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let provider = aws
        .credentials_provider()
        .ok_or("the AWS default chain found no credential provider")?;
    let credentials = CredentialSnapshot::new(provider);
    let presigner = Presigner::new(aws);
    let readiness = Arc::new(Readiness::default());

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_watch = stop_rx.clone();
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });

    tokio::spawn(credentials.clone().keep_fresh());
    let router = server::router(metrics.clone(), credentials.clone(), readiness.clone());
    let server = tokio::spawn(server::serve(cli.listen_address, router, stopped()));

    let settings = Settings {
        default_issuer: cli.default_issuer,
        concurrency: cli.concurrency,
        kube_api_qps: cli.kube_api_qps,
        namespaces: watch_namespaces(cli.namespaces),
        propagation_budget: cli.propagation_budget,
        rollout_restart_debounce: cli.rollout_restarts.then_some(cli.rollout_restart_debounce),
        multipart_check_interval: cli.multipart_check_interval,
        renew_request_interval: cli.renew_request_interval,
        lifecycle_events: cli.lifecycle_events,
        shard: None,
        shard_selector: cli.shard_selector,
        cluster_wide: true,
    };
    tracing::info!(default_issuer = ?settings.default_issuer, namespaces = ?settings.namespaces, concurrency = settings.concurrency, kube_api_qps = cli.kube_api_qps, propagation_budget = ?settings.propagation_budget, lifecycle_events = settings.lifecycle_events, "starting controller");
    let parts = controller::Parts {
        client,
        credentials,
        presigner: Arc::new(presigner),
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        fence: fence.clone(),
    };
    if let Some(sharding) = sharding {
        tracing::info!(identity = %sharding.identity, shards = sharding.shards.count(), lease_namespace = %sharding.namespace, "sharding: waiting for shards");
        upload_grant_operator::replica::run(lease_client, parts, settings, sharding, stop_watch)
            .await;
        return Ok(server.await??);
    }
    // With leader election, wait as a ready standby until this replica leads;
    // the controller then stops when the lease is lost.
    let leadership = if let Some(lease) = &lease {
        readiness.set_standby(true);
        tokio::spawn(fence.follow(lease_client.clone(), &lease.namespace, &lease.name));
        match leader::acquire(lease_client.clone(), lease, stopped()).await? {
            Some(leadership) => {
                // Sharded replicas of a rolling update between the modes
                // see this Lease held and give their shards up.
                membership::wait_unsharded(
                    lease_client.clone(),
                    &lease.namespace,
                    &lease.name,
                    stopped(),
                )
                .await;
                let wait = Duration::from_secs(lease.duration);
                if !fence.opened(wait).await {
                    tracing::warn!(
                        "leading, but the lease watch does not show it yet; writes stay fenced until it does"
                    );
                }
                Some(leadership)
            }
            None => return Ok(server.await??),
        }
    } else {
        None
    };
    readiness.set_standby(false);
    metrics.set_leader(true);
    let lost = leadership.as_ref().map(|l| l.lost());
    let lost_leadership = Arc::new(AtomicBool::new(false));
    let shutdown = {
        let stop = stopped();
        let flag = lost_leadership.clone();
        async move {
            match lost {
                Some(lost) => tokio::select! {
                    _ = stop => {},
                    _ = lost => flag.store(true, Ordering::Relaxed),
                },
                None => stop.await,
            }
        }
    };
    controller::run(parts, settings, shutdown).await;
    metrics.set_leader(false);
    if lost_leadership.load(Ordering::Relaxed) {
        // Another replica leads now; exit so the pod restarts as a standby.
        return Err("lost the leader lease".into());
    }
    if let Some(leadership) = leadership {
        leadership.release().await;
    }
    server.await??;
    Ok(())
}

/// A name for this replica in the Lease: the pod's name where known.
fn identity() -> String {
    let suffix: String = (0..6)
        .map(|_| char::from(b'a' + rand::random_range(0..26u8)))
        .collect();
    match std::env::var("POD_NAME") {
        Ok(pod) if !pod.is_empty() => pod,
        _ => format!("upload-grant-operator-{suffix}"),
    }
}

/// Loads credentials once at start so /readyz reflects them before the first
/// grant arrives; retries until it works.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespaces(args: &[&str]) -> Result<Vec<String>, clap::Error> {
        let argv = std::iter::once("upload-grant-operator").chain(args.iter().copied());
        Cli::try_parse_from(argv).map(|cli| watch_namespaces(cli.namespaces))
    }

    #[test]
    fn namespace_takes_a_comma_separated_list_and_may_be_repeated() -> Result<(), clap::Error> {
        assert!(namespaces(&[])?.is_empty(), "no flag: every namespace");
        assert_eq!(namespaces(&["--namespace", "a"])?, ["a"]);
        assert_eq!(namespaces(&["--namespace=b,a"])?, ["a", "b"]);
        assert_eq!(
            namespaces(&["--namespace", "c", "--namespace", "a, b", "--namespace=c"])?,
            ["a", "b", "c"]
        );
        Ok(())
    }

    #[test]
    fn namespace_refuses_what_cannot_be_a_namespace() {
        for bad in ["", "a,,b", "A", "a_b", "-a", "a-", "a,b/c", &"n".repeat(64)] {
            assert!(
                namespaces(&["--namespace", bad]).is_err(),
                "--namespace {bad:?} was accepted"
            );
        }
    }
}
