//! The README stays a short front page, and the book in docs/ builds with
//! every link and anchor resolving: checked in the Markdown sources (as
//! GitHub shows them) and in the built book, each page opened in headless
//! Chromium (Debian's `chromium`, installed by tools/install-deps.sh). Every
//! diagram (docs/diagrams/*.dot) is drawn, shown on a page, and its page
//! kept as a screenshot in target/book-screenshots.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

mod support;

use support::TestResult;

fn repo() -> PathBuf {
    support::repo_root()
}

/// How GitHub and mdBook turn a heading into an anchor.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown file's headings (outside code blocks).
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut out = BTreeSet::new();
    for line in markdown.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            out.insert(slug(line.trim_start_matches('#')));
        }
    }
    out
}

/// The targets of a Markdown file's inline links, outside code blocks.
fn links(markdown: &str) -> Vec<String> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in markdown.lines() {
        if line.starts_with("```") || line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Code spans may hold `](`; drop them first.
        let text: String = line.split('`').step_by(2).collect::<Vec<_>>().join("");
        for part in text.split("](").skip(1) {
            if let Some(end) = part.find(')') {
                out.push(part[..end].to_owned());
            }
        }
    }
    out
}

fn is_external(target: &str) -> bool {
    ["http://", "https://", "mailto:", "javascript:", "file:"]
        .iter()
        .any(|p| target.starts_with(p))
}

/// `base/target` with `..` applied, without touching the file system.
fn join(base: &Path, target: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for c in base.join(target).components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The Graphviz source of a diagram the book shows: docs/src/diagrams/X.svg
/// is drawn from docs/diagrams/X.dot when the book is built (tools/docs.sh).
fn diagram_source(path: &Path) -> Option<PathBuf> {
    let generated = repo().join("docs/src/diagrams");
    let name = path
        .strip_prefix(&generated)
        .ok()?
        .to_str()?
        .strip_suffix(".svg")?;
    Some(repo().join("docs/diagrams").join(format!("{name}.dot")))
}

/// Every relative link of the Markdown file `file` names a file that exists
/// and, for a Markdown target, a heading it has.
fn check_markdown(file: &Path, problems: &mut Vec<String>) -> TestResult {
    let text = std::fs::read_to_string(file)?;
    let dir = file.parent().ok_or("no parent")?;
    for target in links(&text) {
        if is_external(&target) {
            continue;
        }
        let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
        let resolved = if path.is_empty() {
            file.to_path_buf()
        } else {
            join(dir, path)
        };
        let shown = file.strip_prefix(repo()).unwrap_or(file).display();
        if let Some(source) = diagram_source(&resolved) {
            if !source.exists() {
                problems.push(format!("{shown}: {target}: no {}", source.display()));
            }
        } else if !resolved.exists() {
            problems.push(format!("{shown}: {target}: no such file"));
        } else if !anchor.is_empty()
            && resolved.extension().is_some_and(|e| e == "md")
            && !anchors(&std::fs::read_to_string(&resolved)?).contains(anchor)
        {
            problems.push(format!("{shown}: {target}: no such heading"));
        }
    }
    Ok(())
}

#[test]
fn the_readme_is_a_short_front_page_and_its_links_resolve() -> TestResult {
    let readme = std::fs::read_to_string(repo().join("README.md"))?;
    let lines = readme.lines().count();
    assert!(
        lines <= 250,
        "README.md has {lines} lines; the rest belongs in docs/"
    );
    // CI runs the README's test command.
    assert!(readme.contains("make test"));
    let mut problems = Vec::new();
    check_markdown(&repo().join("README.md"), &mut problems)?;
    check_markdown(
        &repo().join("charts/upload-grant-operator/README.md"),
        &mut problems,
    )?;
    assert!(problems.is_empty(), "{problems:#?}");
    Ok(())
}

/// The pages SUMMARY.md lists, in order.
fn summary_pages() -> TestResult<Vec<String>> {
    let summary = std::fs::read_to_string(repo().join("docs/src/SUMMARY.md"))?;
    Ok(links(&summary))
}

#[test]
fn every_page_of_the_book_is_listed_and_its_links_resolve() -> TestResult {
    let src = repo().join("docs/src");
    let listed: BTreeSet<String> = summary_pages()?.into_iter().collect();
    let mut present = BTreeSet::new();
    let mut problems = Vec::new();
    for entry in std::fs::read_dir(&src)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .ok_or("name")?
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".md") && name != "SUMMARY.md" {
            present.insert(name);
            check_markdown(&path, &mut problems)?;
        }
    }
    assert_eq!(listed, present, "SUMMARY.md and docs/src disagree");
    assert!(problems.is_empty(), "{problems:#?}");
    Ok(())
}

/// Loads a file in headless Chromium and returns the DOM it rendered.
fn chromium_dom(page: &Path, profile: &Path) -> TestResult<String> {
    let out = support::headless_chromium(profile)
        .args(["--virtual-time-budget=5000", "--dump-dom"])
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run chromium ({e}); tools/install-deps.sh installs it"))?;
    let dom = String::from_utf8(out.stdout)?;
    if !out.status.success() || dom.is_empty() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!("chromium on {}: {}: {stderr}", page.display(), out.status).into());
    }
    Ok(dom)
}

/// The values of `attr="…"` in an HTML text.
fn attributes<'a>(html: &'a str, attr: &str) -> Vec<&'a str> {
    let key = format!(" {attr}=\"");
    html.split(key.as_str())
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect()
}

/// Builds the book with mdbook (tools/mdbook.sh builds mdbook from crates.io
/// on first use) and opens every page in Chromium: each renders its title,
/// every link inside the book reaches a page and an anchor that exist, every
/// link out of it a file of the repository, and every image loads.
#[test]
fn the_book_builds_and_every_page_renders_with_working_links() -> TestResult {
    // Two levels under the repository, as target/book is: a link to
    // ../../examples/… reaches the repository from the book as from docs/src.
    let book = repo().join("target/book-check");
    let _ = std::fs::remove_dir_all(&book);
    let built = Command::new(repo().join("tools/docs.sh"))
        .arg(&book)
        .output()?;
    assert!(
        built.status.success(),
        "tools/docs.sh: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let profile = tempfile::tempdir()?;
    let mut problems = Vec::new();
    let mut drawn = BTreeSet::new();
    for page in summary_pages()? {
        let html_name = page.replace(".md", ".html");
        let file = book.join(&html_name);
        let dom = chromium_dom(&file, profile.path())?;
        let diagrams: Vec<&str> = attributes(&dom, "src")
            .into_iter()
            .filter(|src| src.starts_with("diagrams/"))
            .collect();
        for src in &diagrams {
            drawn.insert(src.to_string());
            if let Err(e) = check_diagram(&book.join(src)) {
                problems.push(format!("{html_name}: {src}: {e}"));
            }
        }
        if !diagrams.is_empty() {
            screenshot(&file, profile.path(), &html_name.replace(".html", ".png"))?;
        }
        if !dom.contains("<h1") {
            problems.push(format!("{html_name}: no heading rendered"));
        }
        for src in attributes(&dom, "src") {
            if !is_external(src) && !join(&book, src).exists() {
                problems.push(format!("{html_name}: image or script {src} is missing"));
            }
        }
        for href in attributes(&dom, "href") {
            if is_external(href) || href.is_empty() {
                continue;
            }
            let (path, anchor) = href.split_once('#').unwrap_or((href, ""));
            let target = if path.is_empty() {
                file.clone()
            } else {
                join(&book, path)
            };
            if !target.exists() {
                problems.push(format!("{html_name}: {href}: no such file"));
                continue;
            }
            let is_page =
                target.starts_with(&book) && target.extension().is_some_and(|e| e == "html");
            if is_page && !anchor.is_empty() {
                let text = std::fs::read_to_string(&target)?;
                if !text.contains(&format!("id=\"{anchor}\"")) {
                    problems.push(format!("{html_name}: {href}: no such anchor"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    // Every diagram is on some page.
    let mut sources = BTreeSet::new();
    for entry in std::fs::read_dir(repo().join("docs/diagrams"))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".dot") {
            sources.insert(format!("diagrams/{stem}.svg"));
        }
    }
    assert_eq!(drawn, sources, "diagrams drawn vs. docs/diagrams/*.dot");
    Ok(())
}

/// A diagram Graphviz drew: an SVG with nodes and edges in it.
fn check_diagram(svg: &Path) -> TestResult {
    let text = std::fs::read_to_string(svg)?;
    let count = |class: &str| text.matches(&format!("class=\"{class}\"")).count();
    if !text.contains("<svg") || count("node") < 3 || count("edge") < 2 {
        return Err(format!("not a drawn diagram ({} nodes)", count("node")).into());
    }
    Ok(())
}

/// Keeps a screenshot of a page with diagrams in target/book-screenshots.
fn screenshot(page: &Path, profile: &Path, name: &str) -> TestResult {
    let dir = repo().join("target/book-screenshots");
    std::fs::create_dir_all(&dir)?;
    let png = dir.join(name);
    let out = support::headless_chromium(profile)
        // Tall enough for a whole page: headless Chromium shoots the window only.
        .args(["--window-size=1000,16000", "--hide-scrollbars"])
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .output()?;
    let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
    if !out.status.success() || size < 10_000 {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "no screenshot of {} ({size} bytes): {stderr}",
            page.display()
        )
        .into());
    }
    Ok(())
}

#[test]
fn slugs_match_githubs() {
    assert_eq!(slug(" Installing with Helm"), "installing-with-helm");
    assert_eq!(
        slug("UploadGrant (`grants.io/v1alpha1`, namespaced, short name `ug`)"),
        "uploadgrant-grantsiov1alpha1-namespaced-short-name-ug"
    );
    assert_eq!(
        slug("What a grant's status tells you"),
        "what-a-grants-status-tells-you"
    );
    assert_eq!(
        links("see [a](b.md#c) and `[x](y)`\n```\n[p](q)\n```"),
        ["b.md#c"]
    );
}

/// The generated reference pages (`make reference`): every command's help
/// and the chart's values, as the binaries and the chart say them now.
#[test]
fn the_generated_reference_pages_are_what_the_binaries_and_the_chart_say() -> TestResult {
    let out = tempfile::tempdir()?;
    let status = Command::new("bash")
        .arg(repo().join("tools/reference.sh"))
        .arg(out.path())
        .env("OPERATOR_BIN", env!("CARGO_BIN_EXE_upload-grant-operator"))
        .env("PLUGIN_BIN", env!("CARGO_BIN_EXE_kubectl-grant"))
        .status()?;
    assert!(status.success(), "tools/reference.sh failed");
    for page in ["cli.md", "values.md"] {
        let generated = std::fs::read_to_string(out.path().join(page))?;
        let committed = std::fs::read_to_string(repo().join("docs/src").join(page))?;
        assert!(
            generated == committed,
            "docs/src/{page} differs from what the code says now: run `make reference`"
        );
    }
    Ok(())
}

/// The hand-written reference names everything the code exports: every
/// metric (operations.md), every condition reason (status.md), and every
/// field of both CRDs' specs (reference.md).
#[test]
fn the_reference_names_every_metric_reason_and_spec_field() -> TestResult {
    let page = |name: &str| std::fs::read_to_string(repo().join("docs/src").join(name));
    let mut missing = vec![];
    let operations = page("operations.md")?;
    for name in upload_grant_operator::metrics::exported_names() {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        if !operations.contains(&format!("`{family}")) {
            missing.push(format!("operations.md: metric {family}"));
        }
    }
    let help = Command::new(env!("CARGO_BIN_EXE_upload-grant-operator"))
        .arg("--help")
        .env_clear()
        .output()?;
    let help = String::from_utf8(help.stdout)?;
    let flags = help
        .split_whitespace()
        .map(|w| w.trim_end_matches(','))
        .filter(|w| w.starts_with("--") && !matches!(*w, "--help" | "--version"));
    let envs = help
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split('=').next());
    for name in flags.chain(envs) {
        if !operations.contains(name) {
            missing.push(format!("operations.md: {name}"));
        }
    }
    let status = page("status.md")?;
    for reason in upload_grant_operator::api::Reason::ALL {
        if !status.contains(&format!("`{}`", reason.as_str())) {
            missing.push(format!("status.md: reason {}", reason.as_str()));
        }
    }
    let reference = page("reference.md")?;
    for crd in upload_grant_operator::api::crds() {
        let version = crd.spec.versions.first().ok_or("a CRD without versions")?;
        let schema = serde_json::to_value(version.schema.as_ref().ok_or("no schema")?)?;
        let spec = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"];
        for field in spec.as_object().ok_or("a spec without properties")?.keys() {
            if !reference.contains(&format!("`{field}")) {
                missing.push(format!(
                    "reference.md: {} field {field}",
                    crd.spec.names.kind
                ));
            }
        }
    }
    assert!(missing.is_empty(), "not documented: {missing:#?}");
    Ok(())
}
