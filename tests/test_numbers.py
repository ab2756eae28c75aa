"""roli.numbers: the one number parser and the eps / number formatters the config, CLI and report share."""

from __future__ import annotations

import math

import pytest

from roli.config import ConfigError, ThreatConfig, from_dict
from roli.numbers import eps_str, number_str, parse_number


@pytest.mark.parametrize(("text", "value"), [("8/255", 8 / 255), (" 2 / 255 ", 2 / 255), ("1e-3", 1e-3), (3, 3.0),
                                             (0.5, 0.5), ("0.25", 0.25), ("1/4", 0.25)])
def test_parse_number(text, value):
    assert parse_number(text) == value


@pytest.mark.parametrize("bad", ["8/0", "abc", "", "nan", "inf", "1/inf/2", True, None, [1], 10**400, math.inf])
def test_parse_number_refuses(bad):
    with pytest.raises(ValueError, match="not a"):
        parse_number(bad)


def test_config_and_parser_agree():
    """A float config field reads a value exactly as parse_number does, and refuses what it refuses."""
    for text in ("8/255", "1e-3", 0.1):
        assert from_dict(ThreatConfig, {"eps": text}).eps == parse_number(text)
    with pytest.raises(ConfigError, match="expected a finite number"):
        from_dict(ThreatConfig, {"eps": 10**400})


@pytest.mark.parametrize(("eps", "text"), [(8 / 255, "8/255"), (2 / 255, "2/255"), (1 / 255, "1/255"), (0.1, "0.1"),
                                           (0.0, "0"), (0.031372, "0.03137"), (254 / 255, "254/255"),
                                           (1.0, "1"), (3.0, "3")])  # L2 radii are not k/255
def test_eps_str(eps, text):
    assert eps_str(eps) == text


def test_eps_str_round_trips_through_the_parser():
    for k in range(1, 33):
        assert parse_number(eps_str(k / 255)) == k / 255


@pytest.mark.parametrize(("value", "text"), [(16.0, "16"), (1e-3, "0.001"), (0.1, "0.1"), (4, "4"), ("linf", "'linf'"),
                                             (None, "None"), (True, "True")])
def test_number_str(value, text):
    assert number_str(value) == text
