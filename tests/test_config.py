"""Presets: overriding a schedule's length moves its learning-rate drops with it; each preset's linear protocol;
the tiny preset's semi-supervised schedule grows as the labels shrink."""
from scdfast.config import FinetuneConfig, LinearConfig, PretrainConfig, preset


def test_epoch_override_keeps_the_drops_at_their_fraction_of_the_run():
    assert preset("paper", PretrainConfig).lr_drop_epochs == (351,)
    assert preset("paper", PretrainConfig, epochs=100).lr_drop_epochs == (78,)
    assert preset("tiny", PretrainConfig, epochs=80).lr_drop_epochs == (65,)
    assert preset("paper", LinearConfig, epochs=40).lr_drop_epochs == (25, 35)
    assert preset("tiny", FinetuneConfig, epochs=3).lr_drop_epochs == (2,)
    assert preset("tiny", PretrainConfig, epochs=80, lr_drop_epochs=(70,)).lr_drop_epochs == (70,)


def test_the_tiny_semi_supervised_schedule_sees_as_many_samples_as_fine_tuning():
    tiny = FinetuneConfig.tiny()  # 30 epochs, drop at 24, evaluated every 10
    ten_percent = tiny.for_labelled(284, 33)  # MSR Action3D's 10%: x8.6
    assert (ten_percent.epochs, ten_percent.lr_drop_epochs, ten_percent.eval_every) == (258, (207,), 86)
    assert ten_percent.lr == tiny.lr and ten_percent.batch_size == tiny.batch_size
    assert tiny.for_labelled(1000, 10).epochs == 3000 and tiny.for_labelled(100, 100) is tiny
    paper = FinetuneConfig.paper()  # the field's protocol: the fine-tuning epochs whatever the fraction
    assert paper.for_labelled(284, 33) is paper
    assert FinetuneConfig.tiny(semi_samples_matched=False).for_labelled(284, 33).epochs == 30


def test_linear_protocol_per_preset():
    """The paper preset is the authors' protocol (raw features, lr 2.0); the tiny preset
    standardizes, and its learning rate follows whichever features the classifier sees."""
    paper, tiny = preset("paper", LinearConfig), preset("tiny", LinearConfig)
    assert (paper.standardize, paper.lr) == (False, 2.0)
    assert (tiny.standardize, tiny.lr) == (True, 0.1)
    assert preset("tiny", LinearConfig, standardize=False).lr == 2.0
    assert preset("tiny", LinearConfig, lr=0.5).lr == 0.5
