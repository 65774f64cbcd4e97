"""The official Python SDK `runware` (0.5.x) against the daemon's endpoint and the simulator.

Run in a virtual environment of its own (`requirements-runware.txt`): the
newer `runware-sdk` installs a module of the same name.
"""

import asyncio

import harness
import pytest
from runware import IImageInference, IPromptEnhance, Runware


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def connected(url):
    r = Runware(api_key="local", url=url)
    await r.connect()
    return r


def test_prompt_enhance_gets_every_version(endpoint):
    async def go():
        r = await connected(endpoint)
        versions = await r.promptEnhance(
            promptEnhancer=IPromptEnhance(prompt="a cat in a hat", promptVersions=3, promptMaxLength=64)
        )
        await r.disconnect()
        return versions

    versions = run(go())
    task = versions[0].taskUUID
    # This SDK dedupes texts with a set (order lost); the simulator's three
    # texts differ, so all three arrive.
    assert len(versions) == 3
    assert all(v.text.startswith("a cat in a hat") for v in versions)
    assert len(harness.server_items(endpoint, task, expect=3)) == 3


def test_image_inference_with_several_base64_results(endpoint):
    async def go():
        r = await connected(endpoint)
        images = await r.imageInference(
            requestImage=IImageInference(
                positivePrompt="a red fox", model="runware:101@1", numberResults=2,
                width=512, height=512, outputType="base64Data",
            )
        )
        await r.disconnect()
        return images

    images = run(go())
    assert len(images) == 2
    assert len({i.imageUUID for i in images}) == 2
    assert all(i.imageBase64Data for i in images)


def test_a_validation_error_names_its_parameter(endpoint):
    async def go():
        r = await connected(endpoint)
        try:
            await r.promptEnhance(
                promptEnhancer=IPromptEnhance(prompt="a cat", promptVersions=1, promptMaxLength=5)
            )
        finally:
            await r.disconnect()

    with pytest.raises(Exception) as raised:
        run(go())
    text = str(raised.value)
    assert "invalidPromptMaxLength" in text and "promptMaxLength" in text, text


def test_twelve_concurrent_tasks_each_get_exactly_their_own(endpoint):
    async def go():
        r = await connected(endpoint)
        results = await asyncio.gather(*[
            r.promptEnhance(promptEnhancer=IPromptEnhance(
                prompt=f"prompt number {i}", promptVersions=1 + i % 3, promptMaxLength=64,
            ))
            for i in range(12)
        ])
        await r.disconnect()
        return results

    results = run(go())
    for i, versions in enumerate(results):
        assert len(versions) == 1 + i % 3
        assert all(v.text.startswith(f"prompt number {i},") for v in versions), versions
        assert len({v.taskUUID for v in versions}) == 1
    assert len({v[0].taskUUID for v in results}) == 12


def test_async_delivery_with_get_response(endpoint):
    async def go():
        r = await connected(endpoint)
        ack = await r.imageInference(
            requestImage=IImageInference(
                positivePrompt="a fox", model="runware:101@1", numberResults=1,
                width=512, height=512, deliveryMethod="async",
            )
        )
        # This SDK's getResponse waits out a long operation timeout when
        # its first answer is `processing` (as Runware's is for a running
        # task), so it is asked once the server holds the result.
        await asyncio.to_thread(harness.server_items, endpoint, ack.taskUUID, 1)
        images = await r.getResponse(taskUUID=ack.taskUUID, numberResults=1)
        await r.disconnect()
        return ack, images

    ack, images = run(go())
    assert ack.taskType == "imageInference"
    assert [i.taskUUID for i in images] == [ack.taskUUID]
    assert images[0].status == "success"


def test_upstream_drops_are_invisible_and_nothing_runs_twice(flaky):
    url, sim = flaky

    async def go():
        r = await connected(url)
        results = await asyncio.gather(*[
            r.promptEnhance(promptEnhancer=IPromptEnhance(
                prompt=f"under drops {i}", promptVersions=2, promptMaxLength=64,
            ))
            for i in range(12)
        ])
        await r.disconnect()
        return results

    results = run(go())
    assert [len(v) for v in results] == [2] * 12
    counts = harness.sim_counts(sim)
    assert counts["connections"] >= 2, counts  # the upstream socket was dropped
    assert counts["maxExecutionsPerTask"] == 1, counts


def test_other_task_types_by_this_sdks_names(endpoint):
    """imageUpscale, imageBackgroundRemoval, imageCaption, modelUpload and a
    polled videoInference, as this SDK sends and reads them."""
    from runware import (
        IImageBackgroundRemoval, IImageCaption, IImageUpscale, IUploadModelLora, IVideoInference,
    )

    image = "b7db282d-2943-4f12-992f-77df3ad3ec71"

    async def go():
        r = await connected(endpoint)
        upscaled = await r.imageUpscale(
            upscaleGanPayload=IImageUpscale(inputImage=image, upscaleFactor=2)
        )
        cut = await r.imageBackgroundRemoval(
            removeImageBackgroundPayload=IImageBackgroundRemoval(inputImage=image)
        )
        caption = await r.imageCaption(requestImageToText=IImageCaption(inputImage=image))
        steps = await r.modelUpload(requestModel=IUploadModelLora(
            air="me:1@1", name="mine", downloadURL="https://example.com/m.safetensors",
            uniqueIdentifier="abc", version="1", format="safetensors", private=True,
            architecture="flux1d",
        ))
        # Async by this SDK's default: acknowledged, then fetched (once the
        # server holds it, as in the async check above).
        ack = await r.videoInference(requestVideo=IVideoInference(
            model="klingai:5@3", positivePrompt="a cat surfing", duration=5,
        ))
        await asyncio.to_thread(harness.server_items, endpoint, ack.taskUUID, 1, 30)
        videos = await r.getResponse(taskUUID=ack.taskUUID, numberResults=1)
        await r.disconnect()
        return upscaled, cut, caption, steps, videos

    upscaled, cut, caption, steps, videos = run(go())
    assert len(upscaled) == 1 and upscaled[0].imageUUID
    assert len(cut) == 1 and cut[0].imageUUID
    assert caption.text.startswith("a photo")
    assert [s["status"] for s in steps] == ["validated", "downloaded", "optimized", "stored", "ready"]
    assert len(videos) == 1 and videos[0].videoURL.endswith(".mp4")


def test_the_newest_task_types_by_this_sdks_names(endpoint):
    """textInference (sync, and streamed over REST), audioInference,
    inference3d (async by this SDK's default), imageVectorize, uploadImage,
    modelSearch and getTaskDetails, as this SDK sends and reads them."""
    import runware.utils
    from runware import (
        I3dInference, IAudioInference, IModelSearch, ITextInference, ITextInferenceMessage,
        IVectorize,
    )
    from runware.types import IInputs

    image = "b7db282d-2943-4f12-992f-77df3ad3ec71"
    chat = [ITextInferenceMessage(role="user", content="Name a colour")]
    # This SDK takes its streaming URL from a table of Runware's own URLs (an
    # unknown WebSocket URL maps to Runware's production REST URL), so the
    # local URL is added to that table: the only change besides the URL.
    runware.utils._WS_TO_HTTP[endpoint] = endpoint.replace("ws://", "http://")

    async def go():
        r = await connected(endpoint)
        text = await r.textInference(ITextInference(model="minimax:m2.7@0", messages=chat))
        stream = await r.textInference(ITextInference(
            model="minimax:m2.7@0", messages=chat, deliveryMethod="stream"))
        pieces = [p async for p in stream]
        audio = await r.audioInference(IAudioInference(
            model="elevenlabs:1@1", positivePrompt="rain on a roof", duration=10, numberResults=2))
        ack = await r.inference3d(I3dInference(model="microsoft:trellis-2@4b",
                                               inputs={"image": image}))
        await asyncio.to_thread(harness.server_items, endpoint, ack.taskUUID, 1, 30)
        objects = await r.getResponse(taskUUID=ack.taskUUID, numberResults=1)
        vectors = await r.imageVectorize(IVectorize(inputs=IInputs(image=image)))
        uploaded = await r.uploadImage("data:image/png;base64,iVBORw0KGgo=")
        models = await r.modelSearch(IModelSearch(search="flux"))
        details = await r.getTaskDetails(text[0].taskUUID)
        await r.disconnect()
        return text, pieces, audio, objects, vectors, uploaded, models, details

    text, pieces, audio, objects, vectors, uploaded, models, details = run(go())
    assert len(text) == 1 and text[0].text.startswith("You asked: Name a colour")
    chunks, finished = [p for p in pieces if isinstance(p, str)], pieces[-1]
    assert len(chunks) > 5 and finished.text == "".join(chunks)
    assert finished.finishReason == "stop"
    assert len(audio) == 2 and all(a.audioURL.endswith(".mp3") for a in audio)
    assert len(objects) == 1 and objects[0].outputs.files[0].url.endswith(".glb")
    assert len(vectors) == 1 and vectors[0].imageURL.endswith(".svg")
    assert uploaded.imageUUID
    assert models.results
    assert details.taskUUID == text[0].taskUUID
