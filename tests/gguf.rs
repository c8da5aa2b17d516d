//! The GGUF reader on files written here byte by byte: every value type, alignment, split
//! sets and folders; and bad files, each refused with a message naming what is wrong, among
//! them every truncation of a good file and random corruption (never a panic).

use std::path::{Path, PathBuf};

use moe_runtime::gguf::{GgmlType, Gguf, Value};

/// A GGUF file under construction (version 3, little-endian).
#[derive(Clone)]
struct Writer {
    version: u32,
    metadata: Vec<(String, Vec<u8>)>,
    /// (name, dims in GGUF order, type id, data).
    tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
    alignment: usize,
}

fn string(s: &str) -> Vec<u8> {
    let mut out = (s.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(s.as_bytes());
    out
}

/// A metadata value: its type id, then its bytes.
fn typed(kind: u32, bytes: &[u8]) -> Vec<u8> {
    [&kind.to_le_bytes()[..], bytes].concat()
}

fn string_array(items: &[&str]) -> Vec<u8> {
    let mut out = 8u32.to_le_bytes().to_vec();
    out.extend_from_slice(&(items.len() as u64).to_le_bytes());
    for item in items {
        out.extend(string(item));
    }
    typed(9, &out)
}

impl Writer {
    fn new() -> Writer {
        Writer {
            version: 3,
            metadata: vec![("general.architecture".into(), typed(8, &string("qwen3moe")))],
            tensors: Vec::new(),
            alignment: 32,
        }
    }

    fn meta(mut self, key: &str, value: Vec<u8>) -> Writer {
        self.metadata.push((key.into(), value));
        self
    }

    fn tensor(mut self, name: &str, dims: &[u64], ggml_type: GgmlType) -> Writer {
        let values: u64 = dims.iter().product();
        let bytes = values as usize / ggml_type.block_values() * ggml_type.block_bytes();
        let data = (0..bytes).map(|i| (i * 31 + name.len()) as u8).collect();
        self.tensors
            .push((name.into(), dims.to_vec(), ggml_type.id(), data));
        self
    }

    fn aligned(mut self, alignment: u32) -> Writer {
        self.alignment = alignment as usize;
        self.meta("general.alignment", typed(4, &alignment.to_le_bytes()))
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            out.extend(string(key));
            out.extend_from_slice(value);
        }
        let mut offset = 0usize;
        let mut offsets = Vec::new();
        for (name, dims, kind, data) in &self.tensors {
            out.extend(string(name));
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&kind.to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offsets.push(offset);
            offset = (offset + data.len()).next_multiple_of(self.alignment);
        }
        out.resize(out.len().next_multiple_of(self.alignment), 0);
        let start = out.len();
        for ((_, _, _, data), at) in self.tensors.iter().zip(offsets) {
            out.resize(start + at, 0);
            out.extend_from_slice(data);
        }
        out
    }

    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.bytes()).unwrap();
        path
    }
}

fn good() -> Writer {
    let nested = {
        let mut inner = 4u32.to_le_bytes().to_vec();
        inner.extend_from_slice(&2u64.to_le_bytes());
        inner.extend_from_slice(&7u32.to_le_bytes());
        inner.extend_from_slice(&8u32.to_le_bytes());
        let mut outer = 9u32.to_le_bytes().to_vec();
        outer.extend_from_slice(&1u64.to_le_bytes());
        outer.extend(inner);
        typed(9, &outer)
    };
    Writer::new()
        .meta("qwen3moe.block_count", typed(4, &2u32.to_le_bytes()))
        .meta("qwen3moe.rope.freq_base", typed(6, &1e6f32.to_le_bytes()))
        .meta("general.flag", typed(7, &[1]))
        .meta("general.big", typed(10, &(1u64 << 40).to_le_bytes()))
        .meta("general.neg", typed(5, &(-3i32).to_le_bytes()))
        .meta("general.f64", typed(12, &0.5f64.to_le_bytes()))
        .meta("general.i8", typed(1, &[0xfe]))
        .meta("general.u16", typed(2, &9u16.to_le_bytes()))
        .meta("tokenizer.ggml.tokens", string_array(&["a", "b", "é"]))
        .meta("general.nested", nested)
        .tensor("token_embd.weight", &[8, 5], GgmlType::F32)
        .tensor("blk.0.ffn_gate_exps.weight", &[64, 3, 2], GgmlType::Q8_0)
        .tensor("output_norm.weight", &[8], GgmlType::BF16)
        .tensor("blk.0.attn_q.weight", &[256, 2], GgmlType::Q4K)
}

#[test]
fn every_value_type_and_tensor_reads_back_in_place() {
    let dir = tempfile::tempdir().unwrap();
    for alignment in [32, 64, 4096] {
        let writer = good().aligned(alignment);
        let path = writer.write(dir.path(), "m.gguf");
        let file = Gguf::open(&path).unwrap();
        assert_eq!(file.architecture().unwrap(), "qwen3moe");
        assert_eq!(file.version(), 3);
        assert_eq!(file.u64("qwen3moe.block_count").unwrap(), Some(2));
        assert_eq!(file.f64("qwen3moe.rope.freq_base").unwrap(), Some(1e6));
        assert_eq!(file.u64("general.big").unwrap(), Some(1 << 40));
        assert_eq!(file.get("general.neg"), Some(&Value::I32(-3)));
        assert_eq!(file.get("general.i8"), Some(&Value::I8(-2)));
        assert_eq!(file.get("general.flag"), Some(&Value::Bool(true)));
        assert_eq!(file.f64("general.f64").unwrap(), Some(0.5));
        let tokens = file
            .get("tokenizer.ggml.tokens")
            .unwrap()
            .as_array()
            .unwrap();
        assert_eq!(tokens[2], Value::String("é".into()));
        let nested = Value::Array(vec![Value::Array(vec![Value::U32(7), Value::U32(8)])]);
        assert_eq!(file.get("general.nested"), Some(&nested));
        // Wrong types and absent keys are errors naming the key.
        let err = file.u64("general.arch").unwrap();
        assert_eq!(err, None);
        let err = file.str("qwen3moe.block_count").unwrap_err().to_string();
        assert!(
            err.contains("`qwen3moe.block_count`") && err.contains("m.gguf"),
            "{err}"
        );
        assert!(file.u64("general.neg").is_err());

        assert_eq!(file.tensors().len(), 4);
        for (name, dims, kind, data) in &writer.tensors {
            let t = file.tensor(name).unwrap();
            let dims: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
            assert_eq!(t.dims, dims);
            assert_eq!(t.ggml_type.id(), *kind);
            assert_eq!(file.data(t), &data[..], "{name}");
            let start = file.data(t).as_ptr() as usize;
            let first = file.data(&file.tensors()[0]).as_ptr() as usize;
            assert_eq!((start - first) % alignment as usize, 0, "{name} aligned");
        }
        assert_eq!(
            file.tensor("blk.0.ffn_gate_exps.weight").unwrap().shape(),
            [2, 3, 64]
        );
    }
}

/// Metadata of split part `no` of `count`.
fn part(writer: Writer, no: u16, count: u16, tensors: u32) -> Writer {
    writer
        .meta("split.no", typed(2, &no.to_le_bytes()))
        .meta("split.count", typed(2, &count.to_le_bytes()))
        .meta("split.tensors.count", typed(5, &tensors.to_le_bytes()))
}

#[test]
fn split_sets_read_as_one_file_and_missing_parts_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (1..=3).map(|i| format!("m-{i:05}-of-00003.gguf")).collect();
    let first = part(good(), 0, 3, 6);
    let mut second =
        part(Writer::new(), 1, 3, 6).tensor("blk.1.attn_k.weight", &[32], GgmlType::F16);
    second.metadata.remove(0);
    let third = part(Writer::new(), 2, 3, 6).tensor("output.weight", &[32, 2], GgmlType::Q4_0);
    for (writer, name) in [&first, &second, &third].into_iter().zip(&names) {
        writer.write(dir.path(), name);
    }
    let file = Gguf::open(&dir.path().join(&names[0])).unwrap();
    assert_eq!(file.tensors().len(), 6);
    assert_eq!(file.files().count(), 3);
    let t = file.tensor("output.weight").unwrap();
    assert_eq!(file.data(t), &third.tensors[0].3[..]);
    // The folder holding the set opens as its first file.
    assert_eq!(Gguf::open(dir.path()).unwrap().tensors().len(), 6);

    let err = Gguf::open(&dir.path().join(&names[1]))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not the first file"), "{err}");
    std::fs::remove_file(dir.path().join(&names[2])).unwrap();
    let err = Gguf::open(&dir.path().join(&names[0]))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("m-00003-of-00003.gguf") && err.contains("missing"),
        "{err}"
    );

    // Renamed so that the parts cannot be found.
    let lone = part(good(), 0, 2, 4).write(dir.path(), "renamed.gguf");
    let err = Gguf::open(&lone).err().unwrap().to_string();
    assert!(err.contains("split.count is 2"), "{err}");
}

#[test]
fn a_folder_opens_its_one_gguf_and_refuses_two() {
    let dir = tempfile::tempdir().unwrap();
    let err = Gguf::open(dir.path()).err().unwrap().to_string();
    assert!(err.contains("no .gguf file"), "{err}");
    good().write(dir.path(), "a.gguf");
    assert!(Gguf::open(dir.path()).is_ok());
    good().write(dir.path(), "b.gguf");
    let err = Gguf::open(dir.path()).err().unwrap().to_string();
    assert!(err.contains("a.gguf, b.gguf"), "{err}");
}

/// Opens `bytes` written to a file; the error's text.
fn refusal(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    std::fs::write(&path, bytes).unwrap();
    match Gguf::open(&path) {
        Ok(_) => panic!("accepted a bad file"),
        Err(e) => {
            let text = e.to_string();
            assert!(
                text.contains("bad.gguf"),
                "the error names the file: {text}"
            );
            text
        }
    }
}

#[test]
fn every_truncation_of_a_good_file_is_refused() {
    let bytes = good().bytes();
    for len in 0..bytes.len() {
        refusal(&bytes[..len]);
    }
}

#[test]
fn each_kind_of_bad_header_is_named() {
    let huge = u64::MAX / 2;
    let cases: Vec<(Writer, &str)> = vec![
        (
            good().meta("general.text", typed(8, &huge.to_le_bytes())),
            "longer than",
        ),
        (
            good().meta(
                "general.list",
                typed(9, &[&4u32.to_le_bytes()[..], &huge.to_le_bytes()].concat()),
            ),
            "cannot fit",
        ),
        (
            good().meta("general.odd", typed(13, &[0; 8])),
            "unknown value type 13",
        ),
        (
            good()
                .meta("general.arch", typed(8, &string("x")))
                .meta("general.arch", typed(8, &string("y"))),
            "appears twice",
        ),
        (good().aligned(48), "general.alignment"),
    ];
    for (writer, expected) in cases {
        let err = refusal(&writer.bytes());
        assert!(err.contains(expected), "expected `{expected}` in: {err}");
    }

    let mut unknown = good();
    unknown.tensors[1].2 = 99;
    let err = refusal(&unknown.bytes());
    assert!(
        err.contains("type id 99") && err.contains("blk.0.ffn_gate_exps.weight"),
        "{err}"
    );

    let mut five = good();
    five.tensors[0].1 = vec![1, 1, 1, 1, 40];
    assert!(refusal(&five.bytes()).contains("5 dimensions"));

    let mut twice = good();
    twice.tensors[2].0 = "token_embd.weight".into();
    assert!(refusal(&twice.bytes()).contains("appears twice"));

    let mut ragged = good();
    ragged.tensors[1].1 = vec![48, 3, 2];
    let err = refusal(&ragged.bytes());
    assert!(err.contains("whole Q8_0 blocks"), "{err}");

    let mut enormous = good();
    enormous.tensors[0].1 = vec![1 << 40, 1 << 40];
    let err = refusal(&enormous.bytes());
    assert!(err.contains("token_embd.weight"), "{err}");

    let mut past_end = good().bytes();
    past_end.truncate(past_end.len() - 1);
    assert!(refusal(&past_end).contains("runs past the end"));

    let mut magic = good().bytes();
    magic[0] = b'X';
    assert!(refusal(&magic).contains("not a GGUF file"));
    let mut v1 = good();
    v1.version = 1;
    assert!(refusal(&v1.bytes()).contains("version 1"));
    let mut big_endian = good();
    big_endian.version = 3u32.swap_bytes();
    assert!(refusal(&big_endian.bytes()).contains("big-endian"));
}

#[test]
fn misaligned_tensor_offsets_are_refused() {
    let mut bytes = good().bytes();
    // The second tensor's offset (32, the first is 160 bytes) moved to 33: the last 8 bytes of
    // its info, found by the value written.
    let at = bytes
        .windows(8)
        .position(|w| w == 160u64.to_le_bytes())
        .unwrap();
    bytes[at] = 161;
    let err = refusal(&bytes);
    assert!(err.contains("not a multiple of the alignment"), "{err}");
}

#[test]
fn random_corruption_never_panics() {
    let bytes = good().bytes();
    let mut state = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.gguf");
    for _ in 0..2000 {
        let mut bad = bytes.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % 600) as usize % bad.len();
            bad[at] = next() as u8;
        }
        std::fs::write(&path, &bad).unwrap();
        let _ = Gguf::open(&path);
    }
}

#[test]
fn a_gguf_of_an_architecture_not_supported_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = good();
    writer.metadata[0].1 = typed(8, &string("bert"));
    let path = writer.write(dir.path(), "bert.gguf");
    let err = moe_runtime::Model::load(&path, &Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("bert.gguf") && err.contains("`bert` is not supported"),
        "{err}"
    );
    // A supported architecture with its metadata missing names the key.
    let path = good().write(dir.path(), "bare.gguf");
    let err = moe_runtime::Model::load(&path, &Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("metadata `qwen3moe."), "{err}");
}

#[test]
fn tokenizers_not_read_yet_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let bert = good()
        .meta("tokenizer.ggml.model", typed(8, &string("bert")))
        .write(dir.path(), "bert-vocab.gguf");
    let load = |path: &std::path::Path| {
        moe_runtime::tokenizer::Tokenizer::load(path)
            .err()
            .unwrap()
            .to_string()
    };
    let err = load(&bert);
    assert!(
        err.contains("bert-vocab.gguf") && err.contains("`bert` is not read yet"),
        "{err}"
    );
    // SentencePiece needs a score per token.
    let spm = good()
        .meta("tokenizer.ggml.model", typed(8, &string("llama")))
        .write(dir.path(), "spm.gguf");
    let err = load(&spm);
    assert!(err.contains("tokenizer.ggml.scores"), "{err}");
    // Byte-level BPE: a pre-tokenizer not read, one that is not a string, a merge that is
    // not two tokens.
    let bpe = |pre: Vec<u8>, merge: &str, name: &str| {
        let path = good()
            .meta("tokenizer.ggml.model", typed(8, &string("gpt2")))
            .meta("tokenizer.ggml.merges", string_array(&[merge]))
            .meta("tokenizer.ggml.pre", pre)
            .write(dir.path(), name);
        load(&path)
    };
    let err = bpe(typed(8, &string("chameleon")), "a b", "chameleon.gguf");
    assert!(
        err.contains("chameleon.gguf")
            && err.contains("tokenizer.ggml.pre `chameleon` is not read yet"),
        "{err}"
    );
    let err = bpe(typed(4, &7u32.to_le_bytes()), "a b", "pre-number.gguf");
    assert!(
        err.contains("pre-number.gguf") && err.contains("metadata `tokenizer.ggml.pre` is"),
        "{err}"
    );
    let err = bpe(typed(8, &string("gpt-2")), "ab", "merge.gguf");
    assert!(
        err.contains("merge.gguf") && err.contains("`tokenizer.ggml.merges` entry 0 `ab`"),
        "{err}"
    );
}

#[test]
fn inspect_counts_the_blocks_read_in_place_at_their_stored_size() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gguf/qwen3_moe-k-q4_k_m.gguf");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_moe"))
        .args(["inspect", "--model", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text.lines().find(|l| l.starts_with("memory")).unwrap();
    // Q4_K, Q5_K, Q6_K and Q8_0 tensors (2.2 MiB in the file) stay at their stored size, read
    // in place or (on x86) interleaved in a copy; the norms and router (F32) are read into the
    // compute dtype.
    assert!(line.contains("MiB of blocks read in place"), "{line}");
    let mib = |label: &str| -> f64 {
        let before = line.split(label).next().unwrap();
        before.split(' ').rev().nth(1).unwrap().parse().unwrap()
    };
    let kept = mib("MiB of blocks read in place") + mib("MiB interleaved");
    assert!((2.0..2.3).contains(&kept), "{line}");
}
