//! The examples users copy: the manifests are accepted by the apiserver, and
//! the consumers (curl, Python, Go, Java, Node.js) upload and download
//! through a real grant's Secret files, as a pod with the Secret mounted
//! would, following the one rule they share: every header in `headers` is
//! sent exactly, except `content-length`, which the HTTP client derives from
//! the body and which the body must match (checked before any request).

mod support;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use support::grants::*;
use support::post::{PostPolicy, botocore_post};
use support::{TestResult, repo_root};

/// The consumers as run from the repository root, each given the mounted
/// Secret's directory as its one argument. curl is the Job's script in
/// examples/curl-job.yaml, run by `sh` (see `curl_script`).
const CONSUMERS: &[(&str, &[&str])] = &[
    ("python", &["python3", "examples/consumer.py"]),
    ("go", &["go", "run", "examples/consumer.go"]),
    ("java", &["java", "examples/Consumer.java"]),
    ("node", &["node", "examples/consumer.mjs"]),
];

const MIB: usize = 1 << 20;

/// Writes the Secret's keys as files, the way a Secret volume mounts them.
fn mount(dir: &Path, data: &BTreeMap<String, String>) -> TestResult {
    std::fs::create_dir_all(dir)?;
    for (k, v) in data {
        std::fs::write(dir.join(k), v)?;
    }
    Ok(())
}

fn spawn_consumer(mut cmd: Command, stdin: &[u8]) -> TestResult<Output> {
    use std::io::Write;
    let mut child = cmd
        .current_dir(repo_root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().ok_or("no stdin")?.write_all(stdin)?;
    Ok(child.wait_with_output()?)
}

fn run_consumer(cmd: Command, stdin: &[u8]) -> TestResult<Vec<u8>> {
    let what = format!("{cmd:?}");
    let out = spawn_consumer(cmd, stdin)?;
    if !out.status.success() {
        return Err(format!("{what} failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(out.stdout)
}

fn consumer(lang: &str, grant: &Path) -> TestResult<Command> {
    let argv = CONSUMERS
        .iter()
        .find(|(l, _)| *l == lang)
        .ok_or(format!("no consumer {lang}"))?
        .1;
    let mut c = Command::new(argv[0]);
    c.args(&argv[1..]).arg(grant);
    Ok(c)
}

/// The shell script of examples/curl-job.yaml with its /grant and /tmp
/// pointed at `grant` and `tmp`, to run on this machine with `sh -c`.
fn curl_script(grant: &Path, tmp: &Path) -> TestResult<String> {
    let script = curl_job_script()?;
    // /tmp first: the grant's directory is under /tmp too.
    Ok(script
        .replace("/tmp/", &format!("{}/", tmp.display()))
        .replace("/grant/", &format!("{}/", grant.display())))
}

/// The Job's container script (its one argument to `sh -c`).
fn curl_job_script() -> TestResult<String> {
    let job: serde_json::Value = serde_norway::from_str(&std::fs::read_to_string(
        repo_root().join("examples/curl-job.yaml"),
    )?)?;
    let script = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
        .as_str()
        .ok_or("examples/curl-job.yaml: no script in the container's args")?;
    Ok(script.to_owned())
}

/// What examples/curl-job.yaml uploads.
const CURL_JOB_BODY: &[u8] = b"day,total\n2026-11-29,42\n";

#[tokio::test]
async fn every_consumer_works_through_a_mounted_secret() -> TestResult {
    let Scenario {
        ctx,
        dir,
        operator: _operator,
    } = Scenario::start("examples").await?;
    let issuer = open_issuer(&ctx).await?;
    // A PUT grant pinning type, length and a metadata header, and a GET grant
    // for the same object, per consumer.
    let mut bodies = BTreeMap::new();
    for &(lang, _) in CONSUMERS.iter().chain(&[("curl", &[][..])]) {
        let body = if lang == "curl" {
            CURL_JOB_BODY.to_vec()
        } else {
            format!("lang,bytes\n{lang},{}\n", "x".repeat(lang.len())).into_bytes()
        };
        let key = format!("{lang}.csv");
        let pinned = serde_json::json!({
            "contentType": "text/csv", "contentLength": body.len(), "metadata": {"consumer": lang},
        });
        create_grant(
            &ctx,
            &format!("{lang}-put"),
            spec(&ctx, &issuer, &key, pinned),
        )
        .await?;
        create_grant(
            &ctx,
            &format!("{lang}-get"),
            spec(&ctx, &issuer, &key, serde_json::json!({"method": "GET"})),
        )
        .await?;
        bodies.insert(lang, body);
    }
    for lang in bodies.keys() {
        for direction in ["put", "get"] {
            let name = format!("{lang}-{direction}");
            wait_ready(&ctx, &name).await?;
            mount(
                &dir.path().join(&name),
                &secret_data(&ctx.client, &ctx.namespace, &name).await?,
            )?;
        }
    }
    let grant = |lang: &str, direction: &str| dir.path().join(format!("{lang}-{direction}"));

    for &(lang, _) in CONSUMERS {
        let body = &bodies[lang];
        run_consumer(consumer(lang, &grant(lang, "put"))?, body)?;
        let downloaded = run_consumer(consumer(lang, &grant(lang, "get"))?, b"")?;
        assert_eq!(
            &downloaded, body,
            "{lang} consumer read back different bytes"
        );
    }

    // curl: the Job's own script uploads; the Python consumer reads back.
    let tmp = tempfile::tempdir()?;
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg(curl_script(&grant("curl", "put"), tmp.path())?);
    run_consumer(sh, b"")?;
    let downloaded = run_consumer(consumer("python", &grant("curl", "get"))?, b"")?;
    assert_eq!(downloaded, CURL_JOB_BODY, "curl uploaded different bytes");

    // Every stored object has the signed type and metadata: all headers were sent.
    let s3 = support::s3_client(ctx.env, ctx.env.root_credentials());
    for (lang, body) in &bodies {
        let object = s3
            .head_object()
            .bucket(ctx.env.bucket())
            .key(format!("{}/{lang}.csv", ctx.namespace))
            .send()
            .await?;
        assert_eq!(object.content_length(), Some(body.len() as i64), "{lang}");
        assert_eq!(object.content_type(), Some("text/csv"), "{lang}");
        let consumer_meta = object.metadata().and_then(|m| m.get("consumer"));
        assert_eq!(consumer_meta.map(String::as_str), Some(*lang), "{lang}");
    }
    Ok(())
}

/// A body whose size is not the grant's pinned content-length is refused by
/// the consumer itself, with a message saying so, before it connects
/// anywhere: the mounted URL points at a listener that must see nothing.
#[tokio::test]
async fn every_consumer_refuses_a_body_of_the_wrong_length_before_sending() -> TestResult {
    let Scenario {
        ctx,
        dir,
        operator: _operator,
    } = Scenario::start("examples-length").await?;
    let issuer = open_issuer(&ctx).await?;
    // The curl Job's body is 24 bytes; the grant pins one byte more.
    let pinned = CURL_JOB_BODY.len() + 1;
    create_grant(
        &ctx,
        "put",
        spec(
            &ctx,
            &issuer,
            "wrong-length.csv",
            serde_json::json!({"contentType": "text/csv", "contentLength": pinned}),
        ),
    )
    .await?;
    wait_ready(&ctx, "put").await?;
    let mut data = secret_data(&ctx.client, &ctx.namespace, "put").await?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    data.insert(
        "url".into(),
        format!("http://{}/must-not-be-reached", listener.local_addr()?),
    );
    let grant = dir.path().join("put");
    mount(&grant, &data)?;

    let tmp = tempfile::tempdir()?;
    let mut runs: Vec<(&str, Command)> = Vec::new();
    for &(lang, _) in CONSUMERS {
        runs.push((lang, consumer(lang, &grant)?));
    }
    let mut sh = Command::new("sh");
    sh.arg("-c").arg(curl_script(&grant, tmp.path())?);
    runs.push(("curl", sh));
    for (lang, cmd) in runs {
        let out = spawn_consumer(cmd, CURL_JOB_BODY)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{lang} consumer sent a body of the wrong length"
        );
        let expected = format!(
            "the body is {} bytes but the grant signed content-length {pinned}; nothing was sent",
            CURL_JOB_BODY.len()
        );
        assert!(
            stderr.contains(&expected),
            "{lang} consumer's message should say {expected:?}; it said: {stderr}"
        );
        match listener.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("{lang} consumer connected before checking the length: {other:?}"),
        }
    }
    Ok(())
}

/// POST grants (forms): the Python and Go consumers and the curl Job's
/// script send every field of the mounted `fields` in order, then the file,
/// to a form botocore's `generate_presigned_post` signed with the store's
/// root keys (SeaweedFS checks POST policies for static keys only), in the
/// shape of the operator's Secret. The key ends in `${filename}`: S3 names
/// the object after the file name each one sends. The signed Content-Type
/// and success_action_status (204, 201 and 200) are honoured.
#[tokio::test]
async fn consumers_upload_through_a_post_form() -> TestResult {
    let env = support::TestEnv::get();
    let prefix = format!(
        "post-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    );
    let tmp = tempfile::tempdir()?;
    let s3 = support::s3_client(env, env.root_credentials());
    for (lang, status) in [
        ("python", Some(201)),
        ("go", None),
        ("java", None),
        ("node", Some(201)),
        ("curl", Some(200)),
    ] {
        let key = format!("{prefix}/{lang}/${{filename}}");
        let form = botocore_post(
            env,
            &PostPolicy {
                key: &key,
                min: 1,
                max: 1024,
                content_type: Some("text/csv"),
                success_action_status: status,
            },
        )?;
        let grant = tmp.path().join(lang);
        mount(&grant, &form.secret_data(env, &key))?;
        let (name, body) = if lang == "curl" {
            ("report.csv".to_owned(), CURL_JOB_BODY.to_vec())
        } else {
            (
                format!("{lang} data; v=1,2.csv"),
                format!("lang\n{lang}\n").into_bytes(),
            )
        };
        if lang == "curl" {
            let mut sh = Command::new("sh");
            sh.arg("-c")
                .arg(curl_script(&grant, &tmp.path().join("curl-tmp"))?);
            std::fs::create_dir_all(tmp.path().join("curl-tmp"))?;
            run_consumer(sh, b"")?;
        } else {
            let mut cmd = consumer(lang, &grant)?;
            cmd.arg(&name);
            run_consumer(cmd, &body)?;
        }
        let object = s3
            .get_object()
            .bucket(env.bucket())
            .key(format!("{prefix}/{lang}/{name}"))
            .send()
            .await?;
        assert_eq!(object.content_type(), Some("text/csv"), "{lang}");
        let stored = object.body.collect().await?.into_bytes();
        assert_eq!(
            stored.as_ref(),
            body.as_slice(),
            "{lang} stored other bytes"
        );
    }
    Ok(())
}

/// A body over the policy's content-length-range: S3 refuses the form, and
/// each consumer fails and shows S3's error code.
#[tokio::test]
async fn consumers_report_a_refused_post_form() -> TestResult {
    let env = support::TestEnv::get();
    let key = format!(
        "post-refused-{}.csv",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    );
    // The curl Job's body is 24 bytes; the policy allows at most 8.
    let form = botocore_post(
        env,
        &PostPolicy {
            key: &key,
            min: 1,
            max: 8,
            ..Default::default()
        },
    )?;
    let tmp = tempfile::tempdir()?;
    let grant = tmp.path().join("post");
    mount(&grant, &form.secret_data(env, &key))?;
    let mut runs: Vec<(&str, Command)> = Vec::new();
    for lang in ["python", "go", "java", "node"] {
        runs.push((lang, consumer(lang, &grant)?));
    }
    let mut sh = Command::new("sh");
    sh.arg("-c").arg(curl_script(&grant, tmp.path())?);
    runs.push(("curl", sh));
    for (lang, cmd) in runs {
        let out = spawn_consumer(cmd, CURL_JOB_BODY)?;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{lang} consumer reported success");
        assert!(
            said.contains("EntityTooLarge"),
            "{lang} consumer should show S3's error code; it said: {said}"
        );
    }
    let head = support::s3_client(env, env.root_credentials())
        .head_object()
        .bucket(env.bucket())
        .key(&key)
        .send()
        .await;
    assert!(head.is_err(), "the refused body was stored");
    Ok(())
}

/// The CRDs and every example apply cleanly: accepted, and without a warning.
#[test]
fn example_manifests_are_accepted_by_the_apiserver() -> TestResult {
    let env = support::TestEnv::get();
    let kubectl = |args: &[&str]| -> TestResult<()> {
        let out = env
            .command("kubectl")
            .args(args)
            .current_dir(repo_root())
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(format!("kubectl {args:?}: {stderr}").into());
        }
        // A warning the user did not cause (an unknown schema format, say)
        // is printed on every install.
        if stderr.contains("Warning") {
            return Err(format!("kubectl {args:?} warned: {stderr}").into());
        }
        Ok(())
    };
    kubectl(&["apply", "--server-side", "-f", "crds/"])?;
    kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/uploadgrants.grants.io",
        "crd/clustergrantissuers.grants.io",
    ])?;
    // The examples live in namespace analytics.
    let _ = kubectl(&["create", "namespace", "analytics"]);
    for file in [
        "examples/issuer.yaml",
        "examples/issuer-s3-compatible.yaml",
        "examples/grant-put.yaml",
        "examples/grant-get.yaml",
        "examples/grant-post.yaml",
        "examples/grant-multipart.yaml",
        "examples/curl-job.yaml",
    ] {
        kubectl(&["apply", "--dry-run=server", "-f", file])?;
    }
    Ok(())
}

/// The multipart consumers (Python, Go, Java, Node, the curl recipe of
/// examples/multipart-curl.sh and the shorter one in docs/src/consuming.md) upload a file of three parts through a
/// multipart grant's Secret and complete it; the object is the file. A
/// file with more parts than the grant has is refused before completing.
#[tokio::test]
async fn consumers_upload_a_file_in_parts() -> TestResult {
    let Scenario {
        ctx,
        dir,
        operator: _operator,
    } = Scenario::start("examples-mp").await?;
    let issuer = multipart_issuer(&ctx).await?;
    let langs = ["python", "go", "java", "node", "curl", "readme"];
    for lang in langs {
        let multipart = serde_json::json!({"multipart": {"parts": 3, "partSize": "5Mi"}});
        create_grant(
            &ctx,
            lang,
            spec(&ctx, &issuer, &format!("{lang}.bin"), multipart),
        )
        .await?;
    }
    let s3 = support::s3_client(ctx.env, ctx.env.root_credentials());
    for (i, lang) in langs.into_iter().enumerate() {
        wait_ready(&ctx, lang).await?;
        let grant = dir.path().join(lang);
        mount(
            &grant,
            &secret_data(&ctx.client, &ctx.namespace, lang).await?,
        )?;
        let body: Vec<u8> = (0..2 * 5 * MIB + 1000 + i)
            .map(|n| ((n * 7 + i) % 253) as u8)
            .collect();
        if lang == "curl" {
            let file = dir.path().join("curl-file.bin");
            std::fs::write(&file, &body)?;
            let mut sh = Command::new("sh");
            sh.arg("examples/multipart-curl.sh").arg(&file).arg(&grant);
            run_consumer(sh, b"")?;
        } else if lang == "readme" {
            let page = std::fs::read_to_string(repo_root().join("docs/src/consuming.md"))?;
            let snippet = page
                .split("```sh\nsize=$(jq")
                .nth(1)
                .and_then(|rest| rest.split("```").next())
                .map(|rest| format!("size=$(jq{rest}"))
                .ok_or("the multipart snippet in docs/src/consuming.md")?;
            let tmp = tempfile::tempdir()?;
            std::fs::write(tmp.path().join("big.bin"), &body)?;
            // /tmp first: the grant's directory is under /tmp too. The
            // consumer runs from the repository root: big.bin by its path.
            let script = snippet
                .replace("/tmp/", &format!("{}/", tmp.path().display()))
                .replace("/grant/", &format!("{}/", grant.display()))
                .replace(" big.bin ", &format!(" {}/big.bin ", tmp.path().display()));
            let mut bash = Command::new("bash");
            bash.args(["-euo", "pipefail", "-c", &script]);
            run_consumer(bash, b"")?;
        } else {
            run_consumer(consumer(lang, &grant)?, &body)?;
        }
        let object = s3
            .get_object()
            .bucket(ctx.env.bucket())
            .key(format!("{}/{lang}.bin", ctx.namespace))
            .send()
            .await?;
        let read = object.body.collect().await?.into_bytes();
        assert!(
            read.as_ref() == body.as_slice(),
            "{lang} uploaded different bytes"
        );
    }

    let multipart = serde_json::json!({"multipart": {"parts": 1, "partSize": "5Mi"}});
    create_grant(&ctx, "one-part", spec(&ctx, &issuer, "one.bin", multipart)).await?;
    wait_ready(&ctx, "one-part").await?;
    let grant = dir.path().join("one-part");
    mount(
        &grant,
        &secret_data(&ctx.client, &ctx.namespace, "one-part").await?,
    )?;
    let out = spawn_consumer(consumer("python", &grant)?, &vec![1u8; 5 * MIB + 1])?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("more than 1 parts"), "{stderr}");
    Ok(())
}

/// A part S3 refuses is tried again with `parts` read again: each multipart
/// consumer meets a bad signature for part 1, says it retries, and, with
/// the Secret's files put right meanwhile (as a renewal would), completes.
#[tokio::test]
async fn multipart_consumers_retry_a_refused_part_with_fresh_signatures() -> TestResult {
    use std::io::{BufRead, Write};
    let Scenario {
        ctx,
        dir,
        operator: _operator,
    } = Scenario::start("examples-retry").await?;
    let issuer = multipart_issuer(&ctx).await?;
    let langs = ["python", "go", "java", "node"];
    for lang in langs {
        let multipart = serde_json::json!({"multipart": {"parts": 2, "partSize": "5Mi"}});
        let key = format!("retry-{lang}.bin");
        create_grant(&ctx, lang, spec(&ctx, &issuer, &key, multipart)).await?;
    }
    for lang in langs {
        wait_ready(&ctx, lang).await?;
        let grant = dir.path().join(lang);
        mount(
            &grant,
            &secret_data(&ctx.client, &ctx.namespace, lang).await?,
        )?;
        let good = std::fs::read_to_string(grant.join("parts"))?;
        let mut bad: serde_json::Value = serde_json::from_str(&good)?;
        bad["signatures"][0] = serde_json::Value::from("0".repeat(64));
        std::fs::write(grant.join("parts"), bad.to_string())?;

        let body: Vec<u8> = (0..5 * MIB + 100).map(|n| (n % 251) as u8).collect();
        let mut child = consumer(lang, &grant)?
            .current_dir(repo_root())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut stdin = child.stdin.take().ok_or("no stdin")?;
        let input = body.clone();
        let feeder = std::thread::spawn(move || stdin.write_all(&input));
        let mut said = String::new();
        let mut put_right = false;
        for line in std::io::BufReader::new(child.stderr.take().ok_or("no stderr")?).lines() {
            let line = line?;
            if !put_right && line.contains("retrying") {
                std::fs::write(grant.join("parts"), &good)?;
                put_right = true;
            }
            said.push_str(&line);
            said.push('\n');
        }
        let status = child.wait()?;
        feeder.join().map_err(|_| "stdin feeder panicked")??;
        assert!(put_right, "{lang} never said it retries: {said}");
        assert!(said.contains("part 1:"), "{lang}: {said}");
        assert!(status.success(), "{lang} failed: {said}");
        let read = stored(&ctx, &format!("{}/retry-{lang}.bin", ctx.namespace)).await?;
        assert!(read == body, "{lang} uploaded different bytes");
    }
    Ok(())
}
