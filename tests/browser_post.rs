//! Browser uploads: examples/post-form.html, in a real headless Chromium,
//! POSTs a file to the test store through the form in a POST grant's Secret
//! (the operator signing with the store's static keys, the only kind the
//! test store accepts in a form), across origins, which the bucket's CORS
//! rules allow (tools/testenv/s3_cors.py). The refusal case uses a form
//! signed by botocore's `generate_presigned_post`, a signer that shares no
//! code with the operator. The page, its grant endpoint and the test
//! file come from a loopback server of the test's own, as an app's would.
//!
//! Chromium is Debian's `chromium`, installed by tools/install-deps.sh.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::IntoResponse;
use axum::routing::{MethodRouter, get};
use support::grants::{Scenario, create_grant, create_issuer, secret_data, spec, wait_ready};
use support::post::{PostForm, PostPolicy, botocore_post, static_key_scenario};
use support::{TestEnv, TestResult, repo_root};

/// Serves the page, `/grant.json` and `/payload.bin` on a loopback port:
/// the page's origin, `http://127.0.0.1:PORT`.
async fn serve(form: &PostForm, payload: Vec<u8>) -> TestResult<String> {
    let page = std::fs::read_to_string(repo_root().join("examples/post-form.html"))?;
    let app = Router::new()
        .route("/post-form.html", file("text/html; charset=utf-8", page))
        .route("/grant.json", file("application/json", form.grant_json()))
        .route("/payload.bin", file("application/octet-stream", payload));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let origin = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(origin)
}

/// A route answering `body`, uncached.
fn file<B>(content_type: &'static str, body: B) -> MethodRouter
where
    B: IntoResponse + Clone + Send + Sync + 'static,
{
    get(move || {
        let body = body.clone();
        async move {
            (
                [(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-store")],
                body,
            )
        }
    })
}

/// Loads `url` in headless Chromium and returns the DOM once the page is
/// idle: --virtual-time-budget runs its timers and waits for its fetches
/// (the upload included) before --dump-dom prints it.
async fn chromium_dom(url: String) -> TestResult<String> {
    tokio::task::spawn_blocking(move || {
        let profile = tempfile::tempdir()?;
        let dom = profile.path().join("dom.html");
        let mut child = support::headless_chromium(&profile.path().join("profile"))
            .args(["--virtual-time-budget=60000", "--dump-dom"])
            .arg(&url)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&dom)?)
            .stderr(std::fs::File::create(profile.path().join("stderr"))?)
            .spawn()
            .map_err(|e| format!("cannot run chromium ({e}); tools/install-deps.sh installs it"))?;
        let deadline = Instant::now() + Duration::from_secs(180);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                child.kill()?;
                child.wait()?;
                return Err("chromium did not finish in 180s".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let out = std::fs::read_to_string(&dom)?;
        if !status.success() || out.is_empty() {
            let stderr = std::fs::read_to_string(profile.path().join("stderr"))?;
            return Err(format!("chromium failed ({status}): {stderr}").into());
        }
        Ok(out)
    })
    .await?
}

/// The page's outcome: `data-outcome` and the text of `<pre id="result">`.
fn result(dom: &str) -> TestResult<(String, String)> {
    let start = dom
        .find(r#"<pre id="result""#)
        .ok_or_else(|| format!("no result element in the page: {dom}"))?;
    let rest = &dom[start..];
    let tag_end = rest.find('>').ok_or("unterminated <pre>")?;
    let tag = &rest[..tag_end];
    let text_end = rest.find("</pre>").ok_or("unterminated <pre>")?;
    let outcome = tag
        .split_once(r#"data-outcome=""#)
        .and_then(|(_, v)| v.split_once('"'))
        .map(|(v, _)| v.to_owned())
        .unwrap_or_default();
    Ok((outcome, rest[tag_end + 1..text_end].to_owned()))
}

/// Bytes no two runs share, that a text encoding could not pass unharmed.
fn payload(len: usize) -> Vec<u8> {
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos() as u64;
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn unique(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos();
    format!("{nanos}-{name}")
}

async fn upload_in_browser(origin: &str, name: &str) -> TestResult<(String, String)> {
    let dom = chromium_dom(format!(
        "{origin}/post-form.html?auto=1&grant=/grant.json&file=/payload.bin&name={name}"
    ))
    .await?;
    result(&dom)
}

#[tokio::test]
async fn a_browser_uploads_a_file_through_a_post_grants_secret() -> TestResult {
    let Scenario { ctx, operator, .. } = static_key_scenario("browser").await?;
    let env = ctx.env;
    let issuer = create_issuer(
        &ctx,
        serde_json::json!([{"buckets": [env.bucket()], "keyPrefixes": ["{namespace}/"],
            "methods": ["POST"], "maxContentLength": "1Mi"}]),
    )
    .await?;
    let prefix = format!("{}/{}", ctx.namespace, unique("web"));
    let grant = serde_json::json!({"method": "POST", "key": format!("{prefix}/${{filename}}"),
        "contentLengthRange": {"min": 1, "max": "1Mi"}, "contentType": "application/octet-stream"});
    create_grant(&ctx, "upload", spec(&ctx, &issuer, "unused", grant)).await?;
    if let Err(e) = wait_ready(&ctx, "upload").await {
        return Err(format!("{e}\n{}", operator.logs()).into());
    }
    // What an app's backend would read from the mounted Secret.
    let data = secret_data(&ctx.client, &ctx.namespace, "upload").await?;
    let form = PostForm {
        url: data["url"].clone(),
        fields: data["fields"].clone(),
    };
    let body = payload(200 * 1024 + 7);
    let origin = serve(&form, body.clone()).await?;
    let (outcome, text) = upload_in_browser(&origin, "report.bin").await?;
    assert_eq!(
        (outcome.as_str(), text.as_str()),
        ("ok", "status 204"),
        "the page's outcome"
    );

    // S3 put the form's file name in place of ${filename}.
    let s3 = support::s3_client(env, env.root_credentials());
    let object = s3
        .get_object()
        .bucket(env.bucket())
        .key(format!("{prefix}/report.bin"))
        .send()
        .await?;
    assert_eq!(object.content_type(), Some("application/octet-stream"));
    let stored = object.body.collect().await?.into_bytes();
    assert!(
        stored.as_ref() == body.as_slice(),
        "the stored bytes differ"
    );
    Ok(())
}

#[tokio::test]
async fn a_file_over_the_policys_size_range_is_refused_and_the_page_says_so() -> TestResult {
    let env = TestEnv::get();
    let key = format!("{}/too-large.bin", unique("browser"));
    let form = botocore_post(
        env,
        &PostPolicy {
            key: &key,
            min: 1,
            max: 1024,
            ..Default::default()
        },
    )?;
    let origin = serve(&form, payload(4096)).await?;
    let (outcome, text) = upload_in_browser(&origin, "too-large.bin").await?;
    assert_eq!(outcome, "error", "the page's outcome: {text}");
    assert!(
        text.starts_with("status 400 EntityTooLarge"),
        "the page should show S3's error code; it shows {text:?}"
    );
    let s3 = support::s3_client(env, env.root_credentials());
    let head = s3.head_object().bucket(env.bucket()).key(&key).send().await;
    assert!(head.is_err(), "the refused file was stored");
    Ok(())
}

/// The bucket's CORS rules are what lets the page read S3's answer: the
/// store answers a preflight from a page served over http, and refuses one
/// from an origin the rules do not name (without rules SeaweedFS would
/// allow every origin, so the refusal shows the rules are in force).
#[tokio::test]
async fn the_bucket_answers_cors_preflights_for_allowed_origins_only() -> TestResult {
    let env = TestEnv::get();
    let http = support::http();
    let bucket_url = format!("{}/{}", env.s3_endpoint(), env.bucket());
    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, &bucket_url)
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "content-type")
            .send()
    };
    let allowed = preflight("http://127.0.0.1:8080").await?;
    assert_eq!(allowed.status(), 200);
    let header = |name: &str| {
        allowed
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    assert_eq!(
        header("access-control-allow-origin"),
        "http://127.0.0.1:8080"
    );
    assert!(
        header("access-control-allow-methods").contains("POST"),
        "allowed methods: {}",
        header("access-control-allow-methods")
    );
    let refused = preflight("https://elsewhere.example").await?;
    assert_eq!(
        refused.status(),
        403,
        "a preflight from an origin the rules do not name; an environment started before \
         tools/testenv/s3_cors.py existed has no rules: make testenv-down, then make testenv"
    );
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    Ok(())
}
