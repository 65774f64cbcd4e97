"""The Python benchmark in a short run, so that its command keeps working:
every path completes its tasks, and the charts are drawn from the figures."""
import os
import pathlib
import xml.dom.minidom

import bench

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent


def test_a_short_run_measures_every_path_and_draws_the_charts(tmp_path):
    binary = os.environ.get("RUNWARED_BIN", str(ROOT / "target/debug/runwared"))
    report = bench.main(["--bin", binary, "--concurrency", "1,4", "--tasks", "40",
                         "--large-mb", "1", "--large-tasks", "4", "--limit", "60", "--no-rust-large",
                         "--out", str(tmp_path)])
    assert {(r["path"], r["concurrency"]) for r in report["small"]} == {
        (p, c) for p in bench.SMALL_PATHS for c in (1, 4)}
    assert {r["path"] for r in report["large"]} == set(bench.LARGE_PATHS)
    for row in report["small"] + report["large"]:
        assert row["failed"] == 0, row
        assert row["x_direct"] > 0, row
    for name, lines in [("bench-python.svg", 5), ("bench-python-large.svg", 3)]:
        svg = xml.dom.minidom.parse(str(tmp_path / name))
        assert len(svg.getElementsByTagName("polyline")) == lines
