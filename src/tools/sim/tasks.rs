//! The task types the simulator runs, by their current names and the older
//! ones the SDKs still send, each checked on the fields it cannot run
//! without, and what each produces.
//!
//! promptEnhance and imageInference follow Runware's documentation (their
//! limits are shared with the daemon in [`crate::validate`]). The others
//! follow Runware's page for each type and the official SDKs' request and
//! result types (runware 0.5.24, runware-sdk 1.8.0, @runware/sdk-js
//! 1.3.2): the simulator asks only for what every SDK sends, and answers
//! with the fields their result types read.

use serde_json::{Map, Value};

use crate::validate::{Invalid, check_enum, check_float, check_int, invalid};

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
    /// A `text` answer to `messages`, with `finishReason` and `usage`.
    Text,
    /// Audio items (`audioUUID`, `audioURL` / base64 / data URI, `seed`).
    Audio,
    /// 3D objects (`outputs` naming the mesh file, `seed`).
    Object3d,
    /// A mask of the input image (`maskImageUUID`, `maskImageURL`, ...,
    /// `detections`).
    Mask,
    /// A ControlNet guide image (`guideImageUUID`, `guideImageURL`, ...).
    Guide,
    /// An SVG of the input image (`imageUUID`, `imageURL`).
    Vector,
    /// An uploaded image's `imageUUID`.
    ImageUpload,
    /// A stored media file's `mediaUUID`.
    MediaUpload,
    /// Models matching a search (`results`, `totalResults`).
    ModelSearch,
    /// An answer about the account (`operation` and its figures).
    Account,
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
        "textInference" => {
            require_text(task, "model")?;
            require_messages(task)?;
            if let Some(settings) = task.get("settings") {
                if !settings.is_object() {
                    return Err(invalid("settings", "settings must be an object"));
                }
                check_int(settings_of(task), "maxTokens", 1, 131_072, false)?;
                check_float(settings_of(task), "temperature", 0.0, 2.0)?;
            }
            several(task, Kind::Text, 4)
        }
        "audioInference" => {
            require_text(task, "model")?;
            require_input(task, &["positivePrompt", "inputs", "speech"])?;
            check_float(task, "duration", 1.0, 300.0)?;
            check_enum(task, "outputType", &["URL", "base64Data", "dataURI"])?;
            several(task, Kind::Audio, 4)
        }
        "3dInference" => {
            require_text(task, "model")?;
            require_input(task, &["inputs", "positivePrompt"])?;
            several(task, Kind::Object3d, 4)
        }
        "imageMasking" => {
            require_input(task, &["inputImage", "inputs"])?;
            require_text(task, "model")?;
            one(Kind::Mask)
        }
        "controlNetPreprocess" | "imageControlNetPreProcess" => {
            require_input(task, &["inputImage", "inputs"])?;
            require_text(task, "preProcessorType")?;
            one(Kind::Guide)
        }
        "vectorize" => {
            require_input(task, &["inputs", "inputImage"])?;
            one(Kind::Vector)
        }
        "imageUpload" => {
            require_input(task, &["image"])?;
            one(Kind::ImageUpload)
        }
        "mediaStorage" => {
            require_input(task, &["media"])?;
            one(Kind::MediaUpload)
        }
        "modelSearch" => one(Kind::ModelSearch),
        "accountManagement" => {
            require_text(task, "operation")?;
            one(Kind::Account)
        }
        other => Err(Invalid {
            code: "invalidTaskType".to_owned(),
            parameter: "taskType".to_owned(),
            message: format!("unsupported taskType {other:?}"),
        }),
    }
}

/// A task that makes `numberResults` of what it makes, at most `max`.
fn several(task: &Map<String, Value>, kind: Kind, max: i64) -> Result<Plan, Invalid> {
    let results = check_int(task, "numberResults", 1, max, false)?;
    Ok(Plan {
        kind,
        results: results.unwrap_or(1) as u32,
    })
}

/// A text task's `settings` (empty when it has none).
fn settings_of(task: &Map<String, Value>) -> &Map<String, Value> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    task.get("settings")
        .and_then(Value::as_object)
        .unwrap_or_else(|| EMPTY.get_or_init(Map::new))
}

/// `messages`: a non-empty array of `{role, content}`, the roles those of
/// a chat.
fn require_messages(task: &Map<String, Value>) -> Result<(), Invalid> {
    let Some(Value::Array(messages)) = task.get("messages") else {
        return Err(invalid(
            "messages",
            "messages is required: an array of {role, content}",
        ));
    };
    if messages.is_empty() {
        return Err(invalid(
            "messages",
            "messages must hold at least one message",
        ));
    }
    for m in messages {
        let role = m.get("role").and_then(Value::as_str);
        if !matches!(role, Some("system" | "user" | "assistant" | "tool")) {
            return Err(invalid(
                "messages",
                "each message needs a role: system, user, assistant or tool",
            ));
        }
        if !m
            .get("content")
            .is_some_and(|c| c.is_string() || c.is_array())
        {
            return Err(invalid("messages", "each message needs its content"));
        }
    }
    Ok(())
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
    fn every_type_the_newest_sdk_sends_runs_and_is_checked() {
        let text = json!({"model": "m:1@1", "messages": [{"role": "user", "content": "hi"}],
            "settings": {"maxTokens": 64}, "numberResults": 2});
        assert_eq!(
            plan_of("textInference", text),
            Ok(Plan {
                kind: Kind::Text,
                results: 2
            })
        );
        for (task_type, task, kind) in [
            (
                "audioInference",
                json!({"model": "m", "positivePrompt": "rain"}),
                Kind::Audio,
            ),
            (
                "3dInference",
                json!({"model": "m", "inputs": {"image": "u"}}),
                Kind::Object3d,
            ),
            (
                "imageMasking",
                json!({"model": "m", "inputImage": "u"}),
                Kind::Mask,
            ),
            (
                "controlNetPreprocess",
                json!({"inputImage": "u", "preProcessorType": "canny"}),
                Kind::Guide,
            ),
            ("vectorize", json!({"inputs": {"image": "u"}}), Kind::Vector),
            (
                "imageUpload",
                json!({"image": "data:image/png;base64,AA"}),
                Kind::ImageUpload,
            ),
            (
                "mediaStorage",
                json!({"media": "data:audio/wav;base64,AA"}),
                Kind::MediaUpload,
            ),
            ("modelSearch", json!({"search": "flux"}), Kind::ModelSearch),
            (
                "accountManagement",
                json!({"operation": "getDetails"}),
                Kind::Account,
            ),
        ] {
            assert_eq!(
                plan_of(task_type, task),
                Ok(Plan { kind, results: 1 }),
                "{task_type}"
            );
        }
        for (task_type, task, parameter) in [
            ("textInference", json!({"model": "m"}), "messages"),
            (
                "textInference",
                json!({"model": "m", "messages": []}),
                "messages",
            ),
            (
                "textInference",
                json!({"model": "m", "messages": [{"role": "cat", "content": "x"}]}),
                "messages",
            ),
            (
                "textInference",
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
                    "settings": {"temperature": 9}}),
                "temperature",
            ),
            ("audioInference", json!({"positivePrompt": "p"}), "model"),
            (
                "audioInference",
                json!({"model": "m", "positivePrompt": "p", "duration": 0}),
                "duration",
            ),
            ("3dInference", json!({"model": "m"}), "inputs"),
            ("imageMasking", json!({"model": "m"}), "inputImage"),
            (
                "controlNetPreprocess",
                json!({"inputImage": "u"}),
                "preProcessorType",
            ),
            ("imageUpload", json!({}), "image"),
            ("mediaStorage", json!({}), "media"),
            ("accountManagement", json!({}), "operation"),
        ] {
            let e = plan_of(task_type, task).unwrap_err();
            assert_eq!(e.parameter, parameter, "{task_type}: {e:?}");
        }
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
