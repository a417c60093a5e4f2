//! Fault injection for tests/chaos.rs: TCP proxies the harness can cut or
//! slow down, the environment's own processes signalled and restarted by
//! tools/testenv/proc.sh, a recorder of every grant and Secret transition,
//! the apiserver's audit log read per client identity, and the checks every
//! scenario ends with.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, watch};
use upload_grant_operator::api::UploadGrant;
use upload_grant_operator::signing::SecretUrl;

use super::{TestContext, TestEnv, TestResult, repo_root};

// --- proxies -------------------------------------------------------------------

/// What a proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Passes bytes both ways.
    Pass,
    /// Closes its listening socket (connects are refused) and drops every
    /// open connection.
    Refuse,
    /// Holds every chunk the client sends this long before passing it on:
    /// each call answers at least this late.
    Delay(Duration),
}

/// A TCP proxy on a fixed loopback port in front of `upstream`.
pub struct Proxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    /// Chunks (requests) held back while delaying.
    delayed: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> TestResult<Proxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, rx) = watch::channel(Mode::Pass);
        let (delayed, accepted) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        tokio::spawn(serve(
            Some(listener),
            addr,
            upstream,
            rx,
            delayed.clone(),
            accepted.clone(),
        ));
        Ok(Proxy {
            addr,
            mode,
            delayed,
            accepted,
        })
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.addr)
    }

    pub fn delayed_calls(&self) -> u64 {
        self.delayed.load(Ordering::Relaxed)
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

async fn serve(
    mut listener: Option<tokio::net::TcpListener>,
    addr: SocketAddr,
    upstream: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    delayed: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
) {
    let (cut, _) = broadcast::channel::<()>(1);
    loop {
        let current = *mode.borrow_and_update();
        if current == Mode::Refuse {
            listener = None;
            let _ = cut.send(());
            if mode.changed().await.is_err() {
                return;
            }
            continue;
        }
        if listener.is_none() {
            // The port is ours again (SO_REUSEADDR is set by tokio on unix).
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => listener = Some(l),
                Err(e) => {
                    eprintln!("proxy {addr}: cannot listen again: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let Some(l) = listener.as_ref() else { continue };
        tokio::select! {
            conn = l.accept() => {
                if let Ok((client, _)) = conn {
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let mut cut_rx = cut.subscribe();
                    let mode = mode.clone();
                    let delayed = delayed.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = cut_rx.recv() => {}
                            _ = pipe(client, upstream, mode, delayed) => {}
                        }
                    });
                }
            }
            changed = mode.changed() => if changed.is_err() { return },
        }
    }
}

async fn pipe(
    client: tokio::net::TcpStream,
    upstream: SocketAddr,
    mode: watch::Receiver<Mode>,
    delayed: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let server = tokio::net::TcpStream::connect(upstream).await?;
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = cr.read(&mut buf).await?;
            if n == 0 {
                sw.shutdown().await?;
                return std::io::Result::Ok(());
            }
            let delay = match *mode.borrow() {
                Mode::Delay(d) => Some(d),
                _ => None,
            };
            if let Some(d) = delay {
                delayed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(d).await;
            }
            sw.write_all(&buf[..n]).await?;
        }
    };
    let down = async move {
        tokio::io::copy(&mut sr, &mut cw).await?;
        cw.shutdown().await
    };
    let _ = tokio::try_join!(up, down);
    Ok(())
}

/// host:port of an http(s) URL on loopback.
pub fn socket_addr(url: &str) -> TestResult<SocketAddr> {
    let rest = url.split("://").nth(1).ok_or("no scheme")?;
    let hostport = rest.split('/').next().ok_or("no host")?;
    Ok(hostport.parse()?)
}

// --- the environment's processes ---------------------------------------------------

/// Runs tools/testenv/proc.sh against this environment.
pub fn proc(env: &TestEnv, args: &[&str]) -> TestResult<String> {
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("tools/testenv/proc.sh"))
        .args(args)
        .env("TESTENV_DIR", env.var("TESTENV_DIR"));
    super::output(cmd).map(|s| s.trim().to_owned())
}

/// Which groups a user's client certificate names besides testenv:audited.
#[derive(Clone, Copy, PartialEq)]
pub enum Groups {
    /// system:masters: every right, and exempt from API Priority and
    /// Fairness.
    Masters,
    /// None: its rights come from RBAC, and API Priority and Fairness
    /// applies to it, as to an operator in a real cluster.
    Plain,
}

/// A kubeconfig for user `user` (a client certificate in the group
/// testenv:audited and `groups`) against `server`.
pub fn kubeconfig(
    env: &TestEnv,
    user: &str,
    groups: Groups,
    server: &str,
    dir: &Path,
) -> TestResult<PathBuf> {
    let paths = match groups {
        Groups::Masters => proc(env, &["user", user])?,
        Groups::Plain => proc(env, &["user", user, "plain"])?,
    };
    let (crt, key) = paths
        .split_once(' ')
        .ok_or("proc.sh user printed no paths")?;
    let path = dir.join(format!("{user}.kubeconfig"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: {user}\n  user:\n    client-certificate: {crt}\n    client-key: {key}\ncontexts:\n- name: c\n  context: {{cluster: c, user: {user}, namespace: default}}\ncurrent-context: c\n",
            ca = env.var("TESTENV_CA_FILE"),
        ),
    )?;
    Ok(path)
}

/// Waits until the apiserver answers /readyz.
pub async fn wait_apiserver(client: &kube::Client, timeout: Duration) -> TestResult<Duration> {
    let t = tokio::time::Instant::now();
    super::eventually("the apiserver to be ready", timeout, || async {
        let req = http::Request::get("/readyz").body(Vec::new())?;
        Ok(client.request_text(req).await.ok().map(|_| ()))
    })
    .await?;
    Ok(t.elapsed())
}

/// The etcd client URL from its recorded command line.
pub fn etcd_url(env: &TestEnv) -> TestResult<String> {
    let cmd = std::fs::read_to_string(Path::new(env.var("TESTENV_DIR")).join("cmd/etcd"))?;
    let mut words = cmd.split_whitespace();
    while let Some(w) = words.next() {
        if w == "--listen-client-urls" {
            return Ok(words.next().ok_or("no URL")?.to_owned());
        }
    }
    Err("no --listen-client-urls in etcd's command line".into())
}

/// Compacts etcd's history up to its current revision (physically), so a
/// watch from any older resourceVersion can only get 410 Gone. Returns the
/// revision.
pub async fn compact_etcd(env: &TestEnv) -> TestResult<i64> {
    let url = etcd_url(env)?;
    let range: serde_json::Value = super::http()
        .post(format!("{url}/v3/kv/range"))
        .json(&serde_json::json!({"key": "AA=="}))
        .send()
        .await?
        .json()
        .await?;
    let rev: i64 = range["header"]["revision"]
        .as_str()
        .ok_or("no revision")?
        .parse()?;
    let answer = super::http()
        .post(format!("{url}/v3/kv/compaction"))
        .json(&serde_json::json!({"revision": rev.to_string(), "physical": true}))
        .send()
        .await?;
    if !answer.status().is_success() {
        return Err(format!("compaction: {}", answer.text().await?).into());
    }
    Ok(rev)
}

// --- the audit log -------------------------------------------------------------------

/// One audited request.
#[derive(Debug, Clone)]
pub struct Audited {
    pub user: String,
    pub verb: String,
    pub resource: String,
    pub subresource: String,
    /// The object's namespace and name, where the request names one.
    pub namespace: String,
    pub name: String,
    pub at: jiff::Timestamp,
    pub code: i64,
}

impl Audited {
    pub fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }
}

/// Every request the audit log holds for `user`.
pub fn audited(env: &TestEnv, user: &str) -> TestResult<Vec<Audited>> {
    let path = Path::new(env.log_dir()).join("audit.log");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "{}: {e} (a testenv started before the audit log existed: restart it)",
            path.display()
        )
    })?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| l.contains(user)) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["user"]["username"].as_str() != Some(user) {
            continue;
        }
        let s = |p: &str| {
            v.pointer(p)
                .and_then(|x| x.as_str())
                .unwrap_or("")
                .to_owned()
        };
        out.push(Audited {
            user: user.to_owned(),
            verb: s("/verb"),
            resource: s("/objectRef/resource"),
            subresource: s("/objectRef/subresource"),
            namespace: s("/objectRef/namespace"),
            name: s("/objectRef/name"),
            at: s("/requestReceivedTimestamp").parse()?,
            code: v
                .pointer("/responseStatus/code")
                .and_then(|c| c.as_i64())
                .unwrap_or(0),
        });
    }
    Ok(out)
}

// --- a request that holds its seat -------------------------------------------------

/// A create that never finishes: the headers of a POST and one byte of a
/// body that is much longer, sent over a client-certificate TLS connection
/// (`openssl s_client`), then nothing. The apiserver admits the request
/// through API Priority and Fairness, authorizes it, and waits for the body
/// while holding the request's seat: a client that hogs a priority level
/// without costing the server any work. It ends when the apiserver times
/// the request out (its `--request-timeout`, a minute) or when dropped.
pub struct SlowRequest(std::process::Child);

impl SlowRequest {
    /// Opens one as user `user` (`proc.sh user … plain`), creating a
    /// ConfigMap in `namespace`.
    pub fn open(env: &TestEnv, user: &str, namespace: &str) -> TestResult<SlowRequest> {
        use std::io::Write;
        let paths = proc(env, &["user", user, "plain"])?;
        let (crt, key) = paths
            .split_once(' ')
            .ok_or("proc.sh user printed no paths")?;
        let addr = socket_addr(env.var("TESTENV_APISERVER_URL"))?;
        let mut child = Command::new("openssl")
            .args(["s_client", "-quiet", "-connect", &addr.to_string()])
            .args([
                "-cert",
                crt,
                "-key",
                key,
                "-CAfile",
                env.var("TESTENV_CA_FILE"),
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let head = format!(
            "POST /api/v1/namespaces/{namespace}/configmaps HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\r\n{{"
        );
        let stdin = child.stdin.as_mut().ok_or("openssl has no stdin")?;
        stdin.write_all(head.as_bytes())?;
        stdin.flush()?;
        Ok(SlowRequest(child))
    }

    /// Whether the apiserver has ended it (the connection closed).
    pub fn ended(&mut self) -> bool {
        !matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for SlowRequest {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// --- the recorder ----------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
pub struct GrantState {
    /// When the apiserver last stored a change of the status (its
    /// managedFields, whole seconds): the watch may see a write late, when
    /// the harness's own watch is reconnecting after a fault.
    pub written: Option<jiff::Timestamp>,
    pub ready: Option<bool>,
    pub reason: String,
    pub expires_at: Option<jiff::Timestamp>,
    pub deleted: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SecretState {
    pub fingerprint: Option<String>,
    pub expires_at: Option<jiff::Timestamp>,
    pub deleted: bool,
}

type Timeline<S> = HashMap<String, Vec<(jiff::Timestamp, S)>>;

/// Every change of every grant's Ready condition and every managed Secret's
/// URL in one namespace, as watches see them, with when they were seen.
#[derive(Default)]
pub struct Recorder {
    pub grants: Mutex<Timeline<GrantState>>,
    pub secrets: Mutex<Timeline<SecretState>>,
}

fn push<S: PartialEq>(t: &Mutex<Timeline<S>>, name: String, state: S) {
    let mut map = t.lock().unwrap_or_else(|p| p.into_inner());
    let list = map.entry(name).or_default();
    if list.last().is_none_or(|(_, last)| *last != state) {
        list.push((jiff::Timestamp::now(), state));
    }
}

fn grant_state(g: &UploadGrant, deleted: bool) -> GrantState {
    let status = g.status.as_ref();
    let ready = status.and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    let written = g
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.subresource.as_deref() == Some("status"))
        .filter_map(|m| m.time.as_ref().map(|t| t.0))
        .max();
    GrantState {
        written,
        ready: ready.map(|c| c.status == "True"),
        reason: ready.map(|c| c.reason.clone()).unwrap_or_default(),
        expires_at: status.and_then(|s| s.expires_at.as_ref()).map(|t| t.0),
        deleted,
    }
}

fn secret_state(s: &Secret, deleted: bool) -> SecretState {
    let a = s.annotations();
    SecretState {
        fingerprint: a.get("grants.io/url-fingerprint").cloned(),
        expires_at: a.get("grants.io/expires-at").and_then(|v| v.parse().ok()),
        deleted,
    }
}

impl Recorder {
    pub fn watch(ctx: &TestContext) -> Arc<Recorder> {
        let rec = Arc::new(Recorder::default());
        let grants: Api<UploadGrant> = ctx.api();
        let sink = rec.clone();
        tokio::spawn(async move {
            watcher(grants, watcher::Config::default())
                .default_backoff()
                .for_each(|e| {
                    match e {
                        Ok(watcher::Event::Apply(g) | watcher::Event::InitApply(g)) => {
                            push(&sink.grants, g.name_any(), grant_state(&g, false))
                        }
                        Ok(watcher::Event::Delete(g)) => {
                            push(&sink.grants, g.name_any(), grant_state(&g, true))
                        }
                        _ => {}
                    }
                    futures::future::ready(())
                })
                .await
        });
        let secrets: Api<Secret> = ctx.api();
        let sink = rec.clone();
        tokio::spawn(async move {
            let cfg = watcher::Config::default()
                .labels("app.kubernetes.io/managed-by=upload-grant-operator");
            watcher(secrets, cfg)
                .default_backoff()
                .for_each(|e| {
                    match e {
                        Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => {
                            push(&sink.secrets, s.name_any(), secret_state(&s, false))
                        }
                        Ok(watcher::Event::Delete(s)) => {
                            push(&sink.secrets, s.name_any(), secret_state(&s, true))
                        }
                        _ => {}
                    }
                    futures::future::ready(())
                })
                .await
        });
        rec
    }

    /// Grants that stayed Ready=True past the expiry their status named (by
    /// more than `grace`, the watch's delivery delay): (name, expiresAt,
    /// when the next state was seen, or now).
    pub fn ready_with_expired_url(
        &self,
        grace: Duration,
    ) -> Vec<(String, jiff::Timestamp, jiff::Timestamp)> {
        let now = jiff::Timestamp::now();
        let grace = jiff::SignedDuration::try_from(grace).unwrap_or_default();
        let map = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (name, list) in map.iter() {
            for (i, (_, state)) in list.iter().enumerate() {
                let (Some(true), Some(end), false) = (state.ready, state.expires_at, state.deleted)
                else {
                    continue;
                };
                // When the next state was stored: the watch's sighting, or
                // the server's write time (rounded up) if that came first.
                let until = match list.get(i + 1) {
                    Some((seen, next)) if !next.deleted => next
                        .written
                        .map(|w| (w + jiff::SignedDuration::from_secs(1)).min(*seen))
                        .unwrap_or(*seen),
                    Some((seen, _)) => *seen,
                    None => now,
                };
                if until > end + grace {
                    out.push((name.clone(), end, until));
                }
            }
        }
        out.sort_by_key(|v| v.1);
        out
    }

    /// New URLs written into Secrets (fingerprint changes of existing
    /// Secrets) seen in [from, to].
    pub fn renewals_between(&self, from: jiff::Timestamp, to: jiff::Timestamp) -> usize {
        let map = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
        map.values()
            .map(|list| {
                list.windows(2)
                    .filter(|w| {
                        !w[1].1.deleted
                            && w[1].1.fingerprint != w[0].1.fingerprint
                            && w[0].1.fingerprint.is_some()
                            && w[1].0 >= from
                            && w[1].0 <= to
                    })
                    .count()
            })
            .sum()
    }

    /// The expiry of the URL Secret `name` held at `at`, as the watch saw it.
    pub fn expiry_at(&self, name: &str, at: jiff::Timestamp) -> Option<jiff::Timestamp> {
        let map = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
        let list = map.get(name)?;
        let (_, state) = list.iter().rev().find(|(seen, _)| *seen <= at)?;
        state.expires_at.filter(|_| !state.deleted)
    }

    /// When the watch saw Secret `name` deleted, if it did.
    pub fn secret_deleted_at(&self, name: &str) -> Option<jiff::Timestamp> {
        let map = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
        map.get(name)?
            .iter()
            .find(|(_, s)| s.deleted)
            .map(|(at, _)| *at)
    }

    /// Secrets deleted while the URL in them was still valid, except those
    /// of `revoked` grants: a lost Secret. (A Secret removed once its URL
    /// had expired took nothing that worked.)
    pub fn lost_secrets(&self, revoked: &BTreeSet<String>) -> Vec<String> {
        let map = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<String> = map
            .iter()
            .filter(|(name, list)| {
                !revoked.contains(*name)
                    && list
                        .iter()
                        .any(|(at, s)| s.deleted && s.expires_at.is_none_or(|end| end > *at))
            })
            .map(|(name, _)| name.clone())
            .collect();
        out.sort();
        out
    }

    /// Grants that went Ready=False with `reason` at some point.
    pub fn grants_that_reported(&self, reason: &str) -> usize {
        let map = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        map.values()
            .filter(|l| {
                l.iter()
                    .any(|(_, s)| s.ready == Some(false) && s.reason == reason)
            })
            .count()
    }

    /// The renewals of each named Secret: (old expiry, when the new URL was
    /// seen), the first renewal after `after` only.
    pub fn first_renewals(
        &self,
        names: &[String],
        after: jiff::Timestamp,
    ) -> HashMap<String, (jiff::Timestamp, jiff::Timestamp)> {
        let map = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = HashMap::new();
        for name in names {
            let Some(list) = map.get(name) else { continue };
            for w in list.windows(2) {
                if w[1].0 >= after
                    && !w[1].1.deleted
                    && w[0].1.fingerprint.is_some()
                    && w[1].1.fingerprint != w[0].1.fingerprint
                    && let Some(old_end) = w[0].1.expires_at
                {
                    out.insert(name.clone(), (old_end, w[1].0));
                    break;
                }
            }
        }
        out
    }
}

// --- the end-of-scenario check --------------------------------------------------------------

/// What the grants should look like after a scenario.
#[derive(Debug, Default, Clone)]
pub struct Expected {
    /// Ready=True (Issued), a Secret with a URL that works.
    pub ready: BTreeSet<String>,
    /// Ready=False with this reason and no Secret.
    pub revoked: BTreeMap<String, String>,
    /// Deleted: neither grant nor Secret.
    pub gone: BTreeSet<String>,
}

impl Expected {
    pub fn revoked_names(&self) -> BTreeSet<String> {
        self.revoked
            .keys()
            .chain(self.gone.iter())
            .cloned()
            .collect()
    }
}

/// What the check found.
#[derive(Debug, Default, Clone)]
pub struct Found {
    pub ready: usize,
    pub expected_ready: usize,
    /// Problems, one line each (names, never a URL).
    pub problems: Vec<String>,
    pub secrets: usize,
    pub uploads_ok: usize,
    pub uploads: usize,
    /// Grants whose status and Secret agreed only on a second look.
    pub settled_late: usize,
}

/// The state of every grant and managed Secret now: every expected grant
/// Ready=True with a Secret whose URL is current (fingerprint, expiry
/// annotations, URL's own X-Amz-Date + X-Amz-Expires), one Secret per
/// grant and none for revoked or deleted ones; `sample` grants uploaded
/// through.
pub async fn check(ctx: &TestContext, expected: &Expected, sample: usize) -> TestResult<Found> {
    let now = jiff::Timestamp::now();
    let grants = ctx
        .api::<UploadGrant>()
        .list(&ListParams::default())
        .await?
        .items;
    let secrets = ctx
        .api::<Secret>()
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=upload-grant-operator"))
        .await?
        .items;
    let mut found = Found {
        expected_ready: expected.ready.len(),
        secrets: secrets.len(),
        ..Found::default()
    };
    let by_name: HashMap<String, &UploadGrant> = grants.iter().map(|g| (g.name_any(), g)).collect();
    let mut secret_by_name: HashMap<String, &Secret> = HashMap::new();
    let mut per_grant: HashMap<String, usize> = HashMap::new();
    for s in &secrets {
        secret_by_name.insert(s.name_any(), s);
        let owner = s
            .labels()
            .get("grants.io/grant")
            .cloned()
            .unwrap_or_default();
        *per_grant.entry(owner).or_default() += 1;
    }
    for (owner, n) in &per_grant {
        if *n > 1 {
            found
                .problems
                .push(format!("grant {owner} has {n} Secrets"));
        }
        if !by_name.contains_key(owner) {
            found
                .problems
                .push(format!("Secret of missing grant {owner:?}"));
        }
    }
    let mut problems = Vec::new();
    let started = std::time::Instant::now();
    for name in &expected.ready {
        let (Some(g), s) = (by_name.get(name), secret_by_name.get(name)) else {
            problems.push(format!("{name}: grant missing"));
            continue;
        };
        // The grant and the Secret were listed at different instants, and
        // renewals go on: a mismatch is looked at again, both read afresh
        // (the Secret between two reads of an unchanged grant).
        let mut verdict = ready_problem(name, g, s.copied(), now);
        // A write interrupted by a fault is retried with the operator's
        // backoff: the status may name the previous (still valid) URL for a
        // while. Only a mismatch that lasts two minutes is a problem.
        while verdict.is_err() && started.elapsed() < Duration::from_secs(120) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let grants = ctx.api::<UploadGrant>();
            let before = grants.get(name).await?;
            let secret = ctx.api::<Secret>().get_opt(name).await?;
            let after = grants.get(name).await?;
            if before.resource_version() != after.resource_version() {
                continue;
            }
            verdict = ready_problem(name, &after, secret.as_ref(), jiff::Timestamp::now());
            if verdict.is_ok() {
                found.settled_late += 1;
            }
        }
        match verdict {
            Ok(()) => found.ready += 1,
            Err(p) => problems.push(p),
        }
    }
    for (name, reason) in &expected.revoked {
        match by_name.get(name).map(|g| grant_state(g, false)) {
            Some(s) if s.ready == Some(false) && &s.reason == reason => {}
            other => problems.push(format!("{name}: expected {reason}, found {other:?}")),
        }
        if secret_by_name.contains_key(name) {
            problems.push(format!(
                "{name}: revoked ({reason}) but its Secret is there"
            ));
        }
    }
    for name in &expected.gone {
        if by_name.contains_key(name) {
            problems.push(format!("{name}: deleted grant still there"));
        }
        if secret_by_name.contains_key(name) {
            problems.push(format!("{name}: deleted grant's Secret still there"));
        }
    }
    found.problems.extend(problems);
    // Upload through a sample, spread over the names.
    let names: Vec<&String> = expected.ready.iter().collect();
    let step = (names.len() / sample.max(1)).max(1);
    for name in names.iter().step_by(step).take(sample) {
        // Read afresh: the listing may be minutes old by now.
        let Some(s) = ctx.api::<Secret>().get_opt(name).await? else {
            continue;
        };
        found.uploads += 1;
        let data: BTreeMap<String, String> = s
            .data
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(k, v)| Some((k, String::from_utf8(v.0).ok()?)))
            .collect();
        match super::grants::consume(&data, Some(format!("chaos {name}").into_bytes())).await {
            Ok(r) if r.status().is_success() => found.uploads_ok += 1,
            Ok(r) => found
                .problems
                .push(format!("{name}: upload answered {}", r.status())),
            Err(e) => found.problems.push(format!("{name}: upload failed: {e}")),
        }
    }
    Ok(found)
}

/// Why grant `g` with Secret `s` is not Ready with a current URL, if so.
fn ready_problem(
    name: &str,
    g: &UploadGrant,
    s: Option<&Secret>,
    now: jiff::Timestamp,
) -> Result<(), String> {
    let state = grant_state(g, false);
    let current = super::grants::ready(g).is_some_and(|(s, r)| s == "True" && r == "Issued");
    if !current {
        return Err(format!(
            "{name}: not Ready ({:?} {})",
            state.ready, state.reason
        ));
    }
    let Some(s) = s else {
        return Err(format!("{name}: Ready without a Secret"));
    };
    let status_fp = super::grants::fingerprint(g);
    let data = s.data.clone().unwrap_or_default();
    let text = |k: &str| {
        data.get(k)
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
    };
    let url = text("url").unwrap_or_default();
    let fp = SecretUrl::new(url.clone()).fingerprint();
    if status_fp.as_deref() != Some(fp.as_str())
        || s.annotations().get("grants.io/url-fingerprint") != Some(&fp)
    {
        return Err(format!(
            "{name}: Secret's URL is not the one the status names"
        ));
    }
    let data_expiry: Option<jiff::Timestamp> = text("expiresAt").and_then(|t| t.parse().ok());
    if data_expiry.is_none() || data_expiry != state.expires_at {
        return Err(format!(
            "{name}: Secret's expiresAt differs from the status"
        ));
    }
    let Some(expiry) = state.expires_at.filter(|e| *e > now) else {
        return Err(format!("{name}: Ready with an expired URL"));
    };
    match url_expiry(&url) {
        Some(u) if u >= expiry => Ok(()),
        _ => Err(format!(
            "{name}: the URL itself expires before its expiresAt"
        )),
    }
}

/// X-Amz-Date + X-Amz-Expires of a presigned URL.
pub fn url_expiry(url: &str) -> Option<jiff::Timestamp> {
    let query = url.split_once('?')?.1;
    let mut date = None;
    let mut expires = None;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=')?;
        match k {
            "X-Amz-Date" => {
                date = jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", v)
                    .ok()
                    .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
                    .map(|z| z.timestamp())
            }
            "X-Amz-Expires" => expires = v.parse::<i64>().ok(),
            _ => {}
        }
    }
    Some(date? + jiff::SignedDuration::from_secs(expires?))
}
