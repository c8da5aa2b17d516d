//! Hostile and broken files (issue 23): checkpoint shards, hub caches and tokenizer.json, each
//! answered by the library with one line naming the file, tensor or variable at fault, never a
//! panic or a hang; and tensors nothing reads reported rather than ignored.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::{copy_fixture, edit_tensors, fixture, FIXTURES};
use moe_runtime::hub::{self, Hub};
use moe_runtime::tokenizer::Tokenizer;
use moe_runtime::{LoadOptions, Model};

/// A single-file checkpoint, and a tensor of it.
const SINGLE: &str = "qwen3_moe-b";
const SOME_TENSOR: &str = "model.layers.1.mlp.experts.3.up_proj.weight";
/// A checkpoint of three shards with an index.
const SHARDED: &str = "mixtral-b";
const SHARD_1: &str = "model-00001-of-00003.safetensors";
const SHARD_2: &str = "model-00002-of-00003.safetensors";
const INDEX: &str = "model.safetensors.index.json";

/// The error of loading `dir`, checked to be one line.
fn load_error(dir: &Path) -> String {
    let e = Model::load(dir, &LoadOptions::default())
        .expect_err("the load should fail")
        .to_string();
    assert!(!e.contains('\n'), "more than one line: {e}");
    e
}

fn one_line(e: impl std::fmt::Display) -> String {
    let e = e.to_string();
    assert!(
        !e.contains('\n') && e.len() < 600,
        "not one short line: {e}"
    );
    e
}

fn mkfifo(path: &Path) {
    let ok = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mkfifo {}", path.display());
}

// ---- Weights that are not numbers ----

/// A NaN or infinity among the weights is found at load and named by its tensor, in every
/// stored form: plain floats in safetensors, and the scales of quantized GGUF blocks read in
/// place. `--check-weights off` loads them.
#[test]
fn weights_that_are_not_finite_are_named_at_load() {
    use moe_runtime::weights::CheckWeights;
    let unchecked = LoadOptions {
        check_weights: CheckWeights::Off,
        ..LoadOptions::default()
    };
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let dir = copy_fixture(SINGLE);
        edit_tensors(dir.path(), |t| {
            let w = &t[SOME_TENSOR];
            let mut values = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            values[5] = f32::INFINITY;
            let broken = Tensor::from_vec(values, w.dims(), &Device::Cpu).unwrap();
            t.insert(SOME_TENSOR.into(), broken.to_dtype(dtype).unwrap());
        });
        let e = load_error(dir.path());
        assert!(
            e.contains(SOME_TENSOR) && e.contains("value 5 of [26, 36] is inf"),
            "{dtype:?}: {e}"
        );
        Model::load(dir.path(), &unchecked).unwrap();
    }

    let source =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf/gpt_oss-b-q8_0.gguf");
    let gguf = moe_runtime::gguf::Gguf::open(&source).unwrap();
    let name = "blk.0.attn_q.weight";
    let tensor = gguf.tensor(name).unwrap();
    assert_eq!(tensor.ggml_type, moe_runtime::gguf::GgmlType::Q8_0);
    let mut bytes = std::fs::read(&source).unwrap();
    // Block 2's scale (its first two bytes) set to f16 NaN.
    let at = tensor.offset() + 2 * 34;
    bytes[at..at + 2].copy_from_slice(&0x7e00u16.to_le_bytes());
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken-q8_0.gguf");
    std::fs::write(&broken, bytes).unwrap();
    let e = load_error(&broken);
    assert!(
        e.contains(name) && e.contains("block 2 has the scale NaN"),
        "{e}"
    );
    Model::load(&broken, &unchecked).unwrap();
}

// ---- Tensors nothing reads ----

#[test]
fn every_bundled_checkpoint_is_read_whole() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs: Vec<PathBuf> = FIXTURES.iter().map(|f| fixture(f)).collect();
    dirs.push(root.join("models/tiny-shakespeare-moe"));
    for entry in std::fs::read_dir(root.join("tests/fixtures/gguf")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".gguf") && (!name.contains("-split-") || name.contains("-00001-")) {
            dirs.push(path);
        }
    }
    for dir in dirs {
        let model = Model::load(&dir, &LoadOptions::default()).unwrap();
        assert!(
            model.unread_tensors().is_empty(),
            "{}: {:?}",
            dir.display(),
            model.unread_tensors()
        );
    }
}

#[test]
fn tensors_nothing_reads_are_reported() {
    let dir = copy_fixture(SINGLE);
    let stray = [
        "model.layers.0.mlp.experts.0.extra_proj.weight",
        "model.rotary_emb.inv_freq",
    ];
    edit_tensors(dir.path(), |t| {
        for name in stray {
            t.insert(
                name.into(),
                Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap(),
            );
        }
    });
    let model = Model::load(dir.path(), &LoadOptions::default()).unwrap();
    assert_eq!(model.unread_tensors(), stray);
}

// ---- Checkpoint files ----

#[test]
fn a_shard_that_is_a_folder_or_a_fifo_is_named_with_what_it_is() {
    let dir = copy_fixture(SHARDED);
    let shard = dir.path().join(SHARD_2);
    std::fs::remove_file(&shard).unwrap();
    std::fs::create_dir(&shard).unwrap();
    let e = load_error(dir.path());
    assert!(
        e.contains(SHARD_2) && e.contains("is a folder, expected a safetensors file"),
        "{e}"
    );

    std::fs::remove_dir(&shard).unwrap();
    mkfifo(&shard);
    let e = load_error(dir.path());
    assert!(
        e.contains(SHARD_2) && e.contains("is a FIFO, expected a safetensors file"),
        "{e}"
    );

    let single = copy_fixture(SINGLE);
    let file = single.path().join("model.safetensors");
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    let e = load_error(single.path());
    assert!(
        e.contains("model.safetensors") && e.contains("a folder"),
        "{e}"
    );
}

/// Rewrites the header of `dir`'s model.safetensors through `edit`, keeping the data.
fn edit_header(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut header);
    let header = header.to_string();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(&path, out).unwrap();
}

#[test]
fn a_header_whose_sizes_disagree_names_the_tensor() {
    // A shape that does not fill its offsets.
    let dir = copy_fixture(SINGLE);
    edit_header(dir.path(), |h| {
        h[SOME_TENSOR]["shape"] = serde_json::json!([26, 35])
    });
    let e = load_error(dir.path());
    assert!(
        e.contains("model.safetensors") && e.contains(SOME_TENSOR) && e.contains("[26, 35]"),
        "{e}"
    );
    // A shape whose size overflows.
    let dir = copy_fixture(SINGLE);
    edit_header(dir.path(), |h| {
        h[SOME_TENSOR]["shape"] = serde_json::json!([u64::MAX, u64::MAX])
    });
    let e = load_error(dir.path());
    assert!(e.contains(SOME_TENSOR) && e.contains("overflows"), "{e}");
    // Data past the last tensor.
    let dir = copy_fixture(SINGLE);
    let path = dir.path().join("model.safetensors");
    let len = std::fs::metadata(&path).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(len + 100).unwrap();
    let e = load_error(dir.path());
    assert!(
        e.contains("model.safetensors") && e.contains("after the header"),
        "{e}"
    );
}

/// Adds `tensors` to shard `shard` of `dir`.
fn add_to_shard(dir: &Path, shard: &str, tensors: HashMap<String, Tensor>) {
    let path = dir.join(shard);
    let mut held = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    held.extend(tensors);
    candle_core::safetensors::save(&held, &path).unwrap();
}

#[test]
fn a_tensor_in_two_shards_is_refused_unless_both_copies_are_the_same() {
    let first =
        candle_core::safetensors::load(fixture(SHARDED).join(SHARD_1), &Device::Cpu).unwrap();
    let (name, tensor) = first.iter().next().unwrap();

    let dir = copy_fixture(SHARDED);
    let other = (tensor + 1.0).unwrap();
    add_to_shard(dir.path(), SHARD_2, HashMap::from([(name.clone(), other)]));
    let e = load_error(dir.path());
    assert!(
        e.contains(name) && e.contains(SHARD_1) && e.contains(SHARD_2),
        "{e}"
    );

    // The same bytes twice: harmless, and the index's copy is read.
    let dir = copy_fixture(SHARDED);
    add_to_shard(
        dir.path(),
        SHARD_2,
        HashMap::from([(name.clone(), tensor.clone())]),
    );
    let model = Model::load(dir.path(), &LoadOptions::default()).unwrap();
    assert!(model.unread_tensors().is_empty());
}

#[test]
fn an_index_naming_a_shard_that_lacks_the_tensor_is_refused() {
    let dir = copy_fixture(SHARDED);
    let path = dir.path().join(INDEX);
    let mut index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let map = index["weight_map"].as_object_mut().unwrap();
    let (name, _) = map
        .iter()
        .find(|(_, f)| f.as_str() == Some(SHARD_1))
        .map(|(n, f)| (n.clone(), f.clone()))
        .unwrap();
    map.insert(name.clone(), SHARD_2.into());
    std::fs::write(&path, index.to_string()).unwrap();
    let e = load_error(dir.path());
    assert!(
        e.contains(INDEX) && e.contains(&name) && e.contains(SHARD_2) && e.contains(SHARD_1),
        "{e}"
    );
}

// ---- Hub cache ----

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// `id`'s folder in the cache, with `refs/main` holding `reference`.
fn cached_repo(cache: &Path, id: &str, reference: &str) -> PathBuf {
    let repo = cache.join(format!("models--{}", id.replace('/', "--")));
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), reference).unwrap();
    repo
}

/// A cache holding the fixture `mixtral-a` as `id`; its snapshot folder.
fn fill_cache(cache: &Path, id: &str) -> PathBuf {
    let snapshot = cached_repo(cache, id, COMMIT)
        .join("snapshots")
        .join(COMMIT);
    std::fs::create_dir_all(&snapshot).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("mixtral-a").join(f), snapshot.join(f)).unwrap();
    }
    snapshot
}

fn offline(cache: &Path) -> Hub {
    Hub {
        cache: cache.to_path_buf(),
        offline: Some("HF_HUB_OFFLINE=1 is set".into()),
    }
}

#[test]
fn offline_a_model_not_cached_is_an_error_saying_the_hub_was_not_asked() {
    let cache = tempfile::tempdir().unwrap();
    let e = one_line(
        offline(cache.path())
            .resolve("tiny-org/absent")
            .unwrap_err(),
    );
    assert!(
        e.contains("tiny-org/absent") && e.contains("HF_HUB_OFFLINE") && e.contains("not asked"),
        "{e}"
    );
    let snapshot = fill_cache(cache.path(), "tiny-org/present");
    let hub = offline(cache.path());
    assert_eq!(hub.resolve("tiny-org/present").unwrap(), snapshot);
}

/// The variables HF's libraries read for the cache and for staying offline, set for a child
/// run of [`resolving_with_the_environment_set`] only: the environment is the process's, and
/// the tests of this one run in parallel.
#[test]
fn the_environment_says_where_the_cache_is_and_whether_to_stay_offline() {
    let cache = tempfile::tempdir().unwrap();
    for var in ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "resolving_with_the_environment_set", "--ignored"])
            .args(["--nocapture", "--test-threads", "1"])
            .env_remove("HF_HUB_OFFLINE")
            .env_remove("TRANSFORMERS_OFFLINE")
            .env("HF_HUB_CACHE", cache.path())
            .env(var, "1")
            .env("MOE_EXPECTED_OFFLINE_VAR", var)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{var}: {text}");
        assert!(text.contains("1 passed"), "{var}: {text}");
    }
}

#[test]
#[ignore = "run by the_environment_says_where_the_cache_is_and_whether_to_stay_offline, in a \
            child process with its own environment"]
fn resolving_with_the_environment_set() {
    let Ok(var) = std::env::var("MOE_EXPECTED_OFFLINE_VAR") else {
        return;
    };
    let hub = Hub::from_env().unwrap();
    assert_eq!(
        Some(hub.cache.as_os_str()),
        std::env::var_os("HF_HUB_CACHE").as_deref()
    );
    let e = one_line(hub::resolve("tiny-org/absent").unwrap_err());
    assert!(e.contains(&var) && e.contains("not asked"), "{e}");
}

#[test]
fn a_ref_that_names_no_commit_is_refused_naming_the_file() {
    let cache = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("mixtral-a").join("config.json"),
        outside.path().join("config.json"),
    )
    .unwrap();
    for reference in [
        "../../..".to_string(),
        outside.path().display().to_string(),
        "main".to_string(),
        "x".repeat(5000),
    ] {
        cached_repo(cache.path(), "tiny-org/hostile", &reference);
        let e = one_line(
            offline(cache.path())
                .resolve("tiny-org/hostile")
                .unwrap_err(),
        );
        assert!(
            e.contains("refs/main") && e.contains("expected a commit hash"),
            "{e}"
        );
    }
    // Not a file at all: a FIFO would block a reader.
    let repo = cache.path().join("models--tiny-org--fifo");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    mkfifo(&repo.join("refs/main"));
    let e = one_line(offline(cache.path()).resolve("tiny-org/fifo").unwrap_err());
    assert!(e.contains("refs/main") && e.contains("FIFO"), "{e}");
}

#[test]
fn a_snapshot_or_file_linking_outside_the_cache_is_refused() {
    let cache = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("mixtral-a").join(f), outside.path().join(f)).unwrap();
    }
    // The snapshot folder a link out of the cache.
    let repo = cached_repo(cache.path(), "tiny-org/linked", COMMIT);
    std::fs::create_dir_all(repo.join("snapshots")).unwrap();
    std::os::unix::fs::symlink(outside.path(), repo.join("snapshots").join(COMMIT)).unwrap();
    let e = one_line(
        offline(cache.path())
            .resolve("tiny-org/linked")
            .unwrap_err(),
    );
    assert!(
        e.contains(COMMIT) && e.contains("outside the cache folder"),
        "{e}"
    );
    // One file a link out of the cache (blobs inside it are what HF links to, and are fine).
    let snapshot = fill_cache(cache.path(), "tiny-org/file-linked");
    std::fs::remove_file(snapshot.join("model.safetensors")).unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("model.safetensors"),
        snapshot.join("model.safetensors"),
    )
    .unwrap();
    let e = one_line(
        offline(cache.path())
            .resolve("tiny-org/file-linked")
            .unwrap_err(),
    );
    assert!(
        e.contains("model.safetensors") && e.contains("outside the cache folder"),
        "{e}"
    );
    let blobs = snapshot.parent().unwrap().parent().unwrap().join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::copy(outside.path().join("model.safetensors"), blobs.join("b1")).unwrap();
    std::fs::remove_file(snapshot.join("model.safetensors")).unwrap();
    std::os::unix::fs::symlink("../../blobs/b1", snapshot.join("model.safetensors")).unwrap();
    assert_eq!(
        offline(cache.path())
            .resolve("tiny-org/file-linked")
            .unwrap(),
        snapshot
    );
}

#[test]
fn hub_ids_are_checked_before_use_and_echoed_short() {
    let cache = tempfile::tempdir().unwrap();
    let hub = offline(cache.path());
    let long = format!("org/{}", "a".repeat(5000));
    let e = one_line(hub.resolve(&long).unwrap_err());
    assert!(
        e.contains("at most 96") && e.contains("5004 characters"),
        "{e}"
    );
    for bad in ["org/a--b", "org/-a", "org/a.git", "or g/a"] {
        let e = one_line(hub.resolve(bad).unwrap_err());
        assert!(e.contains(bad) && e.contains("not a hub id"), "{e}");
    }
    let e = one_line(hub.resolve("").unwrap_err());
    assert!(e.contains("the model name is empty"), "{e}");
    let e = one_line(Model::load(Path::new(""), &LoadOptions::default()).unwrap_err());
    assert!(e.contains("the model name is empty"), "{e}");
    let long_path = format!("./{}", "d/".repeat(3000));
    let e = one_line(hub.resolve(&long_path).unwrap_err());
    assert!(e.contains("6002 characters"), "{e}");
}

// ---- tokenizer.json ----

/// A copy of the bundled model's tokenizer files with tokenizer.json replaced by `text`.
fn tokenizer_error(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-shakespeare-moe");
    std::fs::copy(
        src.join("tokenizer_config.json"),
        dir.path().join("tokenizer_config.json"),
    )
    .unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), text).unwrap();
    let e = one_line(Tokenizer::load(dir.path()).err().expect("should fail"));
    assert!(e.contains("tokenizer.json"), "{e}");
    e
}

fn bundled_tokenizer_json() -> serde_json::Value {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-shakespeare-moe/tokenizer.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn a_malformed_tokenizer_json_says_what_is_wrong() {
    let e = tokenizer_error("{\"model\": {\"type\": \"BPE\",\n \"vocab\": {,}}}");
    assert!(e.contains("not valid JSON") && e.contains("line 2"), "{e}");

    let mut json = bundled_tokenizer_json();
    json["model"]["type"] = "Sentencepiece".into();
    let e = tokenizer_error(&json.to_string());
    assert!(
        e.contains("`model.type`") && e.contains("\"Sentencepiece\""),
        "{e}"
    );

    let mut json = bundled_tokenizer_json();
    json["model"].as_object_mut().unwrap().remove("type");
    json["model"]["vocab"] = 7.into();
    let e = tokenizer_error(&json.to_string());
    assert!(
        e.contains("`model` has no `type`") && !e.contains("untagged"),
        "{e}"
    );

    let mut json = bundled_tokenizer_json();
    json.as_object_mut().unwrap().remove("model");
    let e = tokenizer_error(&json.to_string());
    assert!(e.contains("`model` is missing"), "{e}");

    let mut json = bundled_tokenizer_json();
    json["model"]["vocab"] = "x".repeat(100_000).into();
    let e = tokenizer_error(&json.to_string());
    assert!(e.len() < 600, "{e}");
}

#[test]
fn a_tokenizer_json_that_is_not_a_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tokenizer.json")).unwrap();
    let e = one_line(Tokenizer::load(dir.path()).err().expect("should fail"));
    assert!(
        e.contains("tokenizer.json") && e.contains("a folder"),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    mkfifo(&dir.path().join("tokenizer.json"));
    let e = one_line(Tokenizer::load(dir.path()).err().expect("should fail"));
    assert!(e.contains("tokenizer.json") && e.contains("FIFO"), "{e}");
}
