"""The official Python SDK `runware-sdk` (1.x) against the daemon's endpoint and the simulator,
over both of its transports (WebSocket and REST).

Run in a virtual environment of its own (`requirements-runware-sdk.txt`):
the older `runware` installs a module of the same name.
"""

import asyncio
import uuid

import harness
import pytest
from runware import Runware

TRANSPORTS = ["websocket", "rest"]


def client(url, transport):
    # stream() always takes the REST path: its URL is set on both transports.
    http = url.replace("ws://", "http://")
    urls = {"websocket": {"ws_base_url": url, "http_base_url": http}, "rest": {"http_base_url": http}}
    return Runware(api_key="local", transport=transport, **urls[transport])


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_prompt_enhance_versions(endpoint, transport):
    task = str(uuid.uuid4())

    async def go():
        async with client(endpoint, transport) as r:
            return await r.run({
                "taskType": "promptEnhance", "taskUUID": task, "prompt": "a cat in a hat",
                "promptVersions": 3, "promptMaxLength": 64, "deliveryMethod": "sync",
            })

    versions = run(go())
    # The server sent all three, whatever the SDK kept.
    assert len(harness.server_items(endpoint, task, expect=3)) == 3
    if transport == "websocket":
        # This SDK's bug, not the server's: over WebSocket it keys results
        # by `resultIndex` or a `*UUID` field, which promptEnhance items do
        # not carry (Runware sends only taskUUID and text), so the three
        # versions collapse into one.
        assert len(versions) == 1
    else:
        assert len(versions) == 3
    assert all(v["text"].startswith("a cat in a hat") for v in versions)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_image_inference_with_several_base64_results(endpoint, transport):
    async def go():
        async with client(endpoint, transport) as r:
            return await r.run({
                "taskType": "imageInference", "positivePrompt": "a red fox",
                "model": "runware:101@1", "numberResults": 2, "width": 512, "height": 512,
                "outputType": "base64Data", "deliveryMethod": "sync",
            })

    images = run(go())
    assert len(images) == 2
    assert len({i["imageUUID"] for i in images}) == 2
    assert all(i["imageBase64Data"] for i in images)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_validation_error_names_its_parameter(endpoint, transport):
    async def go():
        async with client(endpoint, transport) as r:
            await r.run({
                "taskType": "promptEnhance", "prompt": "a cat", "promptVersions": 1,
                "promptMaxLength": 5, "deliveryMethod": "sync",
            })

    with pytest.raises(Exception) as raised:
        run(go())
    e = raised.value
    assert getattr(e, "parameter", None) == "promptMaxLength", repr(e)
    assert "promptMaxLength" in str(e)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_twelve_concurrent_tasks_each_get_exactly_their_own(endpoint, transport):
    tasks = [str(uuid.uuid4()) for _ in range(12)]

    async def go():
        async with client(endpoint, transport) as r:
            return await asyncio.gather(*[
                r.run({
                    "taskType": "imageInference", "taskUUID": t, "positivePrompt": f"picture {i}",
                    "model": "runware:101@1", "numberResults": 1 + i % 3, "width": 512,
                    "height": 512, "deliveryMethod": "sync",
                })
                for i, t in enumerate(tasks)
            ])

    for i, (task, images) in enumerate(zip(tasks, run(go()))):
        assert len(images) == 1 + i % 3
        assert {im["taskUUID"] for im in images} == {task}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_async_delivery_is_polled_with_get_response(endpoint, transport):
    task = str(uuid.uuid4())

    async def go():
        async with client(endpoint, transport) as r:
            # This SDK's default: deliveryMethod async, then getResponse
            # until every result is there.
            return await r.run({
                "taskType": "imageInference", "taskUUID": task, "positivePrompt": "a fox",
                "model": "runware:101@1", "numberResults": 2, "width": 512, "height": 512,
            })

    images = run(go())
    assert len(images) == 2
    assert all(i["status"] == "success" and i["taskUUID"] == task for i in images)


def test_upstream_drops_are_invisible_and_nothing_runs_twice(flaky):
    url, sim = flaky

    async def go():
        async with client(url, "websocket") as r:
            return await asyncio.gather(*[
                r.run({
                    "taskType": "imageInference", "positivePrompt": f"under drops {i}",
                    "model": "runware:101@1", "numberResults": 2, "width": 512, "height": 512,
                    "deliveryMethod": "sync",
                })
                for i in range(12)
            ])

    assert [len(images) for images in run(go())] == [2] * 12
    counts = harness.sim_counts(sim)
    assert counts["connections"] >= 2, counts
    assert counts["maxExecutionsPerTask"] == 1, counts


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_other_task_types_by_their_current_names(endpoint, transport):
    """upscale, removeBackground, caption and an async (polled)
    videoInference, as this SDK sends and reads them."""
    image = "b7db282d-2943-4f12-992f-77df3ad3ec71"

    async def go():
        async with client(endpoint, transport) as r:
            return await asyncio.gather(
                r.run({"taskType": "upscale", "inputImage": image, "upscaleFactor": 2,
                       "deliveryMethod": "sync"}),
                r.run({"taskType": "removeBackground", "inputImage": image,
                       "deliveryMethod": "sync"}),
                r.run({"taskType": "caption", "inputImage": image, "deliveryMethod": "sync"}),
                r.run({"taskType": "videoInference", "model": "klingai:5@3",
                       "positivePrompt": "a cat surfing", "duration": 5}),
            )

    upscaled, cut, caption, videos = run(go())
    assert upscaled[0]["imageUUID"] and cut[0]["imageUUID"]
    assert caption[0]["text"].startswith("a photo")
    assert len(videos) == 1 and videos[0]["videoURL"].endswith(".mp4")


CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour"}]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_text_streams_token_by_token(endpoint, transport):
    """stream(): Server-Sent Events from the REST path, whatever the
    transport; the text arrives in pieces and ends with its finish."""

    async def go():
        async with client(endpoint, transport) as r:
            s = await r.stream({"taskType": "textInference", "model": "minimax:m2.7@0",
                                "messages": CHAT, "settings": {"maxTokens": 64},
                                "includeCost": True})
            pieces = [p async for p in s.text_stream]
            return pieces, await s.result()

    pieces, result = run(go())
    assert len(pieces) > 5
    assert result.text == "".join(pieces)
    assert result.text.startswith("You asked: Name a colour")
    assert result.finish_reason == "stop"
    assert result.cost is not None and result.usage["totalTokens"] > 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_text_runs_sync_and_async(endpoint, transport):
    async def go():
        async with client(endpoint, transport) as r:
            return await asyncio.gather(
                r.run({"taskType": "textInference", "model": "minimax:m2.7@0",
                       "messages": CHAT, "deliveryMethod": "sync"}),
                r.run({"taskType": "textInference", "model": "minimax:m2.7@0",
                       "messages": CHAT}),
            )

    sync, polled = run(go())
    for answer in (sync, polled):
        assert len(answer) == 1
        assert answer[0]["text"].startswith("You asked: Name a colour")
        assert answer[0]["finishReason"] == "stop"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_newest_task_types(endpoint, transport):
    """Audio, 3D, masks, ControlNet guides, vectors, uploads, model search
    and the account, each as this SDK sends and reads it; several audio
    results when numberResults asks."""
    image = "b7db282d-2943-4f12-992f-77df3ad3ec71"

    async def go():
        async with client(endpoint, transport) as r:
            return await asyncio.gather(
                r.run({"taskType": "audioInference", "model": "elevenlabs:1@1",
                       "positivePrompt": "rain on a roof", "duration": 10, "numberResults": 2}),
                r.run({"taskType": "3dInference", "model": "microsoft:trellis-2@4b",
                       "inputs": {"image": image}}),
                r.run({"taskType": "imageMasking", "model": "runware:35@1", "inputImage": image,
                       "deliveryMethod": "sync"}),
                r.run({"taskType": "controlNetPreprocess", "inputImage": image,
                       "preProcessorType": "canny", "deliveryMethod": "sync"}),
                r.run({"taskType": "vectorize", "inputs": {"image": image},
                       "deliveryMethod": "sync"}),
                r.media_storage({"operation": "upload",
                                 "media": "data:audio/wav;base64,UklGRg=="}),
                r.model_search({"search": "flux"}),
                r.account_management({"operation": "getDetails"}),
            )

    audio, objects, masks, guides, vectors, stored, models, account = run(go())
    assert len(audio) == 2 and all(a["audioURL"].endswith(".mp3") for a in audio)
    assert objects[0]["outputs"]["files"][0]["url"].endswith(".glb")
    assert masks[0]["maskImageURL"] and masks[0]["detections"]
    assert guides[0]["guideImageURL"]
    assert vectors[0]["imageURL"].endswith(".svg")
    assert stored[0]["mediaUUID"]
    assert models[0]["results"]
    assert account[0]["organizationUUID"]


def test_result_urls_download(endpoint):
    """A client that downloads its results (as image tools do) gets the
    picture it asked for, and a video file."""
    import urllib.request

    async def go():
        async with client(endpoint, "websocket") as r:
            return await asyncio.gather(
                r.run({"taskType": "imageInference", "positivePrompt": "a red fox",
                       "model": "runware:101@1", "width": 256, "height": 128,
                       "outputFormat": "PNG", "deliveryMethod": "sync"}),
                r.run({"taskType": "videoInference", "model": "klingai:5@3",
                       "positivePrompt": "a cat surfing", "duration": 5}),
            )

    images, videos = run(go())
    with urllib.request.urlopen(images[0]["imageURL"], timeout=10) as answer:
        png = answer.read()
    assert png.startswith(b"\x89PNG")
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (256, 128)
    with urllib.request.urlopen(videos[0]["videoURL"], timeout=10) as answer:
        assert answer.read()[4:8] == b"ftyp"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_task_details_of_a_task_run_before(endpoint, transport):
    task = str(uuid.uuid4())

    async def go():
        async with client(endpoint, transport) as r:
            await r.run({"taskType": "promptEnhance", "taskUUID": task, "prompt": "a cat in a hat",
                         "deliveryMethod": "sync"})
            return await r.get_task_details({"taskUUID": task})

    details = run(go())
    assert details[0]["request"][0]["prompt"] == "a cat in a hat"
    assert details[0]["response"]["data"][0]["text"].startswith("a cat in a hat")
