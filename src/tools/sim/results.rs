//! What the simulator answers: validation with the documented limits, and
//! plausible results, deterministic for a seed (or a prompt).

use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::picture::{self, Format};
use super::seed::{hash, splitmix};
use super::tasks::{Kind, UPLOAD_STEPS};

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

/// The result item `index` (0-based) of a validated task of `kind`.
/// Images are real pictures of the requested size and format, or, when
/// `fill_bytes` is given (benchmarks that need an exact size), that many
/// bytes of filler.
pub fn result_item(
    kind: Kind,
    task_type: &str,
    task_uuid: &str,
    task: &Map<String, Value>,
    index: u32,
    fill_bytes: Option<usize>,
) -> Value {
    let mut item = Map::new();
    item.insert("taskType".into(), json!(task_type));
    item.insert("taskUUID".into(), json!(task_uuid));
    match kind {
        Kind::Enhance => {
            let prompt = task.get("prompt").and_then(Value::as_str).unwrap_or("");
            let max = task
                .get("promptMaxLength")
                .and_then(Value::as_u64)
                .unwrap_or(400) as u32;
            item.insert("text".into(), json!(enhanced_text(prompt, index, max)));
        }
        Kind::Caption => {
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
        Kind::Image => image_fields(&mut item, "image", task_uuid, task, index, fill_bytes),
        Kind::Mask => {
            image_fields(&mut item, "maskImage", task_uuid, task, index, fill_bytes);
            item.remove("seed");
            item.insert("inputImageUUID".into(), json!(input_uuid(task)));
            item.insert(
                "detections".into(),
                json!([{"x_min": 64, "y_min": 64, "x_max": 448, "y_max": 448}]),
            );
        }
        Kind::Guide => {
            image_fields(&mut item, "guideImage", task_uuid, task, index, fill_bytes);
            item.remove("seed");
            item.insert("inputImageUUID".into(), json!(input_uuid(task)));
        }
        Kind::Vector => {
            let id = uuid_from(hash(&[b"svg", task_uuid.as_bytes()]));
            item.insert("imageUUID".into(), json!(id));
            item.insert(
                "imageURL".into(),
                json!(format!("https://im.runware.ai/image/ws/0.5/ii/{id}.svg")),
            );
        }
        Kind::Text => {
            let (text, prompt_tokens) = answer_text(task, index);
            let completion_tokens = text.split_whitespace().count() as u64;
            item.insert("text".into(), json!(text));
            item.insert("finishReason".into(), json!("stop"));
            item.insert(
                "usage".into(),
                json!({
                    "promptTokens": prompt_tokens,
                    "completionTokens": completion_tokens,
                    "totalTokens": prompt_tokens + completion_tokens,
                }),
            );
        }
        Kind::Audio => {
            let seed = item_seed(task_uuid, task, index);
            let id = uuid_from(hash(&[b"audio", &seed.to_le_bytes()]));
            item.insert("audioUUID".into(), json!(id));
            let wav = task.get("outputFormat").and_then(Value::as_str) == Some("WAV");
            let (extension, mime) = if wav {
                ("wav", "audio/wav")
            } else {
                ("mp3", "audio/mpeg")
            };
            match task
                .get("outputType")
                .and_then(Value::as_str)
                .unwrap_or("URL")
            {
                "base64Data" => {
                    item.insert("audioBase64Data".into(), json!(silent_audio_base64(wav)));
                }
                "dataURI" => {
                    item.insert(
                        "audioDataURI".into(),
                        json!(format!("data:{mime};base64,{}", silent_audio_base64(wav))),
                    );
                }
                _ => {
                    item.insert(
                        "audioURL".into(),
                        json!(format!(
                            "https://am.runware.ai/audio/ws/0.5/ai/{id}.{extension}"
                        )),
                    );
                }
            }
            item.insert("seed".into(), json!(seed));
        }
        Kind::Object3d => {
            let seed = item_seed(task_uuid, task, index);
            let id = uuid_from(hash(&[b"3d", &seed.to_le_bytes()]));
            item.insert(
                "outputs".into(),
                json!({"files": [{
                    "uuid": id,
                    "url": format!("https://om.runware.ai/3d/ws/0.5/3d/{id}.glb"),
                    "format": "GLB",
                }]}),
            );
            item.insert("seed".into(), json!(seed));
        }
        Kind::ImageUpload => {
            item.insert("imageUUID".into(), json!(input_uuid_of(task, "image")));
        }
        Kind::MediaUpload => {
            item.insert("mediaUUID".into(), json!(input_uuid_of(task, "media")));
        }
        Kind::ModelSearch => {
            let search = task.get("search").and_then(Value::as_str).unwrap_or("");
            let results: Vec<Value> = (1..=3)
                .map(|n| {
                    json!({
                        "air": format!("civitai:{}@{n}", hash(&[search.as_bytes()]) % 100_000),
                        "name": format!("{} {n}", if search.is_empty() { "model" } else { search }),
                        "version": format!("{n}.0"),
                        "category": "checkpoint",
                        "architecture": "flux1d",
                        "type": "base",
                        "tags": ["simulated"],
                        "heroImage": "",
                        "private": false,
                        "comment": "",
                        "defaultWidth": 1024,
                        "defaultHeight": 1024,
                        "defaultSteps": 28,
                        "defaultCFG": 3.5,
                    })
                })
                .collect();
            item.insert("totalResults".into(), json!(results.len()));
            item.insert("results".into(), json!(results));
        }
        Kind::Account => {
            let operation = task.get("operation").and_then(Value::as_str).unwrap_or("");
            item.insert("operation".into(), json!(operation));
            item.insert(
                "organizationUUID".into(),
                json!(uuid_from(hash(&[b"organization"]))),
            );
            item.insert("balance".into(), json!(100.0));
            item.insert("currency".into(), json!("USD"));
        }
        Kind::Video => {
            let seed = item_seed(task_uuid, task, index);
            let video_uuid = uuid_from(hash(&[b"video", &seed.to_le_bytes()]));
            item.insert(
                "videoURL".into(),
                json!(format!(
                    "https://vm.runware.ai/video/ws/0.5/vi/{video_uuid}.mp4"
                )),
            );
            item.insert("videoUUID".into(), json!(video_uuid));
            item.insert("seed".into(), json!(seed));
        }
        Kind::ModelUpload => {
            let step = UPLOAD_STEPS[(index as usize).min(UPLOAD_STEPS.len() - 1)];
            item.insert("status".into(), json!(step));
            item.insert("message".into(), json!(format!("model {step}")));
            item.insert(
                "air".into(),
                task.get("air").cloned().unwrap_or(Value::Null),
            );
        }
    }
    Value::Object(item)
}

/// The seed of result `index`: the request's plus the index, else one
/// made up, deterministic per taskUUID (the image-inference reference
/// lists `seed` in each response item), within Runware's integer range.
pub(super) fn item_seed(task_uuid: &str, task: &Map<String, Value>, index: u32) -> u64 {
    let seed = task
        .get("seed")
        .and_then(Value::as_u64)
        .unwrap_or_else(|| splitmix(hash(&[task_uuid.as_bytes()])) >> 34);
    seed + u64::from(index)
}

/// A text task's answer (the `index`-th of its results) to its last
/// message, and the tokens its messages count (about 5 characters a token).
pub fn answer_text(task: &Map<String, Value>, index: u32) -> (String, u64) {
    let messages = task.get("messages").and_then(Value::as_array);
    let text_of = |m: &Value| {
        m.get("content")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let last = messages
        .and_then(|m| m.last())
        .map(text_of)
        .unwrap_or_default();
    let prompt_chars: usize = messages
        .map(|m| m.iter().map(|m| text_of(m).len()).sum())
        .unwrap_or(0);
    let max_tokens = task
        .get("settings")
        .and_then(|s| s.get("maxTokens"))
        .and_then(Value::as_u64)
        .unwrap_or(64)
        .clamp(1, 4096) as usize;
    let mut words = vec!["You".to_owned(), "asked:".to_owned()];
    words.extend(last.split_whitespace().take(16).map(str::to_owned));
    let mut h = hash(&[last.as_bytes(), &index.to_le_bytes()]);
    while words.len() < 24 {
        h = splitmix(h);
        words.push(STYLE_WORDS[(h % STYLE_WORDS.len() as u64) as usize].to_owned());
    }
    words.truncate(max_tokens);
    (words.join(" "), (prompt_chars as u64).div_ceil(5).max(1))
}

/// The UUID the simulator gives an input image (the same input, the same
/// UUID, as Runware gives one it keeps).
fn input_uuid(task: &Map<String, Value>) -> String {
    input_uuid_of(task, "inputImage")
}

fn input_uuid_of(task: &Map<String, Value>, field: &str) -> String {
    let input = task.get(field).map(Value::to_string).unwrap_or_default();
    uuid_from(hash(&[b"input", input.as_bytes()]))
}

/// A short silent file of the format asked for, base64: a valid WAV (PCM,
/// 8 kHz, a tenth of a second) or an MP3 frame.
fn silent_audio_base64(wav: bool) -> String {
    base64::engine::general_purpose::STANDARD.encode(super::media::silent_audio(wav))
}

/// An image item's fields: its UUID, the image in the `outputType` asked
/// for, its seed, and `NSFWContent` when `checkNSFW` asks; `prefix` names
/// them (`image`, `maskImage`, `guideImage`).
fn image_fields(
    item: &mut Map<String, Value>,
    prefix: &str,
    task_uuid: &str,
    task: &Map<String, Value>,
    index: u32,
    fill_bytes: Option<usize>,
) {
    let seed = item_seed(task_uuid, task, index);
    // The same seed gives the same image, as from Runware.
    let image_uuid = uuid_from(hash(&[b"seed", &seed.to_le_bytes()]));
    let format = Format::from_output_format(task.get("outputFormat").and_then(Value::as_str))
        .unwrap_or(Format::Jpg);
    let base64 = || {
        let bytes = match fill_bytes {
            Some(len) => filler(seed, len),
            None => {
                let (width, height) = image_size(task);
                let quality = task
                    .get("outputQuality")
                    .and_then(Value::as_u64)
                    .map_or(95, |q| q.clamp(20, 99) as u8);
                picture::encode(seed, width, height, format, quality)
            }
        };
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };
    item.insert(format!("{prefix}UUID"), json!(image_uuid));
    match task
        .get("outputType")
        .and_then(Value::as_str)
        .unwrap_or("URL")
    {
        "base64Data" => {
            item.insert(format!("{prefix}Base64Data"), json!(base64()));
        }
        "dataURI" => {
            item.insert(
                format!("{prefix}DataURI"),
                json!(format!("data:{};base64,{}", format.mime(), base64())),
            );
        }
        _ => {
            item.insert(
                format!("{prefix}URL"),
                json!(format!(
                    "https://im.runware.ai/image/ws/0.5/ii/{image_uuid}.{}",
                    format.extension()
                )),
            );
        }
    }
    item.insert("seed".into(), json!(seed));
    if task
        .get("checkNSFW")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        item.insert("NSFWContent".into(), json!(false));
    }
}

/// The size of an image result: imageInference's width and height; an
/// upscale's factor times 512 (the input is not looked at); 512 square
/// otherwise.
pub(super) fn image_size(task: &Map<String, Value>) -> (u32, u32) {
    let dim = |name| {
        task.get(name)
            .and_then(Value::as_u64)
            .map(|n| n.clamp(1, 4096) as u32)
    };
    match (dim("width"), dim("height")) {
        (Some(w), Some(h)) => (w, h),
        _ => {
            let factor = task
                .get("upscaleFactor")
                .and_then(Value::as_f64)
                .map_or(1.0, |f| f.clamp(1.0, 4.0));
            let side = (512.0 * factor) as u32;
            (side, side)
        }
    }
}

/// `len` deterministic bytes standing in for an image of an exact size.
fn filler(seed: u64, len: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(len + 8);
    let mut x = seed;
    while bytes.len() < len {
        x = splitmix(x);
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn results_are_deterministic_for_a_seed() {
        let t = obj(json!({"seed": 42, "outputType": "base64Data"}));
        let a = result_item(Kind::Image, "imageInference", "u1", &t, 1, Some(64));
        let b = result_item(Kind::Image, "imageInference", "u2", &t, 1, Some(64));
        assert_eq!(a["imageUUID"], b["imageUUID"]);
        assert_eq!(a["imageBase64Data"], b["imageBase64Data"]);
        assert_eq!(a["seed"], json!(43));
        let c = result_item(Kind::Image, "imageInference", "u1", &t, 2, Some(64));
        assert_ne!(a["imageUUID"], c["imageUUID"]);
        assert_eq!(enhanced_text("dog", 2, 100), enhanced_text("dog", 2, 100));
        assert!(enhanced_text("dog", 0, 100).starts_with("dog"));
    }

    /// Without a seed in the request, each image still has one: made up,
    /// the same for the same taskUUID, consecutive across its results.
    #[test]
    fn every_image_item_has_a_seed() {
        let t = obj(json!({"outputType": "URL"}));
        let a = result_item(Kind::Image, "imageInference", "u1", &t, 0, Some(64));
        let b = result_item(Kind::Image, "imageInference", "u1", &t, 1, Some(64));
        let again = result_item(Kind::Image, "imageInference", "u1", &t, 0, Some(64));
        let other = result_item(Kind::Image, "imageInference", "u2", &t, 0, Some(64));
        let seed = a["seed"].as_u64().expect("a seed");
        assert_eq!(b["seed"], json!(seed + 1));
        assert_eq!(again["seed"], a["seed"]);
        assert_ne!(other["seed"], a["seed"]);
        assert!(i64::try_from(seed + 1).is_ok(), "fits Runware's integer");
    }

    /// base64 and data URI results are pictures of the requested size and
    /// format; the same seed gives the same bytes.
    #[test]
    fn image_results_are_pictures_of_the_requested_size_and_format() {
        use base64::Engine as _;
        let decode = |b64: &str| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap();
            image::load_from_memory(&bytes).unwrap()
        };
        let t = obj(json!({"seed": 9, "width": 256, "height": 128,
            "outputType": "base64Data", "outputFormat": "PNG"}));
        let a = result_item(Kind::Image, "imageInference", "u1", &t, 0, None);
        let img = decode(a["imageBase64Data"].as_str().unwrap());
        assert_eq!((img.width(), img.height()), (256, 128));
        let again = result_item(Kind::Image, "imageInference", "u2", &t, 0, None);
        assert_eq!(a["imageBase64Data"], again["imageBase64Data"]);

        let t = obj(json!({"width": 128, "height": 128, "outputType": "dataURI",
            "outputFormat": "WEBP"}));
        let a = result_item(Kind::Image, "imageInference", "u1", &t, 0, None);
        let uri = a["imageDataURI"].as_str().unwrap();
        let b64 = uri.strip_prefix("data:image/webp;base64,").expect(uri);
        assert_eq!(decode(b64).width(), 128);

        // An upscale is its factor times 512; a URL names the format.
        let t = obj(json!({"inputImage": "x", "upscaleFactor": 2, "outputType": "base64Data"}));
        let a = result_item(Kind::Image, "upscale", "u1", &t, 0, None);
        assert_eq!(decode(a["imageBase64Data"].as_str().unwrap()).width(), 1024);
        let t = obj(json!({"outputFormat": "PNG"}));
        let a = result_item(Kind::Image, "removeBackground", "u1", &t, 0, None);
        assert!(a["imageURL"].as_str().unwrap().ends_with(".png"));
    }

    #[test]
    fn nsfw_flags_come_only_when_asked() {
        let plain = result_item(
            Kind::Image,
            "imageInference",
            "u1",
            &obj(json!({})),
            0,
            None,
        );
        assert!(plain.get("NSFWContent").is_none());
        let t = obj(json!({"checkNSFW": true}));
        let asked = result_item(Kind::Image, "imageInference", "u1", &t, 0, None);
        assert_eq!(asked["NSFWContent"], json!(false));
        let enhanced = result_item(Kind::Enhance, "promptEnhance", "u1", &t, 0, None);
        assert!(enhanced.get("NSFWContent").is_none());
    }

    #[test]
    fn videos_and_model_uploads_have_their_own_fields() {
        let t = obj(json!({"model": "m", "positivePrompt": "p", "includeCost": true}));
        let v = result_item(Kind::Video, "videoInference", "u1", &t, 0, None);
        assert!(v["videoURL"].as_str().unwrap().ends_with(".mp4"));
        assert!(v["videoUUID"].is_string() && v["seed"].is_u64());
        let t = obj(json!({"air": "me:1@1"}));
        let steps: Vec<Value> = (0..5)
            .map(|i| {
                result_item(Kind::ModelUpload, "modelUpload", "u1", &t, i, None)["status"].clone()
            })
            .collect();
        assert_eq!(steps, json!(UPLOAD_STEPS).as_array().unwrap().clone());
        let last = result_item(Kind::ModelUpload, "modelUpload", "u1", &t, 4, None);
        assert_eq!(last["air"], "me:1@1");
    }
}
