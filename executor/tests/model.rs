//! The demo model, loaded through libtorch, gives the scores its training script recorded.

mod common;

use mirador_executor::infer::{Scorer, TorchModel};
use mirador_executor::spec::DeviceSpec;
use serde::Deserialize;

#[derive(Deserialize)]
struct Expected {
    input_width: usize,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    input: Vec<f32>,
    score: f32,
}

fn expected() -> Expected {
    let text =
        std::fs::read_to_string(common::repo().join("models/propensity-v1.expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn scores_match_the_training_script() {
    let expected = expected();
    let mut model =
        TorchModel::load(&common::demo_model(), DeviceSpec::Cpu, expected.input_width).unwrap();
    let rows: Vec<f32> = expected
        .cases
        .iter()
        .flat_map(|c| c.input.iter().copied())
        .collect();
    let scores = model.score(&rows, expected.cases.len()).unwrap();
    assert_eq!(scores.outputs, 1);
    assert_eq!(scores.values.len(), expected.cases.len());
    for (case, score) in expected.cases.iter().zip(&scores.values) {
        assert!(
            (case.score - score).abs() < 1e-5,
            "input {:?}: {score} != {}",
            case.input,
            case.score
        );
    }
    // One row at a time gives the same scores.
    for case in &expected.cases {
        let one = model.score(&case.input, 1).unwrap();
        assert!((one.values[0] - case.score).abs() < 1e-5);
    }
}

#[test]
fn a_model_of_another_width_is_refused_at_load() {
    let error = TorchModel::load(&common::demo_model(), DeviceSpec::Cpu, 12)
        .err()
        .expect("width 12 is wrong");
    assert!(error.to_string().contains("model.path"), "{error}");
    let error = TorchModel::load(&common::repo().join("models/none.pt"), DeviceSpec::Cpu, 16)
        .err()
        .expect("no file");
    assert!(error.to_string().contains("model.path"), "{error}");
}

#[test]
fn a_file_that_is_not_a_model_is_refused_in_one_line_without_cpp_frames() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.pt");
    std::fs::write(&path, b"this is not a zip archive").unwrap();
    let error = TorchModel::load(&path, DeviceSpec::Cpu, 7)
        .err()
        .expect("refused")
        .to_string();
    assert!(!error.contains('\n'), "one line: {error}");
    assert!(
        !error.contains("frame #") && !error.contains(".cpp"),
        "{error}"
    );
    assert!(error.contains(&path.display().to_string()), "{error}");
    assert!(error.contains("is not a TorchScript model"), "{error}");
    assert!(
        error.contains("torch.jit.save"),
        "what was expected: {error}"
    );
}

/// Saves a TorchScript module made by `python` (the libtorch venv's) at `path`. Scripting
/// reads the class's source, so the program is a file.
fn script_model(path: &std::path::Path, python: &str) {
    let program = path.with_extension("py");
    std::fs::write(
        &program,
        format!(
            "import torch\n{python}\ntorch.jit.script(M()).save({:?})\n",
            path.display().to_string()
        ),
    )
    .unwrap();
    let out = std::process::Command::new("python3")
        .arg(&program)
        .output()
        .expect("python3 of the libtorch venv (`make setup` puts it first on PATH)");
    assert!(
        out.status.success(),
        "python3 with torch is needed to make a test model: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_model_that_returns_a_tuple_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tuple.pt");
    script_model(
        &path,
        "class M(torch.nn.Module):\n    def forward(self, x):\n        return (x.sum(1), x.mean(1))",
    );
    let error = TorchModel::load(&path, DeviceSpec::Cpu, 7)
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains("returns a tuple of 2 values"), "{error}");
    assert!(error.contains("expected one tensor"), "{error}");
    assert!(!error.contains('\n'), "{error}");
}

#[test]
fn auto_uses_cuda_when_there_is_one() {
    let model = TorchModel::load(&common::demo_model(), DeviceSpec::Auto, 16).unwrap();
    assert_eq!(model.device().is_cuda(), tch::Cuda::is_available());
}
