"""common.jsapi: the JetStream API's answers read from bytes, names and times as it takes them."""

from __future__ import annotations

import datetime

import pytest

from common import jsapi


def test_an_answer_is_its_object():
    doc = jsapi.answer(b'{"type":"io.nats.jetstream.api.v1.stream_info_response","config":{}}')
    assert doc["config"] == {}


def test_an_error_answer_raises_with_the_servers_codes():
    with pytest.raises(jsapi.APIError) as caught:
        jsapi.answer(b'{"error":{"code":404,"err_code":10059,"description":"stream not found"}}')
    err = caught.value
    assert (err.code, err.err_code, err.description) == (404, 10059, "stream not found")
    assert err.not_found and str(err) == "stream not found (code 404, error 10059)"


@pytest.mark.parametrize("data", [b"", b"[]", b"nope", b'{"error":"flat"}', b'{"error":{"code":"x"}}'])
def test_what_is_not_an_answer_is_an_error(data):
    with pytest.raises(jsapi.APIError):
        jsapi.answer(data)


def test_times_are_utc_with_nanoseconds():
    eastern = datetime.timezone(datetime.timedelta(hours=-5))
    moment = datetime.datetime(2026, 12, 3, 9, 30, 0, 123456, tzinfo=eastern)
    assert jsapi.rfc3339(moment) == "2026-12-03T14:30:00.123456000Z"


@pytest.mark.parametrize("name", ["FEED", "lb-remote-3", "a_b"])
def test_good_names(name):
    assert jsapi.check_name(name) == name


@pytest.mark.parametrize("name", ["", "a.b", "a*", "a>", "a b", "a/b", "x" * 256, "A\r\nPUB"])
def test_names_that_would_change_the_api_subject_are_refused(name):
    with pytest.raises(ValueError):
        jsapi.check_name(name)
