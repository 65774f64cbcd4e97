//! The task table's metrics: outcomes and latencies by task type, recorded
//! where tasks end and registered by [`crate::metrics`].

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// Task types that get their own label value; anything else is "other",
/// so a client cannot grow the label set without bound.
const KNOWN_TASK_TYPES: &[&str] = &[
    "imageInference",
    "promptEnhance",
    "imageCaption",
    "imageUpscale",
    "removeBackground",
    "imageBackgroundRemoval",
    "imageMasking",
    "imageControlNetPreProcess",
    "photoMaker",
    "videoInference",
    "audioInference",
    "modelUpload",
    "modelSearch",
];

/// The label value for a task type.
pub fn task_type_label(task_type: &str) -> &'static str {
    KNOWN_TASK_TYPES
        .iter()
        .find(|t| **t == task_type)
        .copied()
        .unwrap_or("other")
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    pub task_type: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub task_type: &'static str,
}

/// Task outcomes and latencies, recorded by the task table.
#[derive(Clone, Debug)]
pub struct TaskMetrics {
    /// Tasks ended, by type and outcome.
    pub ended: Family<TaskLabels, Counter>,
    /// Seconds from submit to the last result, by type.
    pub latency: Family<TypeLabel, Histogram, fn() -> Histogram>,
}

fn latency_histogram() -> Histogram {
    // 10 ms .. ~5.5 min.
    Histogram::new(exponential_buckets(0.01, 2.0, 16))
}

impl Default for TaskMetrics {
    fn default() -> Self {
        TaskMetrics {
            ended: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
        }
    }
}
