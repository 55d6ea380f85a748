import pytest

from edgellm import units


@pytest.mark.parametrize("text,expected", [
    ("8 GiB", 8 * 2**30), ("3GB", 3_000_000_000), ("512 MiB", 512 * 2**20), ("1024", 1024),
    ("2.5 GiB", int(2.5 * 2**30)), ("1e3 KB", 1_000_000),
])
def test_sizes(text, expected):
    assert units.parse_bytes(text) == expected


def test_rates():
    assert units.parse_bandwidth("17.1 GB/s") == pytest.approx(17.1e9)
    assert units.parse_bandwidth("100 MiB/s") == 100 * 2**20
    assert units.parse_ops("153.6 GFLOPS") == pytest.approx(153.6e9)
    assert units.parse_ops("45 TOPS") == 45e12
    assert units.parse_frequency("2.4 GHz") == pytest.approx(2.4e9)


@pytest.mark.parametrize("parse,text", [
    (units.parse_bandwidth, "17.1 GB"), (units.parse_bytes, "8 GB/s"), (units.parse_ops, "3 GHz"),
    (units.parse_bytes, "lots"), (units.parse_bytes, True), (units.parse_frequency, "2.4"),
])
def test_wrong_units_are_errors(parse, text):
    with pytest.raises(units.UnitError, match="expected"):
        parse(text)


def test_formatting():
    assert units.fmt_bytes(395_463_808) == "377 MiB"
    assert units.fmt_bytes(3 * 2**30) == "3 GiB"
    assert units.fmt_rate(1.71e10, "B/s") == "17.1 GB/s"
    assert units.fmt_count(494_032_768) == "494M"
    assert units.fmt_count(1.2e9) == "1.2B"
