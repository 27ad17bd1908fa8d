//! Tidy checks, run as tests by `cargo xtask test` (rust-analyzer's way): the code map in
//! `docs/ARCHITECTURE.md` names every source module, every module says what it is in a
//! `//!` line, and no comment cites an issue number instead of its reason (issues move
//! and close; the reason is what a reader needs).

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
}
