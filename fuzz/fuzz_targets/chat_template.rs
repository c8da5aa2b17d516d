#![no_main]
//! libFuzzer on `targets::chat_template` (see fuzz/targets.rs).

#[path = "../targets.rs"]
#[allow(dead_code)]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::chat_template(data));
