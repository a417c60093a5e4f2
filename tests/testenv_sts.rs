//! Proof that IRSA works here as on EKS: aws-config's default credential chain
//! exchanges a service-account token from the apiserver for session
//! credentials at the local STS, which refuses tokens for another audience.
//!
//! The chain reads the process environment, so this binary holds a single
//! test that sets the variables while no other thread runs.

mod support;

use std::path::Path;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::ProvideCredentials;
use aws_sdk_s3::presigning::PresigningConfig;
use support::{STS_AUDIENCE, TestEnv, TestResult};

#[test]
fn default_chain_gets_session_credentials_from_a_service_account_token() -> TestResult {
    let env = TestEnv::get();
    let dir = tempfile::tempdir()?;
    let namespace = format!("irsa-{}", support::random_suffix());
    // Deleted when the test ends, however it ends.
    let _cleanup = support::Cleanup::namespace(env, &namespace);
    kubectl(env, &["create", "namespace", &namespace])?;
    kubectl(
        env,
        &["-n", &namespace, "create", "serviceaccount", "uploader"],
    )?;
    let good = token_file(env, dir.path(), &namespace, STS_AUDIENCE)?;
    let wrong = token_file(env, dir.path(), &namespace, "not-sts.example.com")?;

    let credentials = with_irsa_env(env, &good, load_default_chain)?
        .map_err(|e| format!("STS refused a valid token: {e}"))?;
    let expiry = credentials
        .expiry()
        .ok_or("session credentials carry no expiry")?;
    assert!(expiry > SystemTime::now(), "credentials already expired");
    assert!(
        expiry < SystemTime::now() + Duration::from_secs(13 * 3600),
        "expiry {expiry:?} is not a session's"
    );
    assert!(
        credentials.session_token().is_some(),
        "web identity must give session credentials"
    );
    assert_ne!(
        credentials.access_key_id(),
        env.root_credentials().access_key_id()
    );

    let refused = with_irsa_env(env, &wrong, load_default_chain)?;
    assert!(
        refused.is_err(),
        "STS accepted a token for the wrong audience"
    );

    runtime()?.block_on(upload_with_session_credentials(env, credentials))
}

async fn upload_with_session_credentials(env: &TestEnv, credentials: Credentials) -> TestResult {
    let key = format!("proof/irsa/{}.txt", support::random_suffix());
    let s3 = support::s3_client(env, credentials);
    let put = s3
        .put_object()
        .bucket(env.bucket())
        .key(&key)
        .presigned(PresigningConfig::expires_in(Duration::from_secs(300))?)
        .await?;
    assert!(
        put.uri().contains("X-Amz-Security-Token="),
        "session URL lacks its token"
    );
    let response = support::send(&put, b"signed by a session".to_vec()).await?;
    assert_eq!(
        response.status(),
        200,
        "upload failed: {}",
        response.text().await?
    );

    let root = support::s3_client(env, env.root_credentials());
    let object = root
        .get_object()
        .bucket(env.bucket())
        .key(&key)
        .send()
        .await?;
    assert_eq!(
        object.body.collect().await?.into_bytes().as_ref(),
        b"signed by a session"
    );
    Ok(())
}

async fn load_default_chain() -> Result<Credentials, String> {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let provider = config
        .credentials_provider()
        .ok_or("no credentials provider")?;
    provider
        .provide_credentials()
        .await
        .map_err(|e| format!("{e:?}"))
}

/// Runs `f` on a fresh runtime with the IRSA variables EKS sets in a pod. The
/// variables are set before the runtime starts, so no other thread can read
/// the environment while it changes.
fn with_irsa_env<F, Fut, T>(env: &TestEnv, token_file: &Path, f: F) -> TestResult<T>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    // SAFETY: this binary has one test and no runtime is alive here, so no
    // other thread reads or writes the environment.
    unsafe {
        for name in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
        ] {
            std::env::remove_var(name);
        }
        std::env::set_var("AWS_CONFIG_FILE", "/nonexistent/aws-config");
        std::env::set_var(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/aws-credentials",
        );
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        std::env::set_var("AWS_REGION", env.region());
        std::env::set_var("AWS_ROLE_ARN", env.role_arn());
        std::env::set_var("AWS_ROLE_SESSION_NAME", "testenv-proof");
        std::env::set_var("AWS_WEB_IDENTITY_TOKEN_FILE", token_file);
        std::env::set_var("AWS_ENDPOINT_URL_STS", env.sts_endpoint());
    }
    let rt = runtime()?;
    let result = rt.block_on(f());
    rt.shutdown_timeout(Duration::from_secs(5));
    Ok(result)
}

fn runtime() -> TestResult<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn kubectl(env: &TestEnv, args: &[&str]) -> TestResult<String> {
    let out: std::process::Output = env.command("kubectl").args(args).output()?;
    if !out.status.success() {
        return Err(format!("kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// `kubectl create token`, as the kubelet projects it into an IRSA pod.
fn token_file(
    env: &TestEnv,
    dir: &Path,
    namespace: &str,
    audience: &str,
) -> TestResult<std::path::PathBuf> {
    let token = kubectl(
        env,
        &[
            "-n",
            namespace,
            "create",
            "token",
            "uploader",
            "--audience",
            audience,
        ],
    )?;
    let path = dir.join(audience);
    std::fs::write(&path, token.trim())?;
    Ok(path)
}
