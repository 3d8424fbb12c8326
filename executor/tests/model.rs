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
fn auto_uses_cuda_when_there_is_one() {
    let model = TorchModel::load(&common::demo_model(), DeviceSpec::Auto, 16).unwrap();
    assert_eq!(model.device().is_cuda(), tch::Cuda::is_available());
}
