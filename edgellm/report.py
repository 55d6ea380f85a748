"""``edgellm report INPUT... -o report.html``: one self-contained HTML page from bundles and
``edgellm profile --json`` files.

No network at view time: no scripts, fonts or images from elsewhere; every chart is inline SVG
drawn here.  Charts: planned vs measured (memory, prefill, decode) per bundle and device; decode
tokens/s against context depth; quality (mean KLD) against file size across bundles with the
Pareto front marked; the sustained-run curve.  Every value shown comes from the inputs, and is
escaped (a bundle's name is a stranger's text).
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path

from edgellm.errors import BadInput
from edgellm.units import fmt_bytes, show_value

W, H, PAD = 560, 260, 48
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


@dataclass
class Run:
    name: str
    device: str
    file_bytes: int | None = None
    kld: float | None = None
    predicted: dict = field(default_factory=dict)
    measured: dict = field(default_factory=dict)          # depth -> measured profile
    host: str = ""
    sustained: list = field(default_factory=list)


def _e(x) -> str:
    return html.escape(str(x), quote=True)


MAX_POINTS = 10_000                 # records in a profile JSON, points of a sustained run
MAX_RUNS = 256                      # bundles on one page
MEASURED = ("decode_tps", "prefill_tps", "peak_rss_bytes")
PREDICTED = ("decode_tokens_per_s", "prefill_tokens_per_s", "peak_memory_bytes")


def _obj(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadInput(f"{where}: expected an object, got {show_value(value)}")
    return value


def _text(value, where: str) -> str:
    if not isinstance(value, str):
        raise BadInput(f"{where}: expected a string, got {show_value(value)}")
    return value[:500]


def _numbers(value, where: str, keys: tuple[str, ...], required: bool = False) -> dict:
    """``value`` (an object) with each of ``keys`` it has a finite number from 0 to 1e18: a profile
    JSON is a stranger's file, and NaN, 1e999 or "fast" must be named, not drawn."""
    value = _obj(value, where)
    for key in keys:
        v = value.get(key)
        if v is None and not required:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1e18:
            raise BadInput(f"{where}.{key}: expected a finite number from 0 to 1e18, got {show_value(v)}")
    return value


def load_inputs(paths: list[Path]) -> list[Run]:
    from edgellm.runtime.bundle import read_manifest
    from edgellm.core.files import read_small_text

    runs: dict[str, Run] = {}
    for p in paths:
        p = Path(p)
        if p.is_dir():
            m = read_manifest(p)
            v = (m.get("verification") or {}).get("held_out") or {}
            size = sum(f["bytes"] for n, f in m["files"].items() if n.endswith((".gguf", ".onnx", ".onnx.data")))
            r = runs.setdefault(p.name, Run(p.name, str(m.get("device", "?"))))
            r.file_bytes, r.kld = size, v.get("mean_kld")
            r.predicted = r.predicted or (m.get("prediction") or {})
            continue
        try:
            data = json.loads(read_small_text(p, 64 << 20))      # a regular file, bounded, UTF-8
        except (ValueError, RecursionError):
            raise BadInput(f"{p}: not a profile JSON (edgellm profile --json)") from None
        if not (isinstance(data, list) and data and all(isinstance(x, dict) and "edgellm" in x for x in data)):
            raise BadInput(f"{p}: not a profile JSON (edgellm profile --json)")
        if len(data) > MAX_POINTS:
            raise BadInput(f"{p}: {len(data):,} records; a profile JSON has at most {MAX_POINTS:,}")
        for i, rec in enumerate(data):
            at = f"{p}: [{i}]"
            e = _obj(rec["edgellm"], f"{at}.edgellm")
            remote = _obj(e.get("remote"), f"{at}.edgellm.remote")
            name = Path(_text(e.get("bundle", p.stem), f"{at}.edgellm.bundle")).name
            r = runs.setdefault(name, Run(name, _text(remote.get("device_compared") or "?", f"{at}.edgellm.remote.device_compared")))
            depth = rec.get("n_depth", 0)
            if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= 1 << 31:
                raise BadInput(f"{at}.n_depth: expected a whole number >= 0, got {show_value(depth)}")
            r.measured[depth] = _numbers(e.get("measured"), f"{at}.edgellm.measured", MEASURED)
            r.predicted = _numbers(e.get("predicted"), f"{at}.edgellm.predicted", PREDICTED) or r.predicted
            r.host = (_text(remote["host"], f"{at}.edgellm.remote.host") if remote.get("host")
                      else _text(rec.get("cpu_info") or "", f"{at}.cpu_info"))
            sustained = e.get("sustained") or []
            if not isinstance(sustained, list) or len(sustained) > MAX_POINTS:
                raise BadInput(f"{at}.edgellm.sustained: expected a list of at most {MAX_POINTS:,} points")
            r.sustained = [_numbers(s, f"{at}.edgellm.sustained[{k}]", ("t_s", "decode_tps"), required=True)
                           for k, s in enumerate(sustained)] or r.sustained
    if not runs:
        raise BadInput("report: give bundle folders and/or profile JSON files")
    if len(runs) > MAX_RUNS:
        raise BadInput(f"report: {len(runs):,} bundles; one report shows at most {MAX_RUNS}")
    return list(runs.values())


def _svg(title: str, body: str, xlabel: str, ylabel: str) -> str:
    return (f'<figure><figcaption>{_e(title)}</figcaption><svg xmlns="http://www.w3.org/2000/svg" width="{W}" '
            f'height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="{_e(title)}">'
            f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - 10}" y2="{H - PAD}" stroke="#333"/>'
            f'<line x1="{PAD}" y1="10" x2="{PAD}" y2="{H - PAD}" stroke="#333"/>'
            f'<text x="{W // 2}" y="{H - 8}" text-anchor="middle" font-size="12">{_e(xlabel)}</text>'
            f'<text x="12" y="{H // 2}" font-size="12" transform="rotate(-90 12 {H // 2})" text-anchor="middle">{_e(ylabel)}</text>'
            f"{body}</svg></figure>")


def _scale(lo: float, hi: float, a: float, b: float):
    span = (hi - lo) or 1.0
    return lambda v: a + (v - lo) / span * (b - a)


def bars(runs: list[Run], key_pred: str, key_meas: str, title: str, unit: str) -> str:
    items = [(r.name, r.predicted.get(key_pred), (r.measured.get(0) or {}).get(key_meas)) for r in runs]
    items = [(n, p, m) for n, p, m in items if isinstance(p, (int, float)) or isinstance(m, (int, float))]
    if not items:
        return ""
    top = max(v for _, p, m in items for v in (p, m) if isinstance(v, (int, float))) or 1
    y = _scale(0, top * 1.1, H - PAD, 10)
    slot = (W - PAD - 20) / len(items)
    body = []
    for i, (name, p, m) in enumerate(items):
        x0 = PAD + 10 + i * slot
        for j, (v, color, label) in enumerate(((p, "#9ecae1", "planned"), (m, "#3182bd", "measured"))):
            if isinstance(v, (int, float)):
                bw = slot * 0.35
                x = x0 + j * bw
                body.append(f'<rect x="{x:.1f}" y="{y(v):.1f}" width="{bw:.1f}" height="{H - PAD - y(v):.1f}" '
                            f'fill="{color}"><title>{_e(name)} {label}: {v:,.1f} {unit}</title></rect>')
                body.append(f'<text x="{x + bw / 2:.1f}" y="{y(v) - 3:.1f}" font-size="9" text-anchor="middle">{v:,.0f}</text>')
        body.append(f'<text x="{x0 + slot * 0.35:.1f}" y="{H - PAD + 14}" font-size="10" text-anchor="middle">{_e(name[:18])}</text>')
    body.append(f'<rect x="{W - 150}" y="12" width="10" height="10" fill="#9ecae1"/><text x="{W - 136}" y="21" font-size="10">planned</text>'
                f'<rect x="{W - 80}" y="12" width="10" height="10" fill="#3182bd"/><text x="{W - 66}" y="21" font-size="10">measured</text>')
    return _svg(title, "".join(body), "bundle", unit)


def _lines(series: list[tuple[str, list[tuple[float, float]]]], title: str, xlabel: str, ylabel: str) -> str:
    pts = [pt for _, s in series for pt in s]
    if not pts:
        return ""
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x = _scale(min(xs), max(xs), PAD + 10, W - 20)
    y = _scale(0, max(ys) * 1.1 or 1, H - PAD, 10)
    body = [_ticks(min(xs), max(xs), max(ys) * 1.1, x, y)]
    for k, (name, s) in enumerate(series):
        c = COLORS[k % len(COLORS)]
        path = " ".join(f"{x(a):.1f},{y(b):.1f}" for a, b in s)
        body.append(f'<polyline points="{path}" fill="none" stroke="{c}" stroke-width="2"/>')
        body += [f'<circle cx="{x(a):.1f}" cy="{y(b):.1f}" r="3" fill="{c}"><title>{_e(name)}: {b:,.1f} at {a:g}</title></circle>'
                 for a, b in s]
        body.append(f'<text x="{W - 160}" y="{20 + 14 * k}" font-size="10" fill="{c}">{_e(name[:28])}</text>')
    return _svg(title, "".join(body), xlabel, ylabel)


def _ticks(x0: float, x1: float, ytop: float, x, y) -> str:
    """Axis end labels: the x range and the y top (values from the data)."""
    return (f'<text x="{x(x0):.1f}" y="{H - PAD + 14}" font-size="9" text-anchor="middle">{x0:,.0f}</text>'
            f'<text x="{x(x1):.1f}" y="{H - PAD + 14}" font-size="9" text-anchor="middle">{x1:,.0f}</text>'
            f'<text x="{PAD - 4}" y="{y(ytop) + 4:.1f}" font-size="9" text-anchor="end">{ytop:,.0f}</text>'
            f'<text x="{PAD - 4}" y="{H - PAD:.1f}" font-size="9" text-anchor="end">0</text>')


def pareto(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """The points no other is both smaller and better (lower KLD) than."""
    front, best = [], float("inf")
    for size, kld, name in sorted(points):
        if kld < best:
            front.append((size, kld, name))
            best = kld
    return front


def quality_vs_size(runs: list[Run]) -> str:
    pts = [(r.file_bytes, r.kld, r.name) for r in runs if r.file_bytes and isinstance(r.kld, (int, float))]
    if not pts:
        return ""
    front = pareto(pts)
    x = _scale(min(p[0] for p in pts) * 0.9, max(p[0] for p in pts) * 1.05, PAD + 10, W - 20)
    y = _scale(0, max(p[1] for p in pts) * 1.15 or 1, H - PAD, 10)
    body = [f'<polyline points="{" ".join(f"{x(a):.1f},{y(b):.1f}" for a, b, _ in front)}" fill="none" '
            'stroke="#d62728" stroke-dasharray="4 3" stroke-width="1.5"/>']
    for a, b, name in pts:
        on = (a, b, name) in front
        body.append(f'<circle cx="{x(a):.1f}" cy="{y(b):.1f}" r="{5 if on else 3.5}" fill="{"#d62728" if on else "#777"}" '
                    f'class="{"pareto" if on else "point"}"><title>{_e(name)}: {fmt_bytes(a)}, KLD {b:.5f}'
                    f'{" (Pareto front)" if on else ""}</title></circle>')
        body.append(f'<text x="{x(a) + 6:.1f}" y="{y(b) - 4:.1f}" font-size="9">{_e(name[:16])}</text>')
    return _svg("quality against file size (Pareto front dashed)", "".join(body), "file size", "mean KLD")


def render(runs: list[Run]) -> str:
    rows = []
    for r in runs:
        m0 = r.measured.get(0) or {}
        cells = [r.name, r.device, r.host or "-", fmt_bytes(r.file_bytes) if r.file_bytes else "-",
                 f"{r.kld:.5f}" if isinstance(r.kld, (int, float)) else "-",
                 f"{r.predicted['decode_tokens_per_s']:.1f}" if "decode_tokens_per_s" in r.predicted else "-",
                 f"{m0['decode_tps']:.1f}" if "decode_tps" in m0 else "-",
                 fmt_bytes(m0["peak_rss_bytes"]) if "peak_rss_bytes" in m0 else "-"]
        rows.append("<tr>" + "".join(f'<td class="c{i}">{_e(c)}</td>' for i, c in enumerate(cells)) + "</tr>")
    depth = _lines([(r.name, sorted((d, p["decode_tps"]) for d, p in r.measured.items() if "decode_tps" in p))
                    for r in runs if len(r.measured) > 1], "decode against context depth", "tokens in the cache", "decode tok/s")
    sustained = _lines([(r.name, [(s["t_s"], s["decode_tps"]) for s in r.sustained]) for r in runs if r.sustained],
                       "sustained decode (throttling shows as a fall)", "seconds", "decode tok/s")
    charts = "".join([
        bars(runs, "peak_memory_bytes", "peak_rss_bytes", "memory: planned peak vs measured peak RSS", "bytes"),
        bars(runs, "prefill_tokens_per_s", "prefill_tps", "prefill: planned vs measured", "tok/s"),
        bars(runs, "decode_tokens_per_s", "decode_tps", "decode: planned vs measured", "tok/s"),
        depth, quality_vs_size(runs), sustained])
    head = ("<tr>" + "".join(f"<th>{h}</th>" for h in ("bundle", "device", "measured on", "file", "KLD",
                                                        "planned decode tok/s", "measured decode tok/s", "peak RSS")) + "</tr>")
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
            "<title>edgellm report</title><style>body{font-family:sans-serif;margin:24px;color:#222}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}"
            "figure{display:inline-block;margin:8px}figcaption{font-weight:bold;font-size:13px}</style></head><body>"
            f"<h1>edgellm report</h1><p id=\"summary\">{len(runs)} bundle(s)</p><table id=\"headline\">{head}{''.join(rows)}</table>"
            f"<div id=\"charts\">{charts}</div></body></html>\n")


def write_report(inputs: list[Path], out: Path) -> int:
    from edgellm.core.files import atomic_write

    runs = load_inputs(inputs)
    atomic_write(out, render(runs).encode("utf-8"))
    return len(runs)
