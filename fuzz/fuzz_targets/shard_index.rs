#![no_main]
//! libFuzzer on `targets::shard_index` (see fuzz/targets.rs).

#[path = "../targets.rs"]
#[allow(dead_code)]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::shard_index(data));
