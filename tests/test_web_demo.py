"""The web demo (demo/app.py): state -> layout conversion, the ``generate`` endpoint through
gradio_client, and the page driven in headless Chromium (Playwright with Debian's ``chromium``).

The server runs in-process on the tiny random-weight checkpoints of ``--demo`` (offline) on a free
127.0.0.1 port; screenshots go to each test's temporary folder.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import threading
from types import SimpleNamespace

import pytest

from ldm.inference.layout import Generation, LayoutError, load_layout

from demo import state

pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")  # gradio's own pandas deprecations
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 45  # any single wait on the server or the browser


# ====================================================================== state <-> layout (no server)
def test_boxes_from_annotator_are_normalised_in_drawing_order():
    import numpy as np

    ann = {"image": np.zeros((200, 400, 3), np.uint8),
           "boxes": [{"xmin": 40, "ymin": 20, "xmax": 200, "ymax": 100, "label": "1"},
                     {"xmin": 400, "ymin": 200, "xmax": 300, "ymax": 150, "label": "a bird"}]}
    assert state.normalised_boxes(ann) == [[0.1, 0.1, 0.5, 0.5], [0.75, 0.75, 1.0, 1.0]]
    rows = state.sync_rows(state.normalised_boxes(ann), [["1", "a cat", ""]], ["1", "a bird"])
    assert rows == [["1", "a cat", ""], ["2", "a bird", ""]]  # kept by position; a typed label becomes the phrase
    assert state.sync_rows([[0, 0, 1, 1]], rows) == [["1", "a cat", ""]]  # a removed box drops its row
    back = state.annotation_boxes(state.normalised_boxes(ann), (400, 200))
    assert [(b["xmin"], b["ymin"], b["xmax"], b["ymax"]) for b in back] == [(40, 20, 200, 100), (300, 150, 400, 200)]


def test_entry_from_ui_box_text_and_validation_messages():
    boxes = [[0.0, 0.09, 0.33, 0.76], [0.55, 0.11, 1.0, 0.8]]
    rows = [["1", "a teddy bear", ""], ["2", "a bird", ""]]
    entry = state.entry_from_ui("text", prompt="a teddy bear next to a bird", boxes=boxes, rows=rows, beta=0.3, seed=7)
    gen = Generation.from_dict(entry)
    assert gen.phrases == ["a teddy bear", "a bird"] and gen.boxes == boxes
    assert gen.alpha_type == [0.3, 0.0, 0.7] and gen.seed == 7
    assert "seed" not in state.entry_from_ui("text", prompt="p", boxes=boxes, rows=rows, seed=-1)
    # a third row in the table is a third phrase: the CLI's message
    with pytest.raises(LayoutError, match="^3 phrases but 2 boxes"):
        Generation.from_dict(state.entry_from_ui("text", prompt="p", boxes=boxes, rows=rows + [["3", "a cat", ""]]))
    with pytest.raises(LayoutError, match="box 2 has no phrase"):
        state.entry_from_ui("text", prompt="p", boxes=boxes, rows=[rows[0], ["2", " ", ""]])


def test_entry_from_ui_reference_images_and_style(tmp_path):
    from PIL import Image

    ref, style = tmp_path / "clock.png", tmp_path / "golden.png"
    Image.new("RGB", (8, 8)).save(ref)
    Image.new("RGB", (8, 8), (200, 160, 0)).save(style)
    rows = [["1", "", "clock.png"], ["2", "a house", ""]]
    entry = state.entry_from_ui("text_image", prompt="p", boxes=[[0, 0, .5, .5], [.5, .5, 1, 1]], rows=rows,
                                reference_files=[str(ref)], style_image=str(style))
    gen = Generation.from_dict(entry)
    assert gen.phrases == [None, "a house", None]
    assert gen.images == [str(ref), None, str(style)]
    assert gen.boxes[-1] == state.STYLE_BOX and gen.implied_mode().family == "text_image"
    with pytest.raises(LayoutError, match="'bigben.jpg' is not among the uploaded images"):
        state.entry_from_ui("text_image", prompt="p", boxes=[[0, 0, 1, 1]], rows=[["1", "x", "bigben.jpg"]],
                            reference_files=[str(ref)])


def test_keypoints_round_trip_through_annotator_boxes():
    persons = [state.pose_person(0), state.pose_person(1)]
    persons[1][3] = [0.0, 0.0]  # an absent point has no box
    boxes = state.keypoint_boxes(persons)
    assert len(boxes) == 2 * 17 - 1 and boxes[0]["label"] == "p1 nose"
    ann = {"image": None, "boxes": boxes}  # None: the 512x512 canvas
    back = state.persons_from_annotation(ann)
    for p, q in zip(back, persons):
        for a, b in zip(p, q):
            assert a == pytest.approx(b, abs=1.5 / state.CANVAS)
    boxes[0] = dict(boxes[0], xmin=100, xmax=114, ymin=200, ymax=214)  # drag the nose
    assert state.persons_from_annotation({"image": None, "boxes": boxes})[0][0] == pytest.approx([107 / 512, 207 / 512], abs=1e-4)
    gen = Generation.from_dict(state.entry_from_ui("keypoint", prompt="two people", persons=back))
    assert len(gen.keypoints) == 2 and gen.keypoints[1][3] == [0.0, 0.0]
    with pytest.raises(LayoutError, match="labels are 'p<person> <keypoint>'"):
        state.persons_from_annotation({"image": None, "boxes": [{"xmin": 0, "ymin": 0, "xmax": 9, "ymax": 9}]})


def test_sizes_canvas_aspect_and_options_record_the_size():
    import numpy as np

    from ldm.inference.pipeline import Settings

    assert state.size_choices(512, 64) == list(range(256, 1025, 64))  # SD-1.x: 256..1024 in multiples of 64
    assert state.size_choices(16, 4) == [8, 16, 24, 32]  # the --demo tiny checkpoints (16 px; multiples of 8)
    assert state.canvas_size(384, 640) == (512, 307) and state.canvas_size(768, 512) == (341, 512)
    assert state.canvas_size(512, 512) == (state.CANVAS, state.CANVAS)
    options = state.options_from_ui(sampler="ddim", steps=20.0, guidance_scale=5, batch_size=2.0, negative_prompt=None,
                                    height=384.0, width=640)
    assert options == dict(sampler="ddim", steps=20, guidance_scale=5.0, batch_size=2, negative_prompt="",
                           height=384, width=640)
    settings = Settings.merged(options)  # the CLI's settings block, the size included
    assert (settings.height, settings.width) == (384, 640) and settings.record()["height"] == 384
    # boxes and keypoints drawn on a wide canvas stay relative to the image
    w, h = state.canvas_size(384, 640)
    wide = np.zeros((h, w, 3), np.uint8)
    person = state.pose_person(2)
    back, = state.persons_from_annotation({"image": wide, "boxes": state.keypoint_boxes([person], (w, h))})
    for a, b in zip(back, person):
        assert a == pytest.approx(b, abs=1.5 / h)
    boxes = [[0.1, 0.2, 0.5, 0.9]]
    back, = state.normalised_boxes({"image": wide, "boxes": state.annotation_boxes(boxes, (w, h))})
    assert back == pytest.approx(boxes[0], abs=1 / h)


def test_canny_map_of_a_photo(tmp_path):
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (64, 64), (0, 0, 0))
    ImageDraw.Draw(im).rectangle([16, 16, 47, 47], fill=(255, 255, 255))
    im.save(tmp_path / "photo.png")
    edges = state.canny_map(str(tmp_path / "photo.png"))
    import numpy as np

    a = np.asarray(edges)
    assert edges.mode == "RGB" and a.shape == (64, 64, 3)
    assert a[32, 32].max() == 0 and a[5, 5].max() == 0  # flat regions: no edges
    assert a[14:19, 32].max() == 255  # the square's top edge


# ====================================================================== the server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("gradio")
    pytest.importorskip("gradio_image_annotation")
    from demo import app

    out = tmp_path_factory.mktemp("web_demo")
    port = _free_port()
    args = app.build_parser().parse_args(["--demo", "--port", str(port), "--outdir", str(out)])
    page, service, launch = app.build_app(args)

    # record how many samplings run at the same time (the queue must serialise them)
    active, peak, lock = [0], [0], threading.Lock()
    generate = service.runner.generate

    def counted(*a, **k):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            return generate(*a, **k)
        finally:
            with lock:
                active[0] -= 1

    service.runner.generate = counted
    page.launch(prevent_thread_lock=True, quiet=True, **launch)
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}/", service=service, outdir=out, peak=peak)
    finally:
        page.close()


def _layout(seed: int, **entry) -> str:
    gen = {"prompt": "a teddy bear next to a bird", "phrases": ["a teddy bear", "a bird"],
           "boxes": [[0.0, 0.1, 0.4, 0.8], [0.5, 0.1, 1.0, 0.8]], "seed": seed, **entry}
    return json.dumps({"settings": {"steps": 8, "batch_size": 2}, "generations": [gen]})


def test_generate_endpoint_concurrent_requests_and_errors(server, tmp_path):
    from gradio_client import Client
    from gradio_client.exceptions import AppError
    from PIL import Image

    client = Client(server.url, verbose=False)
    jobs = [client.submit(_layout(seed), api_name="/generate") for seed in (1, 2, 3)]
    results = [job.result(timeout=TIMEOUT_S) for job in jobs]
    pixels = []
    for (images, record), seed in zip(results, (1, 2, 3)):
        assert len(images) == 2  # batch_size 2 from the layout's settings
        for item in images:
            with Image.open(item["image"]) as im:
                assert im.mode == "RGB" and im.size[0] > 0
                pixels.append(im.tobytes())
        saved = json.loads(record)
        assert saved["generations"][0]["seed"] == seed and saved["settings"]["steps"] == 8
    assert len(set(pixels)) == 6  # different seeds / batch entries: different images
    assert server.peak[0] == 1  # never two samplings at once

    bad = json.dumps({"prompt": "x", "phrases": ["a", "b", "c"], "boxes": [[0, 0, .5, .5], [.5, .5, 1, 1]]})
    with pytest.raises(AppError) as err:
        client.predict(bad, api_name="/generate")
    assert str(err.value) == "3 phrases but 2 boxes: give one box per phrase"
    with pytest.raises(AppError, match="takes one generation, got 2"):
        client.predict(json.dumps([json.loads(bad)] * 2), api_name="/generate")
    private = tmp_path / "private.png"  # a server file outside the allowed folders is never read
    Image.new("RGB", (8, 8)).save(private)
    with pytest.raises(AppError, match="private.png lies outside the folders this server may read"):
        client.predict(_layout(4, phrases=None, images=[str(private), None]), api_name="/generate")
    pixels_layout = json.dumps({"settings": {"steps": 4, "batch_size": 1, "box_format": "xywh_pixels"},
                                "generations": [{"prompt": "p", "phrases": ["a cat"], "boxes": [[128, 64, 256, 384]]}]})
    _, record = client.predict(pixels_layout, api_name="/generate")  # converted once, at the edge
    assert json.loads(record)["generations"][0]["boxes"] == [[0.25, 0.125, 0.75, 0.875]]
    # still serving; a saved record sent back (server-side settings such as clip are the server's) repeats its run
    images, record = client.predict(results[0][1], api_name="/generate")
    assert len(images) == 2 and json.loads(record)["generations"][0]["seed"] == 1
    for item, first in zip(images, results[0][0]):
        with Image.open(item["image"]) as a, Image.open(first["image"]) as b:
            assert a.tobytes() == b.tobytes()


def test_generate_endpoint_and_page_state_honour_the_size(server):
    """A layout's ``settings.height/width`` sets the output size (384x640 at the tiny checkpoints' scale, 24x40, as
    tests/test_nonsquare.py); the page's size controls do the same; spatial-map checkpoints refuse other sizes
    with the pipeline's one-line reason."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError
    from PIL import Image

    client = Client(server.url, verbose=False)
    layout = json.loads(_layout(5))
    layout["settings"].update(height=24, width=40)
    images, record = client.predict(json.dumps(layout), api_name="/generate")
    assert len(images) == 2
    for item in images:
        with Image.open(item["image"]) as im:
            assert im.size == (40, 24)  # (W, H)
    saved = json.loads(record)
    assert (saved["settings"]["height"], saved["settings"]["width"]) == (24, 40)
    assert saved["generations"][0]["boxes"] == layout["generations"][0]["boxes"]  # still normalised
    _, again = client.predict(record, api_name="/generate")  # the saved record repeats the size
    assert (json.loads(again)["settings"]["height"], json.loads(again)["settings"]["width"]) == (24, 40)

    by_mode = {mode.name: path for path, mode in server.service.known_modes.items()}
    size = dict(height=24, width=16)  # tall: 768x512 at the tiny scale
    options = state.options_from_ui(sampler="plms", steps=4, guidance_scale=7.5, batch_size=1, negative_prompt="",
                                    **size)
    entry = state.entry_from_ui("keypoint", prompt="a person", persons=[state.pose_person(0)], seed=3)
    result, paths = server.service.run(entry, options, by_mode["generation keypoint"])
    with Image.open(paths[0]) as im:
        assert im.size == (16, 24)
    saved = json.loads(open(paths[2]).read())
    assert (saved["settings"]["height"], saved["settings"]["width"]) == (24, 16)
    settings, (gen,) = load_layout(paths[2])  # what "Load a layout" and gligen_inference.py --layout read
    assert (settings["height"], settings["width"]) == (24, 16) and gen.keypoints == entry["keypoints"]

    hed = state.entry_from_ui("hed", prompt="a man", condition=os.path.join(ROOT, "inference_images", "hed_man_eat.png"))
    with pytest.raises(LayoutError) as err:
        server.service.run(hed, options, by_mode["generation hed"])
    message = str(err.value)
    assert "\n" not in message and message.startswith("generation hed checkpoints generate 16x16 only: ")
    assert message.endswith("(got --height 24 --width 16)")
    with pytest.raises(AppError, match="^generation hed checkpoints generate 16x16 only"):  # the endpoint: the same
        client.predict(json.dumps({"settings": {"height": 24, "width": 40},
                                   "generations": [{"prompt": "a man", "hed_image": hed["hed_image"]}]}),
                       api_name="/generate")


# ====================================================================== the page in Chromium
@pytest.fixture
def browser_page(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("GLIGEN_REQUIRE_BROWSER"):
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    external = []

    def only_local(route):
        url = route.request.url
        if url.startswith(("http://127.0.0.1", "data:", "blob:")):
            return route.continue_()
        external.append(url)
        return route.abort()

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"], timeout=TIMEOUT_S * 1000)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(TIMEOUT_S * 1000)
            page.route("**/*", only_local)
            page.goto(server.url)
            page.wait_for_selector("#generate")
            yield page
            assert external == []  # nothing is fetched from outside the app
        finally:
            browser.close()


def _draw_box(page, canvas_id: str, x0: float, y0: float, x1: float, y1: float) -> None:
    """Drag a box on the annotator with the mouse; coordinates are fractions of the canvas element."""
    page.locator(f"#{canvas_id} button[aria-label='Create box']").click()
    bb = page.locator(f"#{canvas_id} canvas").first.bounding_box()
    page.mouse.move(bb["x"] + x0 * bb["width"], bb["y"] + y0 * bb["height"])
    page.mouse.down()
    page.mouse.move(bb["x"] + x1 * bb["width"], bb["y"] + y1 * bb["height"], steps=12)
    page.mouse.up()


def _type_phrase(page, row: int, text: str) -> None:
    cell = page.locator(f"#phrases [data-testid='cell-{row}-1']")
    cell.wait_for()
    cell.dblclick()
    page.keyboard.type(text)
    page.keyboard.press("Enter")


def _generate_and_wait(page, before: int = 0):
    page.locator("#generate").click()
    images = page.locator("#gallery img")
    images.nth(before).wait_for()  # a result image appeared
    return images


def _select(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.locator(f"#{elem_id}").get_by_role("option", name=option, exact=True).click()


def _latest_record(outdir) -> dict:
    records = sorted((p for p in outdir.glob("*/0.json")), key=os.path.getmtime)
    return json.loads(records[-1].read_text())


def _latest_png(outdir):
    return sorted((p for p in outdir.glob("*/0.png")), key=os.path.getmtime)[-1]


def test_browser_draw_box_type_phrase_generate(server, browser_page, tmp_path):
    page = browser_page
    page.screenshot(path=str(tmp_path / "0_loaded.png"), full_page=True)
    assert "RANDOM weights" in page.locator("#demo-warning").inner_text()
    assert "generation box+text" in page.locator("#mode").inner_text()

    _draw_box(page, "canvas", 0.30, 0.20, 0.60, 0.70)
    page.locator("#phrases [data-testid='cell-0-0']").wait_for()  # the table follows the boxes
    page.locator("#generate").click()  # no phrase yet: a one-line error, and the page keeps working
    page.get_by_text("box 1 has no phrase (fill in its row of the table)").first.wait_for()
    page.screenshot(path=str(tmp_path / "1_error.png"), full_page=True)
    _type_phrase(page, 0, "a teddy bear")
    page.locator("#prompt textarea").fill("a teddy bear on the grass")
    page.get_by_text("Sampling", exact=True).click()  # open the accordion
    page.locator("#seed input").fill("11")
    page.locator("#seed input").press("Tab")  # commit the number
    _select(page, "height", "16")  # 512x768's aspect at the tiny checkpoints' scale: the canvas turns wide
    _select(page, "width", "24")
    page.wait_for_timeout(1000)
    page.screenshot(path=str(tmp_path / "2_box_and_phrase.png"), full_page=True)

    images = _generate_and_wait(page)
    page.wait_for_function("document.querySelectorAll('#gallery img').length >= 4")  # 2 images + annotated
    assert page.locator("#seed-used textarea, #seed-used input").first.input_value() == "11"
    page.screenshot(path=str(tmp_path / "3_generated.png"), full_page=True)
    assert images.count() >= 4

    record = _latest_record(server.outdir)
    gen = record["generations"][0]
    assert gen["prompt"] == "a teddy bear on the grass" and gen["phrases"] == ["a teddy bear"] and gen["seed"] == 11
    (x0, y0, x1, y1), = gen["boxes"]
    assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 and (x1 - x0) > 0.1 and (y1 - y0) > 0.1
    assert "input_image" not in gen
    assert (record["settings"]["height"], record["settings"]["width"]) == (16, 24)
    from PIL import Image

    with Image.open(_latest_png(server.outdir)) as im:
        assert im.size == (24, 16)  # (W, H)

    # the downloaded layout is what gligen_inference.py --layout takes, and it repeats this request
    with page.expect_download() as dl:
        page.locator("#download").click()
    saved = tmp_path / "layout.json"
    dl.value.save_as(saved)
    settings, (again,) = load_layout(str(saved))
    assert again.prompt == gen["prompt"] and again.boxes == gen["boxes"] and again.seed == 11
    assert settings["steps"] == 50 and settings["batch_size"] == 2
    assert (settings["height"], settings["width"]) == (16, 24)


def test_browser_upload_image_and_inpaint_a_box(server, browser_page, tmp_path):
    from PIL import Image

    page = browser_page
    photo = tmp_path / "room.png"
    Image.new("RGB", (320, 240), (90, 140, 200)).save(photo)

    # a spatial-map checkpoint fixes the size at its own, saying why; other modes free it again
    _select(page, "width", "32")
    page.locator("#ckpt input").click()
    page.get_by_role("option", name="demo (random weights): generation hed").click()
    page.locator("#condition").wait_for(state="visible")
    page.wait_for_function("document.querySelector('#width input').value === '16'")
    assert page.locator("#height input").is_disabled() and page.locator("#width input").is_disabled()
    assert "spatial-map checkpoints generate 16x16 only" in page.locator("#height").inner_text()

    # pick the inpainting checkpoint: the page switches to its controls
    page.locator("#ckpt input").click()
    page.get_by_role("option", name="inpainting box+text").click()
    page.locator("#inpaint-image").wait_for(state="visible")
    assert "inpainting box+text" in page.locator("#mode").inner_text()
    page.wait_for_function("!document.querySelector('#width input').disabled")
    page.locator("#inpaint-image input[type=file]").set_input_files(str(photo))
    page.wait_for_timeout(1500)  # the canvas takes the uploaded image as its background

    _draw_box(page, "canvas", 0.35, 0.30, 0.65, 0.70)
    page.locator("#phrases [data-testid='cell-0-0']").wait_for()
    _type_phrase(page, 0, "a corgi")
    page.locator("#prompt textarea").fill("a corgi in a blue room")
    _select(page, "height", "24")  # the output size follows the controls; the photo is resized to it
    _select(page, "width", "32")
    page.wait_for_timeout(1000)
    page.screenshot(path=str(tmp_path / "1_inpaint_box.png"), full_page=True)
    _generate_and_wait(page)
    page.wait_for_function("document.querySelectorAll('#gallery img').length >= 4")
    page.screenshot(path=str(tmp_path / "2_inpainted.png"), full_page=True)

    record = _latest_record(server.outdir)
    gen = record["generations"][0]
    assert record["outputs"]["mode"] == "inpainting box+text"
    assert gen["phrases"] == ["a corgi"] and os.path.isfile(gen["input_image"])
    with Image.open(gen["input_image"]) as im:  # the uploaded image, copied next to the outputs
        assert im.size == (320, 240)
    with Image.open(_latest_png(server.outdir)) as im:
        assert im.size == (32, 24)
    assert (record["settings"]["height"], record["settings"]["width"]) == (24, 32)


def test_every_demo_mode_runs_from_page_state(server, tmp_path):
    """What the page builds for each mode (reference images + style, keypoints, spatial maps, canny from a
    photo) runs on the demo checkpoints; a map the checkpoint cannot take gives the CLI's message."""
    from PIL import Image, ImageDraw

    from ldm.inference.standins import write_standins

    images = tmp_path / "inputs"
    write_standins(str(images))
    by_mode = {mode.name: path for path, mode in server.service.known_modes.items()}
    options = dict(steps=4, batch_size=1)
    photo = tmp_path / "photo.png"
    im = Image.new("RGB", (96, 64), (20, 20, 20))
    ImageDraw.Draw(im).ellipse([20, 10, 70, 55], fill=(240, 240, 240))
    im.save(photo)
    canny = tmp_path / "canny.png"
    state.canny_map(str(photo)).save(canny)
    requests = {
        "generation box+text+image": state.entry_from_ui(
            "text_image", prompt="a clock on the beach", boxes=[[0.1, 0.1, 0.6, 0.7]], rows=[["1", "", "2"]],
            reference_files=[str(images / "placeholder.png"), str(images / "clock.png")],
            style_image=str(images / "style_golden.jpg"), beta=1.0),
        "generation keypoint": state.entry_from_ui("keypoint", prompt="a person", persons=[state.pose_person(1)]),
        "generation hed": state.entry_from_ui("hed", prompt="a man", condition=str(images / "hed_man_eat.png")),
        "generation sem": state.entry_from_ui("sem", prompt="a room", condition=str(images / "sem_ade_living_room.png")),
        "generation canny": state.entry_from_ui("canny", prompt="a ball", condition=str(canny), beta=0.9),
    }
    for name, entry in requests.items():
        result, paths = server.service.run(entry, options, by_mode[name])
        assert result.mode.name == name and len(paths) == 3 and all(os.path.isfile(p) for p in paths)
        saved = json.loads(open(paths[2]).read())["generations"][0]
        for key in ("images", "hed_image", "sem", "canny_image"):  # inputs copied next to the outputs
            for p in filter(None, (saved.get(key) or []) if key == "images" else [saved.get(key)]):
                assert os.path.dirname(p) == os.path.join(os.path.dirname(paths[0]), "inputs")
    assert saved["alpha_type"] == [0.9, 0.0, 0.1]
    with pytest.raises(LayoutError, match="does not support"):
        server.service.run(requests["generation hed"], options, by_mode["generation box+text"])


def test_browser_load_keypoint_layout_then_generate(server, browser_page, tmp_path):
    """Uploading a layout restores the page (checkpoint, mode, points, prompt, settings); generating repeats it."""
    from ldm.inference.examples import PERSON_1, PERSON_2

    page = browser_page
    layout = tmp_path / "people.json"
    layout.write_text(json.dumps({"settings": {"steps": 6, "batch_size": 1, "height": 24, "width": 16},
                                  "generations": [{"prompt": "A young man and a small boy are talking",
                                                   "keypoints": [PERSON_1, PERSON_2], "alpha_type": [0.4, 0, 0.6],
                                                   "seed": 4}]}))
    page.locator("#layout-upload input[type=file]").set_input_files(str(layout))
    page.locator("#keypoints").wait_for(state="visible")
    page.wait_for_function("document.querySelector('#prompt textarea').value.startsWith('A young man')")
    assert "generation keypoint" in page.locator("#mode").inner_text()
    assert not page.locator("#canvas").is_visible()  # the box canvas is for box modes only
    assert (page.locator("#height input").input_value(), page.locator("#width input").input_value()) == ("24", "16")
    page.screenshot(path=str(tmp_path / "1_layout_loaded.png"), full_page=True)
    _generate_and_wait(page)
    page.wait_for_function("document.querySelectorAll('#gallery img').length >= 2")
    page.screenshot(path=str(tmp_path / "2_generated.png"), full_page=True)

    record = _latest_record(server.outdir)
    gen = record["generations"][0]
    assert record["outputs"]["mode"] == "generation keypoint" and record["settings"]["steps"] == 6
    assert gen["seed"] == 4 and gen["alpha_type"] == [0.4, 0.0, 0.6]
    assert (record["settings"]["height"], record["settings"]["width"]) == (24, 16)  # the layout's size, restored
    for got, want in zip(gen["keypoints"], [PERSON_1, PERSON_2]):
        for a, b in zip(got, want):
            assert a == pytest.approx(b, abs=2 / state.CANVAS)  # through the canvas' pixels and back


def test_a_local_checkpoint_typed_in_the_picker_is_loaded_for_its_mode(server, tmp_path):
    from ldm.inference.errors import ResolveError

    by_mode = {mode.name: path for path, mode in server.service.known_modes.items()}
    mine = tmp_path / "my_finetune.pth"
    shutil.copyfile(by_mode["inpainting box+text"], mine)
    assert server.service.mode_of(str(mine)).name == "inpainting box+text"  # read from the checkpoint itself
    with pytest.raises(ResolveError, match="checkpoint not found"):
        server.service.mode_of(str(tmp_path / "missing.pth"))
