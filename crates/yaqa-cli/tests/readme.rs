//! README.md's examples say what the command line takes (issue #28, item 8): every `yaqa …` line of its
//! shell blocks names a subcommand that exists, flags that subcommand documents in `--help`, and, for
//! flags with a fixed set of values (`--method`, `--quantizer`, `--sketch`, `--format`), a value that set
//! holds. The examples name files a reader does not have, so they are checked against the parser's
//! help, not run; `cli.rs` and the other tests run the commands themselves.

mod common;

use std::collections::BTreeMap;

/// The `yaqa` command lines of README.md's ```sh blocks, continuation lines joined, comments dropped.
fn readme_commands() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
    let text = std::fs::read_to_string(path).expect("README.md");
    let mut commands = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_sh = line.trim_start() == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        let code = match line.find(" #") {
            Some(i) => &line[..i],
            None if line.trim_start().starts_with('#') => "",
            None => line,
        };
        let code = code.trim_end();
        if let Some(head) = code.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(code);
        let full = std::mem::take(&mut pending);
        // A command inside a quoted wrapper (`sbatch --wrap "yaqa …"`) is checked too.
        if let Some(i) = full.find("yaqa ")
            && (i == 0 || matches!(full.as_bytes()[i - 1], b' ' | b'"'))
        {
            commands.push(full[i..].trim_end_matches('"').to_string());
        }
    }
    commands
}

/// `--flag` → the text of its help entry, for `yaqa <words…> --help`.
fn help_flags(words: &[&str]) -> BTreeMap<String, String> {
    let mut args = words.to_vec();
    args.push("--help");
    let help = common::ok(&args);
    let mut flags = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in help.lines() {
        let t = line.trim_start();
        if t.starts_with('-') {
            let long = t
                .split([' ', ','])
                .find(|w| w.starts_with("--"))
                .map(|w| w.split('=').next().unwrap_or(w).to_string());
            if let Some(l) = &long {
                flags.insert(l.clone(), t.to_string());
            }
            current = long;
        } else if let Some(c) = &current {
            let entry = flags.get_mut(c).expect("current flag");
            entry.push(' ');
            entry.push_str(t);
        }
    }
    flags
}

#[test]
fn every_readme_command_names_flags_and_values_the_cli_takes() {
    let commands = readme_commands();
    assert!(commands.len() >= 20, "found only {commands:?}");
    let mut helps: BTreeMap<Vec<String>, BTreeMap<String, String>> = BTreeMap::new();
    let mut checked = 0;
    for cmd in &commands {
        let tokens: Vec<&str> = cmd.split_whitespace().collect();
        let sub = match tokens.get(1..3) {
            Some([s, "merge"]) => vec![s.to_string(), "merge".to_string()],
            _ => vec![tokens[1].to_string()],
        };
        let flags = helps.entry(sub.clone()).or_insert_with(|| {
            let words: Vec<&str> = sub.iter().map(String::as_str).collect();
            help_flags(&words)
        });
        for (i, tok) in tokens.iter().enumerate() {
            let Some(flag) = tok
                .strip_prefix("--")
                .map(|f| f.split('=').next().unwrap_or(f))
            else {
                continue;
            };
            let flag = format!("--{flag}");
            let entry = flags
                .get(&flag)
                .unwrap_or_else(|| panic!("README: `{cmd}`: yaqa {} has no {flag}", sub.join(" ")));
            checked += 1;
            let value = tokens
                .get(i + 1)
                .filter(|v| !v.starts_with('-') && !v.contains('$'));
            if let (Some(v), Some(list)) = (value, entry.split("[possible values: ").nth(1)) {
                let list = list.split(']').next().unwrap_or("");
                let allowed: Vec<&str> = list.split(", ").collect();
                // Comma-separated lists (`--bits 2,3,4`, `--methods rtn,yaqa-b`) check each item.
                for item in v.split(',') {
                    assert!(
                        allowed.contains(&item),
                        "README: `{cmd}`: {flag} {item} is not one of {allowed:?}"
                    );
                }
            }
        }
    }
    assert!(checked > 60, "only {checked} flags checked");
}
