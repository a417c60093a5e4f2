//! Prints the CustomResourceDefinitions as YAML, or with `--out-dir DIR`
//! writes one file per CRD there (`make crds` writes crds/).

use std::path::PathBuf;

use upload_grant_operator::api::{crd_file_name, crd_yaml, crds};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next()) {
        (None, _) => {
            for crd in crds() {
                print!("---\n{}", crd_yaml(&crd)?);
            }
        }
        (Some("--out-dir"), Some(dir)) => {
            let dir = PathBuf::from(dir);
            std::fs::create_dir_all(&dir)?;
            for crd in crds() {
                std::fs::write(dir.join(crd_file_name(&crd)), crd_yaml(&crd)?)?;
            }
        }
        _ => return Err("usage: crdgen [--out-dir DIR]".into()),
    }
    Ok(())
}
