//! An operator limited to several namespaces (`--namespace a,b`) issues
//! grants in each of them, follows their labels, and leaves every other
//! namespace alone.

mod support;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use support::grants::*;
use support::operator::OperatorOptions;
use support::{TestContext, TestResult};
use upload_grant_operator::api::UploadGrant;

#[tokio::test]
async fn an_operator_limited_to_two_namespaces_serves_both_and_ignores_a_third() -> TestResult {
    let team = format!("team-{}", support::random_suffix());
    let labels = [("team", team.as_str())];
    let a = TestContext::with_labels("watch-a", &labels).await?;
    let b = TestContext::with_labels("watch-b", &labels).await?;
    let c = TestContext::with_labels("watch-c", &labels).await?;
    let opts = OperatorOptions {
        env: vec![(
            "UPLOAD_GRANT_WATCH_NAMESPACE".into(),
            format!("{},{}", a.namespace, b.namespace),
        )],
        ..Default::default()
    };
    let Scenario {
        ctx: a,
        operator,
        dir: _dir,
    } = Scenario::start_in(a, opts).await?;
    // Allowed by namespace label, so the label cache must hold both namespaces.
    let issuer = create_issuer(
        &a,
        serde_json::json!([{"namespaces": {"matchLabels": {"team": team}}, "buckets": [a.env.bucket()]}]),
    )
    .await?;

    // C's grant comes first: had the operator watched C, it would have
    // handled it before the later grants in A and B.
    create_grant(
        &c,
        "elsewhere",
        spec(&c, &issuer, "c.txt", serde_json::json!({})),
    )
    .await?;
    for ctx in [&a, &b] {
        create_grant(
            ctx,
            "here",
            spec(ctx, &issuer, "here.txt", serde_json::json!({})),
        )
        .await?;
    }
    for ctx in [&a, &b] {
        wait_ready(ctx, "here").await?;
        let data = secret_data(&ctx.client, &ctx.namespace, "here").await?;
        assert_eq!(consume(&data, Some(b"hello".to_vec())).await?.status(), 200);
    }

    let ignored = c.api::<UploadGrant>().get("elsewhere").await?;
    assert_eq!(
        ignored.status, None,
        "a grant in {} got a status",
        c.namespace
    );
    assert!(
        ignored.finalizers().is_empty(),
        "a grant outside the list got a finalizer"
    );
    assert!(c.api::<Secret>().get_opt("elsewhere").await?.is_none());
    assert!(
        !operator.logs().contains(&c.namespace),
        "the operator's log mentions {}",
        c.namespace
    );

    // B's labels are watched too: without the label its grant is refused.
    let unlabel = serde_json::json!({"metadata": {"labels": {"team": null}}});
    Api::<Namespace>::all(b.client.clone())
        .patch(
            &b.namespace,
            &PatchParams::default(),
            &Patch::Merge(&unlabel),
        )
        .await?;
    wait_reason(&b, "here", "Forbidden").await?;
    wait_secret_gone(&b, "here").await?;
    wait_ready(&a, "here").await?;
    Ok(())
}
