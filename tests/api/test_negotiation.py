"""Unit tests of Accept negotiation (RFC 9110 sec. 12.5.1): q-values, specificity, 406, result formats."""

from __future__ import annotations

import pytest

from app.api.errors import ApiError
from app.api.negotiation import (
    Negotiated,
    negotiate,
    negotiate_result,
    parse_media_range,
    prefers_async,
    require_acceptable,
)

RESULTS = ["application/json", "image/png", "image/jpeg", "image/webp"]


@pytest.mark.parametrize(
    ("accept", "requested", "expected"),
    [
        (None, None, Negotiated(raw=False, output_format="png")),
        ("", None, Negotiated(raw=False, output_format="png")),
        (None, "webp", Negotiated(raw=False, output_format="webp")),
        ("image/png", None, Negotiated(raw=True, output_format="png")),
        ("image/*", None, Negotiated(raw=True, output_format="png")),
        ("image/*", "jpeg", Negotiated(raw=True, output_format="jpeg")),
        ("image/png;q=0, */*", None, Negotiated(raw=False, output_format="png")),
        ("text/html, */*;q=0.1", None, Negotiated(raw=False, output_format="png")),
        ("image/jpeg;q=0.5, image/webp", None, Negotiated(raw=True, output_format="webp")),
        ("application/json, image/png", None, Negotiated(raw=False, output_format="png")),
        ("application/json, image/png", "jpeg", Negotiated(raw=False, output_format="jpeg")),
        ("*/*", "webp", Negotiated(raw=False, output_format="webp")),
    ],
)
def test_negotiate_result_examples(accept, requested, expected):
    assert negotiate_result(accept, requested) == expected


@pytest.mark.parametrize(
    ("accept", "requested"),
    [
        ("image/webp", "jpeg"),
        ("image/png;q=0", None),
        ("text/html", None),
        ("image/png", "jpeg"),
        ("application/json;q=0, image/*;q=0", None),
    ],
)
def test_nothing_acceptable_is_406_at_the_accept_header(accept, requested):
    with pytest.raises(ApiError) as caught:
        negotiate_result(accept, requested)
    error = caught.value
    assert (error.status, error.loc, error.type) == (406, ["header", "accept"], "not_acceptable")
    assert "application/json" in error.msg


def test_406_names_only_what_the_request_can_get():
    with pytest.raises(ApiError) as caught:
        negotiate_result("image/webp", "jpeg")
    assert "image/jpeg" in caught.value.msg and "image/webp" not in caught.value.msg


def test_requested_format_limits_the_offer_to_json_and_that_format():
    assert negotiate_result("image/png, application/json;q=0.5", "jpeg") == Negotiated(False, "jpeg")
    assert negotiate_result("image/jpeg, application/json;q=0.5", "jpeg") == Negotiated(True, "jpeg")


def test_unknown_requested_format_is_a_programming_error():
    with pytest.raises(ValueError):
        negotiate_result(None, "gif")


def test_negotiated_is_frozen():
    with pytest.raises(AttributeError):
        negotiate_result(None, None).raw = True  # type: ignore[misc]


def test_missing_or_empty_accept_means_anything():
    assert negotiate(None, RESULTS) == "application/json"
    assert negotiate("", RESULTS) == "application/json"
    assert negotiate(" , ", RESULTS) == "application/json"


def test_highest_q_wins():
    assert negotiate("application/json;q=0.4, image/webp;q=0.9, image/png;q=0.8", RESULTS) == "image/webp"


def test_ties_go_to_the_earlier_offered_type():
    assert negotiate("image/webp, image/png", RESULTS) == "image/png"
    assert negotiate("image/*, application/json", RESULTS) == "application/json"
    assert negotiate("image/*", ["image/webp", "image/png"]) == "image/webp"


def test_q_zero_means_not_acceptable():
    assert negotiate("image/png;q=0", ["image/png"]) is None
    assert negotiate("image/png;q=0.000", ["image/png"]) is None
    assert negotiate("image/*;q=0, application/json;q=0.1", RESULTS) == "application/json"


def test_exact_type_beats_type_wildcard_beats_full_wildcard():
    accept = "*/*;q=0.1, image/*;q=0.5, image/png;q=0"
    assert negotiate(accept, ["image/png"]) is None
    assert negotiate(accept, ["image/jpeg"]) == "image/jpeg"
    assert negotiate(accept, ["image/png", "image/jpeg", "application/json"]) == "image/jpeg"
    assert negotiate(accept, ["application/json", "image/png"]) == "application/json"


def test_specificity_does_not_depend_on_order_in_the_header():
    assert negotiate("image/png;q=0.2, image/*", ["image/png", "image/webp"]) == "image/webp"
    assert negotiate("image/*, image/png;q=0.2", ["image/png", "image/webp"]) == "image/webp"


def test_a_wildcard_refused_still_allows_a_type_named_exactly():
    assert negotiate("*/*;q=0, image/png", RESULTS) == "image/png"


def test_matching_ignores_case():
    assert negotiate("Image/PNG;Q=0.5", ["image/png"]) == "image/png"
    assert negotiate("image/png", ["IMAGE/PNG"]) == "IMAGE/PNG"


def test_whitespace_around_elements_and_parameters_is_allowed():
    assert negotiate("  image/webp ;  q=0.3 ,\timage/png ; q=0.2 ", RESULTS) == "image/webp"


@pytest.mark.parametrize(
    "bad",
    [
        "image/png;q=2",
        "image/png;q=1.5",
        "image/png;q=abc",
        "image/png;q=0.1234",
        "image/png;q=-1",
        "image/png;q",
        "image",
        "image/",
        "/png",
        "*/png",
        "image/png/x",
        "image png",
        "image/png;=1",
    ],
)
def test_malformed_ranges_are_ignored(bad):
    assert parse_media_range(bad) is None
    assert negotiate(bad, RESULTS) is None
    assert negotiate(f"{bad}, application/json;q=0.5", RESULTS) == "application/json"


def test_qvalue_grammar_limits():
    assert parse_media_range("image/png;q=1.000").q == 1.0
    assert parse_media_range("image/png;q=0.001").q == 0.001
    assert parse_media_range("image/png;q=0.").q == 0.0
    assert parse_media_range("image/png;q=1.001") is None


def test_legacy_leading_dot_q_and_bare_star_are_tolerated():
    accept = "text/html, image/gif, *; q=.2, */*; q=.2"
    assert parse_media_range("*; q=.2").q == 0.2
    assert negotiate(accept, RESULTS) == "application/json"


def test_ranges_with_parameters_match_only_types_carrying_them():
    assert negotiate("image/png;foo=bar", ["image/png"]) is None
    assert negotiate("image/png;foo=bar, image/*;q=0.3", ["image/png"]) == "image/png"
    assert negotiate("image/png;foo=bar;q=0, image/png", ["image/png"]) == "image/png"


def test_json_satisfies_charset_utf8():
    assert negotiate("application/json; charset=UTF-8", RESULTS) == "application/json"
    assert negotiate('application/json; charset="utf-8"', RESULTS) == "application/json"
    assert negotiate("application/json; charset=latin1", RESULTS) is None


def test_quoted_parameters_may_hold_commas_and_semicolons():
    accept = 'image/png;x="a,b;c";q=0.9, application/json;q=0.1'
    assert parse_media_range('image/png;x="a,b;c";q=0.9').params == {"x": "a,b;c"}
    assert negotiate(accept, RESULTS) == "application/json"


def test_require_acceptable_passes_acceptable_types():
    require_acceptable(None, "application/json")
    require_acceptable("*/*", "image/webp")
    require_acceptable("application/*", "application/json")
    require_acceptable("image/webp;q=0.1", "image/webp")


@pytest.mark.parametrize("accept", ["text/html", "image/png", "application/json;q=0", "*/*;q=0"])
def test_require_acceptable_raises_406_otherwise(accept):
    with pytest.raises(ApiError) as caught:
        require_acceptable(accept, "application/json")
    assert caught.value.status == 406 and caught.value.type == "not_acceptable"
    assert "application/json" in caught.value.msg


def test_prefers_async():
    assert prefers_async("respond-async")
    assert prefers_async("wait=5, Respond-Async")
    assert not prefers_async(None)
    assert not prefers_async("wait=5")
    assert prefers_async("respond-async; foo")  # a preference's parameters do not hide its name
    assert prefers_async('handling=lenient, respond-async ;x="a,b"')
    assert not prefers_async('foo="respond-async"') and not prefers_async("respond-asyncx")


def test_the_module_needs_no_torch():
    import subprocess
    import sys

    code = "import sys, app.api.negotiation; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
