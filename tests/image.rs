//! The image `make image` builds without a container engine
//! (target/image/upload-grant-operator.tar) is what the Dockerfile's runtime
//! stage describes, is reproducible, and runs: its layers unpacked into a
//! root file system start the binary there, so a missing shared library fails.
//!
//! Needs the archive and the release binary it was built from, so it is
//! ignored by a plain `cargo test`; `make image-check` (part of `make test`)
//! builds both and runs it. Unpacking keeps owners and the run uses `chroot`
//! when root, `unshare --map-root-user` otherwise.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

const ARCHIVE: &str = "target/image/upload-grant-operator.tar";
const RELEASE_BINARY: &str = "target/release/upload-grant-operator";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> TestResult<Vec<u8>> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(out.stdout)
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

// --- the Dockerfile's runtime stage ----------------------------------------------

#[derive(Debug, Default)]
struct RuntimeStage {
    from: String,
    /// Where each COPY puts the binary (a destination ending in / gets the source's name).
    copies: Vec<String>,
    user: String,
    expose: BTreeSet<String>,
    entrypoint: Vec<String>,
    /// An earlier stage strips the binary.
    stripped: bool,
}

/// Instructions as (KEYWORD, arguments), continuation lines joined, comments dropped.
fn instructions(dockerfile: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        if !trimmed.starts_with('#') {
            current.push_str(trimmed);
        }
        let (keyword, args) = current
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        out.push((keyword.to_ascii_uppercase(), args.trim().to_owned()));
        current.clear();
    }
    out
}

/// `$NAME` and `${NAME}` replaced by the global ARGs' defaults, as a build
/// without --build-arg does; an ARG without a default, or none, is an error.
fn substitute(text: &str, args: &BTreeMap<String, String>) -> TestResult<String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, tail) = match after.strip_prefix('{') {
            Some(braced) => {
                let end = braced.find('}').ok_or(format!("unclosed ${{ in {text}"))?;
                (&braced[..end], &braced[end + 1..])
            }
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], &after[end..])
            }
        };
        let value = args
            .get(name)
            .ok_or(format!("{text}: no global ARG {name} with a default"))?;
        out.push_str(value);
        rest = tail;
    }
    out.push_str(rest);
    Ok(out)
}

fn runtime_stage(dockerfile: &str) -> TestResult<RuntimeStage> {
    let mut stage = RuntimeStage::default();
    let mut earlier_strip = false;
    // ARGs before the first FROM, usable in FROM lines.
    let mut global_args = BTreeMap::new();
    let mut seen_from = false;
    for (keyword, args) in instructions(dockerfile) {
        match keyword.as_str() {
            "ARG" if !seen_from => {
                if let Some((name, default)) = args.split_once('=') {
                    let default = default.trim_matches('"');
                    global_args.insert(name.to_owned(), default.to_owned());
                }
            }
            "FROM" => {
                seen_from = true;
                earlier_strip |= stage.stripped;
                let image = args.split_whitespace().next().unwrap_or_default();
                stage = RuntimeStage {
                    from: substitute(image, &global_args)?,
                    ..RuntimeStage::default()
                };
            }
            "RUN" => stage.stripped |= args.split_whitespace().any(|w| w == "strip"),
            "COPY" => {
                let words: Vec<String> = if args.starts_with('[') {
                    serde_json::from_str(&args)?
                } else {
                    args.split_whitespace()
                        .filter(|w| !w.starts_with("--"))
                        .map(str::to_owned)
                        .collect()
                };
                let (dest, sources) = words.split_last().ok_or("COPY without arguments")?;
                for source in sources {
                    stage.copies.push(match dest.strip_suffix('/') {
                        Some(dir) => format!("{dir}/{}", source.rsplit('/').next().unwrap_or("")),
                        None => dest.clone(),
                    });
                }
            }
            "USER" => stage.user = args,
            "EXPOSE" => stage.expose.extend(args.split_whitespace().map(|p| {
                if p.contains('/') {
                    p.to_owned()
                } else {
                    format!("{p}/tcp")
                }
            })),
            "ENTRYPOINT" => {
                stage.entrypoint = serde_json::from_str(&args)
                    .map_err(|e| format!("ENTRYPOINT {args} is not the exec (JSON) form: {e}"))?
            }
            _ => {}
        }
    }
    stage.stripped = earlier_strip;
    Ok(stage)
}

#[test]
fn runtime_stage_parsing() -> TestResult {
    let stage = runtime_stage(
        "FROM rust AS build\nRUN cargo build \\\n && strip target/x\n# comment\nFROM gcr.io/distroless/cc-debian12:nonroot\n\
         COPY --from=build /a/x /b/y/\nCOPY [\"z\", \"/c\"]\nuser 1:2\nEXPOSE 80 53/udp\nENTRYPOINT [\"/b/y/x\"]\n",
    )?;
    assert_eq!(stage.from, "gcr.io/distroless/cc-debian12:nonroot");
    assert_eq!(stage.copies, ["/b/y/x", "/c"]);
    assert_eq!(stage.user, "1:2");
    assert_eq!(
        stage.expose,
        BTreeSet::from(["80/tcp".to_owned(), "53/udp".to_owned()])
    );
    assert_eq!(stage.entrypoint, ["/b/y/x"]);
    assert!(stage.stripped);
    assert!(runtime_stage("FROM x\nENTRYPOINT /bin/x\n").is_err());

    // Base images given as global ARGs (to be pinned by digest with --build-arg)
    // are read with their defaults.
    let stage = runtime_stage(
        "ARG RUST_IMAGE=rust:1\nARG RUNTIME_IMAGE=\"gcr.io/distroless/cc-debian12:nonroot\"\n\
         FROM ${RUST_IMAGE} AS build\nFROM $RUNTIME_IMAGE\nENTRYPOINT [\"/x\"]\n",
    )?;
    assert_eq!(stage.from, "gcr.io/distroless/cc-debian12:nonroot");
    assert!(runtime_stage("ARG BASE\nFROM ${BASE}\n").is_err());
    // The Dockerfile itself.
    let ours = runtime_stage(&std::fs::read_to_string(repo_root().join("Dockerfile"))?)?;
    assert_eq!(ours.from, "gcr.io/distroless/cc-debian12:nonroot");
    Ok(())
}

// --- layer tars ------------------------------------------------------------------------

#[derive(Debug)]
struct TarEntry {
    path: String,
    kind: u8,
    mode: u64,
    uid: u64,
    gid: u64,
    mtime: String,
    uname: String,
    gname: String,
}

fn cstr(field: &[u8]) -> String {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

fn octal(field: &[u8]) -> TestResult<u64> {
    let text = cstr(field);
    let text = text.trim();
    if text.is_empty() {
        return Ok(0);
    }
    Ok(u64::from_str_radix(text, 8).map_err(|e| format!("tar header number {text:?}: {e}"))?)
}

/// The entries of an uncompressed tar (ustar with PAX extended headers).
fn tar_entries(raw: &[u8]) -> TestResult<Vec<TarEntry>> {
    let mut entries = Vec::new();
    let mut pax = BTreeMap::new();
    let mut pos = 0;
    while pos + 512 <= raw.len() {
        let h = &raw[pos..pos + 512];
        if h.iter().all(|b| *b == 0) {
            break;
        }
        let size = usize::try_from(octal(&h[124..136])?)?;
        let data = raw
            .get(pos + 512..pos + 512 + size)
            .ok_or("truncated tar")?;
        pos += 512 + size.div_ceil(512) * 512;
        match h[156] {
            b'x' => {
                // "LEN key=value\n" records.
                let text = String::from_utf8(data.to_vec())?;
                let mut rest = text.as_str();
                while let Some((len, _)) = rest.split_once(' ') {
                    let len: usize = len.parse()?;
                    let record = &rest[..len];
                    let (key, value) = record[record.find(' ').ok_or("pax")? + 1..]
                        .trim_end_matches('\n')
                        .split_once('=')
                        .ok_or("pax record without =")?;
                    pax.insert(key.to_owned(), value.to_owned());
                    rest = &rest[len..];
                }
                continue;
            }
            b'g' => continue,
            b'L' | b'K' => return Err("GNU long-name entries: not a PAX tar".into()),
            _ => {}
        }
        let (name, prefix) = (cstr(&h[0..100]), cstr(&h[345..500]));
        let path = pax.remove("path").unwrap_or(if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        });
        entries.push(TarEntry {
            path,
            kind: h[156],
            mode: octal(&h[100..108])?,
            uid: pax
                .remove("uid")
                .map_or(octal(&h[108..116]), |v| Ok(v.parse()?))?,
            gid: pax
                .remove("gid")
                .map_or(octal(&h[116..124]), |v| Ok(v.parse()?))?,
            mtime: pax
                .remove("mtime")
                .unwrap_or(octal(&h[136..148])?.to_string()),
            uname: pax.remove("uname").unwrap_or(cstr(&h[265..297])),
            gname: pax.remove("gname").unwrap_or(cstr(&h[297..329])),
        });
        pax.clear();
    }
    Ok(entries)
}

// --- the archive -----------------------------------------------------------------------

fn blob(dir: &Path, descriptor: &serde_json::Value) -> TestResult<Vec<u8>> {
    let digest = descriptor["digest"]
        .as_str()
        .ok_or("descriptor without digest")?;
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or("digest is not sha256")?;
    let data = std::fs::read(dir.join("blobs/sha256").join(hex))
        .map_err(|e| format!("blob {digest}: {e}"))?;
    assert_eq!(
        sha256(&data),
        digest,
        "blob content does not match its digest"
    );
    assert_eq!(
        descriptor["size"].as_u64(),
        Some(data.len() as u64),
        "size of {digest}"
    );
    Ok(data)
}

fn elf_info(binary: &Path) -> TestResult<(String, Vec<String>, bool)> {
    let program = String::from_utf8(run(Command::new("readelf").arg("-lW").arg(binary))?)?;
    let interpreter = program
        .split("[Requesting program interpreter: ")
        .nth(1)
        .and_then(|s| s.split(']').next())
        .ok_or("no ELF interpreter: not a dynamic binary")?
        .to_owned();
    let dynamic = String::from_utf8(run(Command::new("readelf").arg("-dW").arg(binary))?)?;
    let needed = dynamic
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split('[').nth(1)?.split(']').next().map(str::to_owned))
        .collect();
    let sections = String::from_utf8(run(Command::new("readelf").arg("-SW").arg(binary))?)?;
    Ok((interpreter, needed, !sections.contains(".symtab")))
}

fn find_library(rootfs: &Path, name: &str) -> bool {
    ["lib", "lib64", "usr/lib", "usr/lib64"].iter().any(|dir| {
        let dir = rootfs.join(dir);
        dir.join(name).exists()
            || std::fs::read_dir(&dir).is_ok_and(|entries| {
                entries
                    .flatten()
                    .any(|e| e.path().is_dir() && e.path().join(name).exists())
            })
    })
}

#[test]
#[ignore = "needs target/image/upload-grant-operator.tar: run `make image-check`"]
fn image_is_what_the_dockerfile_describes_and_runs() -> TestResult {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    let root = repo_root();
    let stage = runtime_stage(&std::fs::read_to_string(root.join("Dockerfile"))?)?;
    let archive = root.join(ARCHIVE);
    assert!(
        archive.exists(),
        "{ARCHIVE} missing: run `make image` first"
    );
    let work = tempfile::tempdir()?;
    let layout = work.path().join("layout");
    std::fs::create_dir(&layout)?;
    run(Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&layout))?;

    // The layout, the reference containerd imports it under, every blob intact.
    let oci_layout: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("oci-layout"))?)?;
    assert_eq!(oci_layout["imageLayoutVersion"], "1.0.0");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    let manifests = index["manifests"]
        .as_array()
        .ok_or("index without manifests")?;
    assert_eq!(manifests.len(), 1, "one image in the archive");
    let reference = manifests[0]["annotations"]["io.containerd.image.name"]
        .as_str()
        .ok_or("no io.containerd.image.name annotation")?;
    if let Ok(expected) = std::env::var("IMAGE") {
        assert_eq!(reference, expected, "the archive is for another IMAGE");
    }
    let manifest: serde_json::Value = serde_json::from_slice(&blob(&layout, &manifests[0])?)?;
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let config: serde_json::Value = serde_json::from_slice(&blob(&layout, &manifest["config"])?)?;

    // The image config is the runtime stage's.
    let c = &config["config"];
    assert_eq!(config["os"], "linux");
    assert_eq!(
        c["Labels"]["org.opencontainers.image.base.name"], stage.from,
        "the base the image imitates is the Dockerfile's FROM"
    );
    assert!(
        stage.from.contains("distroless/cc-debian12"),
        "the Dockerfile's runtime base changed ({}): the image builder imitates cc-debian12",
        stage.from
    );
    assert_eq!(c["User"], stage.user, "USER");
    assert_eq!(
        c["Entrypoint"],
        serde_json::json!(stage.entrypoint),
        "ENTRYPOINT"
    );
    assert!(c["Cmd"].is_null(), "no CMD in the runtime stage");
    let exposed: BTreeSet<String> = c["ExposedPorts"]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    assert_eq!(exposed, stage.expose, "EXPOSE");
    let env: Vec<String> = serde_json::from_value(c["Env"].clone())?;

    // Layers: digests, diff_ids, reproducible tars; unpacked in order.
    let rootfs = work.path().join("rootfs");
    std::fs::create_dir(&rootfs)?;
    let layers = manifest["layers"].as_array().ok_or("no layers")?;
    let diff_ids = config["rootfs"]["diff_ids"]
        .as_array()
        .ok_or("no diff_ids")?;
    assert_eq!(layers.len(), diff_ids.len());
    for (layer, diff_id) in layers.iter().zip(diff_ids) {
        assert_eq!(
            layer["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        let gz = blob(&layout, layer)?;
        let gz_path = work.path().join("layer.tar.gz");
        std::fs::write(&gz_path, &gz)?;
        let raw = run(Command::new("gzip").arg("-dc").arg(&gz_path))?;
        assert_eq!(Some(sha256(&raw).as_str()), diff_id.as_str(), "diff_id");
        let entries = tar_entries(&raw)?;
        let names: Vec<&str> = entries
            .iter()
            .map(|e| e.path.trim_end_matches('/'))
            .collect();
        assert!(
            names.windows(2).all(|w| w[0] < w[1]),
            "layer entries are sorted and unique"
        );
        for e in &entries {
            assert_eq!(e.mtime, entries[0].mtime, "one mtime for {}", e.path);
            assert!(
                e.uname.is_empty() && e.gname.is_empty(),
                "{}: owner names ({}:{}) instead of numbers only",
                e.path,
                e.uname,
                e.gname
            );
            assert!(
                matches!(e.kind, b'0' | b'2' | b'5'),
                "{}: only files, symlinks and directories",
                e.path
            );
            assert!(!e.path.contains(".wh."), "{}: no whiteouts", e.path);
        }
        run(Command::new("tar")
            .args(["--numeric-owner", "--same-permissions", "-xzf"])
            .arg(&gz_path)
            .arg("-C")
            .arg(&rootfs))?;
        if let Some(binary) = stage.copies.first()
            && let Some(e) = entries.iter().find(|e| format!("/{}", e.path) == *binary)
        {
            assert_eq!(
                (e.uid, e.gid, e.mode),
                (0, 0, 0o755),
                "COPY's owner and mode"
            );
        }
    }

    // The binary at the COPY destination: the current release build, stripped.
    assert_eq!(stage.copies.len(), 1, "one COPY in the runtime stage");
    let in_image = rootfs.join(stage.copies[0].trim_start_matches('/'));
    assert_eq!(
        stage.entrypoint.first(),
        Some(&stage.copies[0]),
        "ENTRYPOINT runs what COPY put there"
    );
    assert!(
        in_image.is_file(),
        "no binary at {} in the image",
        stage.copies[0]
    );
    let release = root.join(RELEASE_BINARY);
    let stripped = work.path().join("stripped");
    if stage.stripped {
        run(Command::new("strip").arg("-o").arg(&stripped).arg(&release))?;
    } else {
        std::fs::copy(&release, &stripped)?;
    }
    assert!(
        std::fs::read(&in_image)? == std::fs::read(&stripped)?,
        "the image's binary is not the current {RELEASE_BINARY}{}: run `make image`",
        if stage.stripped { ", stripped" } else { "" }
    );
    let (interpreter, needed, is_stripped) = elf_info(&in_image)?;
    assert_eq!(
        is_stripped, stage.stripped,
        "stripped as the Dockerfile does"
    );

    // What cc-debian12 provides and the binary needs: glibc, libgcc, CA certificates, the user.
    assert!(
        rootfs.join(interpreter.trim_start_matches('/')).exists(),
        "the ELF interpreter {interpreter} is not in the image"
    );
    for lib in &needed {
        assert!(
            find_library(&rootfs, lib),
            "{lib}, needed by the binary, is not in the image"
        );
    }
    for lib in ["libc.so.6", "libgcc_s.so.1"] {
        assert!(
            find_library(&rootfs, lib),
            "{lib} missing (cc-debian12 has it)"
        );
    }
    let bundle = "etc/ssl/certs/ca-certificates.crt";
    let certs = std::fs::read_to_string(rootfs.join(bundle))?;
    assert!(
        certs.matches("-----BEGIN CERTIFICATE-----").count() > 100,
        "the CA bundle {bundle} has too few certificates"
    );
    assert!(env.contains(&format!("SSL_CERT_FILE=/{bundle}")));
    let (uid, gid) = stage.user.split_once(':').unwrap_or((&stage.user, ""));
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd"))?;
    let user = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() == 7 && f[2] == uid)
        .ok_or(format!("no passwd entry for the USER's uid {uid}"))?;
    if !gid.is_empty() {
        assert_eq!(user[3], gid, "the passwd entry's group is USER's");
        let group = std::fs::read_to_string(rootfs.join("etc/group"))?;
        assert!(
            group.lines().any(|l| l.split(':').nth(2) == Some(gid)),
            "no group {gid}"
        );
    }
    let home = std::fs::metadata(rootfs.join(user[5].trim_start_matches('/')))?;
    assert_eq!(
        home.uid().to_string(),
        uid,
        "{} belongs to the user",
        user[5]
    );
    assert_eq!(
        std::fs::metadata(rootfs.join("tmp"))?.permissions().mode() & 0o7777,
        0o1777
    );
    for package in ["libc6", "libgcc-s1"] {
        assert!(
            rootfs.join("var/lib/dpkg/status.d").join(package).exists(),
            "scanners find no dpkg status for {package}"
        );
    }

    // It runs there, as the image's user, with the image's environment only.
    let root_user = String::from_utf8(run(Command::new("id").arg("-u"))?)?.trim() == "0";
    let mut cmd = if root_user {
        let mut c = Command::new("chroot");
        c.arg(format!("--userspec={}", stage.user));
        c
    } else {
        let mut c = Command::new("unshare");
        c.args(["--map-root-user", "chroot"]);
        c
    };
    cmd.arg(&rootfs)
        .args(&stage.entrypoint)
        .arg("--version")
        .env_clear()
        .envs(env.iter().filter_map(|kv| kv.split_once('=')));
    let version = String::from_utf8(run(&mut cmd)?)?;
    assert_eq!(
        version.trim(),
        format!("upload-grant-operator {}", env!("CARGO_PKG_VERSION"))
    );

    // Reproducible: building again from the same inputs gives the same bytes.
    let again = work.path().join("again.tar");
    run(Command::new("bash")
        .arg(root.join("tools/image/build.sh"))
        .env("IMAGE", reference)
        .env("IMAGE_OUT", &again))?;
    assert!(
        std::fs::read(&again)? == std::fs::read(&archive)?,
        "a second build of the same inputs differs"
    );
    Ok(())
}
