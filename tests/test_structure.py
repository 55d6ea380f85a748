"""The README's layout figures hold on every commit (issue 25): no import circles, no folder ties
both ways, no format/quant name comparisons outside the formats' own modules.  Two of them
regressed unnoticed while only the benchmark printed them."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _structure():
    spec = importlib.util.spec_from_file_location("structure", ROOT / "benchmarks" / "structure.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_no_import_circles_and_no_two_way_folder_ties():
    s = _structure()
    graph = s.import_graph()
    assert s.circles(graph) == []
    assert s.two_way_ties(graph) == []


def test_no_format_or_quant_name_compared_outside_the_formats():
    assert _structure().name_comparisons() == []
