"""The compiled number parser equals float() on the forms skeleton files use, and refuses the rest."""
import numpy as np
import pytest

from scdfast.data.text_numbers import parse_numbers


def test_equals_float_on_random_decimals(rng):
    values = rng.normal(scale=10.0 ** rng.integers(-6, 6, size=3000))
    values = np.where(np.abs(values) < 1e-7, 1e-7, values)  # beyond, 15 digits need 10**-23: refused
    texts = [f"{v:.7f}" for v in values[:1000]] + [f"{v:.6E}" for v in values[1000:2000]] + \
        [f"{v:.15g}" for v in values[2000:]]  # up to 15 significant digits: parsed exactly
    text = " \n".join(texts) + "\n"
    np.testing.assert_array_equal(parse_numbers(text), np.array([float(t) for t in texts]))


@pytest.mark.parametrize("text", ["1 2 x", "1.2.3", "nan", "1e", "-", "1e999", "3 4,5", "-2.15154994206953e-10"])
def test_refuses_what_is_not_a_plain_number(text):
    assert parse_numbers(text) is None
