import pytest

from clearsight.errors import UnknownNameError
from clearsight.registry import Registry


def test_register_get_meta_and_names():
    reg = Registry("widget")

    @reg.register("b", colour="red")
    def b():
        return "b"

    @reg.register("a")
    def a():
        return "a"

    assert reg.get("b") is b and reg.build("a") == "a"
    assert reg.meta("b") == {"colour": "red"}
    reg.meta("b")["colour"] = "blue"  # a copy: the entry's metadata cannot be changed by callers
    assert reg.meta("b") == {"colour": "red"}
    assert reg.names() == ["a", "b"] and [e.name for e in reg] == ["a", "b"]
    assert "a" in reg and "c" not in reg and len(reg) == 2


def test_unknown_name_lists_valid_ones_and_suggests():
    reg = Registry("widget")
    reg.register("gradient")(lambda: None)
    reg.register("grad_cam")(lambda: None)
    with pytest.raises(UnknownNameError) as err:
        reg.get("gradinet")
    msg = str(err.value)
    assert "unknown widget 'gradinet'" in msg and "grad_cam, gradient" in msg and "Did you mean 'gradient'" in msg
    assert isinstance(err.value, KeyError)


def test_duplicate_registration_is_refused():
    reg = Registry("widget")
    reg.register("x")(lambda: 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("x")(lambda: 2)
    assert reg.build("x") == 1
