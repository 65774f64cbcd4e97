"""The interactive tenant's latency beside a flooding one, as bars on a
log scale: p50 and p99 for each setting of `runwared bench --scenarios
tenants` (alone, fair, at once), so the distance between a fair daemon
and one that sends everything at once is seen, not read.

    ./target/release/runwared bench --scenarios tenants --json > tenants.json
    python3 examples/python/tenants_chart.py --out tenants.svg tenants.json

The file holds `runwared bench --json` reports, one after another; the
last one with tenants figures is drawn. Standard library only.
"""
import argparse
import math
import pathlib

from ratio_chart import reports


def rows(docs):
    """The tenants rows of the last report that has any."""
    with_rows = [d["tenants"] for d in docs if d.get("tenants")]
    return with_rows[-1] if with_rows else []


def chart(rows):
    """SVG text: per setting, a bar for p50 and one for p99, in ms, log scale."""
    values = [r[k] for r in rows for k in ("p50_ms", "p99_ms")]
    lo = 10 ** math.floor(math.log10(max(min(values), 1.0)))
    hi = 10 ** math.ceil(math.log10(max(values) * 1.01))
    w, left, right, bar_h, gap, top = 680, 150, 70, 16, 18, 52
    h = top + len(rows) * (2 * bar_h + gap) + 40
    px = lambda v: left + (w - left - right) * (math.log10(max(v, lo)) - math.log10(lo)) / (  # noqa: E731
        math.log10(hi) - math.log10(lo))
    first = rows[0]
    title = (f"An interactive tenant's latency beside a flood of {max(r['flood'] for r in rows)} tasks "
             f"({first['workers']} workers x {first['task_ms']:.0f} ms)")
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="8" y="18">{title}</text>',
           f'<rect x="{left}" y="28" width="10" height="10" fill="#4c78a8"/>'
           f'<text x="{left + 14}" y="37">p50</text>',
           f'<rect x="{left + 60}" y="28" width="10" height="10" fill="#f58518"/>'
           f'<text x="{left + 74}" y="37">p99</text>']
    bottom = h - 30
    tick = lo
    while tick <= hi * 1.0001:
        x = px(tick)
        label = f"{tick / 1000:g} s" if tick >= 1000 else f"{tick:g} ms"
        out.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{bottom}" stroke="#ddd"/>')
        out.append(f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle">{label}</text>')
        tick *= 10
    for i, r in enumerate(rows):
        y = top + i * (2 * bar_h + gap)
        out.append(f'<text x="{left - 8}" y="{y + bar_h + 4}" text-anchor="end">{r["mode"]}</text>')
        for j, (key, colour) in enumerate((("p50_ms", "#4c78a8"), ("p99_ms", "#f58518"))):
            yy = y + j * bar_h
            x = px(r[key])
            out.append(f'<rect x="{left}" y="{yy}" width="{max(x - left, 1):.1f}" '
                       f'height="{bar_h - 2}" fill="{colour}"/>')
            out.append(f'<text x="{x + 4:.1f}" y="{yy + bar_h - 5}">{r[key]:.0f} ms</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="the SVG to write")
    p.add_argument("report", help="a file of `runwared bench --json` reports")
    a = p.parse_args(argv)
    found = rows(reports(pathlib.Path(a.report).read_text()))
    if not found:
        raise SystemExit(f"{a.report}: no report with tenants figures")
    pathlib.Path(a.out).write_text(chart(found))
    return found


if __name__ == "__main__":
    main()
