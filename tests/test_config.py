"""Presets: overriding a schedule's length moves its learning-rate drops with it."""
from scdfast.config import FinetuneConfig, LinearConfig, PretrainConfig, preset


def test_epoch_override_keeps_the_drops_at_their_fraction_of_the_run():
    assert preset("paper", PretrainConfig).lr_drop_epochs == (351,)
    assert preset("paper", PretrainConfig, epochs=100).lr_drop_epochs == (78,)
    assert preset("tiny", PretrainConfig, epochs=80).lr_drop_epochs == (65,)
    assert preset("paper", LinearConfig, epochs=40).lr_drop_epochs == (25, 35)
    assert preset("tiny", FinetuneConfig, epochs=3).lr_drop_epochs == (2,)
    assert preset("tiny", PretrainConfig, epochs=80, lr_drop_epochs=(70,)).lr_drop_epochs == (70,)
