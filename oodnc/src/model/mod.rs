//! The CIFAR ResNet-18 and its checkpoints.

pub mod checkpoint;
pub mod resnet;

pub use checkpoint::{encode_checkpoint, load_checkpoint, save_checkpoint, CheckpointMeta};
pub use resnet::{ResNet18, ResNetConfig, Taps, TAP_NAMES};
