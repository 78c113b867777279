import pytest

from selfsup.registry import Registry, UnknownName


def test_entries_in_registration_order_and_lookup():
    colours: Registry[int] = Registry("colour")
    colours.register("red", 1)
    colours.decorator("green")(2)
    assert colours.names() == ("red", "green") and colours.get("green") == 2
    assert "red" in colours and "blue" not in colours


def test_unknown_names_suggest_and_list():
    colours: Registry[int] = Registry("colour")
    colours.register("green", 2)
    with pytest.raises(UnknownName, match=r"unknown colour 'gren' \(did you mean 'green'\?\)"):
        colours.get("gren")
    assert isinstance(UnknownName("colour", "x", ["green"]), ValueError)  # plain for ssl
