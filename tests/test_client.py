"""The ``zoo predict`` client's request bodies: inline JSON, JSON and image files, and inputs it cannot read."""

from __future__ import annotations

import json

import pytest

from zoo.serving import ServingError
from zoo.serving.client import PNG_MAGIC, request_body


def test_inline_json_longer_than_a_file_name_is_parsed_not_opened():
    request = {"task": "decode", "latent": [0.123456789] * 32}
    text = "  " + json.dumps(request)
    assert len(text.encode()) > 300  # longer than NAME_MAX (255): as a path it raises "File name too long"
    body, content_type = request_body(text)
    assert content_type == "application/json" and json.loads(body) == request


def test_inline_json_with_a_forced_task():
    body, _ = request_body('{"n": 2, "seed": 0}', task="sample")
    assert json.loads(body) == {"n": 2, "seed": 0, "task": "sample"}


def test_json_and_image_files_are_read(tmp_path):
    (tmp_path / "in.json").write_text('{"task": "sample", "n": 1}')
    assert json.loads(request_body(str(tmp_path / "in.json"))[0]) == {"task": "sample", "n": 1}
    png = PNG_MAGIC + b"rest of a png"
    (tmp_path / "in.png").write_bytes(png)
    assert request_body(str(tmp_path / "in.png")) == (png, "image/png")


@pytest.mark.parametrize("name", ["missing.png", ".", "x" * 300])
def test_an_input_that_is_not_a_readable_file_is_a_clear_error(tmp_path, name):
    with pytest.raises(ServingError, match="not a readable file .*and not a JSON object"):
        request_body(str(tmp_path / name))


def test_a_json_input_must_be_an_object(tmp_path):
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ServingError, match="must be an object"):
        request_body(str(tmp_path / "list.json"))
