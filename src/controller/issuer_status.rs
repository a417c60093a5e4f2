//! Status for ClusterGrantIssuers: Ready says whether the issuer's rules can
//! be evaluated, so an admin sees a broken rule before a grant trips on it;
//! RiskyRules names each rule that allows more than it names.

use futures::{Stream, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};

use crate::api::condition::transition_time;
use crate::api::secret::MANAGER;
use crate::api::{ClusterGrantIssuer, ClusterGrantIssuerStatus};

/// Writes the status of every issuer that changes, until the stream ends.
pub async fn run(client: Client, changes: impl Stream<Item = ClusterGrantIssuer>) {
    changes
        .for_each_concurrent(4, |issuer| write_with_retries(client.clone(), issuer))
        .await;
}

/// Nothing else wakes an unchanged issuer, so a failed write is tried again
/// a few times, each on the issuer as the server has it then.
async fn write_with_retries(client: Client, mut issuer: ClusterGrantIssuer) {
    const ATTEMPTS: u32 = 5;
    let api = Api::<ClusterGrantIssuer>::all(client.clone());
    let mut delay = std::time::Duration::from_secs(1);
    for attempt in 1..=ATTEMPTS {
        let Err(e) = write(&client, &issuer).await else {
            return;
        };
        tracing::warn!(issuer = %issuer.name_any(), error = %e, attempt, "could not write issuer status");
        if attempt == ATTEMPTS {
            return;
        }
        tokio::time::sleep(delay).await;
        delay *= 2;
        match api.get_opt(&issuer.name_any()).await {
            Ok(Some(fresh)) => issuer = fresh,
            Ok(None) => return,
            Err(_) => {}
        }
    }
}

/// The status an issuer should have; lastTransitionTime kept when the value
/// does not change.
pub fn desired(issuer: &ClusterGrantIssuer, now: Time) -> ClusterGrantIssuerStatus {
    let (status, reason, message) = match crate::issuer::check(&issuer.spec) {
        Ok(summary) => ("True", "Valid", summary),
        Err(problem) => ("False", "InvalidSpec", problem),
    };
    let ready = condition(issuer, "Ready", status, reason, message, &now);
    let risks = risks(issuer, &now);
    ClusterGrantIssuerStatus {
        conditions: vec![ready, risks],
        observed_generation: issuer.metadata.generation,
    }
}

/// `RiskyRules`: True, naming each rule that allows more than it names.
fn risks(issuer: &ClusterGrantIssuer, now: &Time) -> Condition {
    let found = crate::policy::risks::risks(&issuer.spec);
    let (status, reason, message) = if found.is_empty() {
        (
            "False",
            "NoRiskyRules",
            "every rule names the namespaces, buckets, keys, methods, sizes and KMS keys it allows"
                .to_owned(),
        )
    } else {
        let each: Vec<String> = found.iter().map(ToString::to_string).collect();
        ("True", "RiskyRules", each.join("; "))
    };
    condition(issuer, RISKY_RULES, status, reason, message, now)
}

/// The condition type naming risky rules.
pub const RISKY_RULES: &str = "RiskyRules";

fn condition(
    issuer: &ClusterGrantIssuer,
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: &Time,
) -> Condition {
    let previous = issuer
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_));
    let transition = transition_time(previous, status, now.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: issuer.metadata.generation,
        last_transition_time: transition,
    }
}

async fn write(client: &Client, issuer: &ClusterGrantIssuer) -> kube::Result<()> {
    let status = desired(issuer, Time(jiff::Timestamp::now()));
    if issuer.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let patch = serde_json::json!({"apiVersion": "grants.io/v1alpha1", "kind": "ClusterGrantIssuer", "status": status});
    Api::<ClusterGrantIssuer>::all(client.clone())
        .patch_status(
            &issuer.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::issuer;

    fn t(s: i64) -> Time {
        Time(jiff::Timestamp::from_second(s).expect("valid"))
    }

    #[test]
    fn valid_issuers_are_ready_and_stay_unchanged() {
        let mut i = issuer("i", serde_json::json!([{"buckets": ["b"], "maxTtl": "1h"}]));
        i.metadata.generation = Some(2);
        let first = desired(&i, t(10));
        assert_eq!(first.conditions[0].status, "True");
        assert_eq!(first.observed_generation, Some(2));
        i.status = Some(first.clone());
        assert_eq!(
            desired(&i, t(20)),
            first,
            "an unchanged issuer needs no write"
        );
    }

    #[test]
    fn risky_rules_are_named_in_their_own_condition() {
        let i = issuer(
            "i",
            serde_json::json!([
                {"namespaces": {"matchLabels": {"team": "a"}}, "buckets": ["b"], "keyPrefixes": ["{namespace}/"], "methods": ["GET"]},
                {"buckets": ["b"], "keyPrefixes": ["{namespace}"], "methods": ["GET", "DELETE"]}
            ]),
        );
        let s = desired(&i, t(10));
        let risky = s
            .conditions
            .iter()
            .find(|c| c.type_ == RISKY_RULES)
            .expect("condition");
        assert_eq!(
            (risky.status.as_str(), risky.reason.as_str()),
            ("True", "RiskyRules")
        );
        assert!(!risky.message.contains("allow[0]"), "{}", risky.message);
        for needle in [
            "allow[1] applies to every namespace",
            "allow[1] allows DELETE",
            "allow[1] has a key prefix with {namespace}",
        ] {
            assert!(
                risky.message.contains(needle),
                "{needle} in {}",
                risky.message
            );
        }
        assert_eq!(s.conditions[0].status, "True", "risky rules still work");
        let tight = issuer(
            "i",
            serde_json::json!([{"namespaces": {"matchLabels": {"team": "a"}}, "buckets": ["b"], "keyPrefixes": ["x/"], "methods": ["GET"]}]),
        );
        let calm = desired(&tight, t(10));
        assert_eq!(calm.conditions[1].status, "False");
    }

    #[test]
    fn a_rule_that_cannot_be_evaluated_makes_the_issuer_not_ready() {
        let s = desired(
            &issuer(
                "i",
                serde_json::json!([{"buckets": ["b"], "maxContentLength": "lots"}]),
            ),
            t(10),
        );
        let c = &s.conditions[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "InvalidSpec")
        );
        assert!(
            c.message.contains("allow[0].maxContentLength"),
            "{}",
            c.message
        );
    }
}
