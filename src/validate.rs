//! The documented limits of task parameters, checked in one place: by the
//! daemon before a task leaves the host, and by the simulator as Runware
//! does. Only what the documentation states: task types it does not cover
//! are the simulator's own reading (`sim::tasks`), never refused here. Sources: <https://runware.ai/docs/en/tools/prompt-enhancer>,
//! <https://runware.ai/docs/models/llama-3-1-8b-prompt-enhancer> and
//! <https://runware.ai/docs/en/image-inference/api-reference>.

use crate::protocol::{Field, TaskFields};

/// A validation failure, as Runware reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    /// Runware's error code for it.
    pub code: String,
    /// The parameter at fault.
    pub parameter: String,
    /// What is wrong.
    pub message: String,
}

/// A failure of `parameter`, with Runware's code for it (`invalid` and
/// the parameter's name, capitalised).
pub fn invalid(parameter: &str, message: impl Into<String>) -> Invalid {
    let mut chars = parameter.chars();
    let cap: String = match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    };
    Invalid {
        code: format!("invalid{cap}"),
        parameter: parameter.to_owned(),
        message: message.into(),
    }
}

fn check_str_len(
    task: &impl TaskFields,
    name: &str,
    min: usize,
    max: usize,
    required: bool,
) -> Result<(), Invalid> {
    match task.field(name) {
        None if required => Err(invalid(name, format!("{name} is required"))),
        None => Ok(()),
        Some(Field::Str(s)) => {
            let n = s.chars().count();
            if n < min || n > max {
                Err(invalid(
                    name,
                    format!("{name} must be between {min} and {max} characters, got {n}"),
                ))
            } else {
                Ok(())
            }
        }
        Some(_) => Err(invalid(name, format!("{name} must be a string"))),
    }
}

/// Checks an integer parameter is within `min..=max` (and present when `required`).
pub fn check_int(
    task: &impl TaskFields,
    name: &str,
    min: i64,
    max: i64,
    required: bool,
) -> Result<Option<i64>, Invalid> {
    match task.field(name) {
        None if required => Err(invalid(name, format!("{name} is required"))),
        None => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if n >= min && n <= max => Ok(Some(n)),
            _ => Err(invalid(
                name,
                format!("{name} must be an integer between {min} and {max}"),
            )),
        },
    }
}

/// Checks a number parameter is within `min..=max`, when present.
pub fn check_float(task: &impl TaskFields, name: &str, min: f64, max: f64) -> Result<(), Invalid> {
    match task.field(name) {
        None => Ok(()),
        Some(v) => match v.as_f64() {
            Some(n) if n >= min && n <= max => Ok(()),
            _ => Err(invalid(
                name,
                format!("{name} must be a number between {min} and {max}"),
            )),
        },
    }
}

/// Checks a string parameter is one of `allowed`, when present.
pub fn check_enum(task: &impl TaskFields, name: &str, allowed: &[&str]) -> Result<(), Invalid> {
    match task.field(name) {
        None => Ok(()),
        Some(Field::Str(s)) if allowed.contains(&s.as_ref()) => Ok(()),
        Some(_) => Err(invalid(
            name,
            format!("{name} must be one of {}", allowed.join(", ")),
        )),
    }
}

/// Validates a task against the documented limits (prompt-enhancer and
/// image-inference references). Returns how many results it will produce.
pub fn validate(task_type: &str, task: &impl TaskFields) -> Result<u32, Invalid> {
    if let Some(m) = task.field("deliveryMethod") {
        match m.as_str() {
            Some("sync" | "async") => {}
            Some("stream") if task_type == "textInference" => {}
            Some("stream") => {
                return Err(invalid(
                    "deliveryMethod",
                    "deliveryMethod stream is for textInference only",
                ));
            }
            _ => {
                return Err(invalid(
                    "deliveryMethod",
                    "deliveryMethod must be sync, async or (textInference) stream",
                ));
            }
        }
    }
    match task_type {
        "promptEnhance" => {
            check_str_len(task, "prompt", 1, 300, true)?;
            check_int(task, "promptMaxLength", 12, 400, false)?;
            Ok(check_int(task, "promptVersions", 1, 5, false)?.unwrap_or(1) as u32)
        }
        "imageInference" => {
            check_str_len(task, "positivePrompt", 2, 3000, true)?;
            check_str_len(task, "negativePrompt", 2, 3000, false)?;
            match task.field("model") {
                Some(Field::Str(s)) if !s.is_empty() => {}
                _ => return Err(invalid("model", "model is required (an AIR identifier)")),
            }
            for dim in ["width", "height"] {
                let n = check_int(task, dim, 128, 2048, true)?.unwrap_or(0);
                if n % 64 != 0 {
                    return Err(invalid(
                        dim,
                        format!("{dim} must be divisible by 64, got {n}"),
                    ));
                }
            }
            check_int(task, "steps", 1, 100, false)?;
            check_int(task, "seed", 1, i64::MAX, false)?;
            check_float(task, "CFGScale", 0.0, 50.0)?;
            check_int(task, "clipSkip", 0, 2, false)?;
            check_int(task, "outputQuality", 20, 99, false)?;
            check_float(task, "strength", 0.0, 1.0)?;
            check_int(task, "maskMargin", 32, 128, false)?;
            check_enum(task, "outputType", &["URL", "base64Data", "dataURI"])?;
            check_enum(task, "outputFormat", &["JPG", "PNG", "WEBP"])?;
            Ok(check_int(task, "numberResults", 1, 20, false)?.unwrap_or(1) as u32)
        }
        other => Err(Invalid {
            code: "invalidTaskType".to_owned(),
            parameter: "taskType".to_owned(),
            message: format!("unsupported taskType {other:?}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, Value, json};

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn prompt_enhance_limits_on_both_sides() {
        let ok = |v| validate("promptEnhance", &obj(v));
        assert_eq!(
            ok(json!({"prompt": "d", "promptVersions": 5, "promptMaxLength": 12})),
            Ok(5)
        );
        assert_eq!(ok(json!({"prompt": "d", "promptMaxLength": 400})), Ok(1));
        assert_eq!(ok(json!({"prompt": ""})).unwrap_err().code, "invalidPrompt");
        assert_eq!(
            ok(json!({"prompt": "x".repeat(301)}))
                .unwrap_err()
                .parameter,
            "prompt"
        );
        assert!(ok(json!({"prompt": "x".repeat(300)})).is_ok());
        assert_eq!(
            ok(json!({"prompt": "d", "promptVersions": 6}))
                .unwrap_err()
                .code,
            "invalidPromptVersions"
        );
        assert_eq!(
            ok(json!({"prompt": "d", "promptVersions": 0}))
                .unwrap_err()
                .code,
            "invalidPromptVersions"
        );
        assert_eq!(
            ok(json!({"prompt": "d", "promptMaxLength": 11}))
                .unwrap_err()
                .code,
            "invalidPromptMaxLength"
        );
        assert_eq!(
            ok(json!({"prompt": "d", "promptMaxLength": 401}))
                .unwrap_err()
                .code,
            "invalidPromptMaxLength"
        );
    }

    #[test]
    fn image_inference_limits() {
        let base =
            json!({"positivePrompt": "a cat", "model": "m:1@1", "width": 512, "height": 512});
        assert_eq!(validate("imageInference", &obj(base.clone())), Ok(1));
        let with = |k: &str, v: Value| {
            let mut t = obj(base.clone());
            t.insert(k.into(), v);
            validate("imageInference", &t)
        };
        assert_eq!(with("width", json!(500)).unwrap_err().code, "invalidWidth");
        assert_eq!(with("height", json!(64)).unwrap_err().code, "invalidHeight");
        assert_eq!(with("height", json!(2048)), Ok(1));
        assert_eq!(with("numberResults", json!(20)), Ok(20));
        assert_eq!(
            with("numberResults", json!(21)).unwrap_err().code,
            "invalidNumberResults"
        );
        assert_eq!(
            with("positivePrompt", json!("a")).unwrap_err().code,
            "invalidPositivePrompt"
        );
        assert_eq!(
            with("CFGScale", json!(50.5)).unwrap_err().code,
            "invalidCFGScale"
        );
        assert_eq!(
            with("outputType", json!("PDF")).unwrap_err().code,
            "invalidOutputType"
        );
        assert_eq!(
            validate("teleport", &obj(json!({}))).unwrap_err().code,
            "invalidTaskType"
        );
    }
}
