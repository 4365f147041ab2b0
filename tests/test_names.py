"""The wire contract's naming rules are full matches."""

import pytest

from xfer import names


@pytest.mark.parametrize("value", ["digits\n", "digits\r\n", "Digits", "d", "-digits", "digits/x", "a" * 64, 3, None])
def test_model_ids_refused(value):
    assert not names.is_model_id(value)


@pytest.mark.parametrize("value", ["stable\n", "1", "Stable", "", "a" * 33])
def test_aliases_refused(value):
    assert not names.is_alias(value)


def test_valid_names_accepted():
    assert names.is_model_id("digits-convnet") and names.is_alias("stable") and names.is_version_number("12")
    assert not names.is_version_number("012") and not names.is_version_number("3\n")
    assert names.is_sha256("a" * 64) and not names.is_sha256("a" * 64 + "\n")
