"""A strip chart of repeated `runwared bench --json` runs: each run's "x direct"
(throughput through the daemon over the direct client's) for one path at one
concurrency, a row of dots per set of runs (a binary, an hour), the median of
each row marked, and the target as a line. Where one run's figure moves with
the shared machine, this shows where the runs fall against the target.

    for i in 1 2 3 4; do ./target/release/runwared bench --scenarios throughput \\
        --loads enhance,mixed --paths endpoint --concurrency 1,256 --json >> now.json; done
    python3 examples/python/ratio_chart.py --path endpoint --concurrency 256 \\
        --target 0.8 --out ratio.svg "before=old.json" "now=now.json"

Each file holds the JSON reports of `runwared bench --json`, one after another.
Standard library only.
"""
import argparse
import json
import pathlib
import statistics


def reports(text):
    """The JSON documents of `text`, one after another (whitespace between)."""
    decoder, i, out = json.JSONDecoder(), 0, []
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i == len(text):
            return out
        doc, i = decoder.raw_decode(text, i)
        out.append(doc)


def ratios(docs, path, concurrency):
    """{load: [x direct of each run]} for `path` at `concurrency`."""
    by_load = {}
    for doc in docs:
        for row in doc.get("rows", []):
            if (row.get("path", "").lower() == path and row.get("concurrency") == concurrency
                    and row.get("ratio_to_direct") is not None):
                by_load.setdefault(row["load"].lower(), []).append(row["ratio_to_direct"])
    return by_load


def chart(sets, target, title):
    """SVG text: a panel per load, a row of dots per (label, ratios) set."""
    loads = sorted({load for _, by_load in sets for load in by_load})
    values = [v for _, by_load in sets for vs in by_load.values() for v in vs] + [target]
    lo = min(0.5, round(min(values) - 0.05, 1))
    hi = max(1.0, round(max(values) + 0.05, 1))
    w, left, right, row_h, panel_pad, top_pad = 640, 120, 20, 26, 34, 30
    h = top_pad + len(loads) * (len(sets) * row_h + panel_pad) + 30
    px = lambda v: left + (w - left - right) * (v - lo) / (hi - lo)  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="8" y="16">{title}</text>']
    bottom = h - 30
    tick = lo
    while tick <= hi + 1e-9:
        x = px(tick)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top_pad}" y2="{bottom}" stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle">{tick:.1f}</text>')
        tick = round(tick + 0.1, 10)
    x = px(target)
    out.append(f'<line class="target" x1="{x:.1f}" x2="{x:.1f}" y1="{top_pad}" y2="{bottom}" '
               f'stroke="#d62728" stroke-dasharray="4 3"/>')
    out.append(f'<text x="{x + 4:.1f}" y="{top_pad + 10}" fill="#d62728">target {target:g}</text>')
    y = top_pad + 10
    for load in loads:
        out.append(f'<text x="8" y="{y + 4}" font-weight="bold">{load}</text>')
        y += 16
        for label, by_load in sets:
            vs = by_load.get(load, [])
            out.append(f'<text x="16" y="{y + 4}">{label} ({len(vs)})</text>')
            out.append(f'<line x1="{left}" x2="{w - right}" y1="{y}" y2="{y}" stroke="#f4f4f4"/>')
            for v in vs:
                out.append(f'<circle class="run" cx="{px(v):.1f}" cy="{y}" r="4" '
                           f'fill="#1f77b4" fill-opacity="0.45"/>')
            if vs:
                m = px(statistics.median(vs))
                out.append(f'<line class="median" x1="{m:.1f}" x2="{m:.1f}" y1="{y - 9}" '
                           f'y2="{y + 9}" stroke="#222" stroke-width="2"/>')
            y += row_h
        y += panel_pad - 16
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--path", default="endpoint", help="the bench path: endpoint, session, rpc")
    p.add_argument("--concurrency", type=int, default=256)
    p.add_argument("--target", type=float, default=0.8)
    p.add_argument("--out", required=True, help="the SVG to write")
    p.add_argument("sets", nargs="+", metavar="LABEL=FILE",
                   help="runs of one binary or hour: a file of `runwared bench --json` reports")
    a = p.parse_args(argv)
    sets = []
    for s in a.sets:
        label, sep, file = s.partition("=")
        if not sep:
            p.error(f"{s!r}: give LABEL=FILE")
        docs = reports(pathlib.Path(file).read_text())
        sets.append((label, ratios(docs, a.path.lower(), a.concurrency)))
    title = (f"{a.path} at C={a.concurrency}: tasks/s over the direct client's, "
             "one dot per run, the bar the median")
    pathlib.Path(a.out).write_text(chart(sets, a.target, title))
    return sets


if __name__ == "__main__":
    main()
