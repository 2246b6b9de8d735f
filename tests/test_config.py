"""Presets: overriding a schedule's length moves its learning-rate drops with it; each preset's linear protocol."""
from scdfast.config import FinetuneConfig, LinearConfig, PretrainConfig, preset


def test_epoch_override_keeps_the_drops_at_their_fraction_of_the_run():
    assert preset("paper", PretrainConfig).lr_drop_epochs == (351,)
    assert preset("paper", PretrainConfig, epochs=100).lr_drop_epochs == (78,)
    assert preset("tiny", PretrainConfig, epochs=80).lr_drop_epochs == (65,)
    assert preset("paper", LinearConfig, epochs=40).lr_drop_epochs == (25, 35)
    assert preset("tiny", FinetuneConfig, epochs=3).lr_drop_epochs == (2,)
    assert preset("tiny", PretrainConfig, epochs=80, lr_drop_epochs=(70,)).lr_drop_epochs == (70,)


def test_linear_protocol_per_preset():
    """The paper preset is the authors' protocol (raw features, lr 2.0); the tiny preset
    standardizes, and its learning rate follows whichever features the classifier sees."""
    paper, tiny = preset("paper", LinearConfig), preset("tiny", LinearConfig)
    assert (paper.standardize, paper.lr) == (False, 2.0)
    assert (tiny.standardize, tiny.lr) == (True, 0.1)
    assert preset("tiny", LinearConfig, standardize=False).lr == 2.0
    assert preset("tiny", LinearConfig, lr=0.5).lr == 0.5
