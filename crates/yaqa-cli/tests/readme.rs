//! README.md's examples do what they say (issue #28, item 8). Every `yaqa …` line of its shell blocks
//! names a subcommand that exists, flags that subcommand documents in `--help`, and, for flags with a
//! fixed set of values (`--method`, `--quantizer`, `--sketch`, `--format`), a value that set holds; and
//! every shell block but the two top commands runs as written, in order, on a tiny Llama standing in for
//! the files it names (`model.gguf`, `model-hf/`, `llama-8b/`, the texts), with a `yaqa` on `PATH` that
//! shrinks the sizes meant for real models and a `sbatch` that runs a job array's tasks one by one.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

/// The ```sh blocks of README.md, in order.
fn readme_blocks() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
    let text = std::fs::read_to_string(path).expect("README.md");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let fence = line.trim_start().starts_with("```");
        match (&mut current, fence) {
            (Some(_), true) => blocks.extend(current.take()),
            (None, true) if line.trim_start() == "```sh" => current = Some(String::new()),
            (Some(block), false) => {
                block.push_str(line);
                block.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

/// The `yaqa` command lines of README.md's ```sh blocks, continuation lines joined, comments dropped.
fn readme_commands() -> Vec<String> {
    let mut commands = Vec::new();
    let mut pending = String::new();
    for block in readme_blocks() {
        for line in block.lines() {
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

/// The shell blocks that are not run here, each recognised by a line of it, with the reason.
const NOT_RUN: [(&str, &str); 2] = [
    (
        "cargo run --release -p yaqa-cli -- demo",
        "the demo: about four minutes on SmolLM2-135M; its library job runs in yaqa-model's smollm2 tests",
    ),
    (
        "bash scripts/test.sh",
        "the test suite itself, which runs this test",
    ),
];

/// A `yaqa` for `PATH` that runs this build with the sizes of README's examples, meant for real models,
/// cut to the tiny model's: calibration and evaluation sizes, and fine-tuning steps.
fn shrinking_yaqa(path: &Path) {
    let script = format!(
        r#"#!/usr/bin/env bash
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --n-seqs|--b-seqs) args+=("$1" 8); shift 2;;
    --seq-len|--window) args+=("$1" 32); shift 2;;
    --n-windows) args+=("$1" 2); shift 2;;
    --steps) args+=("$1" 2); shift 2;;
    *) args+=("$1"); shift;;
  esac
done
exec {} "${{args[@]}}"
"#,
        env!("CARGO_BIN_EXE_yaqa")
    );
    executable(path, &script);
}

/// An `sbatch` for `PATH` that runs a `--wait --array=LO-HI --wrap CMD` job array's tasks one after
/// another, each with its `SLURM_ARRAY_TASK_ID`, and fails as soon as one fails.
fn sequential_sbatch(path: &Path) {
    let script = r#"#!/usr/bin/env bash
lo=0; hi=0; cmd=
while [ $# -gt 0 ]; do
  case "$1" in
    --array=*) r=${1#--array=}; lo=${r%-*}; hi=${r#*-};;
    --wrap) cmd=$2; shift;;
    --wait) ;;
    *) echo "this test's sbatch takes --wait, --array=LO-HI and --wrap, not $1" >&2; exit 2;;
  esac
  shift
done
for ((i = lo; i <= hi; i++)); do SLURM_ARRAY_TASK_ID=$i bash -ec "$cmd" || exit 1; done
"#;
    executable(path, script);
}

fn executable(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `n` words of pseudo-English from `seed`, for the calibration, evaluation and fine-tuning texts.
fn prose(seed: u64, n: usize) -> String {
    const WORDS: [&str; 24] = [
        "the",
        "of",
        "and",
        "a",
        "to",
        "in",
        "she",
        "was",
        "her",
        "that",
        "it",
        "had",
        "not",
        "with",
        "Elizabeth",
        "said",
        "letter",
        "house",
        "sister",
        "morning",
        "could",
        "very",
        "would",
        "be",
    ];
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut out = String::new();
    for i in 0..n {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.push_str(WORDS[(state >> 33) as usize % WORDS.len()]);
        out.push_str(if i % 13 == 12 { ".\n" } else { " " });
    }
    out
}

#[test]
fn every_readme_shell_block_runs_on_a_tiny_model() {
    let root = common::scratch("readme-run");
    // 32 blocks, as the layer-group example splits them, with rows that take --group 128 and Q4_0.
    let config = yaqa_model::ModelConfig {
        vocab_size: 256,
        hidden_size: 128,
        intermediate_size: 256,
        n_layers: 32,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 32,
        max_position_embeddings: Some(4096),
        ..yaqa_model::transformer::weights::tiny_config(yaqa_model::Family::Llama, true)
    };
    let model = yaqa_model::Model::synthetic(config, 11);
    let inputs = root.join("inputs");
    std::fs::create_dir_all(inputs.join("bin")).unwrap();
    let tokenizer = inputs.join("tokenizer.json");
    common::byte_tokenizer(&tokenizer);
    common::write_gguf_model(&model, &tokenizer, &inputs.join("model.gguf"));
    shrinking_yaqa(&inputs.join("bin/yaqa"));
    sequential_sbatch(&inputs.join("bin/sbatch"));
    let gguf = inputs.join("model.gguf");
    let hf = inputs.join("model-hf");
    common::ok(&[
        "convert",
        "--model",
        common::s(&gguf),
        "--out",
        common::s(&hf),
    ]);
    let path = format!(
        "{}:{}",
        inputs.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let mut ran = 0;
    for (i, block) in readme_blocks().iter().enumerate() {
        if let Some((_, why)) = NOT_RUN.iter().find(|(line, _)| block.contains(line)) {
            eprintln!("README shell block {i} not run here: {why}");
            continue;
        }
        // Each block in a folder of its own, holding the files it names and does not make.
        let dir = root.join(format!("block{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(&gguf, dir.join("model.gguf")).unwrap();
        std::fs::copy(&gguf, dir.join("base.gguf")).unwrap();
        for (k, name) in ["text1", "text2", "a", "b", "eval", "novel"]
            .iter()
            .enumerate()
        {
            std::fs::write(dir.join(format!("{name}.txt")), prose(k as u64, 10_000)).unwrap();
        }
        for folder in ["model-hf", "llama-8b"] {
            if !block.contains(&format!("--out {folder}/")) {
                copy_folder(&hf, &dir.join(folder));
            }
        }
        let out = std::process::Command::new("bash")
            .args(["-e", "-o", "pipefail", "-c", block])
            .current_dir(&dir)
            .env("PATH", &path)
            .env("NO_COLOR", "1")
            .output()
            .expect("run bash");
        let tail = |b: &[u8]| {
            let t = String::from_utf8_lossy(b).into_owned();
            t[t.len().saturating_sub(3000)..].to_string()
        };
        assert!(
            out.status.success(),
            "README shell block {i} failed ({}):\n{block}\n--- stderr (end):\n{}\n--- stdout (end):\n{}",
            out.status,
            tail(&out.stderr),
            tail(&out.stdout)
        );
        ran += 1;
    }
    assert!(ran >= 4, "ran only {ran} README shell blocks");
    let _ = std::fs::remove_dir_all(&root);
}

fn copy_folder(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}
