"""microstim report: a self-contained HTML file, rendered in a real headless browser
(Debian's chromium), whose figures decode and contain data."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from microstim import report
from microstim.logs import archive as A
from microstim.logs import generate as G

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def month(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("month")
    g = G.generate(tmp / "gen", days=35, seed=5)
    arch = A.Archive(tmp / "archive", "240ac4c0ffee")
    A.ingest_segments(arch, g.segments)
    return tmp, arch, g


def chromium(args, tmp_path, timeout=120):
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: apt-get install -y chromium (.ci/run does it)")
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'chrome-profile'}", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_report_renders_in_a_browser_with_figures_full_of_data(month, tmp_path):
    tmp, arch, g = month
    out = tmp_path / "rep"
    r = CliRunner().invoke(report.command, ["--archive", str(arch.dir.parent), "--out", str(out)])
    assert r.exit_code == 0, r.output
    html_path = out / "report.html"
    pngs = sorted(out.glob("fig-*.png"))
    assert len(pngs) >= 5 and all(p.stat().st_size > 5000 for p in pngs)
    doc = html_path.read_text()
    assert doc.count("data:image/png;base64,") == len(pngs)  # self-contained
    assert "src=\"fig-" not in doc and "http" not in doc.split("<body", 1)[1]

    # The page after load, in the browser: every image decoded (naturalWidth > 0).
    dom = chromium(["--virtual-time-budget=5000", "--dump-dom", html_path.as_uri()], tmp_path)
    body = dom.stdout.split("<body", 1)[1].split(">", 1)[0]
    assert f'data-images="{len(pngs)}"' in body and f'data-images-loaded="{len(pngs)}"' in body, body
    # Tables: one row per fault/reset, one per session.
    planned = [a for a in g.plan["actions"] if a["a"] == "session" and not a.get("cut")]
    sessions_tbl = dom.stdout.split('class="sessions"', 1)[1].split("</table>", 1)[0]
    assert sessions_tbl.count("<tr>") == len(planned) + 1
    faults_tbl = dom.stdout.split('class="faults"', 1)[1].split("</table>", 1)[0]
    assert "overcurrent" in faults_tbl and faults_tbl.count("<tr>") >= 2

    # A screenshot of the top of the page: the calendar is drawn with data (week cells in
    # the adherence colours, day cells in blue), not a blank or broken image.
    shot = tmp_path / "shot.png"
    chromium(["--window-size=1100,1600", f"--screenshot={shot}", html_path.as_uri()], tmp_path)
    import matplotlib.image as mpimg

    px = (mpimg.imread(str(shot))[:, :, :3] * 255).astype(int)
    assert px.shape[0] >= 1500
    nonwhite = np.mean(px.sum(axis=2) < 720)
    assert nonwhite > 0.05

    def near(rgb):
        return int((np.abs(px - np.array(rgb)).sum(axis=2) < 30).sum())

    assert near((0x2E, 0x7D, 0x32)) > 2000  # weeks that met the protocol
    assert near((0xC6, 0x28, 0x28)) + near((0xF9, 0xA8, 0x25)) > 500  # weeks that did not


def test_adherence_counts_weeks_against_the_protocol(month):
    from microstim.logs import adherence, load

    tmp, arch, g = month
    d = load(arch)
    wk = adherence.weeks(d.sessions)
    assert wk["sessions"].sum() == len(adherence.counted(d.sessions))
    assert set(wk["target_min"][wk["phase"] == "initial"]) == {5}
    assert 0 <= adherence.score(wk) <= 1
    # A week with 5 counted sessions in the first 60 days is met; with none, missed.
    for w in wk[wk["complete"]]:
        assert (w["status"] == "met") == (w["sessions"] >= w["target_min"])
