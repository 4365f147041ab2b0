"""client/refs.py: the one reference syntax."""

import pytest

from xfer.client.errors import InvalidArgumentError, InvalidRefError, XferError
from xfer.client.refs import ModelRef, parse_ref, validate_alias, validate_model_id


@pytest.mark.parametrize(
    "text, model, version, alias, selector",
    [
        ("digits-convnet", "digits-convnet", None, None, "latest"),
        ("digits-convnet:3", "digits-convnet", 3, None, "3"),
        ("digits-convnet@stable", "digits-convnet", None, "stable", "stable"),
        ("ab@latest", "ab", None, "latest", "latest"),
        ("m2:12", "m2", 12, None, "12"),
        ("models/digits-convnet", "digits-convnet", None, None, "latest"),
        ("models/digits-convnet/versions/7", "digits-convnet", 7, None, "7"),
        ("models/digits-convnet/versions/prod-eu", "digits-convnet", None, "prod-eu", "prod-eu"),
        ("  padded:2 ", "padded", 2, None, "2"),
    ],
)
def test_valid_refs(text, model, version, alias, selector):
    ref = parse_ref(text)
    assert (ref.model, ref.version, ref.alias, ref.selector) == (model, version, alias, selector)
    assert ref.version_name == f"models/{model}/versions/{selector}"
    assert ref.model_name == f"models/{model}"
    assert parse_ref(str(ref)) == ref  # str() is the canonical, re-parseable form


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "a",
        "Digits",
        "9lives",
        "-x",
        "digits_convnet",
        "digits convnet",
        "mm:",
        "mm@",
        "mm:0",
        "mm:03",
        "mm:-1",
        "mm:1.5",
        "mm:stable",
        "mm@3",
        "mm@Stable",
        "mm@x_y",
        "mm:1:2",
        "mm@a@b",
        "mm:1@a",
        "models/",
        "models/mm/versions/",
        "models/mm/versions/0",
        "models/mm/other/1",
        "a" * 64,
        "mm@" + "a" * 33,
        "m:1",
    ],
)
def test_invalid_refs_raise_a_clear_value_error(text):
    with pytest.raises(InvalidRefError) as info:
        parse_ref(text)
    assert isinstance(info.value, ValueError) and isinstance(info.value, XferError)
    assert repr(text.strip()) in str(info.value) or "empty" in str(info.value)


def test_typos_get_a_suggestion():
    with pytest.raises(InvalidRefError, match=r"write mm@stable"):
        parse_ref("mm:stable")
    with pytest.raises(InvalidRefError, match=r"write mm:3"):
        parse_ref("mm@3")


def test_non_string_is_refused_and_refs_pass_through():
    with pytest.raises(InvalidRefError):
        parse_ref(3)  # type: ignore[arg-type]
    ref = ModelRef("abc", version=2)
    assert parse_ref(ref) is ref
    with pytest.raises(InvalidRefError):
        ModelRef("abc", version=2, alias="x")


def test_explicit():
    assert not parse_ref("abc").explicit
    assert parse_ref("abc@latest").explicit and parse_ref("abc:1").explicit


def test_aliases_and_model_ids():
    assert validate_alias("stable") == "stable"
    for bad in ("latest", "1", "Stable", "", "a" * 33):
        with pytest.raises(InvalidArgumentError):
            validate_alias(bad)
    assert validate_alias("latest", settable=False) == "latest"
    assert validate_model_id("digits-convnet") == "digits-convnet"
    with pytest.raises(ValueError):
        validate_model_id("Digits")
