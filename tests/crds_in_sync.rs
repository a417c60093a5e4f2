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
