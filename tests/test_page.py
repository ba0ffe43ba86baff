"""The page of a trained network (scripts/export.py), driven in a real headless Chromium, and model.onnx.

The browser tests need Debian's `chromium` and `chromium-driver` (/usr/bin/chromium, /usr/bin/chromedriver) and
selenium; without them they are skipped with the reason, except under MLPTRAIN_REQUIRE_BROWSER=1 (CI), where
they fail.
"""

import io
import itertools
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mlptrain.activations import HIDDEN_ACTIVATIONS, make_activation
from mlptrain.anatomy import layer_activations
from mlptrain.errors import ConfigError
from mlptrain.mnist import EMBEDDED_DIR, MEAN, STD
from mlptrain.page import MIRRORS, examples_to_show, mirror
from mlptrain.predict import digit_pixels, load_trained
from mlptrain.predict import test_image as mnist_test_image
from mlptrain.train import train
from tests.conftest import ROOT, SMALL, compose_config, run_in_process

BROWSER, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def _browser_missing() -> str | None:
    if not (BROWSER.exists() and DRIVER.exists()):
        return f"no {BROWSER} and {DRIVER}: apt-get install chromium chromium-driver"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return 'selenium is not installed: pip install -e ".[dev]"'
    return None


# --- without a browser ---------------------------------------------------------------------------------------


def test_a_drawing_is_prepared_as_mnist_prepared_its_digits() -> None:
    from torchvision import datasets

    images = datasets.MNIST(EMBEDDED_DIR, train=False).data.numpy()[:1000]
    # MNIST's own digits come back as they are (their box already 20 pixels, their mass already centred), but
    # for the faint pixels (at most INK of full ink) outside the box, which the box leaves out.
    prepared = np.stack([np.floor(digit_pixels(image.astype(np.float64)) + 0.5) for image in images])
    difference = np.abs(prepared - images).reshape(len(images), -1)
    assert (difference.max(1) == 0).mean() > 0.75 and (difference.max(1) <= 0.1 * 255).mean() > 0.99
    # The same digit drawn by a user: dark ink on white paper, 5 times larger, off-centre on a wide sheet.
    seven = images[0]
    sheet = np.full((200, 260), 255.0)
    sheet[10:150, 100:240] = 255 - np.kron(seven, np.ones((5, 5)))
    prepared = digit_pixels(sheet)
    assert np.abs(prepared - seven).mean() < 8, np.abs(prepared - seven).mean()
    assert not digit_pixels(np.full((50, 50), 255.0)).any()  # a blank sheet: nothing drawn


def test_every_registry_activation_has_a_mirror_and_others_are_refused() -> None:
    for name in HIDDEN_ACTIVATIONS:
        assert mirror(make_activation(name))["name"], name
    assert mirror(make_activation({"_target_": "torch.nn.Hardtanh", "min_val": -2.0}))["min"] == -2.0
    with pytest.raises(ConfigError, match="torch.nn.modules.activation.Hardshrink") as refused:
        mirror(torch.nn.Hardshrink())
    assert "\n" not in str(refused.value) and "format=onnx" in str(refused.value)
    assert torch.nn.Hardshrink not in MIRRORS


def test_the_examples_are_the_first_images_and_the_most_confident_mistakes() -> None:
    labels = np.array([0, 1, 2, 3, 4])
    probs = np.eye(10)[[0, 7, 2, 5, 9]] * 0.5 + 0.05  # images 1, 3 and 4 wrong, equally sure ...
    probs[3, 5] += 0.1  # ... but image 3 surer
    shown = examples_to_show(labels, probs, 2)
    assert [i for i, _ in shown] == [0, 1, 3, 1]
    assert "taken for 5" in shown[2][1] and "a 3" in shown[2][1]


# --- in a browser --------------------------------------------------------------------------------------------

# Every registry activation, two `_target_` ones the page mirrors, each output activation and both input
# normalisations: network i has output OUTPUTS[i % 3] and normalisation NORMALIZATIONS[i % 2], so the first six
# meet every pair. Float64 weights once (64-true), to read a float64 checkpoint too.
OUTPUTS = [("none", "cross_entropy"), ("sigmoid", "mse"), ("softmax", "mse")]
NORMALIZATIONS = ["standard", "unit"]
ACTIVATIONS = [
    *HIDDEN_ACTIVATIONS,
    "{_target_: torch.nn.Hardtanh, min_val: -0.5, max_val: 2.0}",
    "{_target_: torch.nn.GELU, approximate: tanh}",
]
CASES = [
    (activation, *OUTPUTS[i % 3], NORMALIZATIONS[i % 2], "64-true" if activation == "gelu" else "32-true", "[12,8]")
    for i, activation in enumerate(ACTIVATIONS)
] + [("relu", "none", "cross_entropy", "unit", "32-true", "[]")]  # no hidden layer: logistic regression
# Pen strokes on the 280×280 pad, as offsets from its centre: a 7, a 0 and a 4, drawn in turn.
STROKES = [
    [[(-60, -90), (60, -95), (70, -90), (-20, 100)]],
    [[(0, -90), (-50, -50), (-60, 30), (-10, 95), (45, 40), (50, -50), (5, -90)]],
    [[(-40, -90), (-60, 10), (50, 10)], [(30, -80), (20, 95)]],
]
STATE = """
const s = mlptrain.state, r = s.result;
return {updates: s.updates, pixels: Array.from(s.pixels), inputs: Array.from(s.inputs),
        probabilities: Array.from(r.probabilities), activations: r.activations.map(a => Array.from(a)),
        grey: Array.from(mlptrain.padGrey())};
"""


@pytest.fixture(scope="module")
def browser() -> Iterator:
    missing = _browser_missing()
    if missing:
        if os.environ.get("MLPTRAIN_REQUIRE_BROWSER") == "1":
            pytest.fail(f"MLPTRAIN_REQUIRE_BROWSER=1, but {missing}")
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(BROWSER)
    for argument in ("--headless=new", "--no-sandbox", "--window-size=1280,900", "--force-device-scale-factor=1"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    yield driver
    driver.quit()


def draw(driver, strokes: list[list[tuple[int, int]]], pointer: str = "mouse") -> None:
    """Pointer strokes on the pad, as a mouse or a finger makes them (W3C pointer actions)."""
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    pad = driver.find_element("id", "pad")
    kind = interaction.POINTER_TOUCH if pointer == "touch" else interaction.POINTER_MOUSE
    actions = ActionBuilder(driver, mouse=PointerInput(kind, pointer), duration=10)
    for stroke in strokes:
        actions.pointer_action.move_to(pad, *stroke[0]).pointer_down()
        for start, end in itertools.pairwise(stroke):
            for t in np.linspace(0.2, 1, 5):  # a move every few pixels, as a hand makes them
                x, y = (1 - t) * np.array(start) + t * np.array(end)
                actions.pointer_action.move_to(pad, int(x), int(y))
        actions.pointer_action.pointer_up()
    actions.perform()


def page_state(driver) -> dict:
    """The page's numbers after its updates have run: the pad's grey levels, the 784 pixels and inputs, every
    layer's activations and the probabilities."""
    driver.execute_script("mlptrain.update()")  # what the last pointer event scheduled for the next frame
    errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert not [entry for entry in errors if "favicon.ico" not in entry["message"]], errors  # a served page asks
    return driver.execute_script(STATE)


def assert_page_computes_what_the_model_computes(state: dict, ckpt: Path) -> None:
    trained = load_trained(ckpt)
    normalize = trained.config["data"]["normalize"]
    grey = np.array(state["grey"]).reshape(280, 280)
    pixels = np.array(state["pixels"])
    # The drawing prepared as scripts/predict.py prepares a picture.
    np.testing.assert_allclose(pixels, digit_pixels(grey).reshape(-1), rtol=0, atol=1e-9)
    assert pixels.max() > 200, "the strokes did not reach the pad"
    # The inputs, normalised as the model was trained.
    x = pixels / 255 if normalize == "unit" else (pixels / 255 - MEAN) / STD
    np.testing.assert_allclose(state["inputs"], x, rtol=0, atol=1e-12)
    # The model as trained, on the page's pixels (its own float32 inputs): to 1e-5.
    probs = trained.probabilities_of(torch.tensor(pixels, dtype=torch.float64)[None], normalize)[0].double().numpy()
    np.testing.assert_allclose(state["probabilities"], probs, rtol=0, atol=1e-5)
    # Its weights in float64, on the page's inputs: every layer's activations and the probabilities, to 1e-9.
    trained.model.double()
    activations, _ = layer_activations(trained.model, torch.tensor(state["inputs"], dtype=torch.float64))
    for page, torch_ in zip(state["activations"], activations, strict=True):
        np.testing.assert_allclose(page, torch_.numpy(), rtol=0, atol=1e-9)
    output = trained.model(torch.tensor(state["inputs"], dtype=torch.float64)[None]).detach()
    np.testing.assert_allclose(state["probabilities"], trained.probabilities(output)[0].numpy(), rtol=0, atol=1e-9)


def train_small(folder: Path, *overrides: str) -> Path:
    """A short real run with a small network: its best.ckpt."""
    train(compose_config([*SMALL, "trainer.limit_train_batches=30", "model.hidden=[12,8]", *overrides], folder))
    return folder / "checkpoints" / "best.ckpt"


def export_page(ckpt: Path, folder: Path, capsys: pytest.CaptureFixture[str], *arguments: str) -> Path:
    status, output = run_in_process("scripts/export.py", [f"ckpt_path={ckpt}", f"out={folder}", *arguments], capsys)
    assert status == 0, output
    return folder / "index.html"


@pytest.mark.slow
@pytest.mark.parametrize(("activation", "output", "loss", "normalize", "precision", "hidden"), CASES)
def test_the_page_computes_what_the_model_computes(
    activation: str,
    output: str,
    loss: str,
    normalize: str,
    precision: str,
    hidden: str,
    browser,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    overrides = [f"model.output_activation={output}", f"loss={loss}", f"data.normalize={normalize}"]
    overrides += [f"model.activation={activation}", f"trainer.precision={precision}"]
    overrides += ["model.logistic_slope=4", "model.leaky_relu_slope=0.2", "model.maxout_pieces=3"]
    ckpt = train_small(tmp_path / "run", *overrides, f"model.hidden={hidden}")
    page = export_page(ckpt, tmp_path / "page", capsys)
    browser.get(page.as_uri())
    draw(browser, STROKES[ACTIVATIONS.index(activation) % len(STROKES)])
    assert_page_computes_what_the_model_computes(page_state(browser), ckpt)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of the default network (2 epochs), with its page in the report (report.page=true)."""
    folder = tmp_path_factory.mktemp("default")
    overrides = ["report.enabled=true", "report.page=true", "report.network_images=0", "trainer.max_epochs=2"]
    train(compose_config([*SMALL, "trainer.limit_train_batches=300", *overrides], folder))
    return folder


@pytest.mark.slow
def test_a_finger_draws_too_and_the_page_updates_while_drawing(browser, default_run: Path) -> None:
    assert "[page/index.html](page/index.html)" in (default_run / "report.md").read_text()
    browser.get((default_run / "page" / "index.html").as_uri())
    assert browser.execute_script("return mlptrain.state.updates") == 1  # the blank pad, once
    draw(browser, STROKES[0][:1], pointer="touch")
    # Nothing asked the page to update: its own frames did, while the finger moved.
    assert browser.execute_script("return mlptrain.state.updates") > 1
    state = page_state(browser)
    assert_page_computes_what_the_model_computes(state, default_run / "checkpoints" / "best.ckpt")
    assert int(np.argmax(state["probabilities"])) == 7
    browser.find_element("id", "clear").click()
    assert not any(browser.execute_script("return Array.from(mlptrain.state.pixels)"))


@pytest.mark.slow
def test_the_test_images_and_the_mistakes_on_the_page(browser, default_run: Path) -> None:
    trained = load_trained(default_run / "checkpoints" / "best.ckpt")
    browser.get((default_run / "page" / "index.html").as_uri())
    captions, sure = [], []
    for _ in range(12):  # 6 test images, then the 6 most confident mistakes
        browser.find_element("id", "next").click()
        caption = browser.find_element("id", "caption").text
        index = int(re.search(r"test image #(\d+)", caption).group(1))
        pixels, label = mnist_test_image(index)
        probs = trained.probabilities_of(torch.from_numpy(pixels)[None], "standard")[0].double().numpy()
        state = browser.execute_script(STATE)
        np.testing.assert_array_equal(state["pixels"], pixels.reshape(-1))
        np.testing.assert_allclose(state["probabilities"], probs, rtol=0, atol=1e-5)
        if "mistake" in caption:
            assert probs.argmax() != label and f"taken for {probs.argmax()}" in caption
            sure.append(probs.max())
        captions.append(caption)
    assert [int(re.search(r"#(\d+)", c).group(1)) for c in captions[:6]] == list(range(6))
    assert len(sure) == 6 and sure == sorted(sure, reverse=True)
    text = browser.find_element("id", "model").text
    summary = (default_run / "summary.json").read_text()
    accuracy = float(re.search(r'"test_acc": ([0-9.]+)', summary).group(1))
    assert "network 784-128-64-10" in text and "activation relu" in text and "cost cross_entropy" in text
    assert f"test accuracy {100 * accuracy:.2f}%" in text


@pytest.mark.slow
def test_a_screenshot_of_the_page(browser, default_run: Path, tmp_path: Path) -> None:
    browser.get((default_run / "page" / "index.html").as_uri())
    draw(browser, STROKES[1])
    browser.execute_script("mlptrain.update()")
    shot = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
    width, height = browser.execute_script("return [innerWidth, innerHeight]")
    assert shot.size == (width, height) and width >= 1200
    pixels = np.asarray(shot)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500 and pixels.std() > 40  # drawn, not blank
    # The network's picture is on screen: its dark panel, with the answer's ring in yellow.
    network = browser.find_element("id", "network").rect
    panel = pixels[int(network["y"]) : int(network["y"] + network["height"]), int(network["x"]) :]
    assert (panel.mean(2) < 40).mean() > 0.5
    assert ((panel[..., 0] > 230) & (panel[..., 1] > 190) & (panel[..., 2] < 110)).sum() > 100


def _ctrl_c_as_in_a_shell() -> None:
    """In the child, before it starts: SIGINT as a shell's command gets it (default, not blocked). A child inherits
    an ignored or blocked SIGINT, and Lightning ignores it for good in a process whose fit was interrupted (the
    test worker's, in CI), so the server's Ctrl-C below would never arrive."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@pytest.mark.slow
def test_the_page_served_on_localhost(browser, default_run: Path, tmp_path: Path) -> None:
    ckpt = default_run / "checkpoints" / "best.ckpt"
    arguments = [f"ckpt_path={ckpt}", f"out={tmp_path / 'page'}", "serve=true", "port=0", "examples=0"]
    server = subprocess.Popen(  # -X faulthandler: SIGABRT prints every thread's stack (see below)
        [sys.executable, "-X", "faulthandler", "scripts/export.py", *arguments], cwd=ROOT, stdout=subprocess.PIPE,
        text=True, preexec_fn=_ctrl_c_as_in_a_shell,
    )  # fmt: skip
    try:
        lines = [server.stdout.readline() for _ in range(3)]
        url = re.search(r"serving (http://127\.0\.0\.1:\d+/index\.html)", lines[2]).group(1)
        assert urllib.request.urlopen(url, timeout=10).read().startswith(b"<!doctype html>")
        browser.get(url)
        assert not browser.find_element("id", "next").is_displayed()  # no test images to step through
        draw(browser, STROKES[2])
        assert_page_computes_what_the_model_computes(page_state(browser), ckpt)
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            status = server.wait(timeout=60)
        except subprocess.TimeoutExpired:  # once in CI (2026-12-03), unexplained: where it waits, in this output
            server.send_signal(signal.SIGABRT)
            server.wait(timeout=30)
            raise
    assert status == 0


@pytest.mark.slow
def test_onnx_export_equals_the_model(default_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    onnxruntime = pytest.importorskip("onnxruntime", reason='format=onnx needs pip install -e ".[export]"')
    ckpt = train_small(tmp_path / "run", "model.activation=maxout", "model.output_activation=sigmoid", "loss=mse")
    for checkpoint in (ckpt, default_run / "checkpoints" / "best.ckpt"):
        path = tmp_path / f"{checkpoint.parent.parent.name}.onnx"
        status, output = run_in_process(
            "scripts/export.py", [f"ckpt_path={checkpoint}", "format=onnx", f"out={path}"], capsys
        )
        assert status == 0 and "checked with onnxruntime on the 10,000 test images" in output, output
        trained = load_trained(checkpoint)
        config = trained.config
        images = torch.from_numpy(np.stack([mnist_test_image(i)[0] for i in range(500)]))
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        output, probs = session.run(None, {"pixels": images.float().numpy()})
        expected = trained.probabilities_of(images, config["data"]["normalize"]).numpy()
        np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-5)


def test_an_output_that_cannot_be_written_is_one_paragraph(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = train_small(tmp_path / "run")
    capsys.readouterr()  # the training's output: only the command's is looked at
    for arguments in (["out=/proc/page"], ["format=onnx", "out=/proc/model.onnx"]):  # not even root writes there
        status, output = run_in_process("scripts/export.py", [f"ckpt_path={ckpt}", *arguments], capsys)
        # Not "Traceback": in-process commands of earlier tests leave logging handlers on closed streams, whose
        # "--- Logging error ---" reports carry one. The exception's own name is in a traceback of it.
        assert status == 1 and "FileNotFoundError" not in output, output
        assert "could not be written: No such file or directory (/proc/" in output and "Give out= a place" in output
