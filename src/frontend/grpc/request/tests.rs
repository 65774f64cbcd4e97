//! Typed requests as Runware JSON: the documented names and limits, and
//! refusals that name the proto field.

use super::*;

#[test]
fn typed_image_request_becomes_documented_json() {
    let r = pb::ImageInferenceRequest {
        positive_prompt: "a cat".into(),
        model: "runware:101@1".into(),
        width: Some(512),
        height: Some(768),
        seed: 9_223_372_036_854_775_000,
        cfg_scale: Some(7.5),
        number_results: Some(2),
        lora: vec![pb::Lora {
            model: "runware:13090@1".into(),
            weight: Some(1.5),
        }],
        control_net: vec![pb::ControlNet {
            model: "cn".into(),
            guide_image: "img".into(),
            end_step_percentage: Some(80),
            ..Default::default()
        }],
        outpaint: Some(pb::Outpaint {
            top: Some(256),
            blur: Some(16),
            ..Default::default()
        }),
        safety: Some(pb::Safety {
            check_content: Some(true),
            mode: None,
        }),
        extra: r#"{"providerSettings":{"x":1},"width":1}"#.into(),
        ..Default::default()
    };
    let t = Value::Object(image_inference_task(&r).unwrap());
    assert_eq!(t["taskType"], "imageInference");
    assert_eq!(t["positivePrompt"], "a cat");
    assert_eq!(t["width"], 512, "typed fields win over extra");
    assert_eq!(t["seed"], json!(9_223_372_036_854_775_000u64));
    assert_eq!(t["CFGScale"], 7.5);
    assert_eq!(t["numberResults"], 2);
    assert_eq!(
        t["lora"],
        json!([{"model": "runware:13090@1", "weight": 1.5}])
    );
    assert_eq!(
        t["controlNet"],
        json!([{"model": "cn", "guideImage": "img", "endStepPercentage": 80}])
    );
    assert_eq!(t["outpaint"], json!({"top": 256, "blur": 16}));
    assert_eq!(t["safety"], json!({"checkContent": true}));
    assert_eq!(t["providerSettings"], json!({"x": 1}));
    assert!(t.get("negativePrompt").is_none());
}

#[test]
fn bad_client_json_names_the_parameter() {
    let bad_extra = pb::ImageInferenceRequest {
        extra: "[1]".into(),
        ..Default::default()
    };
    let e = image_inference_task(&bad_extra).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("extra"), "{}", e.message());
    let keyed_extra = pb::ImageInferenceRequest {
        extra: r#"{"apiKey":"someone-else's"}"#.into(),
        ..Default::default()
    };
    let e = image_inference_task(&keyed_extra).unwrap_err();
    assert!(e.message().contains("extra.apiKey"), "{}", e.message());

    // A getTaskDetails names another task: Run asks Runware's REST
    // endpoint for it; through the table (a Session) it is refused.
    let details = pb::RunRequest {
        task_json: format!(
            r#"{{"taskType":"getTaskDetails","taskUUID":"{}"}}"#,
            uuid::Uuid::new_v4()
        ),
        expected_results: None,
        priority: None,
    };
    let e = run_task(&details).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("task_json.taskType"),
        "{}",
        e.message()
    );

    // Bounded before parsing: many small values (which parse to many
    // times their text), and deep nesting.
    let flood = format!(
        r#"{{"taskType":"x","v":[{}0]}}"#,
        "0,".repeat(MAX_JSON_ELEMENTS)
    );
    let e = run_task(&pb::RunRequest {
        task_json: flood,
        expected_results: None,
        priority: None,
    })
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("task_json has about"),
        "{}",
        e.message()
    );
    let deep = format!(
        r#"{{"taskType":"x","v":{}{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let e = run_task(&pb::RunRequest {
        task_json: deep,
        expected_results: None,
        priority: None,
    })
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("task_json is not valid JSON"),
        "{}",
        e.message()
    );

    let run = |json: &str, n: Option<u32>| {
        run_task(&pb::RunRequest {
            task_json: json.into(),
            expected_results: n,
            priority: None,
        })
    };
    for (json, n, param) in [
        ("nope", None, "task_json"),
        ("[]", None, "task_json"),
        (r#"{"prompt":"x"}"#, None, "task_json.taskType"),
        (r#"{"taskType":"ping"}"#, None, "task_json.taskType"),
        (
            r#"{"taskType":"x","taskUUID":"abc"}"#,
            None,
            "task_json.taskUUID",
        ),
        (
            r#"{"taskType":"x","taskUUID":5}"#,
            None,
            "task_json.taskUUID",
        ),
        (r#"{"taskType":"x"}"#, Some(0), "expected_results"),
        // Reserved task types in any letter case.
        (r#"{"taskType":"PING"}"#, None, "task_json.taskType"),
        (
            r#"{"taskType":"Authentication"}"#,
            None,
            "task_json.taskType",
        ),
        (
            r#"{"taskType":" getresponse "}"#,
            None,
            "task_json.taskType",
        ),
        // A key of the client's own, which would go to Runware.
        (r#"{"taskType":"x","apiKey":"k"}"#, None, "task_json.apiKey"),
        (r#"{"taskType":"x","APIKEY":"k"}"#, None, "task_json.APIKEY"),
        // The counts that decide completion are bounded.
        (
            r#"{"taskType":"imageInference","numberResults":4000000000}"#,
            None,
            "task_json.numberResults",
        ),
        (
            r#"{"taskType":"promptEnhance","promptVersions":-1}"#,
            None,
            "task_json.promptVersions",
        ),
        (
            r#"{"taskType":"x"}"#,
            Some(MAX_EXPECTED_RESULTS + 1),
            "expected_results",
        ),
    ] {
        let e = run(json, n).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{json}");
        assert!(e.message().contains(param), "{json}: {}", e.message());
    }
    let ClientTask {
        task,
        stated_results: n,
        ..
    } = run(
        r#"{"taskType":"imageCaption","seed":18446744073709551615}"#,
        Some(2),
    )
    .unwrap();
    assert_eq!(task["seed"], json!(u64::MAX), "64-bit seeds survive");
    assert_eq!(n, Some(2));
    assert!(
        task_uuid("6ba7b810-9dad-11d1-80b4-00c04fd430c8")
            .unwrap_err()
            .message()
            .contains("task_uuid")
    );
}

/// Every documented limit, on both sides of the edge, through the
/// typed requests' pre-flight check.
#[test]
fn documented_limits_on_both_sides_of_the_edge() {
    type Edit = Box<dyn Fn(&mut pb::PromptEnhanceRequest)>;
    let pe: Vec<(&str, Edit, bool)> = vec![
        ("prompt", Box::new(|r| r.prompt = String::new()), false),
        ("prompt", Box::new(|r| r.prompt = "x".into()), true),
        ("prompt", Box::new(|r| r.prompt = "x".repeat(300)), true),
        ("prompt", Box::new(|r| r.prompt = "x".repeat(301)), false),
        (
            "prompt_max_length",
            Box::new(|r| r.prompt_max_length = Some(11)),
            false,
        ),
        (
            "prompt_max_length",
            Box::new(|r| r.prompt_max_length = Some(12)),
            true,
        ),
        (
            "prompt_max_length",
            Box::new(|r| r.prompt_max_length = Some(400)),
            true,
        ),
        (
            "prompt_max_length",
            Box::new(|r| r.prompt_max_length = Some(401)),
            false,
        ),
        (
            "prompt_versions",
            Box::new(|r| r.prompt_versions = Some(0)),
            false,
        ),
        (
            "prompt_versions",
            Box::new(|r| r.prompt_versions = Some(1)),
            true,
        ),
        (
            "prompt_versions",
            Box::new(|r| r.prompt_versions = Some(5)),
            true,
        ),
        (
            "prompt_versions",
            Box::new(|r| r.prompt_versions = Some(6)),
            false,
        ),
        (
            "delivery_method",
            Box::new(|r| r.delivery_method = Some("later".into())),
            false,
        ),
    ];
    for (param, edit, ok) in pe {
        let mut r = pb::PromptEnhanceRequest {
            prompt: "a dog".into(),
            ..Default::default()
        };
        edit(&mut r);
        let result = check_documented_limits(&ClientTask::built(
            TaskUuid::new_v4(),
            "promptEnhance",
            prompt_enhance_task(&r),
        ));
        assert_eq!(result.is_ok(), ok, "{param}: {result:?}");
        if let Err(e) = result {
            assert_eq!(e.code(), Code::InvalidArgument);
            assert!(
                e.message().starts_with(&format!("{param}: ")),
                "{param}: {}",
                e.message()
            );
        }
    }

    type ImgEdit = Box<dyn Fn(&mut pb::ImageInferenceRequest)>;
    let ii: Vec<(&str, ImgEdit, bool)> = vec![
        (
            "positive_prompt",
            Box::new(|r| r.positive_prompt = "x".into()),
            false,
        ),
        (
            "positive_prompt",
            Box::new(|r| r.positive_prompt = "xy".into()),
            true,
        ),
        (
            "positive_prompt",
            Box::new(|r| r.positive_prompt = "x".repeat(3000)),
            true,
        ),
        (
            "positive_prompt",
            Box::new(|r| r.positive_prompt = "x".repeat(3001)),
            false,
        ),
        (
            "negative_prompt",
            Box::new(|r| r.negative_prompt = Some("x".into())),
            false,
        ),
        (
            "negative_prompt",
            Box::new(|r| r.negative_prompt = Some("xy".into())),
            true,
        ),
        (
            "negative_prompt",
            Box::new(|r| r.negative_prompt = Some("x".repeat(3001))),
            false,
        ),
        ("model", Box::new(|r| r.model = String::new()), false),
        ("width", Box::new(|r| r.width = None), false),
        ("width", Box::new(|r| r.width = Some(64)), false),
        ("width", Box::new(|r| r.width = Some(128)), true),
        ("width", Box::new(|r| r.width = Some(2048)), true),
        ("width", Box::new(|r| r.width = Some(2112)), false),
        ("width", Box::new(|r| r.width = Some(200)), false),
        ("height", Box::new(|r| r.height = Some(64)), false),
        ("height", Box::new(|r| r.height = Some(128)), true),
        ("height", Box::new(|r| r.height = Some(2048)), true),
        ("height", Box::new(|r| r.height = Some(2112)), false),
        (
            "number_results",
            Box::new(|r| r.number_results = Some(0)),
            false,
        ),
        (
            "number_results",
            Box::new(|r| r.number_results = Some(1)),
            true,
        ),
        (
            "number_results",
            Box::new(|r| r.number_results = Some(20)),
            true,
        ),
        (
            "number_results",
            Box::new(|r| r.number_results = Some(21)),
            false,
        ),
        ("steps", Box::new(|r| r.steps = Some(0)), false),
        ("steps", Box::new(|r| r.steps = Some(1)), true),
        ("steps", Box::new(|r| r.steps = Some(100)), true),
        ("steps", Box::new(|r| r.steps = Some(101)), false),
        ("cfg_scale", Box::new(|r| r.cfg_scale = Some(-0.1)), false),
        ("cfg_scale", Box::new(|r| r.cfg_scale = Some(0.0)), true),
        ("cfg_scale", Box::new(|r| r.cfg_scale = Some(50.0)), true),
        ("cfg_scale", Box::new(|r| r.cfg_scale = Some(50.1)), false),
        ("clip_skip", Box::new(|r| r.clip_skip = Some(2)), true),
        ("clip_skip", Box::new(|r| r.clip_skip = Some(3)), false),
        (
            "output_quality",
            Box::new(|r| r.output_quality = Some(19)),
            false,
        ),
        (
            "output_quality",
            Box::new(|r| r.output_quality = Some(20)),
            true,
        ),
        (
            "output_quality",
            Box::new(|r| r.output_quality = Some(99)),
            true,
        ),
        (
            "output_quality",
            Box::new(|r| r.output_quality = Some(100)),
            false,
        ),
        ("strength", Box::new(|r| r.strength = Some(0.0)), true),
        ("strength", Box::new(|r| r.strength = Some(1.0)), true),
        ("strength", Box::new(|r| r.strength = Some(1.01)), false),
        ("mask_margin", Box::new(|r| r.mask_margin = Some(31)), false),
        ("mask_margin", Box::new(|r| r.mask_margin = Some(32)), true),
        ("mask_margin", Box::new(|r| r.mask_margin = Some(128)), true),
        (
            "mask_margin",
            Box::new(|r| r.mask_margin = Some(129)),
            false,
        ),
        ("seed", Box::new(|r| r.seed = 1), true),
        ("seed", Box::new(|r| r.seed = i64::MAX as u64), true),
        ("seed", Box::new(|r| r.seed = i64::MAX as u64 + 1), false),
        (
            "output_type",
            Box::new(|r| r.output_type = Some("base64Data".into())),
            true,
        ),
        (
            "output_type",
            Box::new(|r| r.output_type = Some("PDF".into())),
            false,
        ),
        (
            "output_format",
            Box::new(|r| r.output_format = Some("WEBP".into())),
            true,
        ),
        (
            "output_format",
            Box::new(|r| r.output_format = Some("GIF".into())),
            false,
        ),
    ];
    for (param, edit, ok) in ii {
        let mut r = pb::ImageInferenceRequest {
            positive_prompt: "a cat".into(),
            model: "runware:101@1".into(),
            width: Some(512),
            height: Some(512),
            ..Default::default()
        };
        edit(&mut r);
        let result = check_documented_limits(&ClientTask::built(
            TaskUuid::new_v4(),
            "imageInference",
            image_inference_task(&r).unwrap(),
        ));
        assert_eq!(result.is_ok(), ok, "{param}: {result:?}");
        if let Err(e) = result {
            assert!(
                e.message().starts_with(&format!("{param}: ")),
                "{param}: {}",
                e.message()
            );
        }
    }
}

#[test]
fn proto_names_from_runware_names() {
    assert_eq!(snake_case("positivePrompt"), "positive_prompt");
    assert_eq!(snake_case("CFGScale"), "cfg_scale");
    assert_eq!(snake_case("width"), "width");
    assert_eq!(snake_case("checkNSFW"), "check_nsfw");
}
