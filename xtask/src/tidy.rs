//! Tidy checks, run as tests by `cargo xtask test` (rust-analyzer's way): the code map in
//! `docs/ARCHITECTURE.md` names every source module and every code name it cites exists,
//! every module says what it is in a `//!` line, no comment cites an issue number instead
//! of its reason (issues move and close; the reason is what a reader needs), and the
//! facade's connection types wait on no tokio timer outside their executor.

use std::fs;
use std::path::{Path, PathBuf};

use crate::repository_root;

/// Each source tree and the code map section that must name its modules.
const TREES: &[(&str, &str)] = &[
    ("crates/entraid-identity/src", "### `crates/entraid-identity`"),
    ("crates/entraid-token-manager/src", "### `crates/entraid-token-manager`"),
    ("crates/entraid-azure/src", "### `crates/entraid-azure`"),
    ("crates/redis-entraid/src", "### `crates/redis-entraid`"),
    ("crates/entraid-emulator/src", "### `crates/entraid-emulator`"),
    ("crates/entraid-cli/src", "### `crates/entraid-cli`"),
    ("crates/entraid-test-support/src", "### `crates/entraid-test-support`"),
    ("benches/compare/src", "### `benches/compare/`"),
    ("benches/fleet/src", "### `benches/fleet/`"),
    ("xtask/src", "### `xtask/`"),
];

/// Where comments are checked for issue citations.
const COMMENTED: &[&str] = &["crates", "examples", "xtask", "benches"];

/// Every `.rs` file under `dir`, skipping build output.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// The text of the code map section that starts with `heading`, up to the next heading.
fn section<'a>(map: &'a str, heading: &str) -> Option<&'a str> {
    let start = map.find(heading)? + heading.len();
    let rest = &map[start..];
    let end = rest.find("\n### ").or_else(|| rest.find("\n## ")).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Modules of the trees missing from their code map section, as `tree: file`.
pub(crate) fn unmapped_modules(root: &Path, map: &str) -> Vec<String> {
    let mut missing = Vec::new();
    for (tree, heading) in TREES {
        let Some(text) = section(map, heading) else {
            missing.push(format!("{heading}: no such section in the code map"));
            continue;
        };
        for file in rust_files(&root.join(tree)) {
            let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if matches!(name, "lib.rs" | "main.rs" | "mod.rs") {
                continue;
            }
            if !text.contains(name) {
                missing.push(format!("{tree}: {name}"));
            }
        }
    }
    missing
}

/// Source modules whose first line (after blank ones) is not a `//!` line.
pub(crate) fn undocumented_modules(root: &Path) -> Vec<String> {
    TREES
        .iter()
        .flat_map(|(tree, _)| rust_files(&root.join(tree)))
        .filter(|file| {
            let text = fs::read_to_string(file).unwrap_or_default();
            !text
                .lines()
                .find(|l| !l.trim().is_empty())
                .is_some_and(|l| l.trim_start().starts_with("//!"))
        })
        .map(|file| file.strip_prefix(root).unwrap_or(&file).display().to_string())
        .collect()
}

/// Whether a comment cites an issue by number (`issue 8`, `issues #12`) rather than
/// saying the reason. A number that is part of a word (`issues 4-second tokens`) is not
/// a citation.
pub(crate) fn cites_an_issue(comment: &str) -> bool {
    let lower = comment.to_ascii_lowercase();
    let mut rest = lower.as_str();
    while let Some(at) = rest.find("issue") {
        let before_ok = at == 0 || !rest.as_bytes()[at - 1].is_ascii_alphanumeric();
        let after = rest[at + "issue".len()..].trim_start_matches('s');
        let after = after.trim_start_matches([' ', '#']);
        let digits = after.chars().take_while(char::is_ascii_digit).count();
        let next = after[digits..].chars().next();
        if before_ok && digits > 0 && !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-') {
            return true;
        }
        rest = &rest[at + "issue".len()..];
    }
    false
}

/// Comment lines that cite issue numbers, as `file:line: text`.
pub(crate) fn issue_citations(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for dir in COMMENTED {
        // This file shows citations as examples of what it rejects.
        for file in rust_files(&root.join(dir))
            .into_iter()
            .filter(|f| !f.ends_with("xtask/src/tidy.rs"))
        {
            let text = fs::read_to_string(&file).unwrap_or_default();
            for (number, line) in text.lines().enumerate() {
                let Some(at) = line.find("//") else { continue };
                if cites_an_issue(&line[at..]) {
                    let shown = file.strip_prefix(root).unwrap_or(&file).display().to_string();
                    found.push(format!("{shown}:{}: {}", number + 1, line.trim()));
                }
            }
        }
    }
    found
}

/// The facade's modules that may wait on a tokio timer, and why: every other module of
/// the connection types leaves time to the sans-IO machines and their executor.
const TIMER_MODULES: &[(&str, &str)] = &[
    ("aio/supervisor.rs", "the async executor: the machines' deadlines"),
    (
        "aio/supervision.rs",
        "the executor's bound on one operation the machine timed",
    ),
    (
        "credentials_stream.rs",
        "redis's own connections: it waits the token manager's spread",
    ),
    ("metrics.rs", "the export interval of the metrics reporter"),
];

/// Modules of the facade that use a tokio timer but are not in [`TIMER_MODULES`].
pub(crate) fn timers_outside_the_executor(root: &Path) -> Vec<String> {
    let src = root.join("crates/redis-entraid/src");
    rust_files(&src)
        .into_iter()
        .filter(|file| {
            let relative = file
                .strip_prefix(&src)
                .unwrap_or(file)
                .to_string_lossy()
                .replace('\\', "/");
            !TIMER_MODULES.iter().any(|(allowed, _)| *allowed == relative)
        })
        .filter(|file| {
            fs::read_to_string(file).unwrap_or_default().lines().any(|line| {
                let code = line.split("//").next().unwrap_or_default();
                code.contains("tokio::time")
            })
        })
        .map(|file| file.strip_prefix(root).unwrap_or(&file).display().to_string())
        .collect()
}

/// The code names a backticked span of prose cites: `snake_case` and `CamelCase`
/// identifiers, `CONSTANTS`, paths' segments and `calls()`; plain words are prose.
fn code_names(span: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = span.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        if !(bytes[at].is_ascii_alphabetic() || bytes[at] == b'_') {
            at += 1;
            continue;
        }
        let start = at;
        while at < bytes.len() && (bytes[at].is_ascii_alphanumeric() || bytes[at] == b'_') {
            at += 1;
        }
        let word = &span[start..at];
        let called = span[at..].starts_with('(');
        let has_lower = word.bytes().any(|b| b.is_ascii_lowercase());
        let has_upper = word.bytes().any(|b| b.is_ascii_uppercase());
        let camel = word.as_bytes()[0].is_ascii_uppercase() && has_lower && word.len() > 1;
        let snake = word.contains('_') && word.trim_matches('_').contains('_');
        let constant = snake && has_upper && !has_lower;
        if camel || snake || constant || (called && has_lower) {
            names.push(word.to_owned());
        }
    }
    names
}

/// Every file and folder name in the workspace, and the text of its sources and
/// manifests, skipping build output.
fn workspace_corpus(root: &Path) -> (Vec<String>, String) {
    fn walk(dir: &Path, names: &mut Vec<String>, text: &mut String) {
        let Ok(entries) = fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
            if name == "target" || name.starts_with('.') && ![".cargo", ".github", ".ci"].contains(&name.as_str()) {
                continue;
            }
            if path.is_dir() {
                names.push(name);
                walk(&path, names, text);
            } else {
                if path.extension().is_some_and(|e| e == "rs" || e == "toml" || e == "yml") {
                    text.push_str(&fs::read_to_string(&path).unwrap_or_default());
                    text.push('\n');
                }
                names.push(name);
            }
        }
    }
    let (mut names, mut text) = (Vec::new(), String::new());
    walk(root, &mut names, &mut text);
    (names, text)
}

/// Whether `word` stands in `text` as a whole identifier.
fn has_word(text: &str, word: &str) -> bool {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

/// Backticked names in `doc` that name no file, folder or identifier of the workspace.
pub(crate) fn unknown_code_names(doc: &str, names: &[String], code: &str) -> Vec<String> {
    let mut unknown = Vec::new();
    let mut in_block = false;
    for line in doc.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if in_block {
            continue;
        }
        for (index, span) in line.split('`').enumerate() {
            if index % 2 == 0 || span.contains(' ') && !span.contains("::") {
                continue;
            }
            let is_path = span.contains('/') || [".rs", ".md", ".toml", ".yml"].iter().any(|e| span.ends_with(e));
            // Paths of the workspace only: not URLs, absolute paths, HTTP routes, build
            // output or patterns.
            let elsewhere = span.contains("://")
                || span.starts_with('/')
                || span.starts_with("target/")
                || span.contains(['{', '*']);
            if is_path && elsewhere {
                continue;
            }
            if is_path {
                let last = span.trim_end_matches('/').rsplit('/').next().unwrap_or(span);
                if !last.contains('*') && !names.iter().any(|n| n == last) {
                    unknown.push(span.to_owned());
                }
                continue;
            }
            for name in code_names(span) {
                if !has_word(code, &name) && !unknown.contains(&name) {
                    unknown.push(name);
                }
            }
        }
    }
    unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_map() -> String {
        fs::read_to_string(repository_root().join("docs/ARCHITECTURE.md")).expect("docs/ARCHITECTURE.md")
    }

    #[test]
    fn the_code_map_names_every_module() {
        let missing = unmapped_modules(&repository_root(), &code_map());
        assert!(
            missing.is_empty(),
            "docs/ARCHITECTURE.md's code map does not mention these modules; add a line saying what each is:\n{}",
            missing.join("\n")
        );
    }

    #[test]
    fn every_module_starts_with_what_it_is() {
        let undocumented = undocumented_modules(&repository_root());
        assert!(
            undocumented.is_empty(),
            "these modules do not start with a `//!` line saying what they are:\n{}",
            undocumented.join("\n")
        );
    }

    #[test]
    fn comments_give_reasons_not_issue_numbers() {
        let citations = issue_citations(&repository_root());
        assert!(
            citations.is_empty(),
            "these comments cite an issue number; say the reason instead:\n{}",
            citations.join("\n")
        );
    }

    #[test]
    fn the_checks_catch_what_they_are_for() {
        assert!(cites_an_issue("// see issue 8, figure 3"));
        assert!(cites_an_issue("// (issues #12 and #13)"));
        assert!(cites_an_issue("/// Issue 7."));
        assert!(!cites_an_issue("//! The provider issues 4-second tokens"));
        assert!(!cites_an_issue("// a tissue 5 of"));
        assert!(!cites_an_issue("// no issue here"));
        let map = "## Code map\n### `xtask/`\n`main.rs`, `demo.rs`\n### `other`\n`tidy.rs`\n";
        assert_eq!(section(map, "### `xtask/`"), Some("\n`main.rs`, `demo.rs`"));
        let missing = unmapped_modules(&repository_root(), map);
        assert!(missing.iter().any(|m| m == "xtask/src: tidy.rs"), "{missing:?}");
    }

    #[test]
    fn every_code_name_the_architecture_cites_exists() {
        let (names, code) = workspace_corpus(&repository_root());
        let unknown = unknown_code_names(&code_map(), &names, &code);
        assert!(
            unknown.is_empty(),
            "docs/ARCHITECTURE.md cites these names, which no file or identifier of the workspace has \
             (renamed or removed? keep it true):\n{}",
            unknown.join("\n")
        );
    }

    #[test]
    fn the_connection_types_wait_on_no_timer_outside_their_executor() {
        let found = timers_outside_the_executor(&repository_root());
        assert!(
            found.is_empty(),
            "these facade modules use a tokio timer; time is the machines' (a deadline of theirs, \
             waited on by the executor in aio/supervisor.rs), or list the module with its reason:\n{}",
            found.join("\n")
        );
    }

    #[test]
    fn the_name_check_catches_what_it_is_for() {
        let names = vec!["supervisor.rs".to_owned(), "aio".to_owned()];
        let code = "struct Supervisor; fn handle_token() {} const MAX_POLICY_DURATION: u8 = 0;";
        let doc = "The `Supervisor` (`aio/supervisor.rs`) takes `handle_token` and `handle_lost`, \
                   `MAX_POLICY_DURATION`, `LostReports`, `gone()`, `AUTH`, `PING`, `aio/`, `old.rs`, \
                   `redis://`, `/stats`, `target/x.json`.\n\
                   ```text\n`NotChecked`\n```\n";
        assert_eq!(
            unknown_code_names(doc, &names, code),
            vec!["handle_lost", "LostReports", "gone", "old.rs"]
        );
        assert_eq!(
            code_names("TokenManager::builder(provider).start()"),
            vec!["TokenManager", "builder", "start"]
        );
    }
}
