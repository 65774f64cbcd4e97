//! Typed requests as Runware task JSON: each proto field under its
//! Runware name, a client's JSON objects read once, and refusals that name
//! the proto field.

use super::*;

/// Checks a typed request's task against the documented limits before it
/// leaves the host; the error names the proto field.
pub(super) fn check_documented_limits(task: &ClientTask) -> Result<(), Status> {
    crate::frontend::intake::check_documented_limits(task).map_err(|r| {
        Status::invalid_argument(format!("{}: {}", snake_case(&r.parameter), r.detail))
    })
}

/// `positivePrompt` -> `positive_prompt`, `CFGScale` -> `cfg_scale`: the
/// proto field a typed client set.
pub(super) fn snake_case(camel: &str) -> String {
    let chars: Vec<char> = camel.chars().collect();
    let mut out = String::new();
    for (i, c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() {
            let prev_lower = i > 0 && chars[i - 1].is_ascii_lowercase();
            let acronym_end = i > 0
                && chars[i - 1].is_ascii_uppercase()
                && chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
            if prev_lower || acronym_end {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(*c);
        }
    }
    out
}

/// The client's taskUUID, or a fresh one.
pub(super) fn task_uuid(given: &str) -> Result<TaskUuid, Status> {
    if given.is_empty() {
        return Ok(TaskUuid::new_v4());
    }
    TaskUuid::parse_v4(given)
        .map_err(|e| Status::invalid_argument(format!("task_uuid {given:?}: {e}")))
}

pub(super) fn opt<T: Into<Value>>(map: &mut Map<String, Value>, key: &str, v: Option<T>) {
    if let Some(v) = v {
        map.insert(key.to_owned(), v.into());
    }
}

pub(super) fn non_empty(map: &mut Map<String, Value>, key: &str, v: &str) {
    if !v.is_empty() {
        map.insert(key.to_owned(), json!(v));
    }
}

pub(super) fn strings(map: &mut Map<String, Value>, key: &str, v: &[String]) {
    if !v.is_empty() {
        map.insert(key.to_owned(), json!(v));
    }
}

pub(super) fn object(build: impl FnOnce(&mut Map<String, Value>)) -> Value {
    let mut m = Map::new();
    build(&mut m);
    Value::Object(m)
}

/// A JSON object given as a string (`extra`, `task_json`), naming the
/// parameter when it is not one.
pub(super) fn json_object(param: &str, text: &str) -> Result<Map<String, Value>, Status> {
    if let Err(elements) = json_elements_within(text, MAX_JSON_ELEMENTS) {
        return Err(Status::invalid_argument(format!(
            "{param} has about {elements} JSON values, more than the {MAX_JSON_ELEMENTS} a task may have"
        )));
    }
    match task_object(text) {
        Ok(m) => {
            // The daemon authenticates with its own key; a client's key
            // would be sent to Runware inside a task.
            if let Some(k) = api_key_field(&m) {
                return Err(Status::invalid_argument(format!(
                    "{param}.{k}: the daemon authenticates to Runware with its own key; a task may not carry one"
                )));
            }
            Ok(m)
        }
        Err(ObjectError::NotObject(kind)) => Err(Status::invalid_argument(format!(
            "{param} must be a JSON object, got {kind}"
        ))),
        Err(ObjectError::Duplicate(k)) => Err(Status::invalid_argument(format!(
            "{param}.{k} is given twice; give each key once"
        ))),
        Err(ObjectError::Json(e)) => Err(Status::invalid_argument(format!(
            "{param} is not valid JSON: {e}"
        ))),
    }
}

/// `promptEnhance` task JSON from the typed request.
pub fn prompt_enhance_task(r: &pb::PromptEnhanceRequest) -> Map<String, Value> {
    let mut t = Map::new();
    t.insert("taskType".into(), json!("promptEnhance"));
    t.insert("prompt".into(), json!(r.prompt));
    opt(&mut t, "promptMaxLength", r.prompt_max_length);
    opt(&mut t, "promptVersions", r.prompt_versions);
    opt(&mut t, "includeCost", r.include_cost);
    opt(&mut t, "model", r.model.clone());
    opt(&mut t, "webhookURL", r.webhook_url.clone());
    opt(&mut t, "deliveryMethod", r.delivery_method.clone());
    t
}

/// `imageInference` task JSON from the typed request, `extra` merged under
/// the typed fields.
pub fn image_inference_task(r: &pb::ImageInferenceRequest) -> Result<Map<String, Value>, Status> {
    let mut t = if r.extra.trim().is_empty() {
        Map::new()
    } else {
        json_object("extra", &r.extra)?
    };
    t.insert("taskType".into(), json!("imageInference"));
    t.insert("positivePrompt".into(), json!(r.positive_prompt));
    opt(&mut t, "negativePrompt", r.negative_prompt.clone());
    non_empty(&mut t, "model", &r.model);
    opt(&mut t, "width", r.width);
    opt(&mut t, "height", r.height);
    opt(&mut t, "steps", r.steps);
    opt(&mut t, "scheduler", r.scheduler.clone());
    if r.seed != 0 {
        t.insert("seed".into(), json!(r.seed));
    }
    opt(&mut t, "CFGScale", r.cfg_scale);
    opt(&mut t, "clipSkip", r.clip_skip);
    opt(&mut t, "promptWeighting", r.prompt_weighting.clone());
    opt(&mut t, "numberResults", r.number_results);
    opt(&mut t, "outputType", r.output_type.clone());
    if r.image_bytes {
        if r.output_type.is_some() {
            return Err(Status::invalid_argument(
                "image_bytes: leave output_type unset; the daemon asks Runware for base64Data",
            ));
        }
        t.insert("outputType".into(), json!("base64Data"));
    }
    opt(&mut t, "outputFormat", r.output_format.clone());
    opt(&mut t, "outputQuality", r.output_quality);
    opt(&mut t, "uploadEndpoint", r.upload_endpoint.clone());
    opt(&mut t, "webhookURL", r.webhook_url.clone());
    opt(&mut t, "deliveryMethod", r.delivery_method.clone());
    opt(&mut t, "checkNSFW", r.check_nsfw);
    opt(&mut t, "includeCost", r.include_cost);
    opt(&mut t, "seedImage", r.seed_image.clone());
    opt(&mut t, "maskImage", r.mask_image.clone());
    opt(&mut t, "maskMargin", r.mask_margin);
    opt(&mut t, "strength", r.strength);
    strings(&mut t, "referenceImages", &r.reference_images);
    opt(&mut t, "vae", r.vae.clone());
    opt(&mut t, "ttl", r.ttl);
    opt(&mut t, "acceleration", r.acceleration.clone());
    if let Some(o) = &r.outpaint {
        t.insert(
            "outpaint".into(),
            object(|m| {
                opt(m, "top", o.top);
                opt(m, "right", o.right);
                opt(m, "bottom", o.bottom);
                opt(m, "left", o.left);
                opt(m, "blur", o.blur);
            }),
        );
    }
    if let Some(x) = &r.refiner {
        t.insert(
            "refiner".into(),
            object(|m| {
                non_empty(m, "model", &x.model);
                opt(m, "startStep", x.start_step);
                opt(m, "startStepPercentage", x.start_step_percentage);
            }),
        );
    }
    if !r.embeddings.is_empty() {
        let list = r.embeddings.iter().map(|e| {
            object(|m| {
                non_empty(m, "model", &e.model);
                opt(m, "weight", e.weight);
            })
        });
        t.insert("embeddings".into(), Value::Array(list.collect()));
    }
    if !r.control_net.is_empty() {
        let list = r.control_net.iter().map(|c| {
            object(|m| {
                non_empty(m, "model", &c.model);
                non_empty(m, "guideImage", &c.guide_image);
                opt(m, "weight", c.weight);
                opt(m, "startStep", c.start_step);
                opt(m, "startStepPercentage", c.start_step_percentage);
                opt(m, "endStep", c.end_step);
                opt(m, "endStepPercentage", c.end_step_percentage);
                opt(m, "controlMode", c.control_mode.clone());
            })
        });
        t.insert("controlNet".into(), Value::Array(list.collect()));
    }
    if !r.lora.is_empty() {
        let list = r.lora.iter().map(|l| {
            object(|m| {
                non_empty(m, "model", &l.model);
                opt(m, "weight", l.weight);
            })
        });
        t.insert("lora".into(), Value::Array(list.collect()));
    }
    if !r.ip_adapters.is_empty() {
        let list = r.ip_adapters.iter().map(|a| {
            object(|m| {
                non_empty(m, "model", &a.model);
                non_empty(m, "guideImage", &a.guide_image);
                opt(m, "weight", a.weight);
            })
        });
        t.insert("ipAdapters".into(), Value::Array(list.collect()));
    }
    if let Some(s) = &r.safety {
        t.insert(
            "safety".into(),
            object(|m| {
                opt(m, "checkContent", s.check_content);
                opt(m, "mode", s.mode.clone());
            }),
        );
    }
    if let Some(a) = &r.advanced_features {
        t.insert(
            "advancedFeatures".into(),
            object(|m| opt(m, "layerDiffuse", a.layer_diffuse)),
        );
    }
    if let Some(a) = &r.accelerator_options {
        t.insert(
            "acceleratorOptions".into(),
            object(|m| {
                opt(m, "teaCache", a.tea_cache);
                opt(m, "teaCacheDistance", a.tea_cache_distance);
                opt(m, "deepCache", a.deep_cache);
                opt(m, "deepCacheInterval", a.deep_cache_interval);
                opt(m, "deepCacheBranchId", a.deep_cache_branch_id);
                opt(m, "cacheStartStep", a.cache_start_step);
                opt(m, "cacheStartStepPercentage", a.cache_start_step_percentage);
                opt(m, "cacheEndStep", a.cache_end_step);
                opt(m, "cacheEndStepPercentage", a.cache_end_step_percentage);
                opt(m, "cacheMaxConsecutiveSteps", a.cache_max_consecutive_steps);
            }),
        );
    }
    if let Some(p) = &r.pu_lid {
        t.insert(
            "puLID".into(),
            object(|m| {
                strings(m, "inputImages", &p.input_images);
                opt(m, "idWeight", p.id_weight);
                opt(m, "trueCFGScale", p.true_cfg_scale);
                opt(m, "CFGStartStep", p.cfg_start_step);
                opt(m, "CFGStartStepPercentage", p.cfg_start_step_percentage);
            }),
        );
    }
    if let Some(a) = &r.ace_plus_plus {
        t.insert(
            "acePlusPlus".into(),
            object(|m| {
                opt(m, "type", a.r#type.clone());
                strings(m, "inputImages", &a.input_images);
                strings(m, "inputMasks", &a.input_masks);
                opt(m, "repaintingScale", a.repainting_scale);
            }),
        );
    }
    Ok(t)
}

/// A `Run` request's task JSON, its taskUUID, and the results it waits for.
pub fn run_task(r: &pb::RunRequest) -> Result<ClientTask, Status> {
    let mut task = run_task_of(json_object("task_json", &r.task_json)?, r.expected_results)?;
    task.priority = priority(r.priority.as_deref())?;
    Ok(task)
}

/// The lane a request names in its `priority` field, if it names one.
pub(super) fn priority(named: Option<&str>) -> Result<Option<Priority>, Status> {
    named
        .map(|p| {
            priority_of(p, "priority")
                .map_err(|r| Status::invalid_argument(format!("priority {}", r.detail)))
        })
        .transpose()
}

/// [`run_task`] of a `task_json` already read.
pub(super) fn run_task_of(
    task: Map<String, Value>,
    expected_results: Option<u32>,
) -> Result<ClientTask, Status> {
    if let Some(n) = expected_results {
        if n == 0 || n > MAX_EXPECTED_RESULTS {
            return Err(Status::invalid_argument(format!(
                "expected_results must be between 1 and {MAX_EXPECTED_RESULTS}, got {n}"
            )));
        }
    }
    check_task(task, false, expected_results).map_err(|Refused { refusal: r, .. }| {
        Status::invalid_argument(format!("task_json.{} {}", r.parameter, r.detail))
    })
}

#[cfg(test)]
mod tests;
