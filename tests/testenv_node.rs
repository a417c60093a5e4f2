//! Proof that the local node is a real one: the kubelet registered and Ready
//! on loopback, pods from the locally built image with a Secret volume that
//! the kubelet keeps up to date, the scheduler and controller-manager behind
//! a Deployment, garbage collection and namespace deletion, `kubectl logs`,
//! and the pod network: pods on the environment's own bridge reach the
//! apiserver, S3 and STS at its gateway address and nothing beyond their
//! subnet. Pods pull only from the environment's own registry on loopback
//! (tools/image/push.sh fills it); every other registry is closed. The other
//! pods here run the sandbox image, imported at start-up, with
//! `imagePullPolicy: Never`.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use support::node::{wait_default_service_account, wait_rolled_out};
use support::{TestContext, TestEnv, TestResult, eventually};

const KUBERNETES_VERSION: &str = "v1.36.3";
/// Where the kubelet mounts a pod's ServiceAccount token and the cluster's CA.
const SERVICE_ACCOUNT_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// An address outside every pod's subnet (TEST-NET-2, RFC 5737; the
/// machine's own network is elsewhere): a pod has no route to it, so a
/// connection fails in the pod's own network namespace and no packet leaves.
const OUTSIDE: &str = "198.51.100.1:9";

#[tokio::test]
async fn the_node_is_registered_ready_and_on_loopback() -> TestResult {
    let env = TestEnv::get();
    let nodes: Api<Node> = Api::all(env.client().await?);
    let node = nodes.get(env.var("TESTENV_NODE_NAME")).await?;
    let status = node.status.ok_or("node without status")?;
    let ready = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .ok_or("no Ready condition")?;
    assert_eq!(ready.status, "True", "{ready:?}");
    // The apiserver reaches the kubelet by its Hostname address, which
    // resolves to 127.0.0.1 from /etc/hosts (the kubelet refuses a loopback
    // InternalIP).
    let addresses = status.addresses.unwrap_or_default();
    assert!(
        addresses
            .iter()
            .any(|a| a.type_ == "Hostname" && a.address == "localhost"),
        "the node must be reached on loopback: {addresses:?}"
    );
    let endpoint = status
        .daemon_endpoints
        .and_then(|d| d.kubelet_endpoint)
        .ok_or("no kubelet endpoint")?;
    let kubelet = std::net::TcpStream::connect(("127.0.0.1", endpoint.port as u16));
    assert!(
        kubelet.is_ok(),
        "the kubelet listens on 127.0.0.1:{}",
        endpoint.port
    );
    let info = status.node_info.ok_or("no nodeInfo")?;
    assert_eq!(info.kubelet_version, KUBERNETES_VERSION);
    assert!(
        info.container_runtime_version
            .starts_with("containerd://2."),
        "{}",
        info.container_runtime_version
    );
    Ok(())
}

#[tokio::test]
async fn a_pod_sees_its_secret_and_the_kubelet_refreshes_it() -> TestResult {
    let ctx = TestContext::new("node-pod").await?;
    let secrets: Api<Secret> = ctx.api();
    secrets
        .create(&PostParams::default(), &secret("watched", "first"))
        .await?;
    wait_default_service_account(&ctx).await?;
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "watcher"},
        "spec": {
            "containers": [container(
                &ctx,
                &["watch", "/secret/value", "/var/run/secrets/kubernetes.io/serviceaccount/namespace"],
                serde_json::json!([{"name": "watched", "mountPath": "/secret", "readOnly": true}]),
            )],
            "volumes": [{"name": "watched", "secret": {"secretName": "watched"}}],
            "hostNetwork": true,
            "terminationGracePeriodSeconds": 5,
        }
    }))?;
    let pods: Api<Pod> = ctx.api();
    pods.create(&PostParams::default(), &pod).await?;
    let running = eventually("the pod to run", Duration::from_secs(90), || async {
        let pod = pods.get("watcher").await?;
        let status = pod.status.clone().unwrap_or_default();
        Ok((status.phase.as_deref() == Some("Running")).then_some(pod))
    })
    .await?;
    assert_eq!(
        running.spec.and_then(|s| s.node_name).as_deref(),
        Some(ctx.env.var("TESTENV_NODE_NAME")),
        "the scheduler binds the pod to the node"
    );

    // `kubectl logs` goes apiserver -> kubelet on 127.0.0.1.
    logs_containing(
        &ctx,
        "watcher",
        "/secret/value: first",
        Duration::from_secs(30),
    )
    .await?;
    // The ServiceAccount admission plugin gave the pod its projected token volume.
    let namespace_line = format!("serviceaccount/namespace: {}", ctx.namespace);
    logs_containing(&ctx, "watcher", &namespace_line, Duration::from_secs(5)).await?;

    secrets
        .patch(
            "watched",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"stringData": {"value": "second"}})),
        )
        .await?;
    let changed = Instant::now();
    // The kubelet re-syncs a running pod's volumes every minute or so
    // (syncFrequency, plus jitter): wait up to two and a half minutes.
    logs_containing(
        &ctx,
        "watcher",
        "/secret/value: second",
        Duration::from_secs(150),
    )
    .await?;
    eprintln!(
        "the kubelet refreshed the mounted Secret after {:.1}s",
        changed.elapsed().as_secs_f64()
    );
    Ok(())
}

#[tokio::test]
async fn a_deployment_becomes_available() -> TestResult {
    let ctx = TestContext::new("node-deploy").await?;
    let labels = serde_json::json!({"app": "sleeper"});
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "sleeper"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [container(&ctx, &[], serde_json::json!([]))],
                    "hostNetwork": true,
                    "terminationGracePeriodSeconds": 5,
                }
            }
        }
    }))?;
    let deployments: Api<Deployment> = ctx.api();
    deployments
        .create(&PostParams::default(), &deployment)
        .await?;
    wait_rolled_out(&ctx, "sleeper", 1).await
}

/// The node pulls from the environment's registry what tools/image/push.sh
/// put there (the sandbox image, exported from containerd and pushed under
/// a name the node never had), and from no other registry.
#[tokio::test]
async fn pods_pull_from_the_environments_registry_and_from_nowhere_else() -> TestResult {
    let ctx = TestContext::new("node-pull").await?;
    wait_default_service_account(&ctx).await?;
    let work = tempfile::tempdir()?;
    let archive = work.path().join("pause.tar");
    let mut export = std::process::Command::new(ctx.env.bin("ctr"));
    export
        .args(["--address", ctx.env.var("TESTENV_CONTAINERD_ADDRESS")])
        .args(["-n", "k8s.io", "images", "export"])
        .arg(&archive)
        .arg(ctx.env.var("TESTENV_SANDBOX_IMAGE"));
    support::output(export)?;
    let target = format!(
        "{}/pushed-{}:v1",
        ctx.env.var("TESTENV_REGISTRY"),
        support::random_suffix()
    );
    let mut push = std::process::Command::new("bash");
    push.arg(support::repo_root().join("tools/image/push.sh"))
        .arg(&archive)
        .arg(&target);
    let pushed = support::output(push)?.trim().to_owned();
    assert!(
        pushed.starts_with(&format!("{}@sha256:", target.trim_end_matches(":v1"))),
        "push.sh printed {pushed:?}"
    );

    let pods: Api<Pod> = ctx.api();
    for (name, image) in [
        ("pulled", pushed.as_str()),
        ("elsewhere", "docker.io/library/busybox:1.36"),
    ] {
        let mut main = container(&ctx, &[], serde_json::json!([]));
        main["image"] = image.into();
        main["imagePullPolicy"] = "Always".into();
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"containers": [main], "hostNetwork": true, "terminationGracePeriodSeconds": 1},
        }))?;
        pods.create(&PostParams::default(), &pod).await?;
    }
    eventually(
        "the pushed image's pod to run",
        Duration::from_secs(60),
        || async {
            let phase = pods.get("pulled").await?.status.and_then(|s| s.phase);
            Ok((phase.as_deref() == Some("Running")).then_some(()))
        },
    )
    .await?;
    eventually(
        "the other pod's pull to fail",
        Duration::from_secs(60),
        || async {
            let status = pods.get("elsewhere").await?.status.unwrap_or_default();
            let waiting = status
                .container_statuses
                .unwrap_or_default()
                .into_iter()
                .find_map(|c| c.state.and_then(|s| s.waiting).and_then(|w| w.reason));
            Ok(waiting.filter(|r| r == "ErrImagePull" || r == "ImagePullBackOff"))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn garbage_collection_and_namespace_deletion_happen() -> TestResult {
    let ctx = TestContext::new("node-gc").await?;
    let maps: Api<ConfigMap> = ctx.api();
    let owner = maps
        .create(&PostParams::default(), &config_map("owner", None))
        .await?;
    let reference = OwnerReference {
        api_version: ConfigMap::api_version(&()).into_owned(),
        kind: ConfigMap::kind(&()).into_owned(),
        name: owner.name_any(),
        uid: owner.uid().ok_or("owner without uid")?,
        ..OwnerReference::default()
    };
    maps.create(
        &PostParams::default(),
        &config_map("dependent", Some(reference)),
    )
    .await?;
    maps.delete("owner", &DeleteParams::default()).await?;
    eventually(
        "the garbage collector to delete the dependent",
        Duration::from_secs(60),
        || async { Ok(maps.get_opt("dependent").await?.is_none().then_some(())) },
    )
    .await?;

    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    namespaces
        .delete(&ctx.namespace, &DeleteParams::default())
        .await?;
    eventually(
        "the namespace to be deleted",
        Duration::from_secs(60),
        || async {
            Ok(namespaces
                .get_opt(&ctx.namespace)
                .await?
                .is_none()
                .then_some(()))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn pods_on_the_bridge_reach_the_servers_at_the_gateway_and_nothing_else() -> TestResult {
    let ctx = TestContext::new("node-net").await?;
    wait_default_service_account(&ctx).await?;
    let env = ctx.env;
    let gateway = env.var("TESTENV_POD_GATEWAY");
    let (subnet, prefix) = parse_cidr(env.var("TESTENV_POD_CIDR"))?;
    let api_port = url_port(env.var("TESTENV_APISERVER_URL"))?;
    // S3 and STS may share a port (SeaweedFS answers both on one).
    let mut store_urls = vec![format!(
        "http://{gateway}:{}/",
        url_port(env.s3_endpoint())?
    )];
    let sts_url = format!("http://{gateway}:{}/", url_port(env.sts_endpoint())?);
    if !store_urls.contains(&sts_url) {
        store_urls.push(sts_url);
    }

    // The apiserver as an in-cluster client finds it: from the pod's own
    // KUBERNETES_SERVICE_HOST/_PORT (set as .testenv/node-values.yaml sets
    // them for the chart; the kubelet expands $(VAR) in args), verified
    // against the pod's own ServiceAccount CA.
    let readyz = "https://$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)/readyz";
    let mut args = vec!["get", readyz, SERVICE_ACCOUNT_CA];
    for url in &store_urls {
        args.extend(["get", url.as_str(), "-"]);
    }
    // Two pods listen on the same port, each in its own network namespace.
    args.extend(["dial", OUTSIDE, "serve", "8080"]);
    let pods: Api<Pod> = ctx.api();
    let names = ["net-a", "net-b"];
    for name in names {
        let mut main = container(&ctx, &args, serde_json::json!([]));
        main["env"] = serde_json::json!([
            {"name": "KUBERNETES_SERVICE_HOST", "value": gateway},
            {"name": "KUBERNETES_SERVICE_PORT", "value": api_port.to_string()},
        ]);
        main["ports"] = serde_json::json!([{"name": "http", "containerPort": 8080}]);
        main["readinessProbe"] =
            serde_json::json!({"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1});
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"containers": [main], "terminationGracePeriodSeconds": 5},
        }))?;
        pods.create(&PostParams::default(), &pod).await?;
    }

    let mut addresses = Vec::new();
    for name in names {
        let ip = eventually(
            &format!("pod {name} to be Ready"),
            Duration::from_secs(90),
            || async {
                let status = pods.get(name).await?.status.unwrap_or_default();
                let ready = status
                    .conditions
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                Ok(ready.then_some(status.pod_ip).flatten())
            },
        )
        .await?;
        let ip: Ipv4Addr = ip.parse()?;
        assert!(
            in_subnet(ip, subnet, prefix),
            "pod {name} has {ip}, outside TESTENV_POD_CIDR {subnet}/{prefix}"
        );
        assert_ne!(ip.to_string(), gateway, "the gateway is the host's");
        addresses.push(ip);

        let logs = logs_containing(
            &ctx,
            name,
            &format!("dial {OUTSIDE}: "),
            Duration::from_secs(30),
        )
        .await?;
        let result = |start: &str| {
            logs.lines()
                .find_map(|l| l.strip_prefix(start))
                .unwrap_or_else(|| panic!("no {start:?} line in pod {name}'s logs: {logs}"))
                .to_owned()
        };
        let api = result(&format!("get https://{gateway}:{api_port}/readyz: "));
        assert_eq!(
            api, "200 OK",
            "the apiserver, TLS verified, from pod {name}"
        );
        for url in &store_urls {
            // Any HTTP answer (anonymous: 403 or 400) proves the server is
            // reachable; an error would be the connection's.
            let store = result(&format!("get {url}: "));
            assert!(
                !store.starts_with("error"),
                "{url} from pod {name}: {store}"
            );
        }
        let outside = result(&format!("dial {OUTSIDE}: "));
        assert!(
            outside.contains("network is unreachable"),
            "pod {name} must have no route beyond its subnet: {outside}"
        );
    }
    assert_ne!(addresses[0], addresses[1], "each pod has its own address");

    // From the host, each pod's port 8080 is that pod's own server.
    for (name, ip) in names.iter().zip(&addresses) {
        let answer = http_get(SocketAddr::from((*ip, 8080)))?;
        assert!(
            answer.starts_with("HTTP/1.")
                && answer.contains(" 200 OK")
                && answer.trim_end().ends_with(name),
            "{ip}:8080 answered: {answer}"
        );
    }
    Ok(())
}

/// The test image's one container: the pause program, waiting for SIGTERM,
/// or with `args` (`watch FILE...`) printing files as they change.
fn container(ctx: &TestContext, args: &[&str], mounts: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "name": "main",
        "image": ctx.env.var("TESTENV_SANDBOX_IMAGE"),
        "imagePullPolicy": "Never",
        "args": args,
        "volumeMounts": mounts,
        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true},
    })
}

fn secret(name: &str, value: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            "value".into(),
            ByteString(value.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

fn config_map(name: &str, owner: Option<OwnerReference>) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    }
}

/// Polls `kubectl logs` of `pod` until its output has `needle`; that output.
async fn logs_containing(
    ctx: &TestContext,
    pod: &str,
    needle: &str,
    timeout: Duration,
) -> TestResult<String> {
    let mut last = String::new();
    let found = eventually(&format!("{needle:?} in the pod's logs"), timeout, || {
        let out = ctx
            .env
            .command("kubectl")
            .args(["logs", "-n", &ctx.namespace, pod])
            .output();
        let seen = match out {
            Ok(out) if out.status.success() => {
                last = String::from_utf8_lossy(&out.stdout).into_owned();
                last.contains(needle)
            }
            Ok(out) => {
                last = String::from_utf8_lossy(&out.stderr).into_owned();
                false
            }
            Err(e) => {
                last = e.to_string();
                false
            }
        };
        async move { Ok(seen.then_some(())) }
    })
    .await;
    match found {
        Ok(()) => Ok(last),
        Err(e) => Err(format!("{e}; last kubectl logs output: {last}").into()),
    }
}

/// "A.B.C.D/N" as an address and a prefix length.
fn parse_cidr(cidr: &str) -> TestResult<(Ipv4Addr, u32)> {
    let (address, prefix) = cidr.split_once('/').ok_or("not a CIDR")?;
    Ok((address.parse()?, prefix.parse()?))
}

fn in_subnet(ip: Ipv4Addr, subnet: Ipv4Addr, prefix: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    u32::from(ip) & mask == u32::from(subnet) & mask
}

/// The port of a URL with an explicit one, such as the testenv's endpoints.
fn url_port(url: &str) -> TestResult<u16> {
    let authority = url.split("://").nth(1).ok_or("no scheme")?;
    let authority = authority.split('/').next().unwrap_or(authority);
    let (_, port) = authority.rsplit_once(':').ok_or("no port")?;
    Ok(port.parse()?)
}

/// One HTTP/1.0 GET of `/` on `addr`: the whole answer.
fn http_get(addr: SocketAddr) -> TestResult<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}
