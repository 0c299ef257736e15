"""The embedded demo, shortened: every stage runs and the report holds every degradation."""

from __future__ import annotations

from data import DEFAULT_DEGRADATIONS
from data.io import read_image
from irsde.demo import run_demo


def test_demo_writes_report_and_grid(tmp_path):
    demo_dir = run_demo(
        data_root=tmp_path / "demo_data",
        experiments_root=tmp_path / "experiments",
        daclip_epochs=1,
        ir_steps=2,
        sampling_steps=1,
        log=lambda _: None,
    )
    assert demo_dir == tmp_path / "experiments" / "demo"
    report = (demo_dir / "report.md").read_text()
    for name in DEFAULT_DEGRADATIONS:
        assert f"| {name} | 2 |" in report
    assert "**average**" in report and "Accuracy over 10 types" in report and "random weights" in report
    grid = read_image(demo_dir / "grid.png")
    assert grid.shape == (96 * len(DEFAULT_DEGRADATIONS), 3 * 96, 3)
    assert (demo_dir / "daclip" / "checkpoints" / "daclip_final.pt").is_file()
    assert (demo_dir / "universal-ir" / "checkpoints" / "latest.pt").is_file()
