"""Reports: every section and image, images that decode, escaping, and a real browser (headless Chromium)."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[2]
PLAN = ROOT / "benchmarks" / "plans" / "hunyuan-video_h200_4layers.json"
MEASURED = ROOT / "hwmodels" / "measurements" / "validate_h200_tiles_2026-11-29_828261d.csv"
HOSTILE = "<script>alert('x')</script>"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sparsesim.cli.main", *args], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    plan = json.loads(PLAN.read_text())
    plan["workload"] = HOSTILE  # a hostile workload name travels through the plan
    plan_path = tmp / "<b onclick=x>evil.json"  # and a hostile file name
    plan_path.write_text(json.dumps(plan))
    rows = list(csv.DictReader(MEASURED.open()))[:30]
    small = tmp / "small<i>.csv"
    with small.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out = tmp / "out"
    res = _cli("report", "--preset", "flux-4k", "hunyuan-video", "--gpu", "H100", "B200", "--plan", str(plan_path),
               "--measurements", str(small), "--out", str(out), "--open")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == (out / "index.html").resolve().as_uri()
    return out


def test_every_section_and_image(report):
    page = (report / "index.html").read_text()
    for title in ("Summary", "Speedups", "Speedup against window", "Tile-visit maps", "Where the time goes",
                  "SM timeline", "Roofline", "Predicted vs measured", "Plan: ", "End to end"):
        assert f"<h2>{title}" in page, title
    imgs = re.findall(r'<img src="([^"]+)"', page)
    assert len(imgs) >= 11 and len(set(imgs)) == len(imgs)
    assert sorted(imgs) == sorted(p.name for p in report.glob("*.png"))
    import matplotlib.image as mpimg

    for name in imgs:
        pixels = mpimg.imread(report / name)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 400 and pixels.std() > 0.02, name
    assert len(re.findall(r"<figcaption>[^<]{40,}</figcaption>", page)) == len(imgs)  # every figure says what to read
    assert "http://" not in page and "https://" not in page  # nothing from the network


def test_user_strings_are_escaped(report):
    page = (report / "index.html").read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert" in page
    assert "<b onclick" not in page and "&lt;b onclick=x&gt;evil.json" in page
    assert "small<i>.csv" not in page and "small&lt;i&gt;.csv" in page


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.skipif(_browser() is None and os.environ.get("SPARSESIM_REQUIRE_BROWSER") != "1",
                    reason="no Chromium here: .ci/run installs Debian's chromium and sets SPARSESIM_REQUIRE_BROWSER")
def test_real_browser_renders_every_image(report, tmp_path):
    browser = _browser()
    assert browser is not None, "SPARSESIM_REQUIRE_BROWSER=1 but no chromium on PATH"
    url = (report / "index.html").resolve().as_uri()
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--allow-file-access-from-files", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--virtual-time-budget=5000", "--dump-dom", url], capture_output=True,
                         text=True, timeout=180)
    m = re.search(r'data-images-loaded="(\d+)"[^>]*data-images-total="(\d+)"', dom.stdout)
    assert m, dom.stderr[-2000:]
    loaded, total = int(m.group(1)), int(m.group(2))
    assert total >= 11 and loaded == total
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *flags, "--window-size=1280,2400", f"--screenshot={shot}", url], capture_output=True,
                   text=True, timeout=180)
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)
    assert pixels.shape[1] == 1280 and pixels.std() > 0.05  # not blank


def test_report_bad_inputs_are_one_line(tmp_path):
    for args, message in ((["--gpu", "Z9"], "Z9"), (["--plan", str(tmp_path / "none.json")], "none.json"),
                          (["--measurements", str(tmp_path / "none.csv")], "none.csv"),
                          (["--input-size", "64", "64"], "--window"), (["--study", "x"], "--storage")):
        res = _cli("report", "--out", str(tmp_path / "r"), *args)
        assert res.returncode == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_table_plot(tmp_path):
    res = _cli("table", "--input-size", "64", "64", "--window", "16", "--gpu", "A100", "H100",
               "--plot", str(tmp_path / "t.png"))
    assert res.returncode == 0, res.stderr
    import matplotlib.image as mpimg

    assert mpimg.imread(tmp_path / "t.png").std() > 0.02


def test_report_of_a_search_study_and_its_plan(tmp_path, tiny_workload):
    pytest.importorskip("optuna")
    workload = tiny_workload
    db = f"sqlite:///{tmp_path}/s.db"
    res = _cli("search", "--workload", str(workload), "--synthetic", "--sampler", "tpe", "--rows", "8", "--trials", "4",
               "--storage", db, "--study", "st", "--out", str(tmp_path / "plan.json"))
    assert res.returncode == 0, res.stderr
    out = tmp_path / "r"
    res = _cli("report", "--input-size", "32", "32", "--window", "16", "--gpu", "H100", "--study", "st",
               "--storage", db, "--plan", str(tmp_path / "plan.json"), "--out", str(out))
    assert res.returncode == 0, res.stderr
    page = (out / "index.html").read_text()
    assert "<h2>Optuna study st</h2>" in page and "<h2>Plan: tiny on H100</h2>" in page
    import matplotlib.image as mpimg

    for name in ("pareto.png", "optuna_history.png", "plan.png"):
        assert mpimg.imread(out / name).std() > 0.02
    bad = _cli("report", "--input-size", "32", "32", "--window", "16", "--study", "nope", "--storage", db,
               "--out", str(out))
    assert bad.returncode == 2 and "no head studies" in bad.stderr


def test_speedup_bars_draw_the_prediction_band():
    pytest.importorskip("matplotlib")
    from matplotlib.collections import LineCollection

    from sparsesim.reports import figures as F
    from sparsesim.simulator import simulate

    rec = simulate(input_size=(64, 64), window=(16, 16), gpu="H200").to_dict()
    assert rec["predicted_speedup_low"] < rec["predicted_speedup"] < rec["predicted_speedup_high"]
    ax = F.speedup_bars([rec]).axes[0]
    whiskers = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert whiskers, "no error band drawn"
    (x0, _), (x1, _) = whiskers[0].get_segments()[0]
    assert (x0, x1) == pytest.approx((rec["predicted_speedup_low"], rec["predicted_speedup_high"]))
