"""Every bad request gets a 4xx whose body names what is wrong; the service keeps serving."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.api.helpers import errors_at, photo, png_bytes


@pytest.mark.parametrize(
    "body,field",
    [
        ({"num_images": 0}, "num_images"),
        ({"num_images": 17}, "num_images"),
        ({"steps": 0}, "steps"),
        ({"steps": 1001}, "steps"),
        ({"sampler": "heun"}, "sampler"),
        ({"eta": 2}, "eta"),
        ({"seed": -1}, "seed"),
        ({"guidance_scale": -1}, "guidance_scale"),
        ({"output_format": "gif"}, "output_format"),
        ({"model": "../../etc/passwd"}, "model"),
        ({"class_label": 1, "colour": "red"}, "colour"),
        ({"class_label": [1]}, "class_label"),
        ({"class_label": True}, "class_label"),  # not class 1
        ({"steps": True}, "steps"),
        ({"seed": False}, "seed"),
        ({"guidance_scale": True}, "guidance_scale"),
    ],
)
def test_invalid_generate_fields_are_422_naming_the_field(client, body, field):
    r = client.post("/v1/generate", json={"class_label": 0, **body})
    assert r.status_code == 422, r.text
    assert any(field in loc for loc in errors_at(r))


@pytest.mark.parametrize(
    "body,field,status",
    [
        ({"model": "nope"}, "model", 404),
        ({"class_label": "zebra"}, "class_label", 422),
        ({"class_label": 3}, "class_label", 422),
        ({"model": "tiny-rgb", "class_label": 1}, "class_label", 422),
        ({"model": "tiny-rgb", "guidance_scale": 2.0}, "guidance_scale", 422),
        ({"guidance_scale": 1.0}, "guidance_scale", 422),
    ],
)
def test_requests_the_model_cannot_serve(client, body, field, status):
    r = client.post("/v1/generate", json=body)
    assert r.status_code == status, r.text
    assert any(field in loc for loc in errors_at(r))


def test_a_model_that_only_generates_refuses_denoise(client):
    r = client.post(
        "/v1/denoise",
        files={"file": ("p.png", png_bytes(photo()), "image/png")},
        data={"model": "tiny-gen", "sigma": "5"},
    )
    assert r.status_code == 422 and ["body", "model"] in errors_at(r)


@pytest.mark.parametrize("path", ["/v1/generate", "/v1/denoise", "/v1/noise", "/generate"])
def test_malformed_json_is_422_with_the_parsers_reason_and_where_it_stopped(client, path):
    r = client.post(path, content=b'{"class_label": 7,}', headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["type"] == "json_invalid" and error["loc"] == ["body"]
    assert error["msg"] == "invalid JSON: Expecting property name enclosed in double quotes: line 1 column 19 (char 18)"


def test_nan_and_infinity_are_refused_as_such_not_by_a_bound(client):
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        body = b'{"class_label": 0, "eta": ' + literal + b', "guidance_scale": ' + literal + b"}"
        r = client.post("/v1/generate", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422
        assert {(tuple(e["loc"]), e["type"]) for e in r.json()["detail"]} == {
            (("body", "eta"), "finite_number"),
            (("body", "guidance_scale"), "finite_number"),
        }


@pytest.mark.parametrize("label", ["\u0663", "\U0001d7d5", "\uff17"])  # Arabic-Indic 3, mathematical 7, full-width 7
def test_a_class_label_in_other_scripts_digits_is_not_read_as_a_number(client, label):
    r = client.post("/v1/generate", json={"class_label": label})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "unknown_class"
    assert client.post("/v1/generate", json={"class_label": "2", "steps": 2}).status_code == 200


def test_an_image_part_without_a_filename_is_told_to_send_one(client):
    """Multipart parsers read a part without a filename as text: the image is there, sent the wrong way."""
    image = png_bytes(photo())
    part = b'--xx\r\nContent-Disposition: form-data; name="file"\r\nContent-Type: image/png\r\n\r\n'
    body = part + image + b'\r\n--xx\r\nContent-Disposition: form-data; name="sigma"\r\n\r\n5\r\n--xx--\r\n'
    r = client.post("/v1/noise", content=body, headers={"content-type": "multipart/form-data; boundary=xx"})
    assert r.status_code == 422 and errors_at(r) == [["body", "file"]] and "filename" in r.json()["detail"][0]["msg"]
    named = body.replace(b'name="file"', b'name="file"; filename="p.png"')
    assert (
        client.post(
            "/v1/noise", content=named, headers={"content-type": "multipart/form-data; boundary=xx"}
        ).status_code
        == 200
    )


def test_a_multipart_body_cut_before_its_closing_boundary_is_400_not_a_missing_field(client):
    part = b'--xx\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n' + png_bytes(photo())
    headers = {"content-type": "multipart/form-data; boundary=xx"}
    r = client.post("/v1/noise", content=part, headers=headers)
    assert r.status_code == 400 and "closing boundary" in r.json()["detail"][0]["msg"]
    sigma = b'\r\n--xx\r\nContent-Disposition: form-data; name="sigma"\r\n\r\n5\r\n--xx--\r\n'
    assert client.post("/v1/noise", content=part + sigma + b"an epilogue", headers=headers).status_code == 200


def test_an_unknown_model_is_404_on_noise_with_sigma_too(client):
    files = {"file": ("p.png", png_bytes(photo()), "image/png")}
    r = client.post("/v1/noise", files=files, data={"sigma": "5", "model": "no-such-model"})
    assert r.status_code == 404 and errors_at(r) == [["body", "model"]]
    r = client.post("/v1/noise", files=files, data={"sigma": "5", "model": "tiny-rgb"})
    assert r.status_code == 200 and r.json()["model"] is None  # sigma noise needs no model's schedule


def test_a_mask_sent_as_text_is_422_saying_to_send_it_as_a_file(client):
    """curl -F mask=mask.png (no @) sends the name as a text field: it had been answered "this request takes no
    mask", on a request that takes one."""
    image = png_bytes(photo(16, 16, channels=1))
    form = {"model": "tiny-gen", "class_label": "0", "steps": "2", "mask": "mask.png"}
    r = client.post("/v1/img2img", files={"file": ("p.png", image, "image/png")}, data=form)
    assert r.status_code == 422 and errors_at(r) == [["body", "mask"]]
    assert (
        "the field 'mask' came as text" in r.json()["detail"][0]["msg"] and "-F mask=@" in r.json()["detail"][0]["msg"]
    )
    r = client.post("/v1/denoise", files={"file": ("p.png", image, "image/png")}, data={"sigma": "5", "mask": "m"})
    assert r.status_code == 422 and r.json()["detail"][0]["msg"] == "this request takes no mask"
    r = client.post("/v1/denoise", files={"file": (None, "photo.png")}, data={"sigma": "5"})  # the image, likewise
    assert r.status_code == 422 and "the field 'file' came as text" in r.json()["detail"][0]["msg"]


def test_an_empty_mask_is_422_not_an_img2img_without_one(client):
    image = png_bytes(photo(16, 16, channels=1))
    form = {"model": "tiny-gen", "class_label": "0", "steps": "2"}
    r = client.post(
        "/v1/img2img", files={"file": ("p.png", image, "image/png"), "mask": ("m.png", b"", "image/png")}, data=form
    )
    assert (
        r.status_code == 422
        and errors_at(r) == [["body", "mask"]]
        and r.json()["detail"][0]["msg"] == "the mask is empty"
    )
    body = {"model": "tiny-gen", "class_label": 0, "steps": 2, "image": base64.b64encode(image).decode(), "mask": ""}
    r = client.post("/v1/img2img", json=body)
    assert r.status_code == 422 and errors_at(r) == [["body", "mask"]]
    del body["mask"]
    assert client.post("/v1/img2img", json=body).status_code == 200


def test_every_models_card_says_the_multiple_img2img_needs(client):
    card = client.get("/v1/models/tiny-gen").json()["card"]  # a pixel model, with a native size
    multiple = card["size_multiple"]
    assert multiple > 1
    form = {"model": "tiny-gen", "class_label": "0", "steps": "2"}
    odd = png_bytes(photo(multiple * 4 + 1, multiple * 4, channels=1))
    r = client.post("/v1/img2img", files={"file": ("p.png", odd, "image/png")}, data=form)
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "not_multiple"
    assert f"multiples of {multiple}" in r.json()["detail"][0]["msg"]
    fits = png_bytes(photo(multiple * 4, multiple * 4, channels=1))
    assert client.post("/v1/img2img", files={"file": ("p.png", fits, "image/png")}, data=form).status_code == 200


@pytest.mark.parametrize("path", ["/v1/generate", "/v1/denoise", "/v1/noise"])
@pytest.mark.parametrize(
    "body,reason",
    [
        (b'{"image":' + b"[" * 5000 + b"]" * 5000 + b"}", "nested too deeply"),
        (b'{"seed": ' + b"9" * 5000 + b"}", "digits"),
        (b'{"seed": "\xff\xfe\xfd"}', "invalid JSON"),
    ],
    ids=["deep", "long-integer", "not-utf8"],
)
def test_json_the_parser_rejects_is_422_with_its_reason(client, path, body, reason):
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["type"] == "json_invalid" and error["loc"] == ["body"] and reason in error["msg"]
    assert client.post("/v1/generate", json={"class_label": 0, "steps": 2}).status_code == 200  # still serving


def test_wrong_media_types_are_415(client):
    r = client.post(
        "/v1/generate", content=b"class_label=1", headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert r.status_code == 415 and ["header", "content-type"] in errors_at(r)
    r = client.post("/v1/denoise", content=b"raw", headers={"content-type": "image/png"})
    assert r.status_code == 415


def test_raw_bytes_of_several_images_are_406(client):
    r = client.post("/v1/generate", json={"class_label": 0, "num_images": 2}, headers={"Accept": "image/png"})
    assert r.status_code == 406 and ["body", "num_images"] in errors_at(r)
    # JSON, if liked at all, carries several images, however much more an image type is liked (a browser's
    # Accept for an image, say)
    for accept in ("image/png, application/json;q=0.5", "image/avif,image/webp,image/*,*/*;q=0.8"):
        r = client.post(
            "/v1/generate", json={"class_label": 0, "steps": 2, "num_images": 2}, headers={"Accept": accept}
        )
        assert r.status_code == 200 and r.headers["content-type"] == "application/json", accept
        assert [i["media_type"] for i in r.json()["images"]] == ["image/png", "image/png"]
    r = client.post("/v1/generate", json={"class_label": 0, "steps": 2}, headers={"Accept": "image/*, */*;q=0.8"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/")  # one image: its bytes
    r = client.post("/v1/generate", json={"class_label": 0, "output_format": "jpeg"}, headers={"Accept": "image/png"})
    assert r.status_code == 406


def test_undecodable_image_is_422(client):
    r = client.post(
        "/v1/denoise",
        files={"file": ("x.png", b"definitely not an image", "image/png")},
        data={"sigma": "5", "model": "tiny-rgb"},
    )
    assert r.status_code == 422 and ["body", "file"] in errors_at(r)
    r = client.post("/v1/denoise", json={"image": "%%%not-base64", "model": "tiny-rgb"})
    assert r.status_code == 422 and ["body", "image"] in errors_at(r)
    truncated = png_bytes(photo())[:60]
    r = client.post(
        "/v1/denoise", files={"file": ("t.png", truncated, "image/png")}, data={"sigma": "5", "model": "tiny-rgb"}
    )
    assert r.status_code == 422


def test_missing_file_and_tiny_images_are_422(client):
    r = client.post("/v1/denoise", files={"other": ("p.png", b"x", "image/png")}, data={"sigma": "5"})
    assert r.status_code == 422 and ["body", "file"] in errors_at(r)
    r = client.post(
        "/v1/denoise",
        files={"file": ("p.png", png_bytes(photo(4, 4)), "image/png")},
        data={"sigma": "5", "model": "tiny-rgb"},
    )
    assert r.status_code == 422


@pytest.mark.parametrize(
    "data,field",
    [
        ({"sigma": "-3"}, "sigma"),
        ({"sigma": "300"}, "sigma"),
        ({"sigma": "loud"}, "sigma"),
        ({"mode": "magic"}, "mode"),
        ({"mode": "mmse", "steps": "5"}, "mode"),
        ({"samples": "3"}, "mode"),
        ({"mode": "sample", "samples": "17"}, "samples"),
        ({"mode": "sample", "samples": "0"}, "samples"),
        ({"ensemble": "9"}, "ensemble"),
    ],
)
def test_invalid_denoise_options_are_422(client, data, field):
    r = client.post(
        "/v1/denoise", files={"file": ("p.png", png_bytes(photo()), "image/png")}, data={"model": "tiny-rgb", **data}
    )
    assert r.status_code == 422, r.text
    assert any(field in loc for loc in errors_at(r))


def test_noise_needs_exactly_one_of_sigma_and_timestep(client):
    files = {"file": ("p.png", png_bytes(photo()), "image/png")}
    assert client.post("/v1/noise", files=files, data={}).status_code == 422
    assert client.post("/v1/noise", files=files, data={"sigma": "5", "timestep": "3"}).status_code == 422
    assert client.post("/v1/noise", files=files, data={"timestep": "5000", "model": "tiny-gen"}).status_code == 422


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG file whose header claims a huge image (the IDAT is a few bytes)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def test_decompression_bombs_are_413_before_decoding(client):
    r = client.post(
        "/v1/denoise",
        files={"file": ("bomb.png", _bomb_png(50000, 50000), "image/png")},
        data={"sigma": "5", "model": "tiny-rgb"},
    )
    assert r.status_code == 413 and ["body", "file"] in errors_at(r)
    assert "pixels" in r.json()["detail"][0]["msg"]


def test_too_many_pixels_is_413(make_client):
    client = make_client(max_pixels=1000)
    r = client.post(
        "/v1/denoise",
        files={"file": ("p.png", png_bytes(photo(40, 48)), "image/png")},
        data={"sigma": "5", "model": "tiny-rgb"},
    )
    assert r.status_code == 413


def test_body_too_large_is_413(make_client):
    client = make_client(max_body_bytes=4096)
    big = np.random.default_rng(0).integers(0, 255, (100, 100, 3), dtype=np.uint8)
    r = client.post("/v1/denoise", files={"file": ("p.png", png_bytes(big), "image/png")}, data={"sigma": "5"})
    assert r.status_code == 413 and ["body"] in errors_at(r)
    r = client.post("/v1/denoise", json={"image": base64.b64encode(png_bytes(big)).decode()})
    assert r.status_code == 413


def test_queue_full_is_503_with_retry_after(make_client):
    client = make_client(queue_limit=2)
    headers = {"Prefer": "respond-async"}
    ids = [
        client.post("/v1/generate", json={"class_label": 0, "steps": 1000}, headers=headers).json()["job_id"]
        for _ in range(2)
    ]
    r = client.post("/v1/generate", json={"class_label": 0}, headers=headers)
    assert r.status_code == 503 and r.headers["retry-after"].isdigit()
    for job_id in ids:
        client.delete(f"/v1/jobs/{job_id}")
    assert client.post("/v1/generate", json={"class_label": 0, "steps": 2}).status_code == 200


def test_the_service_keeps_serving_after_bad_input(client):
    client.post("/v1/denoise", files={"file": ("x.png", b"junk", "image/png")})
    client.post("/v1/generate", content=b"\xff\xfe", headers={"content-type": "application/json"})
    assert client.post("/v1/generate", json={"class_label": 0, "steps": 2}).status_code == 200
    assert client.get("/readyz").status_code == 200


def test_palette_image_with_transparency_is_accepted_and_alpha_reported(client):
    image = Image.fromarray(photo()).convert("P")
    image.info["transparency"] = 0
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=0)
    r = client.post(
        "/v1/denoise",
        files={"file": ("p.png", buffer.getvalue(), "image/png")},
        data={"sigma": "5", "model": "tiny-rgb"},
    )
    assert r.status_code == 200 and r.json()["info"]["alpha_dropped"] is True


def test_a_chunked_body_over_the_limit_is_413(make_client):
    client = make_client(max_body_bytes=4096)

    def chunks():
        for _ in range(10):
            yield b"x" * 1024

    r = client.post("/v1/generate", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and ["body"] in errors_at(r)


def test_a_multipart_field_given_twice_or_as_a_file_is_422_naming_it(client):
    image = ("p.png", png_bytes(photo()), "image/png")
    twice = [("file", image), ("model", (None, "tiny-rgb")), ("sigma", (None, "5")), ("sigma", (None, "50"))]
    r = client.post("/v1/denoise", files=twice)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "sigma"]
    assert "2 times" in r.json()["detail"][0]["msg"]
    as_file = [("file", image), ("model", (None, "tiny-rgb")), ("sigma", ("s.txt", b"5", "text/plain"))]
    r = client.post("/v1/denoise", files=as_file)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "sigma"]
    assert "not a file" in r.json()["detail"][0]["msg"]
    two_files = [("file", image), ("file", image), ("model", (None, "tiny-rgb")), ("sigma", (None, "5"))]
    assert client.post("/v1/denoise", files=two_files).status_code == 422
    once = [("file", image), ("model", (None, "tiny-rgb")), ("sigma", (None, "5"))]
    assert client.post("/v1/denoise", files=once).status_code == 200


def test_an_empty_json_body_says_it_is_empty(client):
    r = client.post("/v1/generate", content=b"", headers={"content-type": "application/json"})
    assert r.status_code == 422 and errors_at(r) == [["body"]]
    assert r.json()["detail"][0]["msg"] == "the request body is empty: send a JSON object"  # not "Field required"


def test_base64_images_are_taken_as_clients_write_them(client):
    """Line breaks (base64 wraps at 76 columns), a data: URL's prefix (a browser's readAsDataURL) and the
    URL-safe alphabet without padding had all been "not valid base64"; what is not base64 is named."""
    image = png_bytes(photo(16, 16))
    body = {"model": "tiny-rgb", "sigma": 10, "seed": 3}
    plain = client.post(
        "/v1/denoise", json={**body, "image": base64.b64encode(image).decode()}, headers={"Accept": "image/png"}
    )
    assert plain.status_code == 200, plain.text
    written = [
        base64.encodebytes(image).decode(),
        "data:image/png;base64," + base64.b64encode(image).decode(),
        "DATA:;base64," + base64.b64encode(image).decode(),  # RFC 2397: the media type may be left out
        base64.urlsafe_b64encode(image).decode().rstrip("="),
    ]
    for text in written:
        r = client.post("/v1/denoise", json={**body, "image": text}, headers={"Accept": "image/png"})
        assert r.status_code == 200 and r.content == plain.content, text[:40]
    for text, said in [
        ("iVBOR$w0KGgo=", "'$' is not a base64 character"),
        ("data:image/png,%89PNG", "a data: URL must be base64"),
        ("QUJDR", "length or padding"),  # 5 characters: no padding makes them whole bytes
    ]:
        r = client.post("/v1/denoise", json={**body, "image": text})
        assert r.status_code == 422 and errors_at(r) == [["body", "image"]] and said in r.json()["detail"][0]["msg"]


def test_models_with_alpha_refuse_jpeg_and_models_of_other_channel_counts_are_not_served(make_client, tmp_path):
    """A 2- or 4-channel model (grey or RGB with alpha) answered a JPEG request with a failed job ("cannot
    write mode RGBA as JPEG"), and a 6-channel one was served and failed every job: the format is now chosen
    to hold the alpha (422 when asked for, the next acceptable one when negotiated), and a model whose
    images are not 1-4 channels is not served."""
    from tests.tiny_models import write_bare

    for channels in (2, 4, 6):
        write_bare(tmp_path / f"ch{channels}", channels=channels)
    client = make_client(store=tmp_path)
    for model, mode in (("ch2", "LA"), ("ch4", "RGBA")):
        body = {"model": model, "steps": 2}
        r = client.post("/v1/generate", json={**body, "output_format": "jpeg"})
        assert r.status_code == 422 and r.json()["detail"][0]["type"] == "no_alpha_in_format", r.text
        assert r.json()["detail"][0]["loc"] == ["body", "output_format"]
        r = client.post("/v1/generate", json=body, headers={"Accept": "image/jpeg"})
        assert r.status_code == 406 and "no alpha channel" in r.json()["detail"][0]["msg"], r.text
        r = client.post("/v1/generate", json=body, headers={"Accept": "image/jpeg, image/webp;q=0.5"})
        assert r.status_code == 200 and r.headers["content-type"] == "image/webp", r.text
        assert Image.open(io.BytesIO(r.content)).mode in (mode, "RGBA")  # WebP holds grey + alpha as RGBA
        r = client.post("/v1/generate", json=body, headers={"Accept": "image/png"})
        assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).mode == mode
    r = client.post("/v1/generate", json={"model": "ch6", "steps": 2})
    assert 400 <= r.status_code < 500 and "6 image channels" in r.text, r.text


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/generate", b'{"model": "nope", "model": "tiny-rgb", "steps": 1}'),
        ("/v1/generate", b'{"model": "tiny-rgb", "steps": 1, "x": {"a": 1, "a": 2}}'),
        ("/v1/denoise", b'{"image": "AAAA", "sigma": -5, "model": "tiny-rgb", "image": "AAAA", "sigma": 10}'),
    ],
)
def test_a_json_name_given_twice_in_one_object_is_refused_not_read_as_its_last(client, path, body):
    """Python's parser keeps the last of a repeated name: the first body ran tiny-rgb without a word, where a
    multipart field or a header given twice is refused."""
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid", r.text
    assert "is given 2 times in one object" in r.json()["detail"][0]["msg"]


def test_a_large_object_with_a_repeated_name_is_refused_naming_it(client):
    """The repeated name is found in one pass over the object's names (counting each name's repeats would
    take the square of their number: minutes for a body within the size limit)."""
    members = ",".join(f'"k{i}": 0' for i in range(50_000))
    body = ('{"model": "tiny-rgb", ' + members + ', "k0": 1}').encode()
    r = client.post("/v1/generate", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text[:300]
    assert r.json()["detail"][0]["msg"] == "invalid JSON: the name 'k0' is given 2 times in one object: give it once"


def test_errors_about_an_uploaded_image_name_the_field_it_came_in(make_client):
    """Every error about the image named ["body", "file"], a field a JSON request does not have (it sends
    "image"), and an img2img image over the queue's pixels blamed num_images though only one was asked for."""
    import base64

    client = make_client(queue_max_pixels=300)
    multiple = client.get("/v1/models/tiny-gen").json()["card"]["size_multiple"]
    odd = png_bytes(photo(multiple * 4 + 1, multiple * 4, channels=1))
    body = {"model": "tiny-gen", "class_label": 0, "steps": 2, "image": base64.b64encode(odd).decode()}
    r = client.post("/v1/img2img", json=body)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "image"], r.text
    r = client.post("/v1/img2img", files={"file": ("p.png", odd, "image/png")}, data={"model": "tiny-gen"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "file"], r.text
    large = base64.b64encode(png_bytes(photo(32, 32, channels=1))).decode()  # over the queue's 300 pixels
    for path, extra in (
        ("/v1/img2img", {"model": "tiny-gen", "class_label": 0}),
        ("/v1/denoise", {"sigma": 10}),
        ("/v1/noise", {"sigma": 10}),
    ):
        r = client.post(path, json={"image": large, **extra})
        assert r.status_code == 413 and r.json()["detail"][0]["loc"] == ["body", "image"], (path, r.text)


def test_a_mask_with_transparent_pixels_is_422_and_an_opaque_rgba_one_is_read(client):
    """The mask's alpha was dropped without a word: a mask in OpenAI's convention (transparent = edit here) was
    read by its colours instead, and one all black repainted nothing while the job "succeeded"."""
    image = png_bytes(photo(16, 16, channels=3))
    form = {"model": "tiny-gen", "class_label": "0", "steps": "2"}
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[4:12, 4:12, 3] = 0  # edit here, as OpenAI reads it
    for mask, status in ((rgba, 422), (np.where(rgba[..., 3:] == 0, 255, rgba).astype(np.uint8), 200)):
        files = {"file": ("p.png", image, "image/png"), "mask": ("m.png", png_bytes(mask, "RGBA"), "image/png")}
        r = client.post("/v1/img2img", files=files, data=form)
        assert r.status_code == status, r.text
    assert errors_at(
        client.post("/v1/img2img", files=files | {"mask": ("m.png", png_bytes(rgba, "RGBA"))}, data=form)
    ) == [["body", "mask"]]


JOB = "0" * 32


@pytest.mark.parametrize(
    "method,path",
    [
        ("POST", "/v1/generate"),
        ("POST", "/generate"),
        ("POST", "/v1/denoise"),
        ("POST", "/denoise"),
        ("POST", "/v1/noise"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/tiny-gen"),
        ("GET", f"/v1/jobs/{JOB}"),
        ("GET", f"/v1/jobs/{JOB}/events"),
        ("GET", f"/v1/jobs/{JOB}/images/0"),
        ("DELETE", f"/v1/jobs/{JOB}"),
    ],
)
def test_a_query_parameter_the_api_does_not_read_is_422_naming_it_not_ignored(client, method, path):
    # POST /v1/denoise?sigma=50 had run at the default sigma without a word; no route reads a query string
    upload = {"files": {"file": ("p.png", png_bytes(photo()), "image/png")}, "data": {"model": "tiny-rgb"}}
    body = {"json": {"class_label": 0, "steps": 2}} if "generate" in path else upload if method == "POST" else {}
    if path == "/v1/noise":
        body["data"] = {"sigma": "5"}
    r = client.request(method, f"{path}?sigma=50&steps=3", **body)
    assert r.status_code == 422, r.text
    [error] = r.json()["detail"]
    assert error["loc"] == ["query", "sigma"] and error["type"] == "extra_forbidden"
    assert error["msg"].startswith("unknown query parameter 'sigma' (and 1 more): this endpoint reads none")


def test_an_empty_query_string_is_no_parameter_and_the_request_runs(client):
    upload = {"file": ("p.png", png_bytes(photo()), "image/png")}
    assert client.post("/v1/generate?", json={"class_label": 0, "steps": 2}).status_code == 200
    assert client.post("/v1/denoise?", files=upload, data={"model": "tiny-rgb", "sigma": "5"}).status_code == 200
    assert client.get("/v1/models?").status_code == 200


def test_pages_and_probes_outside_the_api_take_any_query_string(client):
    # a link with tracking parameters, a probe or a scraper that adds its own: none of these read options
    for path in ("/?utm_source=x", "/healthz?probe=1", "/readyz?probe=1", "/metrics?name[]=x", "/docs?x=1"):
        assert client.get(path).status_code == 200, path
