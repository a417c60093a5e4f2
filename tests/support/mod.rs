//! Test harness: starts (or reuses) the local control plane, S3 store and STS
//! from tools/testenv, and gives each test its own namespace.
#![allow(dead_code)] // each test binary uses a different part of it

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, ResourceExt};
use upload_grant_operator::api::{ClusterGrantIssuer, UploadGrant};

pub mod botocore;
pub mod chaos;
pub mod grants;
pub mod node;
pub mod operator;
pub mod post;
pub mod rollout;
pub mod uploads;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type TestResult<T = ()> = Result<T, BoxError>;

/// Audience of the web-identity tokens EKS gives pods for IRSA.
pub const STS_AUDIENCE: &str = "sts.amazonaws.com";

/// The running environment, as written by tools/testenv/up.sh to .testenv/env.
#[derive(Debug, Clone)]
pub struct TestEnv {
    vars: HashMap<String, String>,
}

impl TestEnv {
    /// Starts the environment if it is not running (up.sh is idempotent and
    /// serialised by a lock, so parallel test binaries share one), then reads
    /// its settings. Called once per test binary.
    pub fn get() -> &'static TestEnv {
        static ENV: OnceLock<TestEnv> = OnceLock::new();
        ENV.get_or_init(|| {
            let root = repo_root();
            let status = Command::new("bash")
                .arg(root.join("tools/testenv/up.sh"))
                .status()
                .unwrap_or_else(|e| panic!("cannot run tools/testenv/up.sh: {e}"));
            assert!(
                status.success(),
                "tools/testenv/up.sh failed ({status}); see its output above"
            );
            let dir = std::env::var("TESTENV_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| root.join(".testenv"));
            let text = std::fs::read_to_string(dir.join("env"))
                .unwrap_or_else(|e| panic!("cannot read {}/env: {e}", dir.display()));
            TestEnv {
                vars: parse_env_file(&text),
            }
        })
    }

    pub fn var(&self, name: &str) -> &str {
        self.vars
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing from .testenv/env"))
    }

    pub fn kubeconfig(&self) -> &str {
        self.var("KUBECONFIG")
    }
    pub fn bin(&self, tool: &str) -> PathBuf {
        Path::new(self.var("TESTENV_BIN")).join(tool)
    }
    /// PATH with the environment's tools (kubectl, helm, krew, …) first, for
    /// commands run as a user with them installed would.
    pub fn path_with_tools(&self) -> String {
        format!(
            "{}:{}",
            self.var("TESTENV_BIN"),
            std::env::var("PATH").unwrap_or_default()
        )
    }
    pub fn log_dir(&self) -> &str {
        self.var("TESTENV_LOG_DIR")
    }
    pub fn s3_endpoint(&self) -> &str {
        self.var("TESTENV_S3_ENDPOINT")
    }
    pub fn sts_endpoint(&self) -> &str {
        self.var("TESTENV_STS_ENDPOINT")
    }
    pub fn region(&self) -> &str {
        self.var("TESTENV_REGION")
    }
    pub fn bucket(&self) -> &str {
        self.var("TESTENV_BUCKET")
    }
    pub fn role_arn(&self) -> &str {
        self.var("TESTENV_ROLE_ARN")
    }
    pub fn root_credentials(&self) -> aws_credential_types::Credentials {
        aws_credential_types::Credentials::new(
            self.var("TESTENV_ROOT_ACCESS_KEY_ID"),
            self.var("TESTENV_ROOT_SECRET_ACCESS_KEY"),
            None,
            None,
            "testenv-root",
        )
    }

    /// A client with the environment's admin identity.
    pub async fn client(&self) -> TestResult<Client> {
        let kubeconfig = Kubeconfig::read_from(self.kubeconfig())?;
        let config =
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(Client::try_from(config)?)
    }

    /// Runs a tool from TESTENV_BIN (kubectl, helm) against the environment.
    pub fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(self.bin(tool));
        cmd.env("KUBECONFIG", self.kubeconfig());
        cmd
    }

    /// Runs helm against the environment from the repository root; its
    /// output, or an error with everything it printed.
    pub fn helm(&self, args: &[&str]) -> TestResult<String> {
        let mut cmd = self.command("helm");
        cmd.args(args);
        output(cmd)
    }
}

fn parse_env_file(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("export "))
        .filter_map(|assignment| assignment.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
        .collect()
}

/// Runs `cmd` in the repository root: its standard output, or an error with
/// everything it printed.
pub fn output(mut cmd: Command) -> TestResult<String> {
    let out = cmd.current_dir(repo_root()).output()?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Headless Chromium as the tests run it (Debian's `chromium`, installed by
/// tools/install-deps.sh), with its profile in `profile`; the caller adds
/// a virtual-time budget, what to print and the URL.
pub fn headless_chromium(profile: &Path) -> Command {
    let mut command = Command::new("chromium");
    command
        .args([
            "--headless",
            // As root (the test machine) Chromium runs only unsandboxed.
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()));
    command
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One test's slice of the environment: a client and a fresh namespace.
/// It prints where the servers' logs are; the test harness shows that output
/// only for a failed test. Dropping it deletes the namespace, the grants in
/// it and the issuers the test made (see `Cleanup`), also when the test fails
/// or panics.
pub struct TestContext {
    pub env: &'static TestEnv,
    pub client: Client,
    pub namespace: String,
    cleanup: Cleanup,
}

impl TestContext {
    pub async fn new(prefix: &str) -> TestResult<Self> {
        Self::with_labels(prefix, &[]).await
    }

    pub async fn with_labels(prefix: &str, labels: &[(&str, &str)]) -> TestResult<Self> {
        let env = TestEnv::get();
        let client = env.client().await?;
        let namespace = format!("{prefix}-{}", random_suffix());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(namespace.clone()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        // Armed before the namespace exists: a create whose answer is lost
        // is still cleaned up.
        let cleanup = Cleanup::namespace(env, &namespace);
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        eprintln!(
            "test namespace {namespace}; server logs in {}",
            env.log_dir()
        );
        Ok(TestContext {
            env,
            client,
            namespace,
            cleanup,
        })
    }

    /// Deletes the ClusterGrantIssuer `name` when this context is dropped.
    /// `grants::create_issuer` does this for the issuers it makes; call it
    /// for any issuer a test creates another way.
    pub fn delete_issuer_on_drop(&self, name: &str) {
        self.cleanup.issuer(name);
    }

    /// A client acting as a tenant of this namespace, by impersonation: a
    /// user with the built-in `edit` role here, and the right to manage
    /// UploadGrants here, as a namespace admin would give it; nothing
    /// elsewhere.
    pub async fn tenant(&self) -> TestResult<Client> {
        use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
        let user = format!("tenant-{}", self.namespace);
        let role: Role = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "tenant-grants"},
            "rules": [{"apiGroups": ["grants.io"], "resources": ["uploadgrants"],
                "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}],
        }))?;
        self.api::<Role>()
            .create(&PostParams::default(), &role)
            .await?;
        for (name, kind, role) in [
            ("tenant-edit", "ClusterRole", "edit"),
            ("tenant-grants", "Role", "tenant-grants"),
        ] {
            let binding: RoleBinding = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
            }))?;
            self.api::<RoleBinding>()
                .create(&PostParams::default(), &binding)
                .await?;
        }
        let kubeconfig = Kubeconfig::read_from(self.env.kubeconfig())?;
        let mut config =
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        config.auth_info.impersonate = Some(user);
        let client = Client::try_from(config)?;
        // The apiserver's RBAC cache learns the bindings a moment later:
        // hand the client out once it may create grants.
        self.wait_allowed(&client, "create", "grants.io", "uploadgrants")
            .await?;
        Ok(client)
    }

    /// Waits (at most 30 s) until `client` may `verb` `resource` here, as
    /// the apiserver itself answers (a SelfSubjectAccessReview).
    pub async fn wait_allowed(
        &self,
        client: &Client,
        verb: &str,
        group: &str,
        resource: &str,
    ) -> TestResult {
        use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
        let review: SelfSubjectAccessReview = serde_json::from_value(serde_json::json!({
            "spec": {"resourceAttributes": {"namespace": self.namespace, "verb": verb,
                "group": group, "resource": resource}},
        }))?;
        let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
        eventually(
            &format!("{verb} {resource} to be allowed"),
            Duration::from_secs(30),
            || async {
                let answer = reviews.create(&PostParams::default(), &review).await?;
                Ok(answer.status.is_some_and(|s| s.allowed).then_some(()))
            },
        )
        .await
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Creates a ServiceAccount (if needed) and returns a token for it with
    /// the given audience, as the kubelet would project it for IRSA.
    pub async fn service_account_token(
        &self,
        name: &str,
        audience: &str,
        ttl: Duration,
    ) -> TestResult<String> {
        let sas: Api<ServiceAccount> = self.api();
        if sas.get_opt(name).await?.is_none() {
            let sa = ServiceAccount {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    ..ObjectMeta::default()
                },
                ..ServiceAccount::default()
            };
            sas.create(&PostParams::default(), &sa).await?;
        }
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(vec![audience.to_owned()]),
                expiration_seconds: Some(ttl.as_secs() as i64),
                ..TokenRequestSpec::default()
            }),
            ..TokenRequest::default()
        };
        let response = sas
            .create_token_request(name, &PostParams::default(), &request)
            .await?;
        let token = response.status.and_then(|s| s.token).unwrap_or_default();
        if token.is_empty() {
            return Err("TokenRequest returned no token".into());
        }
        Ok(token)
    }

    /// Writes a web-identity token file for a ServiceAccount, the way EKS
    /// mounts one at /var/run/secrets/eks.amazonaws.com/serviceaccount/token.
    pub async fn web_identity_token_file(
        &self,
        dir: &Path,
        sa: &str,
        audience: &str,
    ) -> TestResult<PathBuf> {
        let token = self
            .service_account_token(sa, audience, Duration::from_secs(3600))
            .await?;
        let path = dir.join(format!("{sa}-token"));
        std::fs::write(&path, token)?;
        Ok(path)
    }
}

/// Removes what a test leaves behind in the shared environment, when
/// dropped: the UploadGrants in its namespace (their finalizers released, as
/// the operator that held them has stopped by then), the ClusterGrantIssuers
/// it names (cluster-scoped, so every later operator would evaluate them),
/// then the namespace itself. The environment runs no
/// kube-controller-manager, so a deleted namespace stays Terminating with
/// whatever else is in it; nothing waits for it to go.
///
/// Drop runs on a thread of its own with its own runtime and client: it may
/// run inside a test's runtime (also while a panic unwinds), which it must
/// neither re-enter nor wait on. Failures are printed, never raised.
pub struct Cleanup {
    env: &'static TestEnv,
    namespace: String,
    issuers: Mutex<Vec<String>>,
}

/// Long enough for the benchmarks' 20,000 grants; a test's few take a second.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(180);

impl Cleanup {
    /// Deletes `namespace` (and the grants in it) when dropped.
    pub fn namespace(env: &'static TestEnv, namespace: &str) -> Cleanup {
        Cleanup {
            env,
            namespace: namespace.to_owned(),
            issuers: Mutex::default(),
        }
    }

    /// Also deletes the ClusterGrantIssuer `name` when dropped.
    pub fn issuer(&self, name: &str) {
        let mut issuers = self.issuers.lock().unwrap_or_else(|p| p.into_inner());
        if !issuers.iter().any(|i| i == name) {
            issuers.push(name.to_owned());
        }
    }

    async fn run(env: &TestEnv, namespace: &str, issuers: &[String]) -> Result<(), String> {
        let client = env.client().await.map_err(|e| format!("no client: {e}"))?;
        let mut failures = Vec::new();
        if let Err(e) = remove_grants(&client, namespace).await {
            failures.push(format!("grants in {namespace}: {e}"));
        }
        let issuer_api: Api<ClusterGrantIssuer> = Api::all(client.clone());
        for name in issuers {
            let deleted = issuer_api.delete(name, &DeleteParams::default()).await;
            if let Err(e) = absent_is_fine(deleted) {
                failures.push(format!("ClusterGrantIssuer {name}: {e}"));
            }
        }
        let deleted = Api::<Namespace>::all(client)
            .delete(namespace, &DeleteParams::background())
            .await;
        if let Err(e) = absent_is_fine(deleted) {
            failures.push(format!("namespace {namespace}: {e}"));
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; "))
        }
    }
}

/// Deletes every grant in `namespace`, releasing the finalizers of those an
/// operator would otherwise have to (none runs for the namespace any more).
async fn remove_grants(client: &Client, namespace: &str) -> Result<(), kube::Error> {
    let grants: Api<UploadGrant> = Api::namespaced(client.clone(), namespace);
    let deleted = grants
        .delete_collection(&DeleteParams::background(), &ListParams::default())
        .await;
    // No CRD (a test that never installed it) means no grants.
    if is_not_found(&deleted) {
        return Ok(());
    }
    deleted?;
    let held = grants.list_metadata(&ListParams::default()).await?.items;
    let release = serde_json::json!({"metadata": {"finalizers": null}});
    futures::stream::iter(held.into_iter().filter(|g| !g.finalizers().is_empty()))
        .map(|g| {
            let (grants, release) = (&grants, &release);
            async move {
                let patched = grants
                    .patch_metadata(
                        &g.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(release),
                    )
                    .await;
                absent_is_fine(patched)
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

fn is_not_found<T>(result: &Result<T, kube::Error>) -> bool {
    matches!(result, Err(kube::Error::Api(status)) if status.code == 404)
}

/// A delete or patch of something already gone succeeded at what it was for.
fn absent_is_fine<T>(result: Result<T, kube::Error>) -> Result<(), kube::Error> {
    if is_not_found(&result) {
        return Ok(());
    }
    result.map(|_| ())
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let env = self.env;
        let namespace = std::mem::take(&mut self.namespace);
        let issuers = std::mem::take(self.issuers.get_mut().unwrap_or_else(|p| p.into_inner()));
        let what = format!("namespace {namespace}, issuers {issuers:?}");
        let outcome = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("no runtime: {e}"))?;
            rt.block_on(async {
                tokio::time::timeout(CLEANUP_TIMEOUT, Cleanup::run(env, &namespace, &issuers))
                    .await
                    .unwrap_or_else(|_| Err(format!("not done after {CLEANUP_TIMEOUT:?}")))
            })
        })
        .join();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("cleanup of {what} failed: {e}"),
            Err(_) => eprintln!("cleanup of {what} panicked"),
        }
    }
}

pub fn random_suffix() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..6)
        .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
        .collect()
}

/// Polls `check` until it returns Some or the deadline passes.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> TestResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = TestResult<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Applies the CRD YAML committed under crds/ and waits until it is served.
pub async fn install_committed_crds(client: &kube::Client) -> TestResult {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for entry in std::fs::read_dir(repo_root().join("crds"))? {
        let crd: CustomResourceDefinition =
            serde_norway::from_str(&std::fs::read_to_string(entry?.path())?)?;
        let name = crd.metadata.name.clone().ok_or("CRD without a name")?;
        crds.patch(
            &name,
            &PatchParams::apply("testenv").force(),
            &Patch::Apply(&crd),
        )
        .await?;
        eventually(
            &format!("CRD {name} to be established"),
            std::time::Duration::from_secs(30),
            || async {
                let crd = crds.get(&name).await?;
                let established = crd
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                Ok(established.then_some(()))
            },
        )
        .await?;
    }
    Ok(())
}

/// An S3 client for the local store, signing with the given credentials.
pub fn s3_client(
    env: &TestEnv,
    credentials: aws_credential_types::Credentials,
) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new(env.region().to_owned()))
        .endpoint_url(env.s3_endpoint())
        .force_path_style(true)
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .credentials_provider(credentials)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// A plain HTTP client, as a consumer of a presigned URL would use.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("static HTTP client configuration")
}

/// The headers a presigned request says the client must send.
pub fn header_map(
    req: &aws_sdk_s3::presigning::PresignedRequest,
) -> TestResult<reqwest::header::HeaderMap> {
    let mut map = reqwest::header::HeaderMap::new();
    for (name, value) in req.headers() {
        map.insert(
            reqwest::header::HeaderName::from_bytes(name.as_bytes())?,
            reqwest::header::HeaderValue::from_str(value)?,
        );
    }
    Ok(map)
}

/// Sends a presigned request exactly as signed: method, URL and headers.
pub async fn send(
    req: &aws_sdk_s3::presigning::PresignedRequest,
    body: Vec<u8>,
) -> TestResult<reqwest::Response> {
    let method = reqwest::Method::from_bytes(req.method().as_bytes())?;
    Ok(http()
        .request(method, req.uri())
        .headers(header_map(req)?)
        .body(body)
        .send()
        .await?)
}

/// Real session credentials from the STS for a ServiceAccount token:
/// (access key id, secret key, session token). A session `policy` narrows
/// the role's permissions to what both allow.
pub async fn session_credentials(
    ctx: &TestContext,
    session: &str,
    policy: Option<&str>,
) -> TestResult<(String, String, String)> {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    let token = ctx
        .service_account_token("pod-identity", STS_AUDIENCE, Duration::from_secs(3600))
        .await?;
    let mut form = vec![
        ("Action", "AssumeRoleWithWebIdentity"),
        ("Version", "2011-06-15"),
        ("RoleArn", ctx.env.role_arn()),
        ("RoleSessionName", session),
        ("WebIdentityToken", token.as_str()),
    ];
    if let Some(policy) = policy {
        form.push(("Policy", policy));
    }
    let body: String = form
        .iter()
        .map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, NON_ALPHANUMERIC)))
        .collect::<Vec<_>>()
        .join("&");
    let xml = http()
        .post(ctx.env.sts_endpoint())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await?
        .text()
        .await?;
    let field = |name: &str| -> TestResult<String> {
        let open = format!("<{name}>");
        let start = xml
            .find(&open)
            .ok_or_else(|| format!("no {name} in STS answer: {xml}"))?
            + open.len();
        let end = xml[start..].find('<').ok_or("unterminated field")? + start;
        Ok(xml[start..end].replace("&#43;", "+").replace("&amp;", "&"))
    };
    Ok((
        field("AccessKeyId")?,
        field("SecretAccessKey")?,
        field("SessionToken")?,
    ))
}

/// Requests the apiserver has served for grants, Secrets and Events (watches
/// aside), from its own metrics: what the operator asked of it, counted by
/// the server rather than by the operator.
pub async fn apiserver_requests(client: &kube::Client) -> TestResult<f64> {
    let text = client
        .request_text(http::Request::get("/metrics").body(Vec::new())?)
        .await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| {
            ["secrets", "uploadgrants", "events"]
                .iter()
                .any(|r| l.contains(&format!("resource=\"{r}\"")))
                && !l.contains("verb=\"WATCH\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// [`apiserver_requests`] sampled once a second in the background, from
/// [`RequestSampler::start`] until [`RequestSampler::stop`].
pub struct RequestSampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Vec<(Instant, f64)>>,
}

impl RequestSampler {
    pub fn start(client: &kube::Client) -> RequestSampler {
        let client = client.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut every = tokio::time::interval(Duration::from_secs(1));
            tokio::pin!(stopped);
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = &mut stopped => return samples,
                }
                // The server read its counter somewhere between sending and
                // receiving: stamp the sample half way, so one slow answer
                // does not shift the next second's count into this one.
                let sent = Instant::now();
                match apiserver_requests(&client).await {
                    Ok(n) => samples.push((sent + sent.elapsed() / 2, n)),
                    Err(e) => eprintln!("apiserver metrics: {e}"),
                }
            }
        });
        RequestSampler { stop, task }
    }

    /// Stops sampling: the samples taken, oldest first.
    pub async fn stop(self) -> TestResult<RequestSamples> {
        let _ = self.stop.send(());
        Ok(RequestSamples(self.task.await?))
    }
}

/// When each sample was taken, and the requests served by then.
pub struct RequestSamples(pub Vec<(Instant, f64)>);

impl RequestSamples {
    /// The highest rate, in requests a second, over any `w` consecutive
    /// intervals between samples (0 with fewer than `w + 1` samples).
    pub fn peak_rate(&self, w: usize) -> f64 {
        self.0
            .windows(w + 1)
            .map(|s| {
                let (a, b) = (&s[0], &s[w]);
                (b.1 - a.1) / b.0.duration_since(a.0).as_secs_f64()
            })
            .fold(0.0, f64::max)
    }

    /// The requests served between the first sample and the last.
    pub fn total(&self) -> f64 {
        match (self.0.first(), self.0.last()) {
            (Some(first), Some(last)) => last.1 - first.1,
            _ => 0.0,
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// The documents of a multi-document YAML stream (`helm template`'s
/// output), empty ones left out.
pub fn yaml_documents(yaml: &str) -> TestResult<Vec<serde_json::Value>> {
    use serde::Deserialize;
    let mut docs = Vec::new();
    for doc in serde_norway::Deserializer::from_str(yaml) {
        let value = serde_json::to_value(serde_norway::Value::deserialize(doc)?)?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}
