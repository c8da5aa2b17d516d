//! Every input the fuzzers kept (fuzz/corpus/<target>/), replayed through the same target
//! bodies: a seconds-long smoke run of the fuzz targets in every test run, with no fuzzing
//! tools needed. A crash the fuzzers found and a fix made is kept in the corpus this way.

#[path = "../fuzz/targets.rs"]
#[allow(dead_code)]
mod targets;

#[test]
fn every_corpus_input_is_answered_without_a_panic() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut replayed = 0;
    for (name, target) in targets::TARGETS {
        let Ok(entries) = std::fs::read_dir(root.join(name)) else {
            continue;
        };
        for entry in entries.flatten() {
            let data = std::fs::read(entry.path()).unwrap();
            target(&data);
            replayed += 1;
        }
    }
    eprintln!("{replayed} corpus inputs replayed");
}
