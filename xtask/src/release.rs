//! What a release needs, checked on every run: the packages build from themselves, the
//! docs build without warnings, each feature of the facade builds alone, a fresh project
//! builds the README's example with no OpenSSL, and no dependency needs a newer Rust than
//! the `rust-version` we declare.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::{cargo_bin, repository_root};

/// Members that are never published, left out of `cargo package`.
const UNPUBLISHED: &[&str] = &[
    "entraid-test-support",
    "entraid-token-manager-tokio-tests",
    "redis-entraid-e2e",
    "redis-entraid-examples",
    "entraid-fleet-sim",
    "xtask",
];

/// The facade's features one at a time, each with what it needs to build (`azure` needs one
/// TLS backend), and the token manager without its runtime.
const FEATURE_SETS: &[(&str, &str)] = &[
    ("redis-entraid", ""),
    ("redis-entraid", "azure,native-tls"),
    ("redis-entraid", "r2d2"),
    ("redis-entraid", "metrics"),
    ("entraid-azure", "native-tls"),
    ("entraid-token-manager", ""),
];

fn run(command: &mut Command, what: &str) -> Result<(), String> {
    let status = command.status().map_err(|e| format!("could not run {what}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

/// `cargo package` of every published crate, each verified by building it from its
/// `.crate` (in dependency order, the unpublished siblings served from a local overlay).
pub(crate) fn package() -> Result<(), String> {
    let mut command = Command::new(cargo_bin());
    command.args(["package", "--workspace", "--quiet", "--allow-dirty"]);
    for name in UNPUBLISHED {
        command.args(["--exclude", name]);
    }
    run(command.current_dir(repository_root()), "cargo package --workspace")
}

/// Each feature set of [`FEATURE_SETS`] alone, with `--no-default-features`.
pub(crate) fn features() -> Result<(), String> {
    for (package, features) in FEATURE_SETS {
        let mut command = Command::new(cargo_bin());
        command.args(["check", "--quiet", "-p", package, "--no-default-features"]);
        if !features.is_empty() {
            command.args(["--features", features]);
        }
        run(
            command.current_dir(repository_root()),
            &format!("cargo check -p {package} --no-default-features --features '{features}'"),
        )?;
    }
    Ok(())
}

/// `cargo doc` of the workspace with every feature, warnings denied (broken intra-doc
/// links, bad code block attributes).
pub(crate) fn docs() -> Result<(), String> {
    let mut command = Command::new(cargo_bin());
    command
        .args(["doc", "--workspace", "--all-features", "--no-deps", "--quiet"])
        .env("RUSTDOCFLAGS", "-D warnings");
    run(command.current_dir(repository_root()), "cargo doc")
}

/// The fresh project the README describes: `redis-entraid` with default features beside
/// `redis` with the TLS features the README names, its first example as `main`. Built with
/// `OPENSSL_DIR` pointing nowhere, so any OpenSSL in the default build fails it.
pub(crate) fn fresh_project() -> Result<(), String> {
    let root = repository_root();
    let dir = crate::target_dir().join("fresh-project");
    let readme = fs::read_to_string(root.join("crates/redis-entraid/README.md"))
        .map_err(|e| format!("cannot read the facade's README: {e}"))?;
    let (manifest_deps, example) = readme_install_and_example(&readme)?;
    let facade = root.join("crates/redis-entraid");
    let manifest = format!(
        "[package]\nname = \"fresh-project\"\nversion = \"0.0.0\"\nedition = \"2024\"\npublish = false\n\n\
         # Not a member of the redis-entraid workspace.\n[workspace]\n\n{}\n",
        manifest_deps.replace(
            "redis-entraid = \"0.1\"",
            &format!("redis-entraid = {{ path = {:?} }}", facade.display().to_string())
        )
    );
    let main = format!(
        "{}\n\nfn main() {{\n    // Built, not run: the example talks to Azure.\n    let _ = run;\n}}\n",
        example
    );
    fs::create_dir_all(dir.join("src")).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    fs::write(dir.join("Cargo.toml"), manifest).map_err(|e| format!("cannot write the manifest: {e}"))?;
    fs::write(dir.join("src/main.rs"), main).map_err(|e| format!("cannot write main.rs: {e}"))?;
    if tree_crates(&dir, &[])?.iter().any(|name| name == "openssl-sys") {
        return Err("the default facade depends on OpenSSL (openssl-sys)".to_owned());
    }
    let mut build = Command::new(cargo_bin());
    build
        .args(["build", "--quiet"])
        .env("CARGO_TARGET_DIR", crate::target_dir())
        .env("OPENSSL_DIR", dir.join("no-openssl-here"))
        .current_dir(&dir);
    run(
        &mut build,
        "building the README's example in a fresh project, without OpenSSL",
    )
}

/// The README's `toml` install block (its `[dependencies]` table) and its first `rust`
/// example with the hidden (`# `) lines shown, as a user would write them.
fn readme_install_and_example(readme: &str) -> Result<(String, String), String> {
    let blocks: Vec<(&str, String)> = code_blocks(readme);
    let install = blocks
        .iter()
        .find(|(lang, _)| *lang == "toml")
        .map(|(_, body)| body.clone())
        .ok_or("the facade's README has no toml install block")?;
    let example = blocks
        .iter()
        .find(|(lang, _)| lang.starts_with("rust"))
        .map(|(_, body)| {
            body.lines()
                .map(|line| line.strip_prefix("# ").unwrap_or(line))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .ok_or("the facade's README has no rust example")?;
    Ok((install, example))
}

/// The fenced code blocks of a markdown text: (info string, body).
fn code_blocks(text: &str) -> Vec<(&str, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(&str, String)> = None;
    for line in text.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(info)) => current = Some((info.trim(), String::new())),
            (Some(_), Some(_)) => blocks.extend(current.take()),
            (Some((_, body)), None) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    blocks
}

/// The names of the crates in `cargo tree` (normal and build edges) run in `dir` with
/// `args`, exactly: no substring of another name matches.
pub(crate) fn tree_crates(dir: &Path, args: &[&str]) -> Result<Vec<String>, String> {
    let output = Command::new(cargo_bin())
        .args([
            "tree",
            "--quiet",
            "-e",
            "normal,build",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("could not run cargo tree: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "cargo tree {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        // `name v1.2.3 (path)`
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Every dependency the published crates build with (all features, normal and build
/// edges, the committed lock) declares a `rust-version` no newer than ours: the MSRV-aware
/// check this machine can make with its one toolchain (the GitHub workflow also compiles
/// with the MSRV itself).
pub(crate) fn msrv() -> Result<(), String> {
    let root = repository_root();
    let output = Command::new(cargo_bin())
        .args(["metadata", "--format-version", "1", "--locked", "--all-features"])
        .current_dir(&root)
        .output()
        .map_err(|e| format!("could not run cargo metadata: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|e| format!("cargo metadata printed no JSON: {e}"))?;
    let ours = workspace_rust_version(&root)?;
    let packages = metadata["packages"].as_array().ok_or("cargo metadata: no packages")?;
    let version_of = |id: &str| {
        packages
            .iter()
            .find(|package| package["id"] == id)
            .map(|package| (package["name"].as_str().unwrap_or(""), package["rust_version"].as_str()))
    };
    let nodes = metadata["resolve"]["nodes"]
        .as_array()
        .ok_or("cargo metadata: no resolve")?;
    // Walk from the published members along normal and build edges.
    let mut todo: Vec<String> = packages
        .iter()
        .filter(|package| package["source"].is_null() && !UNPUBLISHED.contains(&package["name"].as_str().unwrap_or("")))
        .filter_map(|package| package["id"].as_str().map(str::to_owned))
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    let mut too_new = Vec::new();
    while let Some(id) = todo.pop() {
        if !seen.insert(id.clone()) {
            continue;
        }
        if let Some((name, Some(needed))) = version_of(&id)
            && parse_version(needed) > ours
        {
            too_new.push(format!("{name} needs Rust {needed}"));
        }
        let Some(node) = nodes.iter().find(|node| node["id"] == id.as_str()) else {
            continue;
        };
        for dep in node["deps"].as_array().into_iter().flatten() {
            let normal_or_build = dep["dep_kinds"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|kind| kind["kind"].is_null() || kind["kind"] == "build");
            if normal_or_build && let Some(pkg) = dep["pkg"].as_str() {
                todo.push(pkg.to_owned());
            }
        }
    }
    if too_new.is_empty() {
        Ok(())
    } else {
        too_new.sort();
        Err(format!(
            "the lock file needs a newer Rust than rust-version {}.{}: {}; pin an older version \
             (cargo update -p NAME --precise X) or raise rust-version and say so in CHANGELOG.md",
            ours.0,
            ours.1,
            too_new.join(", ")
        ))
    }
}

fn workspace_rust_version(root: &Path) -> Result<(u32, u32, u32), String> {
    let manifest = fs::read_to_string(root.join("Cargo.toml")).map_err(|e| format!("cannot read Cargo.toml: {e}"))?;
    manifest
        .lines()
        .find_map(|line| line.strip_prefix("rust-version = "))
        .map(|value| parse_version(value.trim_matches('"')))
        .ok_or_else(|| "the workspace Cargo.toml declares no rust-version".to_owned())
}

fn parse_version(text: &str) -> (u32, u32, u32) {
    let mut parts = text.split('.').map(|part| part.parse::<u32>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_gives_an_install_block_with_tls_and_an_example() {
        let readme = fs::read_to_string(repository_root().join("crates/redis-entraid/README.md")).unwrap();
        let (install, example) = readme_install_and_example(&readme).unwrap();
        assert!(
            install.contains("[dependencies]") && install.contains("redis-entraid = \"0.1\""),
            "{install}"
        );
        assert!(
            install.contains("tls-rustls"),
            "the redis TLS feature is named: {install}"
        );
        assert!(
            example.contains("async fn run()") && !example.contains("\n# "),
            "{example}"
        );
    }

    /// We test one redis version, the locked one, so it must be the lowest we accept: when
    /// the lock moves on (a new 1.x), raise the floor in the workspace Cargo.toml, or test
    /// the floor as well, before this passes again.
    #[test]
    fn the_locked_redis_is_the_lowest_we_accept() {
        let root = repository_root();
        let manifest = fs::read_to_string(root.join("Cargo.toml")).unwrap();
        let floor = manifest
            .lines()
            .find_map(|line| line.strip_prefix("redis = { version = \""))
            .and_then(|rest| rest.split('"').next())
            .expect("the workspace declares redis = { version = \"…\" }");
        let lock = fs::read_to_string(root.join("Cargo.lock")).unwrap();
        let locked = lock
            .split("[[package]]")
            .find(|entry| entry.contains("\nname = \"redis\"\n"))
            .and_then(|entry| entry.lines().find_map(|line| line.strip_prefix("version = \"")))
            .map(|version| version.trim_end_matches('"'))
            .expect("redis is in Cargo.lock");
        assert_eq!(
            locked, floor,
            "Cargo.lock tests redis {locked}, but we accept down to {floor}"
        );
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(parse_version("1.95") > parse_version("1.88"));
        assert!(parse_version("1.100.0") > parse_version("1.95.1"));
        assert_eq!(parse_version("1.88"), (1, 88, 0));
    }
}
