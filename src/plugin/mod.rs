//! `kubectl grant`: a kubectl plugin to see, renew, check and try grants from
//! a terminal. One module per command; the pure parts (what to show, what an
//! answer means) are separate from the cluster and network calls so they are
//! unit-tested. src/bin/kubectl-grant.rs only parses and exits.
//!
//! No command ever prints a URL, a signature or a Secret's value: only the
//! `grants.io/url-fingerprint` that tells URLs apart.

pub mod check;
pub mod curl;
pub mod output;
pub mod renew;
pub mod status;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use crate::api::UploadGrant;

/// Success.
pub const EXIT_OK: u8 = 0;
/// An error: the Kubernetes API, I/O, a bad kubeconfig, a missing object.
pub const EXIT_ERROR: u8 = 1;
/// A usage error (clap exits with it on its own).
pub const EXIT_USAGE: u8 = 2;
/// A negative answer: check denied, status showed a grant that is not Ready,
/// curl got a non-2xx answer from the store.
pub const EXIT_NEGATIVE: u8 = 3;
/// renew timed out.
pub const EXIT_TIMEOUT: u8 = 4;

const EXIT_CODES: &str = "Exit codes:
  0  success
  1  error (Kubernetes API, I/O, bad kubeconfig, grant not found)
  2  usage error
  3  negative answer: check denied it, status shows a grant that is not Ready,
     curl got a non-2xx answer from the store
  4  timed out (renew)";

/// See, renew, check and try the UploadGrants of upload-grant-operator.
///
/// No command prints a URL, a signature or a Secret's value; the URL
/// fingerprint (sha256:…) tells URLs apart.
#[derive(Debug, Parser)]
#[command(name = "kubectl grant", bin_name = "kubectl grant", version, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(flatten)]
    pub target: Target,
    #[command(subcommand)]
    pub command: Command,
}

/// Which cluster and namespace, as kubectl chooses them.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// Namespace (default: the kubeconfig context's namespace, else `default`).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// The kubeconfig context to use (default: the current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// The kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else in-cluster).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Status(status::Args),
    Renew(renew::Args),
    Check(check::Args),
    Curl(curl::Args),
}

/// How a command ended when nothing went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The answer is no (exit 3).
    Negative,
    /// Waited and gave up (exit 4).
    TimedOut,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("kubeconfig: {0}")]
    Config(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Built from an error whose URL was removed (`without_url`).
    #[error("HTTP request: {0}")]
    Http(reqwest::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("writing the output: {0}")]
    Output(String),
}

impl Error {
    /// A reqwest error names the URL it failed on: drop it before it can be shown.
    pub fn http(e: reqwest::Error) -> Self {
        Error::Http(e.without_url())
    }
}

/// The exit code scripts see.
pub fn exit_code(result: &Result<Outcome, Error>) -> u8 {
    match result {
        Ok(Outcome::Success) => EXIT_OK,
        Ok(Outcome::Negative) => EXIT_NEGATIVE,
        Ok(Outcome::TimedOut) => EXIT_TIMEOUT,
        Err(_) => EXIT_ERROR,
    }
}

/// A client and the namespace commands act in.
pub struct Conn {
    pub client: Client,
    pub namespace: String,
}

impl Conn {
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The grant, or an error that says it does not exist.
    pub async fn grant(&self, name: &str) -> Result<UploadGrant, Error> {
        self.api::<UploadGrant>()
            .get_opt(name)
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "UploadGrant {name:?} not found in namespace {:?}",
                    self.namespace
                ))
            })
    }
}

/// Connects the way kubectl does: --kubeconfig, else $KUBECONFIG or
/// ~/.kube/config (in-cluster as a last resort), with --context if given.
pub async fn connect(target: &Target) -> Result<Conn, Error> {
    let options = KubeConfigOptions {
        context: target.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config_error = |e: &dyn std::fmt::Display| Error::Config(e.to_string());
    let config = match (&target.kubeconfig, &target.context) {
        (Some(path), _) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| config_error(&e))?;
            Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| config_error(&e))?
        }
        (None, Some(_)) => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| config_error(&e))?,
        (None, None) => Config::infer().await.map_err(|e| config_error(&e))?,
    };
    let namespace = target
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config)?;
    Ok(Conn { client, namespace })
}

/// Runs one command.
pub async fn run(cli: Cli) -> Result<Outcome, Error> {
    let conn = connect(&cli.target).await?;
    match cli.command {
        Command::Status(args) => status::run(&conn, args).await,
        Command::Renew(args) => renew::run(&conn, args).await,
        Command::Check(args) => check::run(&conn, args).await,
        Command::Curl(args) => curl::run(&conn, args).await,
    }
}

/// The Secret a grant's URL is in: where the status says it wrote it, else
/// where the spec asks for it, else the grant's name.
pub fn secret_name(grant: &UploadGrant) -> String {
    let name = grant.metadata.name.as_deref().unwrap_or_default();
    grant
        .status
        .as_ref()
        .and_then(|s| s.secret_name.clone())
        .unwrap_or_else(|| crate::controller::validate::secret_name(&grant.spec, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn exit_codes_map_outcomes_and_errors() {
        assert_eq!(exit_code(&Ok(Outcome::Success)), 0);
        assert_eq!(exit_code(&Ok(Outcome::Negative)), 3);
        assert_eq!(exit_code(&Ok(Outcome::TimedOut)), 4);
        assert_eq!(exit_code(&Err(Error::NotFound("x".into()))), 1);
        let usage = Cli::try_parse_from(["kubectl-grant", "status", "--bogus"]).unwrap_err();
        assert_eq!(usage.exit_code(), i32::from(EXIT_USAGE));
    }

    #[test]
    fn the_cli_is_well_formed_and_documents_exit_codes() {
        Cli::command().debug_assert();
        let help = Cli::command().render_long_help().to_string();
        for word in [
            "status",
            "renew",
            "check",
            "curl",
            "Exit codes",
            "4  timed out",
        ] {
            assert!(help.contains(word), "{word} missing from:\n{help}");
        }
    }

    #[test]
    fn the_secret_is_where_the_status_says_else_the_spec_else_the_name() {
        use serde_json::json;
        let grant =
            |spec, status| crate::fixtures::grant_with(json!({"spec": spec, "status": status}));
        let named = json!({"secret": {"name": "s"}});
        let written = json!({"secretName": "written"});
        assert_eq!(secret_name(&grant(named.clone(), written)), "written");
        assert_eq!(secret_name(&grant(named, json!({}))), "s");
        assert_eq!(secret_name(&grant(json!({}), json!({}))), "g");
    }
}
