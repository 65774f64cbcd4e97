//! The task table's metrics: outcomes and latencies by task type, recorded
//! where tasks end and registered by [`crate::metrics`].

use std::sync::{Arc, OnceLock};

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
    "textInference",
    "3dInference",
    "controlNetPreprocess",
    "vectorize",
    "imageUpload",
    "mediaStorage",
    "accountManagement",
    "getTaskDetails",
];

/// The label value for a task type.
pub fn task_type_label(task_type: &str) -> &'static str {
    KNOWN_TASK_TYPES
        .iter()
        .find(|t| **t == task_type)
        .copied()
        .unwrap_or("other")
}

/// The labels of a task's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    /// Its type's label.
    pub task_type: &'static str,
    /// How it ended.
    pub outcome: &'static str,
}

/// The label of a task type.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    /// Its type's label.
    pub task_type: &'static str,
}

/// Task outcomes and latencies, recorded by the task table.
#[derive(Clone, Debug)]
pub struct TaskMetrics {
    /// Tasks ended, by type and outcome.
    pub ended: Family<TaskLabels, Counter>,
    /// Seconds from submit to the last result, by type.
    pub latency: Family<TypeLabel, Histogram, fn() -> Histogram>,
    /// Each label's `completed` count and latency (by its place in
    /// [`KNOWN_TASK_TYPES`], "other" last), taken from the families on first
    /// use: the commonest end looks nothing up.
    completed: Arc<[OnceLock<(Counter, Histogram)>]>,
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
            completed: (0..=KNOWN_TASK_TYPES.len())
                .map(|_| OnceLock::new())
                .collect(),
        }
    }
}

impl TaskMetrics {
    /// A task of type `label` ([`task_type_label`]) completed after
    /// `seconds`.
    pub fn completed(&self, label: &'static str, seconds: f64) {
        let i = KNOWN_TASK_TYPES
            .iter()
            .position(|t| *t == label)
            .unwrap_or(KNOWN_TASK_TYPES.len());
        // Whatever else is asked for counts as "other", as its label says.
        let label = KNOWN_TASK_TYPES.get(i).copied().unwrap_or("other");
        let (count, latency) = self.completed[i].get_or_init(|| {
            let labels = TaskLabels {
                task_type: label,
                outcome: "completed",
            };
            (
                self.ended.get_or_create(&labels).clone(),
                self.latency
                    .get_or_create(&TypeLabel { task_type: label })
                    .clone(),
            )
        });
        count.inc();
        latency.observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_count_in_the_families_series_whatever_the_label() {
        let m = TaskMetrics::default();
        m.completed("promptEnhance", 0.5);
        m.completed("promptEnhance", 0.5);
        m.completed(task_type_label("somethingNew"), 1.0);
        m.completed("notALabel", 1.0);
        let count = |task_type| {
            m.ended
                .get_or_create(&TaskLabels {
                    task_type,
                    outcome: "completed",
                })
                .get()
        };
        assert_eq!(count("promptEnhance"), 2);
        assert_eq!(count("other"), 2);
        assert_eq!(count("notALabel"), 0);
        assert_eq!(count("imageInference"), 0);
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("latency", "", m.latency.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"latency_count{task_type="promptEnhance"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"latency_count{task_type="other"} 2"#),
            "{text}"
        );
    }
}
