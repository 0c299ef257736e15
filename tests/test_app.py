"""The web app (scripts/app.py, irsde/apps/app.py): its plain functions, its command line, and the page in a real
browser (headless Chromium driven by selenium through the system chromedriver).

The browser test serves a tiny random model; ``APP_SCREENSHOT=path`` also writes its screenshot of the
page after a restoration there, and ``APP_CHECKPOINT`` (with ``APP_DACLIP`` if needed) serves that
checkpoint instead, as for the README's screenshot.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import urllib.request
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from daclip.engine.errors import UserError
from data.io import write_image
from irsde.apps.app import (
    DEFAULT_MAX_PIXELS,
    KEEP,
    START_STATUS,
    AppInputError,
    AppRestorer,
    PageEvents,
    check_size,
    error_message,
    find_demo_checkpoint,
    launch_app,
    load_upload,
    missing_checkpoint_message,
    parse_tile,
)
from irsde.inference.pipeline import RestorationPipeline
from irsde.inference.restore import NonFiniteOutputError
from tests.conftest import CleanOrNoisyDaclip, write_tiny_ir_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("_script_app", ROOT / "scripts" / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _photo(width: int, height: int) -> np.ndarray:
    """A darkened crop of a scikit-image photo (a smooth random image without scikit-image), (H, W, 3)."""
    try:
        from skimage import data

        photo = data.astronaut()[20:260, 130:418]  # 288 x 240, the face and the flag
        img = np.asarray(Image.fromarray(photo).resize((width, height), Image.LANCZOS), dtype=np.float32)
        return 0.35 * img / 255.0
    except ImportError:
        rng = np.random.default_rng(0)
        coarse = rng.random((height // 8 + 1, width // 8 + 1, 3)).astype(np.float32)
        return np.kron(coarse, np.ones((8, 8, 1), dtype=np.float32))[:height, :width]


@pytest.fixture(scope="module")
def tiny_pipeline(tiny_daclip_checkpoint, tmp_path_factory) -> RestorationPipeline:
    """A tiny random DA-CLIP-conditioned restorer (T = 5) on CPU."""
    path = tmp_path_factory.mktemp("app") / "ir.pt"
    write_tiny_ir_checkpoint(path, daclip_checkpoint=str(tiny_daclip_checkpoint), context=True)
    return RestorationPipeline.from_checkpoint(path, device="cpu")


# ----------------------------------------------------------------------------- plain functions


def test_demo_checkpoint_is_the_newest_restorer_of_a_demo_run(tmp_path):
    assert find_demo_checkpoint(tmp_path / "missing") is None
    assert find_demo_checkpoint(tmp_path) is None
    paths = {}
    for run, model in [("demo", "universal-ir"), ("demo_1", "universal-ir"), ("demo_1", "plain-ir")]:
        path = tmp_path / run / model / "checkpoints" / "latest.pt"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
        paths[run, model] = path
    os.utime(paths["demo", "universal-ir"], ns=(3_000_000_000, 3_000_000_000))
    os.utime(paths["demo_1", "universal-ir"], ns=(2_000_000_000, 2_000_000_000))
    os.utime(paths["demo_1", "plain-ir"], ns=(9_000_000_000, 9_000_000_000))  # not the DA-CLIP restorer
    assert find_demo_checkpoint(tmp_path) == paths["demo", "universal-ir"]
    message = missing_checkpoint_message(tmp_path)
    assert "python scripts/demo.py" in message and "--checkpoint" in message and "\n" not in message


def test_tile_setting_and_the_pixel_limit():
    assert parse_tile("off") is None and parse_tile(None) is None and parse_tile("") is None
    assert parse_tile("256") == 256 and parse_tile(128) == 128
    for bad in ("big", "8", "-1"):
        with pytest.raises(AppInputError, match="tile size"):
            parse_tile(bad)
    assert DEFAULT_MAX_PIXELS == 2048 * 2048
    check_size(2048, 2048, None, DEFAULT_MAX_PIXELS)  # at the limit: fine
    check_size(4096, 4096, 256, DEFAULT_MAX_PIXELS)  # tiled: fine
    with pytest.raises(AppInputError, match=r"2049x2048 \(4\.2 MP\).*choose a tile size"):
        check_size(2049, 2048, None, DEFAULT_MAX_PIXELS)


def test_uploads_that_cannot_be_restored_get_a_readable_message(tmp_path):
    with pytest.raises(AppInputError, match="upload an image first"):
        load_upload(None)
    corrupt = tmp_path / "cache" / "broken.png"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"not a png at all")
    with pytest.raises(AppInputError) as info:
        load_upload(corrupt)
    assert str(info.value) == "not an image or unknown format: broken.png"  # no server-side folder
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(AppInputError, match=r"notes.txt: unsupported format \('.txt'\); upload one of: png"):
        load_upload(tmp_path / "notes.txt")
    truncated = tmp_path / "cut.png"
    write_image(truncated, np.full((32, 32, 3), 0.5, dtype=np.float32))
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(AppInputError, match="cut.png"):
        load_upload(truncated)
    good = write_image(tmp_path / "ok.png", np.full((6, 7, 3), 0.25, dtype=np.float32))
    assert load_upload(good).shape == (6, 7, 3)


def test_error_messages_are_one_line():
    assert error_message(AppInputError("bad upload")) == "bad upload"
    assert error_message(ValueError("first\nsecond")) == "first"
    assert error_message(RuntimeError("boom")) == "restoring failed (RuntimeError: boom)"
    assert "tile size" in error_message(torch.cuda.OutOfMemoryError("CUDA out of memory"))


def test_restorer_restores_with_the_chosen_settings_and_counts_network_calls(tiny_pipeline, tmp_path):
    upload = write_image(tmp_path / "photo.png", _photo(48, 40))
    restorer = AppRestorer(tiny_pipeline, output_dir=tmp_path / "out")
    preview, top, status = restorer.analyse(upload)
    assert preview.shape == (40, 48, 3) and preview.dtype == np.uint8
    assert len(top) == 3 and all(name in tiny_pipeline.degradations for name, _ in top)
    assert status.startswith("photo.png: 48x40, looks ")
    before = (tiny_pipeline.sampler, tiny_pipeline.num_steps, tiny_pipeline.tile)
    calls = []
    result = restorer.restore(
        upload,
        sampler="mr",
        steps=2,
        order="1",
        grid="logsnr",
        tile="off",
        progress=lambda d, t: calls.append((d, t)),
    )
    assert calls == [(0, 2), (1, 2), (2, 2)]
    assert result["output"].shape == (40, 48, 3) and result["output"].dtype == np.uint8
    with Image.open(result["png"]) as png:
        assert png.format == "PNG" and png.size == (48, 40)
    assert Path(result["png"]).parent.parent == tmp_path / "out"
    assert "mr, 2 step(s), 2 network evaluation(s)" in result["status"]
    assert (tiny_pipeline.sampler, tiny_pipeline.num_steps, tiny_pipeline.tile) == before  # per request only
    # The same seed gives the same image; tiles (16 px: 3x3 tiles of a 48x40 image, 4 per call) count too.
    again = restorer.restore(upload, sampler="mr", steps=2, order="1", grid="logsnr", tile=None)
    assert np.array_equal(again["output"], result["output"])
    calls.clear()
    tiled = restorer.restore(
        upload, sampler="posterior", steps=1, tile="16", progress=lambda d, t: calls.append(t)
    )
    assert tiled["output"].shape == (40, 48, 3) and set(calls) == {3} and len(calls) == 4


def test_a_one_pass_restorer_takes_only_the_tiles(tiny_daclip_checkpoint, tmp_path):
    """A NAFNet checkpoint: one network evaluation per image (or per batch of tiles), sampler settings unused."""
    path = write_tiny_ir_checkpoint(
        tmp_path / "nafnet.pt", daclip_checkpoint=str(tiny_daclip_checkpoint), context=True, family="nafnet"
    )
    pipeline = RestorationPipeline.from_checkpoint(path, device="cpu")
    restorer = AppRestorer(pipeline, output_dir=tmp_path / "out")
    assert restorer.total_steps == restorer.default_steps == 1
    upload = write_image(tmp_path / "photo.png", _photo(48, 40))
    calls = []
    result = restorer.restore(
        upload, sampler="posterior", steps=1, tile="16", progress=lambda d, t: calls.append(t)
    )
    assert result["output"].shape == (40, 48, 3)
    assert calls[-1] == 3  # 3x3 tiles of 16 px, 4 per network call
    assert "with one pass, 3 network evaluation(s), tiles of 16" in result["status"]


def test_restorer_refuses_bad_settings_and_large_untiled_images(tiny_pipeline, tmp_path):
    upload = write_image(tmp_path / "wide.png", _photo(48, 40))
    restorer = AppRestorer(tiny_pipeline, max_pixels=1000, output_dir=tmp_path / "out")
    assert "choose a tile size before restoring" in restorer.analyse(upload)[2]
    with pytest.raises(AppInputError, match=r"48x40 \(0\.0 MP\), more than the 0\.0 MP .*choose a tile size"):
        restorer.restore(upload, sampler="mr", steps=1, tile="off")
    assert restorer.restore(upload, sampler="mr", steps=1, tile="32")["output"].shape == (40, 48, 3)
    with pytest.raises(AppInputError, match="steps must be between 1 and 5"):
        restorer.restore(upload, sampler="mr", steps=6, tile="32")
    with pytest.raises(AppInputError, match="unknown sampler"):
        restorer.restore(upload, sampler="magic", steps=1, tile="32")
    # The order applies to mr / mr-sde only: the page's order setting is ignored for the others.
    assert restorer.restore(upload, sampler="ode", steps=1, order="2", tile="32")["png"].is_file()
    with pytest.raises(AppInputError, match="upload an image first"):
        restorer.restore(None, sampler="mr", steps=1)


def test_concurrent_requests_take_turns_on_the_model(tiny_pipeline, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    upload = write_image(tmp_path / "photo.png", _photo(32, 24))
    restorer = AppRestorer(tiny_pipeline, output_dir=tmp_path / "out")
    settings = [dict(sampler="mr", steps=1, order="1"), dict(sampler="posterior", steps=3, tile="16")] * 2
    alone = [restorer.restore(upload, **kw)["output"] for kw in settings]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda kw: restorer.restore(upload, **kw)["output"], settings))
    assert all(np.array_equal(a, b) for a, b in zip(alone, together))


def test_nan_restoration_is_a_readable_error_and_nothing_is_written(tiny_daclip_checkpoint, tmp_path):
    path = write_tiny_ir_checkpoint(
        tmp_path / "ir.pt", daclip_checkpoint=str(tiny_daclip_checkpoint), context=True
    )
    pipeline = RestorationPipeline.from_checkpoint(path, device="cpu")
    with torch.no_grad():
        for param in pipeline.model.parameters():
            param.fill_(float("nan"))
    upload = write_image(tmp_path / "photo.png", _photo(24, 16))
    restorer = AppRestorer(pipeline, output_dir=tmp_path / "out")
    with pytest.raises(NonFiniteOutputError) as info:
        restorer.restore(upload, sampler="mr", steps=1)
    assert "NaN or Inf" in error_message(info.value)
    assert not list((tmp_path / "out").rglob("*.png"))


class _Finite(torch.nn.Module):
    """A plain noise predictor (no DA-CLIP conditioning), finite everywhere."""

    use_degra_context = use_image_context = False

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.1))

    def forward(self, x, mu, t, **kwargs):
        return (x - mu) * self.scale


class _OnePixelNaN(_Finite):
    """Finite everywhere but one pixel (of every tile, with tiles)."""

    def forward(self, x, mu, t, **kwargs):
        out = super().forward(x, mu, t)
        out[0, 0, 2, 3] = float("nan")
        return out


def test_one_nan_pixel_or_nan_probabilities_behind_a_finite_restorer_are_errors(
    tiny_daclip_checkpoint, tmp_path
):
    from daclip.inference import DaCLIPSection, build_embedder
    from irsde.diffusion.sde import IRSDE

    upload = write_image(tmp_path / "photo.png", _photo(24, 16))
    for tile in ("off", "16"):  # with tiles the NaN sits in one tile
        restorer = AppRestorer(RestorationPipeline(_OnePixelNaN(), IRSDE(T=2)), output_dir=tmp_path / "out")
        with pytest.raises(NonFiniteOutputError, match="NaN or Inf"):
            restorer.restore(upload, sampler="mr", steps=1, tile=tile)
    embedder = build_embedder(DaCLIPSection(str(tiny_daclip_checkpoint)), "cpu")
    with torch.no_grad():
        for param in embedder.parameters():
            param.fill_(float("nan"))
    restorer = AppRestorer(RestorationPipeline(_Finite(), IRSDE(T=2), embedder), output_dir=tmp_path / "out")
    with pytest.raises(NonFiniteOutputError, match="degradation probabilities have NaN"):
        restorer.restore(upload, sampler="mr", steps=1)
    assert not list((tmp_path / "out").rglob("*.png"))


def test_page_events_without_a_browser(tiny_pipeline, tmp_path):
    warnings = []
    events = PageEvents(AppRestorer(tiny_pipeline, output_dir=tmp_path / "out"), warn=warnings.append)
    upload = write_image(tmp_path / "photo.png", _photo(48, 40))
    preview, after, download, label, status = events.upload(str(upload))
    assert preview.shape == (40, 48, 3) and after is None and download is None
    assert set(label) <= set(tiny_pipeline.degradations) and status.startswith("photo.png: 48x40")
    before, after, png, label, status = events.restore(str(upload), "mr", 1, "1", "uniform", "off", 0)
    assert after.shape == (40, 48, 3) and Path(png).is_file() and status.startswith("restored photo.png")
    assert warnings == []
    # A failure keeps the input and the label on the page, clears the result, and warns once.
    failed = events.restore(str(upload), "mr", 99, "1", "uniform", "off", 0)
    assert failed[0] is KEEP and failed[1] is None and failed[2] is None and failed[3] is KEEP
    assert failed[4] == "**Error:** steps must be between 1 and 5 (T), got 99" and len(warnings) == 1
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a png")
    assert events.upload(str(corrupt)) == (
        None,
        None,
        None,
        None,
        "**Error:** not an image or unknown format: corrupt.png",
    )
    assert events.clear() == (None, None, None, None, START_STATUS)
    assert events.order_enabled("mr") and events.order_enabled("mr-sde") and not events.order_enabled("ode")


def test_the_page_wires_its_components_to_the_events(tiny_pipeline, tmp_path):
    """The Gradio Blocks, without serving them: components by id, and the restore button's handler."""
    pytest.importorskip("gradio", reason="gradio is not installed (pip install -e '.[app]')")
    from irsde.apps.app import build_app

    app = build_app(tiny_pipeline, output_dir=tmp_path / "out")
    config = app.get_config_file()
    ids = {c["id"]: c.get("props", {}).get("elem_id") for c in config["components"]}
    wanted = {
        "upload",
        "restore",
        "degradation",
        "sampler",
        "steps",
        "order",
        "grid",
        "tile",
        "seed",
        "keep-clean",
    }
    assert wanted | {"status", "input-image", "output-image", "download"} <= set(ids.values())
    handlers = {}
    for dependency in config["dependencies"]:
        for target, event in dependency["targets"]:
            handlers[ids[target], event] = (
                app.fns[dependency["id"]].fn,
                [ids[i] for i in dependency["outputs"]],
            )
    assert set(handlers) == {
        ("upload", "upload"),
        ("upload", "clear"),
        ("sampler", "change"),
        ("restore", "click"),
    }
    click, outputs = handlers["restore", "click"]
    assert outputs == ["input-image", "output-image", "download", "degradation", "status"]
    upload = write_image(tmp_path / "photo.png", _photo(32, 24))
    result = click(str(upload), "mr", 1, "1", "uniform", "off", 0, False, progress=lambda *a, **k: None)
    assert result[1].shape == (24, 32, 3) and result[4].startswith("restored photo.png")
    with pytest.warns(UserWarning, match="steps must be between"):  # gr.Warning: the page's pop-up
        failed = click(str(upload), "mr", 99, "1", "uniform", "off", 0, False, progress=lambda *a, **k: None)
    assert failed[0] == failed[3] == {"__type__": "update"} and failed[4].startswith("**Error:** steps")
    order_update = handlers["sampler", "change"][0]("ode")
    assert order_update == {"__type__": "update", "interactive": False}


def test_a_busy_port_suggests_the_port_option(tiny_pipeline, tmp_path):
    pytest.importorskip("gradio", reason="gradio is not installed (pip install -e '.[app]')")
    from irsde.apps.app import build_app

    app = build_app(tiny_pipeline, output_dir=tmp_path / "out")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        try:
            with pytest.raises(UserError) as info:
                launch_app(app, "127.0.0.1", port)
        finally:
            app.close()
    assert (
        str(info.value) == f"cannot serve on 127.0.0.1:{port}: the port is in use; choose another with --port"
    )


# ----------------------------------------------------------------------------- the command line


def test_cli_without_a_checkpoint_names_the_demo(tmp_path, capsys):
    code = _script().main(["--experiments", str(tmp_path / "experiments")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: no checkpoint given") and "python scripts/demo.py" in err
    assert len(err.splitlines()) == 1


def test_cli_bad_arguments_exit_2_with_one_line(tmp_path, capsys):
    script = _script()
    assert script.main(["--checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert capsys.readouterr().err.strip() == f"error: checkpoint not found: {tmp_path / 'nope.pt'}"
    for argv in (["--max-pixels", "0"], ["--port", "70000"]):
        with pytest.raises(SystemExit) as info:
            script.main(argv)
        assert info.value.code == 2


# ----------------------------------------------------------------------------- in a real browser


def _browser_paths() -> tuple[str, str] | None:
    """(chromium binary, chromedriver) as Debian's chromium and chromium-driver packages install them."""
    driver = shutil.which("chromedriver") or (
        "/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None
    )
    for binary in ("/usr/lib/chromium/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if binary and os.path.exists(binary) and driver:
            return binary, driver
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def browser():
    pytest.importorskip("gradio", reason="gradio is not installed (pip install -e '.[dev]')")
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")
    paths = _browser_paths()
    if paths is None:
        pytest.skip("no Chromium and chromedriver (Debian: apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(paths[1]), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_page_restores_an_upload_in_a_real_browser(browser, tiny_pipeline, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from irsde.apps.app import build_app

    pipeline = tiny_pipeline
    if os.environ.get("APP_CHECKPOINT"):  # the README's screenshot: a trained model
        pipeline = RestorationPipeline.from_checkpoint(
            os.environ["APP_CHECKPOINT"], daclip=os.environ.get("APP_DACLIP", ""), device="cpu"
        )
    width, height = (256, 192) if os.environ.get("APP_SCREENSHOT") else (48, 40)
    upload = write_image(tmp_path / "dark_photo.png", _photo(width, height))
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG but not really an image")

    app = build_app(pipeline, output_dir=tmp_path / "restored")
    port = _free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    wait = WebDriverWait(browser, 30, poll_frequency=0.2)

    def text(css: str) -> str:
        return browser.find_element(By.CSS_SELECTOR, css).text

    def open_page() -> None:
        browser.get(f"http://127.0.0.1:{port}/")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"))

    def upload_file(path: Path) -> None:
        browser.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(path))

    def restore_with_one_step() -> dict:
        browser.find_element(By.CSS_SELECTOR, "#sampler input[value='mr']").click()
        steps = browser.find_element(By.CSS_SELECTOR, "#steps input[type=number]")
        steps.send_keys(Keys.CONTROL, "a")
        steps.send_keys("1", Keys.TAB)
        wait.until(
            lambda d: (
                d.find_element(By.CSS_SELECTOR, "#steps input[type=range]").get_attribute("value") == "1"
            )
        )
        browser.find_element(By.ID, "restore").click()
        wait.until(lambda d: text("#status").startswith("restored "))
        image = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#output-image img"))[0]
        wait.until(
            lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", image)
        )
        return browser.execute_script(
            "return {w: arguments[0].naturalWidth, h: arguments[0].naturalHeight}", image
        )

    try:
        open_page()
        upload_file(upload)
        wait.until(lambda d: text("#status").startswith("dark_photo.png: "))
        label = text("#degradation")
        assert any(name in label for name in pipeline.degradations) and "%" in label

        size = restore_with_one_step()
        assert size == {"w": width, "h": height}
        assert "with mr, 1 step(s), 1 network evaluation(s)" in text("#status")
        link = browser.find_element(By.CSS_SELECTOR, "#download a[href]").get_attribute("href")
        with urllib.request.urlopen(link, timeout=10) as response:
            png = Image.open(BytesIO(response.read()))
        assert png.format == "PNG" and png.size == (width, height)
        shot = tmp_path / "app.png"
        browser.save_screenshot(str(shot))
        if os.environ.get("APP_SCREENSHOT"):
            Path(os.environ["APP_SCREENSHOT"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, os.environ["APP_SCREENSHOT"])

        # A corrupt file: a readable message in the page; then the server still restores.
        browser.find_element(By.CSS_SELECTOR, "#upload button[aria-label=Clear]").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"))
        upload_file(corrupt)
        wait.until(lambda d: text("#status").startswith("Error:"))
        assert text("#status") == "Error: not an image or unknown format: corrupt.png"
        assert not browser.find_elements(By.CSS_SELECTOR, "#output-image img")
        open_page()
        upload_file(upload)
        wait.until(lambda d: text("#status").startswith("dark_photo.png: "))
        assert restore_with_one_step() == {"w": width, "h": height}
    finally:
        app.close()


def test_the_app_says_when_nothing_is_wrong_and_can_give_the_photo_back(tmp_path):
    """A stand-in DA-CLIP that knows the answer: a bright photo is clean, a dark one noisy."""
    path = write_tiny_ir_checkpoint(tmp_path / "ir.pt")
    pipeline = RestorationPipeline.from_checkpoint(path, device="cpu")
    pipeline.embedder = CleanOrNoisyDaclip()
    pipeline.degradations = ("noisy", "hazy", "clean")
    events = PageEvents(AppRestorer(pipeline, output_dir=tmp_path / "out"))
    rng = np.random.default_rng(0)
    bright = write_image(tmp_path / "bright.png", 0.6 + 0.3 * rng.random((24, 32, 3)))
    dark = write_image(tmp_path / "dark.png", 0.4 * rng.random((24, 32, 3)))
    assert "no degradation found (clean" in events.upload(str(bright))[4]
    assert "looks noisy" in events.upload(str(dark))[4]
    before, after, _, label, status = events.restore(
        str(bright), "mr", 1, "1", "uniform", "off", 0, None, True
    )
    assert (
        np.array_equal(before, after)
        and "given back unchanged" in status
        and max(label, key=label.get) == "clean"
    )
    before, after, _, _, status = events.restore(str(bright), "mr", 1, "1", "uniform", "off", 0, None, False)
    assert not np.array_equal(before, after) and "no degradation found" in status and "1 network" in status
    before, after, _, _, status = events.restore(str(dark), "mr", 1, "1", "uniform", "off", 0, None, True)
    assert not np.array_equal(before, after) and "no degradation found" not in status
    # The min_change gate far above what the network changes: the photo comes back as it came, and the
    # status says the restorer changed nothing (the network did run).
    pipeline.min_change = 1000.0
    before, after, _, _, status = events.restore(str(dark), "mr", 1, "1", "uniform", "off", 0, None, False)
    assert np.array_equal(before, after) and "1 network" in status
    assert "the restorer changed nothing by 1000 grey level(s) or more" in status
