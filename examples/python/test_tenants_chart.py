"""The tenants chart: it reads the bench's reports, takes the last one
with tenants figures, and draws a p50 and a p99 bar per setting, the
longer latency the longer bar."""
import json
import xml.dom.minidom

import pytest

import tenants_chart


def row(mode, p50, p99):
    return {"mode": mode, "flood": 400, "workers": 4, "task_ms": 250.0, "interactive": 40,
            "failed": 0, "p50_ms": p50, "p99_ms": p99, "max_ms": p99, "flood_s": 25.0}


def test_the_last_report_with_tenants_is_drawn_a_bar_per_percentile(tmp_path):
    report = tmp_path / "r.json"
    old = {"rows": [], "tenants": [row("alone", 999, 999)]}
    new = {"rows": [], "tenants": [row("alone", 255, 264), row("fair", 294, 494),
                                   row("at once", 21690, 25432)]}
    report.write_text(json.dumps(old, indent=2) + "\n" + json.dumps(new) + "\n{\"rows\": []}\n")
    out = tmp_path / "c.svg"
    drawn = tenants_chart.main(["--out", str(out), str(report)])
    assert [r["mode"] for r in drawn] == ["alone", "fair", "at once"]
    svg = xml.dom.minidom.parse(str(out))
    bars = [r for r in svg.getElementsByTagName("rect") if r.getAttribute("height") == "14"]
    widths = [float(b.getAttribute("width")) for b in bars]
    assert len(widths) == 6
    assert widths[0] < widths[3] < widths[5], widths
    labels = [t.firstChild.data for t in svg.getElementsByTagName("text")]
    assert "25432 ms" in labels and "fair" in labels


def test_a_report_without_tenants_is_refused(tmp_path):
    report = tmp_path / "r.json"
    report.write_text(json.dumps({"rows": []}))
    with pytest.raises(SystemExit):
        tenants_chart.main(["--out", str(tmp_path / "c.svg"), str(report)])
