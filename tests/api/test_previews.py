"""Live previews: ``preview_every: k`` puts the clean-image estimate on the job's event stream every k steps,
before the final image; nothing is kept or sent when it is not asked for."""

from __future__ import annotations

import base64
import io
import json
import threading

from PIL import Image

from app.families.pixel import PixelModel

ASYNC = {"Prefer": "respond-async"}


def events(client, job_id: str, on_first_event=None) -> list[tuple[str, dict]]:
    """The job's event stream, read to its end; ``on_first_event`` is called once the first event has
    arrived, when the server is following the job."""
    lines = []
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
        for line in stream.iter_lines():
            lines.append(line)
            if on_first_event is not None and line.startswith("data: "):
                on_first_event()
                on_first_event = None
    kinds = [line[7:] for line in lines if line.startswith("event: ")]
    data = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    return list(zip(kinds, data))


def held_until_followed(monkeypatch) -> threading.Event:
    """Hold the tiny model's first step until the returned event is set (by the follower, once its stream
    has begun): previews are live only, and 20 steps of the tiny model can pass between the POST and the
    GET of the event stream."""
    followed = threading.Event()
    predict = PixelModel.predict

    def predict_once_followed(self, x, t, conds):
        followed.wait(10)  # at most 10 s: past that the test fails on its assertions, not by hanging
        return predict(self, x, t, conds)

    monkeypatch.setattr(PixelModel, "predict", predict_once_followed)
    return followed


def test_previews_arrive_every_k_steps_before_the_result(client, monkeypatch):
    followed = held_until_followed(monkeypatch)
    body = {"class_label": "a", "steps": 20, "num_images": 2, "seed": 1, "preview_every": 5}
    job_id = client.post("/v1/generate", json=body, headers=ASYNC).json()["job_id"]
    stream = events(client, job_id, on_first_event=followed.set)
    previews = [data for kind, data in stream if kind == "preview"]
    assert stream[-1][0] == "succeeded"
    assert [p["progress"]["step"] for p in previews] == [5, 10, 15]  # not at 20: the result itself comes then
    last_preview = max(i for i, (kind, _) in enumerate(stream) if kind == "preview")
    assert last_preview < len(stream) - 1
    for preview in previews:
        assert [image["seed"] for image in preview["images"]] == [1, 2]
        for image in preview["images"]:
            assert image["media_type"] == "image/webp"
            decoded = Image.open(io.BytesIO(base64.b64decode(image["data"])))
            assert decoded.format == "WEBP" and decoded.size == (16, 16)  # the tiny model's size, under 128


def test_no_previews_unless_asked(client):
    job_id = client.post("/v1/generate", json={"class_label": "a", "steps": 12}, headers=ASYNC).json()["job_id"]
    assert "preview" not in [kind for kind, _ in events(client, job_id)]


def test_preview_every_must_be_a_positive_step_count(client):
    for value in (0, -1, 1001, "often"):
        r = client.post("/v1/generate", json={"class_label": "a", "preview_every": value})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "preview_every"]


def test_previews_are_bounded_per_job(client):
    r = client.post("/v1/generate", json={"class_label": "a", "steps": 1000, "preview_every": 10})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "too_many_previews"
    assert "every 20 steps" in r.json()["detail"][0]["msg"]
    ok = client.post("/v1/generate", json={"class_label": "a", "steps": 100, "preview_every": 2}, headers=ASYNC)
    assert ok.status_code == 202
