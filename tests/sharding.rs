//! The shard split the operator computes (`upload_grant_operator::shard`) is
//! the apiserver's own: a list or watch carrying the selector
//! `Shards::selection` names returns exactly the objects `Shards::owns`
//! puts in those shards, for UploadGrants and for Secrets. The test
//! apiserver runs with `ShardedListAndWatch` on (KEP-5866).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams, WatchEvent};
use kube::{Api, Resource, ResourceExt};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::de::DeserializeOwned;
use support::{TestContext, TestResult};
use upload_grant_operator::api::{UploadGrant, UploadGrantSpec};
use upload_grant_operator::shard::{Selection, Shards};

const OBJECTS: usize = 48;

#[tokio::test]
async fn the_apiserver_lists_and_watches_the_shards_the_operator_computes() -> TestResult {
    let ctx = TestContext::new("shards").await?;
    support::install_committed_crds(&ctx.client).await?;
    let grants: Api<UploadGrant> = ctx.api();
    let secrets: Api<Secret> = ctx.api();
    let mut grant_uids = BTreeMap::new();
    let mut secret_uids = BTreeMap::new();
    for i in 0..OBJECTS {
        let g = grants
            .create(&PostParams::default(), &grant(&format!("g-{i}")))
            .await?;
        grant_uids.insert(g.name_any(), g.uid().unwrap_or_default());
        let s = secrets
            .create(&PostParams::default(), &secret(&format!("s-{i}")))
            .await?;
        secret_uids.insert(s.name_any(), s.uid().unwrap_or_default());
    }

    let shards = Shards::new(8)?;
    // Sets of shards that hold at least one object of each kind, and at
    // most 3 of the 8: neither nothing nor everything.
    let g: Vec<u32> = grant_uids.values().map(|uid| shards.of(uid)).collect();
    let s: Vec<u32> = secret_uids.values().map(|uid| shards.of(uid)).collect();
    for owned in [
        vec![g[0], s[0]],
        vec![g[1], s[1], g[2]],
        vec![g[3], s[2], s[3]],
    ] {
        let owned: BTreeSet<u32> = owned.into_iter().collect();
        let Selection::Ranges(selector) = shards.selection(&owned) else {
            panic!("{owned:?} is some shards, not all or none");
        };
        for (uids, path) in [
            (&grant_uids, path::<UploadGrant>(&ctx.namespace)),
            (&secret_uids, path::<Secret>(&ctx.namespace)),
        ] {
            let want: BTreeSet<&String> = uids
                .iter()
                .filter(|(_, uid)| shards.owns(&owned, uid))
                .map(|(name, _)| name)
                .collect();
            // Else the test could not tell a filter from no filter.
            assert!(
                !want.is_empty() && want.len() < uids.len(),
                "{owned:?}: {want:?}"
            );
            let listed = list_names(&ctx.client, &path, &selector).await?;
            assert_eq!(
                listed.iter().collect::<BTreeSet<_>>(),
                want,
                "{path} {selector}"
            );
        }
    }

    watch_delivers_only_its_shards(&ctx, &shards).await
}

/// A watch with the selector, from the list's resource version, gets the
/// grants created after it in its shards and no other: a last grant in the
/// shards, whose event comes after every earlier one, closes the count.
async fn watch_delivers_only_its_shards(ctx: &TestContext, shards: &Shards) -> TestResult {
    let grants: Api<UploadGrant> = ctx.api();
    let owned = BTreeSet::from([2, 3, 4, 5]);
    let Selection::Ranges(selector) = shards.selection(&owned) else {
        panic!("half the shards");
    };
    let path = path::<UploadGrant>(&ctx.namespace);
    let version = grants
        .list_metadata(&Default::default())
        .await?
        .metadata
        .resource_version;
    let url = format!(
        "{path}?watch=true&resourceVersion={}&shardSelector={}",
        version.unwrap_or_default(),
        encode(&selector)
    );
    let request = http::Request::get(url).body(Vec::new())?;
    let mut events = ctx
        .client
        .request_events::<UploadGrant>(request)
        .await?
        .boxed();

    let mut created = BTreeMap::new();
    let mut last = None;
    for i in 0.. {
        let g = grants
            .create(&PostParams::default(), &grant(&format!("w-{i}")))
            .await?;
        let ours = shards.owns(&owned, &g.uid().unwrap_or_default());
        created.insert(g.name_any(), ours);
        // At least 16 grants, of which some are outside the shards.
        if i >= 16 && ours && created.values().any(|o| !o) {
            last = Some(g.name_any());
            break;
        }
    }
    let last = last.ok_or("no grant landed in the shards")?;
    let mut seen = BTreeSet::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(event) = events.try_next().await? {
            if let WatchEvent::Added(g) = event {
                seen.insert(g.name_any());
                if g.name_any() == last {
                    break;
                }
            }
        }
        TestResult::Ok(())
    })
    .await??;
    let want: BTreeSet<String> = created
        .into_iter()
        .filter(|(_, ours)| *ours)
        .map(|(name, _)| name)
        .collect();
    assert_eq!(seen, want);
    Ok(())
}

/// The names a list at `path` with the shard selector returns.
async fn list_names(client: &kube::Client, path: &str, selector: &str) -> TestResult<Vec<String>> {
    let url = format!("{path}?shardSelector={}", encode(selector));
    let request = http::Request::get(url).body(Vec::new())?;
    let list: Names = client.request(request).await?;
    Ok(list.items.into_iter().map(|i| i.metadata.name).collect())
}

#[derive(serde::Deserialize)]
struct Names {
    items: Vec<Named>,
}

#[derive(serde::Deserialize)]
struct Named {
    metadata: Name,
}

#[derive(serde::Deserialize)]
struct Name {
    name: String,
}

fn encode(selector: &str) -> String {
    utf8_percent_encode(selector, NON_ALPHANUMERIC).to_string()
}

/// The collection path of `K` in `namespace`.
fn path<K>(namespace: &str) -> String
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    K::url_path(&(), Some(namespace))
}

fn grant(name: &str) -> UploadGrant {
    let spec: UploadGrantSpec = serde_json::from_value(serde_json::json!({
        "bucket": "reports",
        "key": format!("{name}.bin"),
    }))
    .expect("static spec");
    UploadGrant::new(name, spec)
}

fn secret(name: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        ..Secret::default()
    }
}
