//! The tokenizer rebuilt from the GGUF's own arrays must tokenize exactly like the fixture's
//! `tokenizer.json` (fixture PROVENANCE.md describes how that file was built), since a user's machine
//! without `../shared` only has the GGUF.

mod common;

use yaqa_model::Tokenizer;
use yaqa_model::formats::gguf::GgufFile;

#[test]
fn rebuilt_tokenizer_matches_the_fixture_file() {
    let Some(shared) = common::shared_dir() else {
        return;
    };
    let fixture = shared.join("fixtures/smollm2-135m");
    let gguf = GgufFile::open(fixture.join("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    let rebuilt = Tokenizer::from_gguf(&gguf).unwrap();
    let file = Tokenizer::from_file(fixture.join("tokenizer.json")).unwrap();
    assert_eq!(rebuilt.vocab_size(), file.vocab_size());
    let text = std::fs::read_to_string(shared.join("data/austen/prideprejudice.txt")).unwrap();
    let slice: String = text.chars().skip(20000).take(40000).collect();
    let ids = rebuilt.encode(&slice).unwrap();
    // PROVENANCE.md: 10,049 tokens starting [29, 1141, 1188, 260, 198, 12018, 282, 14786].
    assert_eq!(ids.len(), 10_049);
    assert_eq!(&ids[..8], &[29, 1141, 1188, 260, 198, 12018, 282, 14786]);
    assert_eq!(ids, file.encode(&slice).unwrap());
    assert_eq!(rebuilt.decode(&ids).unwrap(), slice);
    // Digits split one by one, and special tokens are recognised.
    let probe = "In 1813, <|im_start|>user 42<|im_end|>";
    assert_eq!(rebuilt.encode(probe).unwrap(), file.encode(probe).unwrap());
    assert!(rebuilt.encode(probe).unwrap().contains(&1));
}
