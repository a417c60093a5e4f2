//! What a release publishes, through the scripts the release workflow runs,
//! against the test environment's registry: per-architecture images joined
//! into one index (tools/image/push.sh, tools/image/index.sh), the chart as
//! an OCI artifact that helm renders from the registry
//! (tools/release/chart.sh), and kubectl-grant archives with a krew manifest
//! that krew's own checker installs on every platform (tools/release/archive.sh,
//! tools/release/krew.sh). The workflow itself passes actionlint (with
//! shellcheck on its scripts) and publishes what the chart defaults to.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::node::OPERATOR_IMAGE_ARCHIVE;
use support::{TestEnv, TestResult, output, random_suffix, repo_root};

const WORKFLOW: &str = ".github/workflows/release.yml";

/// Runs one of the release's scripts with `args`: what it printed.
fn run_script(path: &str, args: &[String]) -> TestResult<String> {
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join(path)).args(args);
    output(cmd)
}

fn shown(path: &Path) -> String {
    path.display().to_string()
}

/// GET http://REGISTRY/v2/NAME/manifests/REFERENCE, as an OCI index or manifest.
fn registry_manifest(registry: &str, name: &str, reference: &str) -> TestResult<Value> {
    let accept =
        "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json";
    let mut curl = Command::new("curl");
    curl.args(["-fsS", "-H", &format!("Accept: {accept}")])
        .arg(format!("http://{registry}/v2/{name}/manifests/{reference}"));
    Ok(serde_json::from_str(&output(curl)?)?)
}

#[test]
fn per_architecture_images_join_into_one_multi_architecture_index() -> TestResult {
    let registry = TestEnv::get().var("TESTENV_REGISTRY");
    let archive = repo_root().join(OPERATOR_IMAGE_ARCHIVE);
    if !archive.is_file() {
        return Err(format!("no {}: run `make image` first", archive.display()).into());
    }
    let name = format!("release-{}", random_suffix());
    let repository = format!("{registry}/{name}");
    let pushed = run_script(
        "tools/image/push.sh",
        &[shown(&archive), format!("{repository}:0.0.0-amd64")],
    )?;
    let pushed = pushed.trim();
    let digest = pushed
        .strip_prefix(&format!("{repository}@"))
        .ok_or(format!("push.sh printed {pushed:?}"))?;

    let index = run_script(
        "tools/image/index.sh",
        &[format!("{repository}:0.0.0"), pushed.to_owned()],
    )?;
    let index = index.trim();
    assert!(
        index.starts_with(&format!("{repository}@sha256:")),
        "index.sh printed {index:?}"
    );
    let listed = registry_manifest(registry, &name, "0.0.0")?;
    assert_eq!(
        listed["mediaType"], "application/vnd.oci.image.index.v1+json",
        "{listed}"
    );
    let manifests = listed["manifests"].as_array().ok_or("no manifests")?;
    assert_eq!(manifests.len(), 1, "{listed}");
    assert_eq!(manifests[0]["digest"], digest);
    assert_eq!(manifests[0]["platform"]["os"], "linux");
    assert_eq!(manifests[0]["platform"]["architecture"], "amd64");
    Ok(())
}

#[test]
fn the_chart_pushed_to_a_registry_renders_from_there_with_the_releases_image() -> TestResult {
    let env = TestEnv::get();
    let path = format!("{}/charts-{}", env.var("TESTENV_REGISTRY"), random_suffix());
    let pushed = run_script(
        "tools/release/chart.sh",
        &["v9.8.7".to_owned(), format!("oci://{path}")],
    )?;
    assert!(
        pushed
            .trim()
            .starts_with(&format!("{path}/upload-grant-operator@sha256:")),
        "chart.sh printed {pushed:?}"
    );
    let chart = format!("oci://{path}/upload-grant-operator");
    let shown = env.helm(&[
        "show",
        "chart",
        &chart,
        "--version",
        "9.8.7",
        "--plain-http",
    ])?;
    assert!(shown.contains("version: 9.8.7"), "{shown}");
    assert!(shown.contains("appVersion: 9.8.7"), "{shown}");
    let rendered = env.helm(&[
        "template",
        "r",
        &chart,
        "--version",
        "9.8.7",
        "--plain-http",
        "-n",
        "ugo",
    ])?;
    let deployment = support::yaml_documents(&rendered)?
        .into_iter()
        .find(|d| d["kind"] == "Deployment")
        .ok_or("no Deployment rendered")?;
    let image = &deployment["spec"]["template"]["spec"]["containers"][0]["image"];
    assert_eq!(*image, format!("{}:9.8.7", chart_default_repository()?));
    Ok(())
}

#[test]
fn the_krew_manifest_installs_kubectl_grant_on_every_platform() -> TestResult {
    let env = TestEnv::get();
    let plugin = PathBuf::from(env!("CARGO_BIN_EXE_kubectl-grant"));
    let work = tempfile::tempdir()?;
    let dist = work.path().join("dist");
    let platforms = manifest_platforms()?;
    assert!(platforms.len() >= 3, "{platforms:?}");
    for (os, arch) in &platforms {
        // The same binary for each: krew checks archives, sums and files, not the code.
        run_script(
            "tools/release/archive.sh",
            &[shown(&plugin), os.clone(), arch.clone(), shown(&dist)],
        )?;
    }
    // The operator's binary is packed the same way, for `policy iam`.
    let operator = PathBuf::from(env!("CARGO_BIN_EXE_upload-grant-operator"));
    let packed = run_script(
        "tools/release/archive.sh",
        &[
            shown(&operator),
            "linux".into(),
            "amd64".into(),
            shown(&dist),
        ],
    )?;
    let mut list = Command::new("tar");
    list.arg("-tzf").arg(packed.trim());
    assert_eq!(output(list)?, "LICENSE\nupload-grant-operator\n");
    let server = serve_directory(&dist)?;
    let manifest = run_script(
        "tools/release/krew.sh",
        &[
            "v9.8.7".to_owned(),
            format!("http://{server}"),
            shown(&dist),
        ],
    )?;
    let filled: Value = serde_norway::from_str(&manifest)?;
    assert_eq!(filled["spec"]["version"], "v9.8.7");
    for platform in filled["spec"]["platforms"]
        .as_array()
        .ok_or("no platforms")?
    {
        let uri = platform["uri"].as_str().ok_or("no uri")?;
        let file = uri.rsplit('/').next().ok_or("no file name")?;
        let mut sum = Command::new("sha256sum");
        sum.arg(dist.join(file));
        let expected = output(sum)?;
        assert_eq!(platform["sha256"].as_str(), expected.split(' ').next());
    }
    // krew names a manifest after its plugin.
    let manifest_dir = work.path().join("manifest");
    std::fs::create_dir(&manifest_dir)?;
    let manifest_file = manifest_dir.join("grant.yaml");
    std::fs::write(&manifest_file, &manifest)?;
    let mut validate = Command::new(env.bin("validate-krew-manifest"));
    validate
        .arg("-manifest")
        .arg(&manifest_file)
        .env("PATH", env.path_with_tools())
        .env("KREW_ROOT", work.path().join("krew"));
    let out = validate.output()?;
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "validate-krew-manifest: {log}");
    for i in 0..platforms.len() {
        assert!(
            log.contains(&format!("installed  spec.platforms[{i}]")),
            "{log}"
        );
    }
    Ok(())
}

#[test]
fn the_release_workflow_passes_actionlint_and_publishes_what_the_chart_defaults_to() -> TestResult {
    let env = TestEnv::get();
    // actionlint runs shellcheck on every `run:` script when it is on PATH.
    let mut which = Command::new("sh");
    which.args(["-c", "command -v shellcheck"]);
    output(which).map_err(|e| format!("no shellcheck (tools/install-deps.sh): {e}"))?;
    let mut lint = Command::new(env.bin("actionlint"));
    lint.arg(WORKFLOW);
    output(lint)?;

    let workflow: Value =
        serde_norway::from_str(&std::fs::read_to_string(repo_root().join(WORKFLOW))?)?;
    assert_eq!(
        workflow["env"]["IMAGE_REPOSITORY"].as_str(),
        Some(chart_default_repository()?.as_str())
    );
    // The chart is pushed with the helm the tests push with.
    let versions = std::fs::read_to_string(repo_root().join("tools/testenv/versions.env"))?;
    let helm = versions
        .lines()
        .find_map(|l| l.strip_prefix("HELM_VERSION="))
        .ok_or("no HELM_VERSION in versions.env")?;
    let setup_helm: Vec<&Value> = workflow["jobs"]
        .as_object()
        .ok_or("no jobs")?
        .values()
        .flat_map(|job| job["steps"].as_array().into_iter().flatten())
        .filter(|step| {
            step["uses"]
                .as_str()
                .is_some_and(|u| u.starts_with("azure/setup-helm"))
        })
        .collect();
    assert!(!setup_helm.is_empty(), "the workflow sets up no helm");
    for step in setup_helm {
        assert_eq!(step["with"]["version"].as_str(), Some(helm), "{step}");
    }
    let text = std::fs::read_to_string(repo_root().join(WORKFLOW))?;
    for pushed_by in [
        "tools/image/push.sh",
        "tools/image/index.sh",
        "tools/release/chart.sh",
        "tools/release/archive.sh",
        "tools/release/krew.sh",
        "cosign sign",
    ] {
        assert!(
            text.contains(pushed_by),
            "the workflow never runs {pushed_by}"
        );
    }
    Ok(())
}

/// The chart's default `image.repository`.
fn chart_default_repository() -> TestResult<String> {
    let values: Value = serde_norway::from_str(&std::fs::read_to_string(
        repo_root().join("charts/upload-grant-operator/values.yaml"),
    )?)?;
    Ok(values["image"]["repository"]
        .as_str()
        .ok_or("no image.repository")?
        .to_owned())
}

/// (os, arch) of each platform of plugins/grant.yaml.
fn manifest_platforms() -> TestResult<Vec<(String, String)>> {
    let manifest: Value = serde_norway::from_str(&std::fs::read_to_string(
        repo_root().join("plugins/grant.yaml"),
    )?)?;
    let platforms = manifest["spec"]["platforms"]
        .as_array()
        .ok_or("no platforms")?;
    platforms
        .iter()
        .map(|p| {
            let labels = &p["selector"]["matchLabels"];
            match (labels["os"].as_str(), labels["arch"].as_str()) {
                (Some(os), Some(arch)) => Ok((os.to_owned(), arch.to_owned())),
                _ => Err(format!("a platform without os and arch: {p}").into()),
            }
        })
        .collect()
}

/// Serves the files of `dir` over HTTP on a loopback port, as a release's
/// download URLs would, from a thread that lives as long as the test.
fn serve_directory(dir: &Path) -> TestResult<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?.to_string();
    let dir = dir.to_owned();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(&stream);
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            let name = request
                .split(' ')
                .nth(1)
                .unwrap_or("/")
                .trim_start_matches('/');
            let body = (!name.contains('/'))
                .then(|| std::fs::read(dir.join(name)).ok())
                .flatten();
            let mut stream = &stream;
            let _ = match body {
                Some(body) => stream
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .and_then(|()| stream.write_all(&body)),
                None => stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                ),
            };
        }
    });
    Ok(address)
}
