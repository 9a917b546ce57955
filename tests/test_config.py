from dataclasses import dataclass, field

import pytest

from jdcl_bench.config import ConfigError, apply_overrides, parse_set


@dataclass
class Inner:
    width: int = 8
    layers: tuple[int, ...] = (1, 1)


@dataclass
class Cfg:
    lr: float = 0.1
    name: str = "a"
    flag: bool = False
    maybe: int | None = None
    inner: Inner = field(default_factory=Inner)


def test_typed_overrides():
    c = apply_overrides(Cfg(), parse_set(["lr=1e-3", "flag=true", "inner.width=32", "inner.layers=[2,2,2]", "maybe=4"]))
    assert c.lr == 1e-3 and c.flag is True and c.inner.width == 32 and c.inner.layers == (2, 2, 2) and c.maybe == 4
    assert Cfg().inner.width == 8  # defaults untouched


@pytest.mark.parametrize("item,msg", [("lr=fast", "expected float"), ("inner.width=2.5", "expected int"),
                                      ("flag=maybe", "true/false"), ("lrr=1", "unknown config key 'lrr'"),
                                      ("inner.depth=1", "'depth' is not a field of inner")])
def test_bad_overrides(item, msg):
    with pytest.raises(ConfigError, match=msg):
        apply_overrides(Cfg(), parse_set([item]))


def test_parse_set_requires_equals():
    with pytest.raises(ConfigError, match="key=value"):
        parse_set(["lr"])
