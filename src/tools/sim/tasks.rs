//! The task types the simulator runs, by their current names and the older
//! ones the SDKs still send, each checked on the fields it cannot run
//! without, and what each produces.
//!
//! promptEnhance and imageInference follow Runware's documentation (their
//! limits are shared with the daemon in [`crate::validate`]). The others
//! follow the official SDKs' request types (runware 0.5.24, runware-sdk
//! 1.8.0, @runware/sdk-js 1.3.2), since the documentation here covers only
//! the first two: the simulator asks only for what every SDK sends.

use serde_json::{Map, Value};

use crate::validate::{Invalid, check_float, check_int, invalid};

/// What a task produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `text` items: promptEnhance's versions.
    Enhance,
    /// One `text` item describing the input image.
    Caption,
    /// Image items (`imageUUID`, `imageURL` / base64 / data URI, `seed`).
    Image,
    /// Video items (`videoUUID`, `videoURL`, `seed`); long-running.
    Video,
    /// Status steps (validated, downloaded, optimized, stored), then ready.
    ModelUpload,
}

/// The steps a model upload reports, the last one ending it
/// (`status` of each item; "failed" would end it too).
pub const UPLOAD_STEPS: [&str; 5] = ["validated", "downloaded", "optimized", "stored", "ready"];

/// How the simulator runs one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// What the task does.
    pub kind: Kind,
    /// Items the task produces.
    pub results: u32,
}

/// Checks a task on the fields its type needs and says how it runs.
pub fn plan(task_type: &str, task: &Map<String, Value>) -> Result<Plan, Invalid> {
    let documented =
        |kind| crate::validate::validate(task_type, task).map(|results| Plan { kind, results });
    let one = |kind| Ok(Plan { kind, results: 1 });
    match task_type {
        "promptEnhance" => documented(Kind::Enhance),
        "imageInference" => documented(Kind::Image),
        "caption" | "imageCaption" => {
            require_input(task, &["inputImage", "inputImages", "inputs"])?;
            one(Kind::Caption)
        }
        "upscale" | "imageUpscale" => {
            require_input(task, &["inputImage", "inputs"])?;
            check_float(task, "upscaleFactor", 1.0, 4.0)?;
            one(Kind::Image)
        }
        "removeBackground" | "imageBackgroundRemoval" => {
            require_input(task, &["inputImage", "inputs"])?;
            one(Kind::Image)
        }
        "videoInference" => {
            require_text(task, "model")?;
            if !["positivePrompt", "frameImages", "inputs"]
                .iter()
                .any(|k| task.contains_key(*k))
            {
                return Err(invalid(
                    "positivePrompt",
                    "positivePrompt is required (or frameImages / inputs to start from)",
                ));
            }
            if let Some(d) = task.get("duration") {
                if !d.as_f64().is_some_and(|d| d > 0.0 && d <= 60.0) {
                    return Err(invalid(
                        "duration",
                        "duration must be a number of seconds from 1 to 60",
                    ));
                }
            }
            let results = check_int(task, "numberResults", 1, 4, false)?;
            Ok(Plan {
                kind: Kind::Video,
                results: results.unwrap_or(1) as u32,
            })
        }
        "modelUpload" => {
            for field in [
                "air",
                "name",
                "downloadURL",
                "uniqueIdentifier",
                "version",
                "format",
                "architecture",
                "category",
            ] {
                require_text(task, field)?;
            }
            Ok(Plan {
                kind: Kind::ModelUpload,
                results: UPLOAD_STEPS.len() as u32,
            })
        }
        other => Err(Invalid {
            code: "invalidTaskType".to_owned(),
            parameter: "taskType".to_owned(),
            message: format!("unsupported taskType {other:?}"),
        }),
    }
}

fn require_text(task: &Map<String, Value>, name: &str) -> Result<(), Invalid> {
    match task.get(name) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(()),
        Some(_) => Err(invalid(name, format!("{name} must be a non-empty string"))),
        None => Err(invalid(name, format!("{name} is required"))),
    }
}

/// One of `names` must be given (the first is the one the error names).
fn require_input(task: &Map<String, Value>, names: &[&str]) -> Result<(), Invalid> {
    let given = |v: &Value| match v {
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => false,
    };
    if names.iter().any(|n| task.get(*n).is_some_and(given)) {
        Ok(())
    } else {
        Err(invalid(names[0], format!("{} is required", names[0])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plan_of(task_type: &str, v: Value) -> Result<Plan, Invalid> {
        plan(task_type, v.as_object().unwrap())
    }

    #[test]
    fn every_name_of_a_type_runs_and_is_checked_on_its_required_field() {
        for (names, field, task, kind) in [
            (
                ["caption", "imageCaption"],
                "inputImage",
                json!({"inputImage": "u"}),
                Kind::Caption,
            ),
            (
                ["upscale", "imageUpscale"],
                "inputImage",
                json!({"inputImage": "u", "upscaleFactor": 2}),
                Kind::Image,
            ),
            (
                ["removeBackground", "imageBackgroundRemoval"],
                "inputImage",
                json!({"inputImage": "u"}),
                Kind::Image,
            ),
        ] {
            for name in names {
                assert_eq!(plan_of(name, task.clone()), Ok(Plan { kind, results: 1 }));
                let e = plan_of(name, json!({})).unwrap_err();
                assert_eq!(
                    (e.code.as_str(), e.parameter.as_str()),
                    ("invalidInputImage", field)
                );
            }
        }
        assert!(plan_of("caption", json!({"inputImages": ["u"]})).is_ok());
        assert_eq!(
            plan_of("upscale", json!({"inputImage": "u", "upscaleFactor": 8}))
                .unwrap_err()
                .parameter,
            "upscaleFactor"
        );
    }

    #[test]
    fn video_and_model_upload_plans() {
        let video = json!({"model": "klingai:5@3", "positivePrompt": "a cat", "numberResults": 2});
        assert_eq!(
            plan_of("videoInference", video),
            Ok(Plan {
                kind: Kind::Video,
                results: 2
            })
        );
        let e = plan_of("videoInference", json!({"positivePrompt": "a cat"})).unwrap_err();
        assert_eq!(e.parameter, "model");
        let e = plan_of("videoInference", json!({"model": "m"})).unwrap_err();
        assert_eq!(e.parameter, "positivePrompt");
        let e = plan_of(
            "videoInference",
            json!({"model": "m", "positivePrompt": "p", "duration": 0}),
        )
        .unwrap_err();
        assert_eq!(e.code, "invalidDuration");

        let mut upload = json!({
            "air": "me:1@1", "name": "n", "downloadURL": "https://example.com/m.safetensors",
            "uniqueIdentifier": "u", "version": "1", "format": "safetensors",
            "architecture": "flux1d", "category": "lora",
        });
        assert_eq!(
            plan_of("modelUpload", upload.clone()),
            Ok(Plan {
                kind: Kind::ModelUpload,
                results: 5
            })
        );
        upload.as_object_mut().unwrap().remove("downloadURL");
        assert_eq!(
            plan_of("modelUpload", upload).unwrap_err().code,
            "invalidDownloadURL"
        );
        assert_eq!(
            plan_of("teleport", json!({})).unwrap_err().code,
            "invalidTaskType"
        );
    }
}
