#![no_main]
//! libFuzzer on `targets::chat_template` (see fuzz/targets.rs).

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::chat_template(data));
