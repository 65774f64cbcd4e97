//! Every task type the simulator runs, through the daemon's `Run`, the
//! async path and `Attach`: what a client gets is what Runware sends, and
//! each task ends with all its items or a clear error.

mod common;

use std::time::Duration;

use common::*;
use runwared::pb;
use runwared::tools::sim::{FAILING_MODEL, SimConfig};
use serde_json::{Value, json};
use tokio_stream::StreamExt;

fn items(results: &[pb::RunResult]) -> Vec<Value> {
    results
        .iter()
        .map(|r| serde_json::from_slice(&r.item_json).unwrap())
        .collect()
}

/// Every item of a `Run`, or its error.
async fn run(
    client: &mut pb::runware_client::RunwareClient<tonic::transport::Channel>,
    task: Value,
) -> Result<Vec<Value>, tonic::Status> {
    let mut stream = client
        .run(pb::RunRequest {
            task_json: task.to_string(),
            expected_results: None,
            priority: None,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(r) = stream.next().await {
        out.push(r?);
    }
    Ok(items(&out))
}

#[tokio::test(start_paused = true)]
async fn image_tools_by_old_and_new_names_return_their_items() {
    let mut h = start(SimConfig::default(), |_| {}).await;
    for task_type in [
        "upscale",
        "imageUpscale",
        "removeBackground",
        "imageBackgroundRemoval",
    ] {
        let got = run(
            &mut h.client,
            json!({"taskType": task_type, "inputImage": "b7db282d-2943-4f12-992f-77df3ad3ec71",
                "outputFormat": "PNG"}),
        )
        .await
        .unwrap();
        assert_eq!(got.len(), 1, "{task_type}");
        assert_eq!(got[0]["taskType"], task_type);
        assert!(got[0]["imageURL"].as_str().unwrap().ends_with(".png"));
    }
    for task_type in ["caption", "imageCaption"] {
        let got = run(
            &mut h.client,
            json!({"taskType": task_type, "inputImages": ["b7db282d-2943-4f12-992f-77df3ad3ec71"]}),
        )
        .await
        .unwrap();
        assert!(got[0]["text"].is_string(), "{task_type}");
    }
    // Each is checked on what it cannot run without, in Runware's shape.
    let e = run(&mut h.client, json!({"taskType": "upscale"}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("inputImage"), "{}", e.message());
}

/// A model upload's steps are items of one task: the client gets each,
/// and the task ends with `ready`, not with the first step.
#[tokio::test(start_paused = true)]
async fn a_model_upload_streams_each_step_and_ends_ready() {
    let mut h = start(SimConfig::default(), |_| {}).await;
    let got = run(
        &mut h.client,
        json!({"taskType": "modelUpload", "air": "me:1@1", "name": "mine",
            "downloadURL": "https://example.com/m.safetensors", "uniqueIdentifier": "abc",
            "version": "1", "format": "safetensors", "architecture": "flux1d",
            "category": "lora", "private": true}),
    )
    .await
    .unwrap();
    let steps: Vec<&str> = got.iter().map(|i| i["status"].as_str().unwrap()).collect();
    assert_eq!(
        steps,
        ["validated", "downloaded", "optimized", "stored", "ready"]
    );
    assert!(got.iter().all(|i| i["air"] == "me:1@1"));
    // Nothing of it arrived after the task had ended.
    for name in ["duplicate_results", "late_results_dropped"] {
        assert_eq!(status_counter(&mut h.client, name).await, Some(0), "{name}");
    }
}

/// A long video, sent async and polled: the client sees one result when it
/// is done, and `Attach` gives the same; progress answers are not results.
#[tokio::test(start_paused = true)]
async fn a_long_video_is_polled_until_done() {
    let config = SimConfig {
        video_latency: Duration::from_secs(90),
        ..SimConfig::default()
    };
    let mut h = start(config, |c| {
        c.async_task_types = vec!["videoInference".into()];
    })
    .await;
    let uuid = uuid::Uuid::new_v4().to_string();
    let task = json!({"taskType": "videoInference", "taskUUID": uuid, "model": "klingai:5@3",
        "positivePrompt": "a cat surfing", "duration": 5});
    let got = run(&mut h.client, task).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["taskUUID"], uuid.as_str());
    assert!(got[0]["videoURL"].as_str().unwrap().ends_with(".mp4"));
    assert!(h.stats().executions == 1);
    let attached = attach_all(&mut h.client, &uuid).await;
    assert_eq!(attached.len(), 1);
    let again: Value = serde_json::from_slice(&attached[0].item_json).unwrap();
    assert_eq!(again["videoURL"], got[0]["videoURL"]);
}

/// A task that starts and then fails ends in a clear error with Runware's
/// code, pushed (sync) or found by polling (async: a `status: "error"`
/// item), and no other task is touched.
#[tokio::test(start_paused = true)]
async fn a_task_failing_after_it_started_ends_in_its_error() {
    let mut h = start(SimConfig::default(), |c| {
        c.async_task_types = vec!["videoInference".into()];
    })
    .await;
    let image = json!({"taskType": "imageInference", "positivePrompt": "a fox",
        "model": FAILING_MODEL, "width": 512, "height": 512});
    let video = json!({"taskType": "videoInference", "model": FAILING_MODEL,
        "positivePrompt": "a fox"});
    let fine = json!({"taskType": "promptEnhance", "prompt": "a fox"});
    let (mut c1, mut c2) = (h.client.clone(), h.client.clone());
    let (a, b, c) = tokio::join!(
        run(&mut c1, image),
        run(&mut c2, video),
        run(&mut h.client, fine),
    );
    for (what, e) in [("sync", a.unwrap_err()), ("async", b.unwrap_err())] {
        assert!(
            e.message().contains("inferenceFailed"),
            "{what}: {}",
            e.message()
        );
    }
    assert_eq!(c.unwrap().len(), 1);
    assert_eq!(h.stats().tasks_failed, 2);
}

/// A server frame before the authentication answer is not the answer: the
/// daemon still authenticates, and counts the frame it could not route.
#[tokio::test(start_paused = true)]
async fn a_frame_before_the_authentication_answer_is_skipped() {
    let config = SimConfig {
        frame_before_auth: true,
        ..SimConfig::default()
    };
    let mut h = start(config, |_| {}).await;
    h.ready().await;
    let got = run(
        &mut h.client,
        json!({"taskType": "promptEnhance", "prompt": "dog"}),
    )
    .await
    .unwrap();
    assert_eq!(got.len(), 1);
    let unroutable = status_counter(&mut h.client, "bad_frames").await;
    assert_eq!(unroutable, Some(1));
}

/// Each task type, by each of its names, through `Run` with async delivery
/// (the daemon polls `getResponse`), then `Attach`: the same items both
/// ways, each naming its task.
#[tokio::test(start_paused = true)]
async fn every_task_type_runs_async_and_attaches() {
    let mut h = start(SimConfig::default(), |_| {}).await;
    let image = json!("b7db282d-2943-4f12-992f-77df3ad3ec71");
    let upload = json!({"air": "me:1@1", "name": "mine",
        "downloadURL": "https://example.com/m.safetensors", "uniqueIdentifier": "abc",
        "version": "1", "format": "safetensors", "architecture": "flux1d", "category": "lora"});
    let cases = [
        ("upscale", json!({"inputImage": image}), 1),
        ("imageUpscale", json!({"inputImage": image}), 1),
        ("removeBackground", json!({"inputImage": image}), 1),
        ("imageBackgroundRemoval", json!({"inputImage": image}), 1),
        ("caption", json!({"inputImage": image}), 1),
        ("imageCaption", json!({"inputImage": image}), 1),
        (
            "videoInference",
            json!({"model": "klingai:5@3", "positivePrompt": "a cat surfing"}),
            1,
        ),
        ("modelUpload", upload, 5),
    ];
    for (task_type, fields, count) in cases {
        let uuid = uuid::Uuid::new_v4().to_string();
        let mut task = fields;
        task["taskType"] = json!(task_type);
        task["taskUUID"] = json!(uuid);
        task["deliveryMethod"] = json!("async");
        let got = run(&mut h.client, task).await.unwrap();
        assert_eq!(got.len(), count, "{task_type}: {got:?}");
        assert!(
            got.iter().all(|i| i["taskUUID"] == uuid.as_str()),
            "{task_type}"
        );
        let attached = items(&attach_all(&mut h.client, &uuid).await);
        assert_eq!(attached, got, "{task_type}");
    }
    assert_eq!(h.stats().executions, 8);
}

/// Every task type the newest SDK sends, with the fields its result type
/// reads and, where the type makes several, as many as `numberResults`
/// asks: through `Run` (sync and async) and through the Runware-protocol
/// endpoint's REST door, each run once.
#[tokio::test(start_paused = true)]
async fn every_type_of_the_newest_sdk_through_run_and_the_endpoint() {
    let mut h = start(SimConfig::default(), |_| {}).await;
    let addr = h.daemon.runware_addr.expect("the endpoint listens");
    let image = json!("b7db282d-2943-4f12-992f-77df3ad3ec71");
    let chat = json!([{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a colour"}]);
    let cases = [
        (
            "textInference",
            json!({"model": "minimax:m2.7@0", "messages": chat, "settings": {"maxTokens": 64}}),
            "text",
        ),
        (
            "audioInference",
            json!({"model": "elevenlabs:1@1", "positivePrompt": "rain", "duration": 10}),
            "audioURL",
        ),
        (
            "3dInference",
            json!({"model": "microsoft:trellis-2@4b", "inputs": {"image": image}}),
            "outputs",
        ),
        (
            "videoInference",
            json!({"model": "klingai:5@3", "positivePrompt": "a cat surfing"}),
            "videoURL",
        ),
        (
            "imageMasking",
            json!({"model": "runware:35@1", "inputImage": image}),
            "maskImageURL",
        ),
        (
            "controlNetPreprocess",
            json!({"inputImage": image, "preProcessorType": "canny"}),
            "guideImageURL",
        ),
        ("vectorize", json!({"inputs": {"image": image}}), "imageURL"),
        (
            "imageUpload",
            json!({"image": "data:image/png;base64,iVBORw0KGgo="}),
            "imageUUID",
        ),
        (
            "mediaStorage",
            json!({"operation": "upload", "media": "data:audio/wav;base64,UklGRg=="}),
            "mediaUUID",
        ),
        ("modelSearch", json!({"search": "flux"}), "results"),
        (
            "accountManagement",
            json!({"operation": "getDetails"}),
            "organizationUUID",
        ),
    ];
    let several = [
        "textInference",
        "audioInference",
        "3dInference",
        "videoInference",
    ];
    let mut executions = 0;
    for (task_type, fields, field) in cases {
        let count = if several.contains(&task_type) { 3 } else { 1 };
        for delivery in ["sync", "async"] {
            let uuid = uuid::Uuid::new_v4().to_string();
            let mut task = fields.clone();
            task["taskType"] = json!(task_type);
            task["taskUUID"] = json!(uuid);
            task["deliveryMethod"] = json!(delivery);
            if count > 1 {
                task["numberResults"] = json!(count);
            }
            let got = run(&mut h.client, task).await.unwrap();
            executions += 1;
            assert_eq!(got.len(), count, "{task_type} {delivery}: {got:?}");
            for item in &got {
                assert_eq!(item["taskUUID"], uuid.as_str(), "{task_type}");
                assert!(!item[field].is_null(), "{task_type}: {field} in {item}");
            }
        }
        let uuid = uuid::Uuid::new_v4().to_string();
        let mut task = fields.clone();
        task["taskType"] = json!(task_type);
        task["taskUUID"] = json!(uuid);
        if count > 1 {
            task["numberResults"] = json!(count);
        }
        let body = json!([{"taskType": "authentication", "apiKey": "any"}, task]).to_string();
        let (status, answer) = post_json(addr, &body, None).await;
        executions += 1;
        assert_eq!(status, 200, "{task_type}: {answer}");
        let data = answer["data"].as_array().unwrap();
        assert_eq!(data.len(), count, "{task_type} over REST: {answer}");
        assert!(
            data.iter()
                .all(|i| !i[field].is_null() && i["taskUUID"] == uuid.as_str())
        );
    }
    let text = run(
        &mut h.client,
        json!({"taskType": "textInference", "model": "m", "messages": chat}),
    )
    .await
    .unwrap();
    assert_eq!(text[0]["finishReason"], "stop");
    assert!(text[0]["usage"]["totalTokens"].as_u64().unwrap() > 0);
    executions += 1;
    assert_eq!(h.stats().executions, executions);
    // What a type cannot run without is named, as Runware names it.
    let e = run(
        &mut h.client,
        json!({"taskType": "textInference", "model": "m"}),
    )
    .await
    .unwrap_err();
    assert!(e.message().contains("messages"), "{}", e.message());
}

/// `GET` of a URL over plain HTTP/1.1: the status, the content type and
/// the body.
async fn download(url: &str) -> (u16, String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest.split_once('/').unwrap();
    assert!(
        host.starts_with("127.0.0.1:"),
        "the simulator on loopback: {url}"
    );
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    s.set_nodelay(true).unwrap();
    let request = format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    s.read_to_end(&mut response).await.unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status = head[9..12].parse().unwrap();
    let mime = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    (status, mime, response[split + 4..].to_vec())
}

/// Result URLs download from the simulator, as Runware's do from Runware:
/// the picture of the size and format asked for, and small valid files of
/// the right type for video, audio and 3D; a name it never made is 404.
#[tokio::test(start_paused = true)]
async fn simulated_result_urls_download_what_the_task_made() {
    let mut h = start(SimConfig::default(), |_| {}).await;
    let got = run(
        &mut h.client,
        json!({"taskType": "imageInference", "positivePrompt": "a fox", "model": "runware:100@1",
            "width": 256, "height": 128, "outputFormat": "PNG", "numberResults": 2}),
    )
    .await
    .unwrap();
    for item in &got {
        let (status, mime, body) = download(item["imageURL"].as_str().unwrap()).await;
        assert_eq!((status, mime.as_str()), (200, "image/png"));
        let picture = image::load_from_memory(&body).unwrap();
        assert_eq!((picture.width(), picture.height()), (256, 128));
    }
    let cases = [
        (
            json!({"taskType": "videoInference", "model": "klingai:5@3", "positivePrompt": "p"}),
            "/videoURL",
            "video/mp4",
            &b"ftyp"[..],
            4,
        ),
        (
            json!({"taskType": "audioInference", "model": "m", "positivePrompt": "p",
                "outputFormat": "WAV"}),
            "/audioURL",
            "audio/wav",
            &b"RIFF"[..],
            0,
        ),
        (
            json!({"taskType": "3dInference", "model": "m", "inputs": {"image": "u"}}),
            "/outputs/files/0/url",
            "model/gltf-binary",
            &b"glTF"[..],
            0,
        ),
        (
            json!({"taskType": "imageMasking", "model": "m", "inputImage": "u"}),
            "/maskImageURL",
            "image/jpeg",
            &[0xFF, 0xD8][..],
            0,
        ),
    ];
    for (task, pointer, expected_mime, magic, at) in cases {
        let got = run(&mut h.client, task).await.unwrap();
        let url = got[0].pointer(pointer).and_then(Value::as_str).unwrap();
        let (status, mime, body) = download(url).await;
        assert_eq!((status, mime.as_str()), (200, expected_mime), "{url}");
        assert_eq!(&body[at..at + magic.len()], magic, "{url}");
    }
    let unknown = format!("http://{}/media/nothing.png", h.sim.addr());
    assert_eq!(download(&unknown).await.0, 404);
}
