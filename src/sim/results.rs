//! What the simulator answers: validation with the documented limits, and
//! plausible results, deterministic for a seed (or a prompt).

use base64::Engine as _;
use serde_json::{Map, Value, json};

/// A validation failure, as Runware reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    pub code: String,
    pub parameter: String,
    pub message: String,
}

fn invalid(parameter: &str, message: impl Into<String>) -> Invalid {
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
    task: &Map<String, Value>,
    name: &str,
    min: usize,
    max: usize,
    required: bool,
) -> Result<(), Invalid> {
    match task.get(name) {
        None if required => Err(invalid(name, format!("{name} is required"))),
        None => Ok(()),
        Some(Value::String(s)) => {
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

fn check_int(
    task: &Map<String, Value>,
    name: &str,
    min: i64,
    max: i64,
    required: bool,
) -> Result<Option<i64>, Invalid> {
    match task.get(name) {
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

fn check_float(task: &Map<String, Value>, name: &str, min: f64, max: f64) -> Result<(), Invalid> {
    match task.get(name) {
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

fn check_enum(task: &Map<String, Value>, name: &str, allowed: &[&str]) -> Result<(), Invalid> {
    match task.get(name) {
        None => Ok(()),
        Some(Value::String(s)) if allowed.contains(&s.as_str()) => Ok(()),
        Some(_) => Err(invalid(
            name,
            format!("{name} must be one of {}", allowed.join(", ")),
        )),
    }
}

/// Validates a task against the documented limits (prompt-enhancer and
/// image-inference references). Returns how many results it will produce.
pub fn validate(task_type: &str, task: &Map<String, Value>) -> Result<u32, Invalid> {
    if let Some(m) = task.get("deliveryMethod") {
        if !matches!(m.as_str(), Some("sync" | "async")) {
            return Err(invalid(
                "deliveryMethod",
                "deliveryMethod must be sync or async",
            ));
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
            match task.get("model") {
                Some(Value::String(s)) if !s.is_empty() => {}
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
        "imageCaption" => {
            check_str_len(task, "inputImage", 1, usize::MAX, true)?;
            Ok(1)
        }
        "imageUpscale" | "removeBackground" => {
            check_str_len(task, "inputImage", 1, usize::MAX, true)?;
            Ok(1)
        }
        other => Err(Invalid {
            code: "invalidTaskType".to_owned(),
            parameter: "taskType".to_owned(),
            message: format!("unsupported taskType {other:?}"),
        }),
    }
}

/// FNV-1a, for deterministic results from text.
pub fn hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn uuid_from(seed: u64) -> String {
    let a = splitmix(seed);
    let b = splitmix(a);
    uuid::Builder::from_random_bytes({
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&a.to_le_bytes());
        bytes[8..].copy_from_slice(&b.to_le_bytes());
        bytes
    })
    .into_uuid()
    .to_string()
}

const STYLE_WORDS: &[&str] = &[
    "cinematic lighting",
    "highly detailed",
    "volumetric fog",
    "sharp focus",
    "golden hour",
    "studio quality",
    "intricate",
    "trending on artstation",
    "soft shadows",
    "octane render",
    "dramatic atmosphere",
    "award winning",
];

/// The `version`-th enhancement of `prompt` (0-based): the same prompt and
/// version always give the same text.
pub fn enhanced_text(prompt: &str, version: u32, max_tokens: u32) -> String {
    let mut text = prompt.to_owned();
    let mut h = hash(&[prompt.as_bytes(), &version.to_le_bytes()]);
    // About 5 characters per token, as the docs say (100 tokens ~ 500 chars).
    let max_chars = (max_tokens as usize * 5).max(prompt.len() + 1);
    for _ in 0..(2 + version as usize) {
        h = splitmix(h);
        let word = STYLE_WORDS[(h % STYLE_WORDS.len() as u64) as usize];
        if text.len() + word.len() + 2 > max_chars {
            break;
        }
        text.push_str(", ");
        text.push_str(word);
    }
    text
}

/// Result items for a validated task; `index` is the result's position.
pub fn result_item(
    task_type: &str,
    task_uuid: &str,
    task: &Map<String, Value>,
    index: u32,
    image_bytes: usize,
) -> Value {
    let mut item = Map::new();
    item.insert("taskType".into(), json!(task_type));
    item.insert("taskUUID".into(), json!(task_uuid));
    let include_cost = task
        .get("includeCost")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    match task_type {
        "promptEnhance" => {
            let prompt = task.get("prompt").and_then(Value::as_str).unwrap_or("");
            let max = task
                .get("promptMaxLength")
                .and_then(Value::as_u64)
                .unwrap_or(400) as u32;
            item.insert("text".into(), json!(enhanced_text(prompt, index, max)));
        }
        "imageCaption" => {
            let input = task.get("inputImage").and_then(Value::as_str).unwrap_or("");
            let h = hash(&[input.as_bytes()]);
            item.insert(
                "text".into(),
                json!(format!(
                    "a photo with {}",
                    STYLE_WORDS[(h % STYLE_WORDS.len() as u64) as usize]
                )),
            );
        }
        _ => {
            // imageInference, imageUpscale, removeBackground: an image.
            let seed = task.get("seed").and_then(Value::as_u64);
            let basis = match seed {
                Some(s) => hash(&[b"seed", &s.to_le_bytes(), &index.to_le_bytes()]),
                None => hash(&[task_uuid.as_bytes(), &index.to_le_bytes()]),
            };
            let image_uuid = uuid_from(basis);
            let format = task
                .get("outputFormat")
                .and_then(Value::as_str)
                .unwrap_or("JPG")
                .to_ascii_lowercase();
            item.insert("imageUUID".into(), json!(image_uuid));
            match task
                .get("outputType")
                .and_then(Value::as_str)
                .unwrap_or("URL")
            {
                "base64Data" => {
                    item.insert(
                        "imageBase64Data".into(),
                        json!(fake_image_base64(basis, image_bytes)),
                    );
                }
                "dataURI" => {
                    item.insert(
                        "imageDataURI".into(),
                        json!(format!(
                            "data:image/{format};base64,{}",
                            fake_image_base64(basis, image_bytes)
                        )),
                    );
                }
                _ => {
                    item.insert(
                        "imageURL".into(),
                        json!(format!(
                            "https://im.runware.ai/image/ws/0.5/ii/{image_uuid}.{format}"
                        )),
                    );
                }
            }
            if let Some(s) = seed {
                item.insert("seed".into(), json!(s + u64::from(index)));
            }
            if task
                .get("checkNSFW")
                .and_then(Value::as_bool)
                .unwrap_or(false)
            {
                item.insert("NSFWContent".into(), json!(false));
            }
        }
    }
    if include_cost {
        item.insert("cost".into(), json!(0.0013));
    }
    Value::Object(item)
}

/// Deterministic bytes standing in for an image, base64-encoded.
pub fn fake_image_base64(seed: u64, len: usize) -> String {
    let mut bytes = Vec::with_capacity(len);
    let mut x = seed;
    while bytes.len() < len {
        x = splitmix(x);
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    bytes.truncate(len);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn results_are_deterministic_for_a_seed() {
        let t = obj(json!({"seed": 42, "outputType": "base64Data"}));
        let a = result_item("imageInference", "u1", &t, 1, 64);
        let b = result_item("imageInference", "u2", &t, 1, 64);
        assert_eq!(a["imageUUID"], b["imageUUID"]);
        assert_eq!(a["imageBase64Data"], b["imageBase64Data"]);
        assert_eq!(a["seed"], json!(43));
        let c = result_item("imageInference", "u1", &t, 2, 64);
        assert_ne!(a["imageUUID"], c["imageUUID"]);
        assert_eq!(enhanced_text("dog", 2, 100), enhanced_text("dog", 2, 100));
        assert!(enhanced_text("dog", 0, 100).starts_with("dog"));
    }
}
