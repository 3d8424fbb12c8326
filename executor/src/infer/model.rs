//! A TorchScript model on the CPU or a CUDA device.

use std::path::Path;

use tch::{CModule, Device, IValue, Kind, TchError, Tensor};

use crate::spec::DeviceSpec;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ModelError(pub String);

/// Scores as a row-major `rows x outputs` matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    pub values: Vec<f32>,
    pub outputs: usize,
}

/// Something that scores rows of features. Runs on the batcher's own thread.
pub trait Scorer: Send + 'static {
    fn input_width(&self) -> usize;
    /// Scores `n` rows of `input_width()` floats each, laid out row after row.
    fn score(&mut self, rows: &[f32], n: usize) -> Result<Scores, ModelError>;
}

/// Whether this node has a CUDA device that libtorch can use.
pub fn gpu_available() -> bool {
    tch::Cuda::is_available()
}

pub struct TorchModel {
    module: CModule,
    device: Device,
    width: usize,
}

impl TorchModel {
    /// Loads a TorchScript file and checks that it takes `width` features per row.
    pub fn load(path: &Path, device: DeviceSpec, width: usize) -> Result<Self, ModelError> {
        let device = match device {
            DeviceSpec::Auto => Device::cuda_if_available(),
            DeviceSpec::Cpu => Device::Cpu,
            DeviceSpec::Cuda if tch::Cuda::is_available() => Device::Cuda(0),
            DeviceSpec::Cuda => {
                return Err(ModelError(
                    "model.device: cuda, but no CUDA device is visible".into(),
                ))
            }
        };
        if !path.is_file() {
            return Err(ModelError(format!(
                "model.path: {} is not a file",
                path.display()
            )));
        }
        let mut module = CModule::load_on_device(path, device).map_err(|e| {
            ModelError(format!(
                "model.path: {} is not a TorchScript model ({}); expected a file saved by \
                 torch.jit.save",
                path.display(),
                torch_message(&e)
            ))
        })?;
        module.set_eval();
        let mut model = TorchModel {
            module,
            device,
            width,
        };
        let zeros = vec![0.0; width];
        let output = model.forward(&zeros, 1).map_err(|e| {
            ModelError(format!(
                "model.path: {} does not take {width} features per row: {e}",
                path.display()
            ))
        })?;
        let what = |e: ModelError| ModelError(format!("model.path: {}: {e}", path.display()));
        let _ = scores_tensor(output).map_err(what)?;
        model.score(&zeros, 1).map_err(what)?;
        Ok(model)
    }

    /// The model's output for `n` rows.
    fn forward(&self, rows: &[f32], n: usize) -> Result<IValue, ModelError> {
        let input = Tensor::from_slice(rows)
            .view([n as i64, self.width as i64])
            .to_device(self.device);
        tch::no_grad(|| self.module.forward_is(&[IValue::Tensor(input)]))
            .map_err(|e| ModelError(format!("forward pass failed: {}", torch_message(&e))))
    }

    pub fn device(&self) -> Device {
        self.device
    }
}

impl Scorer for TorchModel {
    fn input_width(&self) -> usize {
        self.width
    }

    fn score(&mut self, rows: &[f32], n: usize) -> Result<Scores, ModelError> {
        if rows.len() != n * self.width {
            return Err(ModelError(format!(
                "{} values for {n} rows of {}",
                rows.len(),
                self.width
            )));
        }
        if n == 0 {
            return Ok(Scores {
                values: Vec::new(),
                outputs: 1,
            });
        }
        let output = scores_tensor(self.forward(rows, n)?)?;
        let output = output.to_kind(Kind::Float).to_device(Device::Cpu);
        let dims = output.size();
        let outputs = match dims.as_slice() {
            [rows, outputs] if *rows == n as i64 => *outputs as usize,
            [rows] if *rows == n as i64 => 1,
            other => {
                return Err(ModelError(format!(
                    "model returned shape {other:?} for {n} rows"
                )))
            }
        };
        let values = Vec::<f32>::try_from(output.flatten(0, -1))
            .map_err(|e| ModelError(format!("cannot read scores: {e}")))?;
        Ok(Scores { values, outputs })
    }
}

/// The one tensor of scores a model must return.
fn scores_tensor(output: IValue) -> Result<Tensor, ModelError> {
    match output {
        IValue::Tensor(output) => Ok(output),
        IValue::Tuple(values) => Err(ModelError(format!(
            "the model returns a tuple of {} values; expected one tensor of scores, a row per \
             input row",
            values.len()
        ))),
        other => Err(ModelError(format!(
            "the model returns {}; expected one tensor of scores, a row per input row",
            ivalue_kind(&other)
        ))),
    }
}

/// The first lines of a libtorch error, without its C++ stack: the whole of it is logged
/// at debug level (`MIRADOR_LOG=debug`).
fn torch_message(error: &TchError) -> String {
    let text = error.to_string();
    tracing::debug!(error = %text, "libtorch error");
    let text = text.strip_prefix("Internal torch error: ").unwrap_or(&text);
    let head = text
        .split("\nException raised from")
        .next()
        .unwrap_or(text)
        .lines()
        .take_while(|line| !line.trim_start().starts_with("frame #"))
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    head.chars().take(400).collect()
}

fn ivalue_kind(value: &IValue) -> &'static str {
    match value {
        IValue::None => "None",
        IValue::Bool(_) => "a bool",
        IValue::Int(_) => "an int",
        IValue::Double(_) => "a float",
        IValue::String(_) => "a string",
        IValue::GenericList(_) | IValue::TensorList(_) | IValue::DoubleList(_) => "a list",
        IValue::GenericDict(_) => "a dict",
        _ => "something other than a tensor",
    }
}
