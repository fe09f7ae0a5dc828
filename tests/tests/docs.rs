//! The documentation against the code, so that it cannot drift silently:
//!
//! - `every_flag_is_documented_under_its_subcommand`: each subcommand of `fledge` and
//!   `fledge-agent` (walked from their clap definitions) has a heading in `docs/cli.md`, whose
//!   section starts with a synopsis code block naming the command; each of its long flags is
//!   described in the section's text, and every long flag the synopsis names exists.
//! - `relative_links_point_at_files_and_headings_that_exist`: every relative link in `README.md`
//!   and `docs/*.md` points at a file (or directory) of the repository, and a `#fragment` into a
//!   Markdown file names one of its headings.

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::CommandFactory;
use fledge_tests::workspace_root;

/// A Markdown heading and the text under it, up to the next heading of the same or a higher
/// level.
struct Section {
    title: String,
    body: String,
}

/// Each line, and whether it belongs to a fenced code block (its fences included).
fn fenced(text: &str) -> Vec<(bool, &str)> {
    let mut inside = false;
    text.lines()
        .map(|line| {
            let fence = line.trim_start().starts_with("```");
            let was = inside;
            if fence {
                inside = !inside;
            }
            (was || fence, line)
        })
        .collect()
}

/// The heading on `line` (outside code): its level and its text without `#`s and backticks.
fn heading(line: &str) -> Option<(usize, String)> {
    let level = line.chars().take_while(|c| *c == '#').count();
    if level == 0 || !line[level..].starts_with(' ') {
        return None;
    }
    Some((level, line[level..].trim().replace('`', "")))
}

fn sections(text: &str) -> Vec<Section> {
    let lines = fenced(text);
    let heads: Vec<(usize, usize, String)> = lines
        .iter()
        .enumerate()
        .filter(|(_, (code, _))| !code)
        .filter_map(|(i, (_, l))| heading(l).map(|(level, title)| (i, level, title)))
        .collect();
    heads
        .iter()
        .enumerate()
        .map(|(n, (start, level, title))| {
            let end = heads[n + 1..]
                .iter()
                .find(|(_, l, _)| l <= level)
                .map_or(lines.len(), |(i, _, _)| *i);
            let body = lines[start + 1..end]
                .iter()
                .map(|(_, l)| *l)
                .collect::<Vec<_>>()
                .join("\n");
            Section {
                title: title.clone(),
                body,
            }
        })
        .collect()
}

/// Every `--long-flag` written in `text`.
fn long_flags(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut flags = BTreeSet::new();
    let mut i = 0;
    while let Some(at) = text[i..].find("--") {
        let start = i + at;
        let preceded_ok =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'-');
        let name: String = text[start + 2..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
            .collect();
        if preceded_ok && name.starts_with(|c: char| c.is_ascii_lowercase()) {
            flags.insert(format!("--{}", name.trim_end_matches('-')));
        }
        i = start + 2 + name.len();
    }
    flags
}

/// `(path, long flags)` of every subcommand under `cmd`, depth first: `fledge render`,
/// `fledge-agent pivot`, ….
fn subcommands(cmd: &clap::Command, path: &str, out: &mut Vec<(String, BTreeSet<String>)>) {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let sub_path = format!("{path} {}", sub.get_name());
        let flags = sub
            .get_arguments()
            .filter(|a| !a.is_hide_set())
            .filter_map(|a| a.get_long())
            .filter(|l| !matches!(*l, "help" | "version"))
            .map(|l| format!("--{l}"))
            .collect();
        out.push((sub_path.clone(), flags));
        subcommands(sub, &sub_path, out);
    }
}

/// The first fenced code block of `body`: a subcommand's synopsis.
fn synopsis(body: &str) -> Option<String> {
    let mut lines = body
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("```"));
    lines.next()?;
    Some(
        lines
            .take_while(|l| !l.trim_start().starts_with("```"))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

#[test]
fn every_flag_is_documented_under_its_subcommand() {
    let doc_path = workspace_root().join("docs/cli.md");
    let doc = std::fs::read_to_string(&doc_path)
        .unwrap_or_else(|e| panic!("{}: {e}", doc_path.display()));
    let sections = sections(&doc);
    let mut commands = Vec::new();
    subcommands(
        &fledge_generator::cli::Cli::command(),
        "fledge",
        &mut commands,
    );
    subcommands(
        &fledge_agent::cli::Cli::command(),
        "fledge-agent",
        &mut commands,
    );
    assert!(commands.len() >= 13, "{commands:?}");

    let mut problems = Vec::new();
    for (path, flags) in &commands {
        let Some(section) = sections.iter().find(|s| s.title == *path) else {
            problems.push(format!("no heading `{path}`"));
            continue;
        };
        let synopsis = synopsis(&section.body);
        // Named in the synopsis is not enough: each flag is described in the text below it.
        let prose = match &synopsis {
            Some(s) => section.body.replacen(s.as_str(), "", 1),
            None => section.body.clone(),
        };
        for flag in flags.difference(&long_flags(&prose)) {
            problems.push(format!("`{path}`: {flag} is not described in its section"));
        }
        match synopsis {
            Some(s) if s.contains(path.as_str()) => {
                for flag in long_flags(&s).difference(flags) {
                    problems.push(format!(
                        "`{path}`: the synopsis names {flag}, which it does not take"
                    ));
                }
            }
            _ => problems.push(format!(
                "`{path}`: the section does not start with a synopsis code block naming the command"
            )),
        }
    }
    assert!(
        problems.is_empty(),
        "docs/cli.md is out of step with the command lines:\n  {}",
        problems.join("\n  ")
    );
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens.
fn slug(title: &str) -> String {
    title
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown file's headings, duplicates numbered as GitHub numbers them.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for (code, line) in fenced(text) {
        let Some((_, title)) = heading(line).filter(|_| !code) else {
            continue;
        };
        let base = slug(&title);
        let mut anchor = base.clone();
        let mut n = 0;
        while seen.contains(&anchor) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        seen.insert(anchor);
    }
    seen
}

/// The targets of the inline links `[text](target)` in `text`, outside code.
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    for (code, line) in fenced(text) {
        if code {
            continue;
        }
        // Drop code spans: what they hold is not a link.
        let plain: String = line
            .split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, s)| s)
            .collect::<Vec<_>>()
            .join("");
        let mut rest = plain.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            let target = after[..end].split_whitespace().next().unwrap_or_default();
            targets.push(target.to_string());
            rest = &after[end..];
        }
    }
    targets
}

fn markdown_files() -> Vec<PathBuf> {
    let root = workspace_root();
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    assert!(!docs.is_empty(), "docs/ holds no Markdown file");
    files.extend(docs);
    files
}

#[test]
fn relative_links_point_at_files_and_headings_that_exist() {
    let root = workspace_root()
        .canonicalize()
        .expect("the workspace root exists");
    let mut problems = Vec::new();
    let mut checked = 0;
    for file in markdown_files() {
        let file = file.canonicalize().unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .display()
            .to_string();
        let dir = file.parent().unwrap();
        for target in link_targets(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, fragment) = target.split_once('#').unwrap_or((&target, ""));
            let resolved: PathBuf = if path.is_empty() {
                file.clone()
            } else {
                dir.join(path)
            };
            let Ok(resolved) = resolved.canonicalize() else {
                problems.push(format!("{name}: {target}: no such file"));
                continue;
            };
            if !resolved.starts_with(&root) {
                problems.push(format!("{name}: {target}: outside the repository"));
                continue;
            }
            if fragment.is_empty() {
                continue;
            }
            if resolved.extension().is_some_and(|x| x == "md") {
                let target_text = std::fs::read_to_string(&resolved).unwrap();
                if !anchors(&target_text).contains(fragment) {
                    problems.push(format!("{name}: {target}: no such heading"));
                }
            }
        }
    }
    assert!(checked > 0, "no relative link found: is the parser broken?");
    assert!(
        problems.is_empty(),
        "broken links in the documentation:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn the_checks_themselves_find_what_they_look_for() {
    assert_eq!(
        long_flags("x [--dry-run[=none]] --out DIR -o --wait=30m a--b `--x-`"),
        ["--dry-run", "--out", "--wait", "--x"]
            .map(String::from)
            .into()
    );
    let doc = "# T\n## `a b`\ntext\n```\n# not a heading\n```\n### c\nmore\n## d\n";
    let s = sections(doc);
    let titles: Vec<&str> = s.iter().map(|s| s.title.as_str()).collect();
    assert_eq!(titles, ["T", "a b", "c", "d"]);
    assert!(s[1].body.contains("# not a heading") && s[1].body.contains("more"));
    assert!(!s[2].body.contains("## d"));
    assert_eq!(
        link_targets("see [x](a.md#b) and `[y](z.md)` and [w](https://e.x)\n```\n[q](r)\n```"),
        ["a.md#b", "https://e.x"]
    );
    assert_eq!(
        slug("Every control-plane node runs the agent; one leads"),
        "every-control-plane-node-runs-the-agent-one-leads"
    );
    assert_eq!(
        slug("CP-A's cloud-init (DIR/cp-a/)"),
        "cp-as-cloud-init-dircp-a"
    );
    let a = anchors("# A\n## A\n```\n# B\n```\n");
    assert_eq!(a, ["a", "a-1"].map(String::from).into());
}
