//! The command line: --help documents every flag with its environment
//! variable, and bad values are refused before anything starts.

use std::process::Command;

fn operator() -> Command {
    Command::new(env!("CARGO_BIN_EXE_upload-grant-operator"))
}

#[test]
fn help_lists_every_flag_and_its_environment_variable() {
    let out = operator().arg("--help").output().expect("runs");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for (flag, env) in [
        ("--default-issuer", "UPLOAD_GRANT_DEFAULT_ISSUER"),
        ("--listen-address", "UPLOAD_GRANT_LISTEN_ADDRESS"),
        ("--log-format", "UPLOAD_GRANT_LOG_FORMAT"),
        ("--log-level", "UPLOAD_GRANT_LOG_LEVEL"),
        ("--concurrency", "UPLOAD_GRANT_CONCURRENCY"),
        ("--namespace", "UPLOAD_GRANT_WATCH_NAMESPACE"),
        ("--kube-api-qps", "UPLOAD_GRANT_KUBE_API_QPS"),
        ("--propagation-budget", "UPLOAD_GRANT_PROPAGATION_BUDGET"),
        (
            "--multipart-check-interval",
            "UPLOAD_GRANT_MULTIPART_CHECK_INTERVAL",
        ),
    ] {
        assert!(
            help.contains(flag) && help.contains(env),
            "{flag} / {env} missing from --help:\n{help}"
        );
    }
}

#[test]
fn invalid_settings_are_refused_with_a_message() {
    for (args, env, needle) in [
        (vec!["--concurrency", "0"], None, "concurrency"),
        (vec!["--log-format", "xml"], None, "log-format"),
        (
            vec![],
            Some(("UPLOAD_GRANT_LISTEN_ADDRESS", "not-an-address")),
            "listen-address",
        ),
        (
            vec!["--propagation-budget", "2 minutes"],
            None,
            "propagation-budget",
        ),
        (vec!["--propagation-budget", "25h"], None, "longer than 24h"),
        (
            vec!["--multipart-check-interval", "0s"],
            None,
            "is not between 1s and 24h",
        ),
        (
            vec!["--log-level", "operator=loud"],
            None,
            "invalid logging settings",
        ),
    ] {
        let mut cmd = operator();
        cmd.args(&args).env_remove("KUBECONFIG");
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("runs");
        assert!(!out.status.success(), "{args:?} {env:?} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(needle),
            "{args:?} {env:?}: expected {needle:?} in {stderr}"
        );
    }
}
