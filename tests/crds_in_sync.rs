//! The CRD YAML committed under crds/ must be exactly what the Rust types
//! generate; run `make crds` after changing src/api/.

use upload_grant_operator::api::{crd_file_name, crd_yaml, crds};

#[test]
fn committed_crds_match_the_rust_types() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    check(&root.join("crds"));
    // The Helm chart ships the same CRDs.
    check(&root.join("charts/upload-grant-operator/files/crds"));
}

fn check(dir: &std::path::Path) {
    let shown = dir.display();
    let mut expected_files = Vec::new();
    for crd in crds() {
        let file = crd_file_name(&crd);
        let generated = crd_yaml(&crd).expect("CRD serialises to YAML");
        let committed = std::fs::read_to_string(dir.join(&file))
            .unwrap_or_else(|e| panic!("crds/{file} is missing ({e}); run `make crds`"));
        assert!(
            committed == generated,
            "crds/{file} differs from the Rust types; run `make crds`"
        );
        expected_files.push(file);
    }
    let mut present: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{shown}: {e}"))
        .map(|e| {
            e.expect("readable entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    present.sort();
    expected_files.sort();
    assert_eq!(
        present, expected_files,
        "crds/ holds files the Rust types do not generate"
    );
}

/// The formats the apiserver knows (k8s.io/kube-openapi's validation
/// registry). Any other one is accepted, but `kubectl apply` and `helm
/// install` print `Warning: unrecognized format` for it on every install.
const KNOWN_FORMATS: &[&str] = &[
    "bsonobjectid",
    "uri",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "cidr",
    "mac",
    "uuid",
    "uuid3",
    "uuid4",
    "uuid5",
    "isbn",
    "isbn10",
    "isbn13",
    "creditcard",
    "ssn",
    "hexcolor",
    "rgbcolor",
    "byte",
    "password",
    "date",
    "duration",
    "datetime",
    "date-time",
    "int32",
    "int64",
    "float",
    "double",
];

#[test]
fn every_schema_format_is_one_kubernetes_knows() {
    fn formats(value: &serde_json::Value, path: &str, out: &mut Vec<(String, String)>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, child) in map {
                    let here = format!("{path}.{key}");
                    match (key.as_str(), child) {
                        ("format", serde_json::Value::String(f)) => out.push((here, f.clone())),
                        _ => formats(child, &here, out),
                    }
                }
            }
            serde_json::Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    formats(child, &format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
    }
    let mut found = Vec::new();
    for crd in crds() {
        let json = serde_json::to_value(&crd).expect("CRD serialises");
        formats(&json, &crd_file_name(&crd), &mut found);
    }
    assert!(
        found.iter().any(|(_, f)| f == "date-time"),
        "the walk sees formats: {found:?}"
    );
    let unknown: Vec<_> = found
        .iter()
        .filter(|(_, f)| !KNOWN_FORMATS.contains(&f.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "formats Kubernetes warns about: {unknown:?}"
    );
}
