//! A TorchScript model on the CPU or a CUDA device.

use std::path::Path;

use tch::{CModule, Device, Kind, Tensor};

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
        let mut module = CModule::load_on_device(path, device)
            .map_err(|e| ModelError(format!("model.path: cannot load {}: {e}", path.display())))?;
        module.set_eval();
        let mut model = TorchModel {
            module,
            device,
            width,
        };
        model.score(&vec![0.0; width], 1).map_err(|e| {
            ModelError(format!(
                "model.path: {} does not take {width} features per row: {e}",
                path.display()
            ))
        })?;
        Ok(model)
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
        let input = Tensor::from_slice(rows)
            .view([n as i64, self.width as i64])
            .to_device(self.device);
        let output = tch::no_grad(|| self.module.forward_ts(&[input]))
            .map_err(|e| ModelError(format!("forward pass failed: {e}")))?;
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
