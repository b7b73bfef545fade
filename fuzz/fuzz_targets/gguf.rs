#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| yaqa_fuzz::gguf(data));
