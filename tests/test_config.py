"""FlexConfig: parameter validation and presets."""
import pytest

from flex.config import FlexConfig


@pytest.mark.parametrize("kwargs,match", [
    (dict(alpha=3.0), "alpha"), (dict(alpha=-1.0), "alpha"), (dict(rho=1.5), "rho"),
    (dict(l_train=0), "l_train"), (dict(sink_frames=-1), "sink_frames"),
    (dict(window_frames=2), "window_frames"), (dict(strategy="rope"), "strategy"),
    (dict(position_policy="relative"), "position_policy"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FlexConfig(**kwargs)


def test_config_presets():
    assert FlexConfig().rotate_on_load is False
    assert FlexConfig(position_policy="window").rotate_on_load
    off = FlexConfig.off(window_frames=30)
    assert off.strategy == "none" and off.rho == 0 and off.sink_frames == 0
    assert FlexConfig.longlive().l_train == 240
