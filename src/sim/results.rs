//! What the simulator answers: validation with the documented limits, and
//! plausible results, deterministic for a seed (or a prompt).

use base64::Engine as _;
use serde_json::{Map, Value, json};

pub use crate::validate::{Invalid, validate};

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
            // Every image item carries its seed (the image-inference
            // reference lists it in each response item): the request's,
            // else one made up, deterministic per taskUUID.
            let seed = seed.unwrap_or_else(|| splitmix(hash(&[task_uuid.as_bytes()])) >> 34);
            item.insert("seed".into(), json!(seed + u64::from(index)));
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

    /// Without a seed in the request, each image still has one: made up,
    /// the same for the same taskUUID, consecutive across its results.
    #[test]
    fn every_image_item_has_a_seed() {
        let t = obj(json!({"outputType": "URL"}));
        let a = result_item("imageInference", "u1", &t, 0, 64);
        let b = result_item("imageInference", "u1", &t, 1, 64);
        let again = result_item("imageInference", "u1", &t, 0, 64);
        let other = result_item("imageInference", "u2", &t, 0, 64);
        let seed = a["seed"].as_u64().expect("a seed");
        assert_eq!(b["seed"], json!(seed + 1));
        assert_eq!(again["seed"], a["seed"]);
        assert_ne!(other["seed"], a["seed"]);
        assert!(i64::try_from(seed + 1).is_ok(), "fits Runware's integer");
    }
}
