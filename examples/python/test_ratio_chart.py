"""The strip chart of repeated bench runs: it reads the reports as
`runwared bench --json` prints them, takes only the path and concurrency
asked for, and draws one dot per run, each set's median and the target."""
import json
import xml.dom.minidom

import ratio_chart


def report(load, path, c, ratio):
    direct = {"load": load, "path": "direct", "concurrency": c, "ratio_to_direct": None}
    return {"rows": [{"load": load, "path": path, "concurrency": c, "ratio_to_direct": ratio},
                     direct]}


def test_runs_are_read_filtered_and_drawn_one_dot_each(tmp_path):
    before = tmp_path / "before.json"
    # As the bench prints them (indented), and one a line: both are read.
    before.write_text(json.dumps(report("enhance", "endpoint", 256, 0.75), indent=2) + "\n"
                      + json.dumps(report("enhance", "endpoint", 256, 0.79)) + "\n"
                      + json.dumps(report("enhance", "endpoint", 1, 0.95)) + "\n"
                      + json.dumps(report("enhance", "session", 256, 0.6)) + "\n")
    after = tmp_path / "after.json"
    after.write_text("".join(json.dumps(report(load, "endpoint", 256, r))
                             for load, r in [("enhance", 0.81), ("enhance", 0.83),
                                             ("enhance", 0.86), ("mixed", 0.9)]))
    out = tmp_path / "chart.svg"
    sets = ratio_chart.main(["--out", str(out), "--target", "0.8",
                             f"before={before}", f"after={after}"])
    assert sets == [("before", {"enhance": [0.75, 0.79]}),
                    ("after", {"enhance": [0.81, 0.83, 0.86], "mixed": [0.9]})]
    svg = xml.dom.minidom.parse(str(out))
    by_class = {}
    for tag in ("circle", "line"):
        for e in svg.getElementsByTagName(tag):
            by_class.setdefault(e.getAttribute("class"), []).append(e)
    assert len(by_class["run"]) == 6
    # A median for each set that has runs of a load: before has no mixed run.
    assert len(by_class["median"]) == 3
    # The target line sits between the dots below and above it.
    target_x = float(by_class["target"][0].getAttribute("x1"))
    xs = sorted(float(c.getAttribute("cx")) for c in by_class["run"])
    assert xs[1] < target_x < xs[2]


def test_a_set_without_its_label_is_refused(tmp_path, capsys):
    runs = tmp_path / "runs.json"
    runs.write_text("")
    try:
        ratio_chart.main(["--out", str(tmp_path / "c.svg"), str(runs)])
    except SystemExit as e:
        assert e.code == 2
    else:
        raise AssertionError("a set without LABEL= was taken")
    assert "give LABEL=FILE" in capsys.readouterr().err
