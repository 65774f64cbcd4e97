//! What the simulator charges: a price per result by task type, or by
//! model ahead of it, images scaled by their size, reported like Runware
//! as a `cost` (USD) in each result item when the task asks with
//! `includeCost`. Uploads, searches and account questions are free, as on
//! Runware.

use serde_json::{Map, Value, json};

use super::tasks::Kind;

/// The simulator's prices.
#[derive(Debug, Clone, PartialEq)]
pub struct Pricing {
    /// USD per result, by task type as sent (`imageInference`, ...).
    pub per_type: Vec<(String, f64)>,
    /// USD per result, by model (its AIR), ahead of its type's price.
    pub per_model: Vec<(String, f64)>,
    /// USD per result of a type listed nowhere.
    pub default_usd: f64,
}

/// The size an image's price is quoted for: 1024×1024.
const PRICED_PIXELS: f64 = 1024.0 * 1024.0;

impl Default for Pricing {
    fn default() -> Self {
        let per_type = [
            ("imageInference", 0.0013),
            ("promptEnhance", 0.0002),
            ("textInference", 0.0004),
            ("videoInference", 0.14),
            ("audioInference", 0.01),
            ("3dInference", 0.05),
            ("imageUpscale", 0.002),
            ("upscale", 0.002),
            ("imageCaption", 0.0005),
            ("caption", 0.0005),
            ("imageBackgroundRemoval", 0.0006),
            ("removeBackground", 0.0006),
            ("imageMasking", 0.0006),
            ("vectorize", 0.004),
            ("imageUpload", 0.0),
            ("mediaStorage", 0.0),
            ("modelUpload", 0.0),
            ("modelSearch", 0.0),
            ("accountManagement", 0.0),
        ];
        Pricing {
            per_type: per_type
                .into_iter()
                .map(|(t, usd)| (t.to_owned(), usd))
                .collect(),
            per_model: Vec::new(),
            default_usd: 0.001,
        }
    }
}

impl Pricing {
    /// Sets the price of a model (a name with `:` or `@`, as AIRs are) or
    /// of a task type, replacing the one it had.
    pub fn set(&mut self, name: &str, usd: f64) {
        let list = match name.contains([':', '@']) {
            true => &mut self.per_model,
            false => &mut self.per_type,
        };
        list.retain(|(n, _)| n != name);
        list.push((name.to_owned(), usd));
    }

    /// The price of one result of `task`: its model's, else its type's,
    /// an image's scaled by its pixels against 1024×1024.
    pub fn of_result(&self, kind: Kind, task_type: &str, task: &Map<String, Value>) -> f64 {
        let find = |list: &[(String, f64)], name: Option<&str>| {
            let name = name?;
            list.iter().find(|(n, _)| n == name).map(|&(_, usd)| usd)
        };
        let base = find(&self.per_model, task.get("model").and_then(Value::as_str))
            .or_else(|| find(&self.per_type, Some(task_type)))
            .unwrap_or(self.default_usd);
        let dimension = |k: &str| task.get(k).and_then(Value::as_f64);
        let scale = match (kind, dimension("width"), dimension("height")) {
            (Kind::Image | Kind::Mask | Kind::Guide, Some(w), Some(h)) => w * h / PRICED_PIXELS,
            _ => 1.0,
        };
        // Runware quotes costs to a ten-thousandth of a cent.
        (base * scale * 1e6).round() / 1e6
    }

    /// Adds the result's `cost` to `item` when `task` asks for it.
    pub fn charge(&self, item: &mut Value, kind: Kind, task_type: &str, task: &Map<String, Value>) {
        if task.get("includeCost").and_then(Value::as_bool) != Some(true) {
            return;
        }
        if let Value::Object(m) = item {
            m.insert("cost".into(), json!(self.of_result(kind, task_type, task)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn a_price_by_model_then_by_type_images_by_their_size() {
        let mut p = Pricing::default();
        let square = obj(json!({"width": 1024, "height": 1024, "model": "runware:100@1"}));
        assert_eq!(p.of_result(Kind::Image, "imageInference", &square), 0.0013);
        let small = obj(json!({"width": 512, "height": 512}));
        assert_eq!(p.of_result(Kind::Image, "imageInference", &small), 0.000325);
        p.set("runware:100@1", 0.01);
        assert_eq!(p.of_result(Kind::Image, "imageInference", &square), 0.01);
        p.set("promptEnhance", 0.5);
        assert_eq!(
            p.of_result(Kind::Enhance, "promptEnhance", &obj(json!({}))),
            0.5
        );
        assert_eq!(
            p.of_result(Kind::Enhance, "unheardOf", &obj(json!({}))),
            0.001
        );
        assert_eq!(
            p.of_result(Kind::ModelSearch, "modelSearch", &obj(json!({}))),
            0.0
        );
    }

    #[test]
    fn cost_comes_only_when_asked() {
        let p = Pricing::default();
        let mut item = json!({"taskType": "promptEnhance", "text": "t"});
        p.charge(&mut item, Kind::Enhance, "promptEnhance", &obj(json!({})));
        assert!(item.get("cost").is_none());
        let asked = obj(json!({"includeCost": true}));
        p.charge(&mut item, Kind::Enhance, "promptEnhance", &asked);
        assert_eq!(item["cost"], json!(0.0002));
    }
}
