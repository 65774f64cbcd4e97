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
    let include_cost = task
        .get("includeCost")
        .and_then(Value::as_bool)
        .unwrap_or(false);
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
        Kind::Image => image_fields(&mut item, task_uuid, task, index, fill_bytes),
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
    if include_cost {
        item.insert("cost".into(), json!(0.0013));
    }
    Value::Object(item)
}

/// The seed of result `index`: the request's plus the index, else one
/// made up, deterministic per taskUUID (the image-inference reference
/// lists `seed` in each response item), within Runware's integer range.
fn item_seed(task_uuid: &str, task: &Map<String, Value>, index: u32) -> u64 {
    let seed = task
        .get("seed")
        .and_then(Value::as_u64)
        .unwrap_or_else(|| splitmix(hash(&[task_uuid.as_bytes()])) >> 34);
    seed + u64::from(index)
}

/// An image item's fields: its UUID, the image in the `outputType` asked
/// for, its seed, and `NSFWContent` when `checkNSFW` asks.
fn image_fields(
    item: &mut Map<String, Value>,
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
    item.insert("imageUUID".into(), json!(image_uuid));
    match task
        .get("outputType")
        .and_then(Value::as_str)
        .unwrap_or("URL")
    {
        "base64Data" => {
            item.insert("imageBase64Data".into(), json!(base64()));
        }
        "dataURI" => {
            item.insert(
                "imageDataURI".into(),
                json!(format!("data:{};base64,{}", format.mime(), base64())),
            );
        }
        _ => {
            item.insert(
                "imageURL".into(),
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
fn image_size(task: &Map<String, Value>) -> (u32, u32) {
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
    fn cost_and_nsfw_flags_come_only_when_asked() {
        let plain = result_item(
            Kind::Image,
            "imageInference",
            "u1",
            &obj(json!({})),
            0,
            None,
        );
        assert!(plain.get("cost").is_none() && plain.get("NSFWContent").is_none());
        let t = obj(json!({"includeCost": true, "checkNSFW": true}));
        let asked = result_item(Kind::Image, "imageInference", "u1", &t, 0, None);
        assert!(asked["cost"].as_f64().is_some_and(|c| c > 0.0));
        assert_eq!(asked["NSFWContent"], json!(false));
        let enhanced = result_item(Kind::Enhance, "promptEnhance", "u1", &t, 0, None);
        assert!(enhanced["cost"].is_number() && enhanced.get("NSFWContent").is_none());
    }

    #[test]
    fn videos_and_model_uploads_have_their_own_fields() {
        let t = obj(json!({"model": "m", "positivePrompt": "p", "includeCost": true}));
        let v = result_item(Kind::Video, "videoInference", "u1", &t, 0, None);
        assert!(v["videoURL"].as_str().unwrap().ends_with(".mp4"));
        assert!(v["videoUUID"].is_string() && v["seed"].is_u64() && v["cost"].is_number());
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
