#![no_main]
//! libFuzzer on `targets::generation_config` (see fuzz/targets.rs).

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::generation_config(data));
