"""The OpenAPI document describes every answer, and the committed snapshot is in step with the code."""

from __future__ import annotations

from app.api.openapi import SNAPSHOT, document, render

JOB_ROUTES = [("/v1/generate", "post"), ("/v1/denoise", "post"), ("/v1/noise", "post")]


def test_the_committed_openapi_snapshot_matches_the_code():
    assert SNAPSHOT.read_text() == render(document()), "the API changed: run `python -m app.api.openapi` and commit"


def test_every_route_declares_its_2xx_and_4xx_bodies():
    doc = document()
    for path, methods in doc["paths"].items():
        for method, operation in methods.items():
            responses = operation["responses"]
            ok = [code for code in responses if code.startswith("2")]
            assert ok, f"{method} {path} declares no 2xx"
            for code in ok:
                assert responses[code].get("content") or code == "204", f"{method} {path} {code} has no body"
            if path not in ("/healthz", "/readyz"):
                for code in ("404", "422") if path.startswith("/v1/") and "{" in path or method == "post" else ():
                    schema = responses[code]["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorBody"}, f"{method} {path} {code}"


def test_job_routes_describe_the_job_and_the_errors_a_client_meets():
    doc = document()
    for path, method in JOB_ROUTES:
        responses = doc["paths"][path][method]["responses"]
        assert responses["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/JobOut"}
        assert set(responses) >= {"200", "202", "400", "404", "406", "413", "415", "422", "503"}


def test_seed_bounds_are_exact_integers():
    schema = document()["components"]["schemas"]["GenerateRequest"]["properties"]["seed"]["anyOf"][0]
    assert schema["maximum"] == 2**63 - 1 and isinstance(schema["maximum"], int)


def test_the_document_declares_the_api_keys():
    doc = document()
    assert set(doc["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    assert doc["paths"]["/v1/generate"]["post"]["security"] == [{"bearer": []}, {"apiKey": []}, {}]
    assert "security" not in doc["paths"]["/healthz"]["get"]


def test_multipart_fields_are_described_as_the_server_takes_them():
    """webhook_events was an array in the multipart schema, which a generated client sends as one part per
    item; the server takes one comma-separated field (and refuses a field given twice)."""
    doc = document()
    for path in ("/v1/denoise", "/v1/noise", "/v1/img2img"):
        form = doc["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
        for name, schema in form.items():
            assert schema.get("type") != "array", (path, name)
        assert form["webhook_events"]["type"] == "string" and "comma-separated" in form["webhook_events"]["description"]
