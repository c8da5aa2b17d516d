//! `moe bench`: the JSON report is complete and self-consistent, from a checkpoint and from a
//! config.json with random weights.

use std::path::Path;

/// The last JSON report of `moe bench ARGS` (short runs).
fn bench(args: &[&str]) -> serde_json::Value {
    bench_reports(args).pop().unwrap()
}

/// Every JSON report of `moe bench ARGS`, a line each.
fn bench_reports(args: &[&str]) -> Vec<serde_json::Value> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_moe"))
        .arg("bench")
        .args([
            "--prompt-len",
            "5",
            "--gen-len",
            "3",
            "--repeats",
            "3",
            "--json",
        ])
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn reports_medians_and_a_roofline() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2_moe-a");
    let from_disk = bench(&["--model", fixture.to_str().unwrap()]);
    for key in ["prefill_tokens_per_s", "decode_tokens_per_s"] {
        assert!(from_disk[key].as_f64().unwrap() > 0.0, "{key}: {from_disk}");
    }
    assert_eq!(from_disk["decode_runs"].as_array().unwrap().len(), 3);
    let roofline = &from_disk["roofline"];
    let cfg = moe_runtime::arch::load(&fixture).unwrap().config;
    let expected_bytes = cfg.decode_read_parameters() as f64 * 4.0;
    assert_eq!(
        roofline["bytes_per_token"].as_f64().unwrap(),
        expected_bytes
    );
    let (bw, limit, fraction) = (
        roofline["bandwidth_gb_s"].as_f64().unwrap(),
        roofline["decode_tokens_per_s_limit"].as_f64().unwrap(),
        roofline["fraction"].as_f64().unwrap(),
    );
    assert!(bw > 0.1, "{roofline}");
    assert!((limit - bw * 1e9 / expected_bytes).abs() < 1e-6 * limit);
    let decode = from_disk["decode_tokens_per_s"].as_f64().unwrap();
    assert!((fraction - decode / limit).abs() < 1e-9);

    // The same shape with random weights reads the same bytes, here in bf16.
    let random = bench(&[
        "--config",
        fixture.join("config.json").to_str().unwrap(),
        "--random-weights",
        "--dtype",
        "bf16",
    ]);
    assert_eq!(random["dtype"], "bf16");
    assert_eq!(
        random["roofline"]["bytes_per_token"].as_f64().unwrap(),
        expected_bytes / 2.0
    );
}

#[test]
fn a_batch_reports_the_whole_batch_and_quantized_weights_their_own_bytes() {
    let batched = bench(&["--batch", "4"]);
    assert_eq!(batched["batch"], 4);
    assert!(batched["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
    // The bandwidth bound is that of one sequence; no fraction is claimed for a batch.
    assert!(batched["roofline"]["fraction"].is_null(), "{batched}");

    // The bundled model's rows are whole blocks of 32.
    let q8 = bench(&["--quant", "q8_0"]);
    assert_eq!(q8["quant"], "q8_0");
    assert_eq!(q8["weight_formats"], serde_json::json!({"q8_0": 1.0}));
    let dir = Path::new(moe_runtime::BUNDLED_MODEL);
    let reads = moe_runtime::arch::load(dir).unwrap().config.decode_reads();
    let expected = (reads.matrices + reads.head) as f64 * 34.0 / 32.0 + reads.other as f64 * 4.0;
    let got = q8["roofline"]["bytes_per_token"].as_f64().unwrap();
    assert!(
        (got - expected).abs() < 1e-6 * expected,
        "{got} vs {expected}"
    );
}

/// Every figure says what it is: core-seconds always; joules from a measured source where
/// the machine has one, else from the estimate asked for, labelled as such; and the skipped
/// sources with their reasons.
#[test]
fn energy_says_what_each_figure_is() {
    let with_estimate = bench(&["--estimate-watts-per-core", "3", "--idle-seconds", "0.1"]);
    let e = &with_estimate["energy"];
    let core = e["decode"]["core_seconds_per_token"].as_f64().unwrap();
    assert!(core > 0.0, "{e}");
    assert_eq!(e["decode"]["tokens"], 9); // 3 repeats of 3 steps
    let sources = e["sources"].as_array().unwrap();
    let estimate = sources.iter().find(|s| s["name"] == "estimate").unwrap();
    assert_eq!(estimate["measured"], false, "{e}");
    if e["measured"] == true {
        // A machine with a sensor: the estimate stays out of the headline.
        assert!(!e["source"].as_str().unwrap().contains("estimate"), "{e}");
    } else {
        assert_eq!(e["source"], "estimate", "{e}");
        assert!(e["note"].as_str().unwrap().contains("ESTIMATE"));
        // 3 W per busy core: the joules are the core-seconds, scaled.
        let joules = e["decode"]["joules_per_token"].as_f64().unwrap();
        assert!((joules - 3.0 * core).abs() <= 0.02 * joules, "{e}");
        let tpj = e["tokens_per_joule"].as_f64().unwrap();
        assert!((tpj * joules - 1.0).abs() < 1e-9, "{e}");
    }

    let plain = bench(&[]);
    let e = &plain["energy"];
    if e["measured"] == false {
        assert_eq!(e["source"], "none", "{e}");
        assert!(e["tokens_per_joule"].is_null() && e["decode"]["joules_per_token"].is_null());
        let skipped = e["skipped"].as_array().unwrap();
        for name in ["nvml", "rapl.powercap", "estimate"] {
            let s = skipped.iter().find(|s| s["source"] == name).unwrap();
            assert!(!s["reason"].as_str().unwrap().is_empty(), "{e}");
        }
    }
    assert!(
        e["prefill"]["core_seconds_per_token"].as_f64().unwrap() > 0.0,
        "{e}"
    );
}

#[test]
fn several_batch_sizes_are_measured_on_one_model_a_line_each() {
    let reports = bench_reports(&["--batch", "1,3"]);
    let batches: Vec<u64> = reports
        .iter()
        .map(|r| r["batch"].as_u64().unwrap())
        .collect();
    assert_eq!(batches, [1, 3]);
    // Both share the bandwidth measured once; only batch 1 claims a fraction of it.
    let roofline = |i: usize| &reports[i]["roofline"];
    assert_eq!(roofline(0)["bandwidth_gb_s"], roofline(1)["bandwidth_gb_s"]);
    assert!(roofline(0)["fraction"].as_f64().unwrap() > 0.0);
    assert!(roofline(1)["fraction"].is_null());
}

#[test]
fn a_gguf_reports_the_formats_it_keeps_and_their_bytes() {
    // Q4_K_M: mostly Q4_K, some Q6_K, Q5_K and Q8_0, all kept as they are.
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf/qwen3_moe-k-q4_k_m.gguf");
    let report = bench(&["--model", path.to_str().unwrap()]);
    let formats = report["weight_formats"].as_object().unwrap();
    let share = |f: &str| formats.get(f).and_then(|v| v.as_f64()).unwrap_or(0.0);
    assert!(share("q4_K") > 0.5, "{formats:?}");
    assert!(
        ["q6_K", "q5_K", "q8_0"].iter().all(|f| share(f) > 0.0),
        "{formats:?}"
    );
    let total: f64 = formats.values().map(|v| v.as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-9);
    // Between Q4_K's 4.5 bits and Q8_0's 8.5 bits per weight of the matrices read.
    let bytes = report["roofline"]["bytes_per_token"].as_f64().unwrap();
    let gguf = moe_runtime::gguf::Gguf::open(&path).unwrap();
    let reads = moe_runtime::gguf::architecture(&gguf)
        .unwrap()
        .0
        .config
        .decode_reads();
    let matrices = (reads.matrices + reads.head) as f64;
    let other = reads.other as f64 * 2.0; // norms and the like, in the bf16 compute dtype
    assert!(
        bytes > matrices * 4.5 / 8.0 + other && bytes < matrices * 8.5 / 8.0 + other,
        "{bytes} bytes for {matrices} matrix weights"
    );
}
