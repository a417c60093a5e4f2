//! Runs the real operator binary against the test environment, with
//! IRSA-style credentials: a service-account token exchanged at the STS.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use super::{STS_AUDIENCE, TestContext, TestResult, eventually};

/// A running operator process, limited to the test's namespace. Stopped
/// with SIGTERM when dropped (killed if it does not exit within seconds).
pub struct Operator {
    child: Option<Child>,
    pub log_file: PathBuf,
    pub metrics_addr: String,
    pub token_file: PathBuf,
}

/// How to start an operator.
#[derive(Clone, Debug, Default)]
pub struct OperatorOptions {
    pub default_issuer: Option<String>,
    /// Extra environment, e.g. a role with short sessions.
    pub env: Vec<(String, String)>,
    /// Leave out the IRSA variables, for tests that bring their own credentials.
    pub without_irsa: bool,
}

impl OperatorOptions {
    /// With the Normal Issued and Renewed Events, which are off by default
    /// (`--lifecycle-events`).
    pub fn lifecycle_events() -> Self {
        OperatorOptions::default().with_lifecycle_events()
    }

    pub fn with_lifecycle_events(mut self) -> Self {
        self.env
            .push(("UPLOAD_GRANT_LIFECYCLE_EVENTS".into(), "true".into()));
        self
    }
}

impl Operator {
    pub async fn start(
        ctx: &TestContext,
        dir: &Path,
        opts: OperatorOptions,
    ) -> TestResult<Operator> {
        let token_file = ctx
            .web_identity_token_file(dir, "upload-grant-operator", STS_AUDIENCE)
            .await?;
        Self::start_with_token(ctx, dir, token_file, opts).await
    }

    pub async fn start_with_token(
        ctx: &TestContext,
        dir: &Path,
        token_file: PathBuf,
        opts: OperatorOptions,
    ) -> TestResult<Operator> {
        let port = free_port()?;
        let metrics_addr = format!("127.0.0.1:{port}");
        let n = std::fs::read_dir(dir)?.count();
        let log_file = dir.join(format!("operator-{n}.log"));
        let log = std::fs::File::create(&log_file)?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_upload-grant-operator"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", dir)
            .env("KUBECONFIG", ctx.env.kubeconfig())
            .env("AWS_REGION", ctx.env.region())
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("UPLOAD_GRANT_WATCH_NAMESPACE", &ctx.namespace)
            .env("UPLOAD_GRANT_LISTEN_ADDRESS", &metrics_addr)
            .env("UPLOAD_GRANT_LOG_LEVEL", "debug")
            .env("UPLOAD_GRANT_LOG_FORMAT", "json")
            // These tests read Secrets through the API, not through a
            // kubelet's volume: no propagation budget, so short ttls renew
            // within a test's time. The node tests run the chart's default.
            .env("UPLOAD_GRANT_PROPAGATION_BUDGET", "0s")
            // Renew requests are answered within a second, not a minute;
            // tests of the window set their own.
            .env("UPLOAD_GRANT_RENEW_REQUEST_INTERVAL", "1s")
            .stdout(log.try_clone()?)
            .stderr(log);
        if !opts.without_irsa {
            cmd.env("AWS_ROLE_ARN", ctx.env.role_arn())
                .env("AWS_ROLE_SESSION_NAME", "upload-grant-operator")
                .env("AWS_WEB_IDENTITY_TOKEN_FILE", &token_file)
                .env("AWS_ENDPOINT_URL_STS", ctx.env.sts_endpoint());
        }
        if let Some(issuer) = &opts.default_issuer {
            cmd.env("UPLOAD_GRANT_DEFAULT_ISSUER", issuer);
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn()?;
        eprintln!("operator log: {}", log_file.display());
        let op = Operator {
            child: Some(child),
            log_file,
            metrics_addr,
            token_file,
        };
        op.wait_ready().await?;
        Ok(op)
    }

    /// Polls /readyz: caches synced and credentials loaded.
    pub async fn wait_ready(&self) -> TestResult {
        let url = format!("http://{}/readyz", self.metrics_addr);
        eventually("operator /readyz", Duration::from_secs(60), || async {
            Ok(match super::http().get(&url).send().await {
                Ok(r) if r.status() == 200 => Some(()),
                _ => None,
            })
        })
        .await
        .map_err(|e| format!("{e}; log:\n{}", self.log_tail()).into())
    }

    pub async fn metrics(&self) -> TestResult<String> {
        Ok(super::http()
            .get(format!("http://{}/metrics", self.metrics_addr))
            .send()
            .await?
            .text()
            .await?)
    }

    /// The value of one sample line of /metrics, e.g.
    /// `upload_grant_signings_total{result="success",reason="ok"}` (labels
    /// as the operator orders them). A sample that is not there is an error
    /// naming it and the metrics that are, never a 0: the operator registers
    /// its bounded label sets at 0 from the start.
    pub async fn metric(&self, sample: &str) -> TestResult<f64> {
        let text = self.metrics().await?;
        sample_value(&text, sample)
            .map_err(|e| format!("{e} (operator at {})", self.metrics_addr).into())
    }

    /// Peak and current resident memory of the process, in KiB.
    pub fn memory_kib(&self) -> TestResult<(u64, u64)> {
        let pid = self.child.as_ref().ok_or("operator stopped")?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok((field("VmHWM:"), field("VmRSS:")))
    }

    /// CPU time the process has used (user and system), in seconds.
    pub fn cpu_seconds(&self) -> TestResult<f64> {
        let pid = self.child.as_ref().ok_or("operator stopped")?.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // The fields after the command name, which is in parentheses.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |i: usize| -> TestResult<f64> {
            Ok(fields.get(i).ok_or("short /proc stat")?.parse::<f64>()?)
        };
        // utime and stime: fields 14 and 15 of stat(5), 11 and 12 here.
        let out = Command::new("getconf").arg("CLK_TCK").output()?;
        let per_second: f64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
        Ok((ticks(11)? + ticks(12)?) / per_second)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let logs = self.logs();
        let lines: Vec<&str> = logs.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// True once the process has exited (it is reaped then).
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// SIGKILL: the process dies without releasing anything.
    pub fn kill(&mut self) -> TestResult {
        let mut child = self.child.take().ok_or("operator already stopped")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// SIGTERM, then wait (without blocking the runtime) for the process to
    /// exit; killed and an error after 15 s.
    pub async fn stop(&mut self) -> TestResult<ExitStatus> {
        let mut child = self.child.take().ok_or("operator already stopped")?;
        sigterm(&child);
        let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "operator did not exit within {STOP_TIMEOUT:?} of SIGTERM; log:\n{}",
                    self.log_tail()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

const STOP_TIMEOUT: Duration = Duration::from_secs(15);

fn sigterm(child: &Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
}

/// Best effort, and synchronous: SIGTERM, a few seconds to exit, then
/// SIGKILL, so no operator outlives its test.
impl Drop for Operator {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        sigterm(&child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The value of the sample line `sample` in a text exposition.
pub fn sample_value(text: &str, sample: &str) -> TestResult<f64> {
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(sample)
            && rest.starts_with(' ')
        {
            let value = rest.split_whitespace().next().unwrap_or_default();
            return value
                .parse()
                .map_err(|e| format!("sample {sample} has value {value:?}: {e}").into());
        }
    }
    let name = sample.split('{').next().unwrap_or(sample);
    let same_name: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(['{', ' ']))
        })
        .collect();
    if !same_name.is_empty() {
        return Err(format!(
            "no sample {sample} in /metrics; the samples of {name}: {}",
            same_name.join(" | ")
        )
        .into());
    }
    let mut present: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .filter(|name| !name.is_empty())
        .collect();
    present.sort_unstable();
    present.dedup();
    Err(format!(
        "no sample {sample} in /metrics; the metrics present: {}",
        present.join(", ")
    )
    .into())
}

pub fn free_port() -> TestResult<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
