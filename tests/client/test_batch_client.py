"""The batch client: unit tests on a mock transport, then runs against the real service on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path, PurePath

import httpx
import pytest
from PIL import Image

from client.batch import BatchOptions, BatchReport, main, upscale_batch
from client.discovery import InputError, UnsafePath, format_for, output_path, plan
from client.outputs import PART_SUFFIX
from service.imageio import decoding  # noqa: F401  registers pillow-heif's plugin, which writes HEIC files here
from tests.conftest import (
    ROOT,
    child_env,
    decode_image,
    encode_image,
    free_port,
    smooth_image,
    start_server,
    stop_server,
)

SMALL_SERVER = {"tile": 32, "max_batch": 4, "threads": 1}


def write_image(path: Path, h: int = 16, w: int = 16, fmt: str = "PNG", mode: str = "RGB", seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = smooth_image(h, w, channels={"RGB": 3, "RGBA": 4, "L": 1}[mode], seed=seed)
    path.write_bytes(encode_image(Image.fromarray(pixels[:, :, 0] if mode == "L" else pixels), fmt))
    return path


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


# ---------------------------------------------------------------- naming and discovery (no server)


@pytest.mark.parametrize(
    "rel,fmt,expected",
    [
        ("a/b/photo.png", "png", "a/b/photo.png"),
        ("photo.bmp", "png", "photo.png"),
        ("IMG_01.JPG", "jpeg", "IMG_01.JPG"),
        ("x.jpeg", "jpeg", "x.jpeg"),
        ("x.png", "jpeg", "x.jpg"),
        ("scan.tiff", "webp", "scan.webp"),
        ("two.dots.gif", "png", "two.dots.png"),
        ("IMG_0001.HEIC", "jpeg", "IMG_0001.jpg"),
    ],
)
def test_output_keeps_the_relative_path_and_stem_with_the_formats_extension(tmp_path, rel, fmt, expected):
    assert output_path(tmp_path, PurePath(rel), fmt) == tmp_path / expected


@pytest.mark.parametrize(
    "name,fmt",
    [
        ("p.png", "png"),
        ("p.JPG", "jpeg"),
        ("p.webp", "webp"),
        ("p.bmp", "png"),
        ("IMG_1.HEIC", "jpeg"),
        ("a.avif", "avif"),
    ],
)
def test_default_format_is_the_inputs_where_the_service_writes_it_else_png(name, fmt):
    assert format_for(PurePath(name), None) == fmt
    assert format_for(PurePath(name), "webp") == "webp"


@pytest.mark.parametrize("rel", ["../evil.png", "a/../../evil.png", "/etc/evil.png"])
def test_output_paths_cannot_escape_by_name(tmp_path, rel):
    with pytest.raises(UnsafePath):
        output_path(tmp_path / "out", PurePath(rel), "png")


def test_output_paths_cannot_escape_through_a_symlink(tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir(), elsewhere.mkdir()
    (out / "a").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UnsafePath):
        output_path(out, PurePath("a/photo.png"), "png")
    write_image(tmp_path / "in" / "a" / "photo.png")
    found = plan([str(tmp_path / "in")], out=out, recursive=True)
    assert not found.jobs and "outside" in found.refused[0].reason


def test_outputs_inside_an_input_folder_hidden_files_and_non_images_are_not_inputs(tmp_path):
    src = tmp_path / "in"
    for rel in ("a.png", "sub/b.jpg", ".hidden.png", "up/a.png"):
        write_image(src / rel, fmt="JPEG" if rel.endswith("jpg") else "PNG")
    (src / "notes.txt").write_text("not an image")
    found = plan([str(src)], out=src / "up", recursive=True)
    assert [j.source for j in found.jobs] == [src / "a.png", src / "sub/b.jpg"]
    assert [j.target for j in found.jobs] == [src / "up/a.png", src / "up/sub/b.jpg"]
    assert found.ignored == [src / "notes.txt"] and not found.refused
    assert [j.source for j in plan([str(src)], out=src / "up").jobs] == [src / "a.png"]  # not recursive


def test_globs_keep_the_structure_below_their_fixed_part(tmp_path):
    for rel in ("photos/x.png", "photos/2024/y.png", "photos/2024/z.bmp"):
        write_image(tmp_path / rel)
    found = plan([f"{tmp_path}/photos/**/*.png"], out=tmp_path / "out")
    assert sorted(j.target for j in found.jobs) == [tmp_path / "out/2024/y.png", tmp_path / "out/x.png"]


def test_an_input_is_never_overwritten_and_two_inputs_never_share_an_output(tmp_path):
    src = tmp_path / "in"
    for name in ("a.png", "c.bmp", "c.png"):
        write_image(src / name)
    in_place = plan([str(src)], out=src)
    assert not in_place.jobs
    assert all("overwrite an input" in r.reason for r in in_place.refused) and len(in_place.refused) == 3
    elsewhere = plan([str(src)], out=tmp_path / "out")
    assert len(elsewhere.jobs) == 2 and "already made from" in elsewhere.refused[0].reason


def test_an_input_that_matches_nothing_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(InputError):
        plan([str(tmp_path / "nope*.png")], out=tmp_path / "out")
    with pytest.raises(SystemExit) as exited:
        main([str(tmp_path / "missing.png"), "--out", str(tmp_path / "out"), "--server", "http://127.0.0.1:9"])
    assert exited.value.code == 2 and "missing.png" in capsys.readouterr().err


# ---------------------------------------------------------------- retries and balancing (mock transport)


def fake_upscale(request: httpx.Request) -> httpx.Response:
    """What the service does, in a few lines: the image back ``scale`` times larger in ``format``."""
    scale, fmt = int(request.url.params["scale"]), request.url.params["format"]
    im = decode_image(request.content)
    big = im.resize((im.width * scale, im.height * scale))
    return httpx.Response(200, content=encode_image(big, fmt.upper()), headers={"Content-Type": f"image/{fmt}"})


def run_mocked(tmp_path: Path, handler, **options) -> BatchReport:
    options = {"servers": ["http://replica"], "backoff": 0.01, **options}
    batch = BatchOptions(inputs=[str(tmp_path / "in")], out=tmp_path / "out", **options)
    return asyncio.run(upscale_batch(batch, transport=httpx.MockTransport(handler)))


def test_503_is_retried_after_its_retry_after(tmp_path):
    write_image(tmp_path / "in" / "a.png", 10, 12)
    seen: list[tuple[float, httpx.Request]] = []

    def handler(request):
        seen.append((time.monotonic(), request))
        if len(seen) == 1:
            return httpx.Response(
                503, json={"error": {"code": "overloaded", "message": "busy"}}, headers={"Retry-After": "1"}
            )
        return fake_upscale(request)

    report = run_mocked(tmp_path, handler, scale=3, api_key="k1")
    assert (report.done, report.failed, report.retries) == (1, 0, 1)
    assert seen[1][0] - seen[0][0] >= 0.95
    assert seen[1][1].headers["X-API-Key"] == "k1" and seen[1][1].url.params["scale"] == "3"
    assert decode_image((tmp_path / "out" / "a.png").read_bytes()).size == (36, 30)


def test_a_4xx_is_final_for_its_file_and_the_run_goes_on(tmp_path):
    write_image(tmp_path / "in" / "a.png"), write_image(tmp_path / "in" / "c.png")
    broken = b"\x89PNG broken"
    (tmp_path / "in" / "bad.png").write_bytes(broken)
    sent: list[bytes] = []

    def handler(request):
        sent.append(request.content)
        if request.content == broken:
            return httpx.Response(415, json={"error": {"code": "unsupported_image", "message": "corrupt"}})
        return fake_upscale(request)

    report = run_mocked(tmp_path, handler)
    assert (report.done, report.failed, len(sent), sent.count(broken)) == (2, 1, 3, 1)
    failure = json.loads((tmp_path / "out" / "report.json").read_text())["failures"][0]
    assert failure["input"].endswith("bad.png") and failure["status"] == 415 and failure["code"] == "unsupported_image"
    assert failure["attempts"] == 1 and "corrupt" in failure["reason"]
    assert not (tmp_path / "out" / "bad.png").exists()


def test_retries_end_in_a_recorded_failure(tmp_path):
    write_image(tmp_path / "in" / "a.png")
    report = run_mocked(tmp_path, lambda request: httpx.Response(504, text="gateway timeout"), retries=2)
    assert report.failures[0].attempts == 3 and "gave up after 3 attempts" in report.failures[0].reason


def test_a_refused_api_key_stops_the_run(tmp_path):
    for i in range(5):
        write_image(tmp_path / "in" / f"{i}.png")
    refuse = lambda request: httpx.Response(401, json={"error": {"code": "unauthorized", "message": "wrong key"}})
    report = run_mocked(tmp_path, refuse, concurrency=1)
    assert (report.failed, report.not_attempted, report.ok) == (1, 4, False)
    assert "API key" in report.aborted and "wrong key" in report.aborted


def test_a_server_that_cannot_be_reached_leaves_the_rotation(tmp_path):
    for i in range(12):
        write_image(tmp_path / "in" / f"{i}.png", seed=i)
    calls = {"http://down:1": 0, "http://up-a": 0, "http://up-b": 0}

    def handler(request):
        origin = f"{request.url.scheme}://{request.url.host}" + (f":{request.url.port}" if request.url.port else "")
        calls[origin] += 1
        if origin == "http://down:1":
            raise httpx.ConnectError("connection refused", request=request)
        return fake_upscale(request)

    report = run_mocked(tmp_path, handler, servers=list(calls), concurrency=3, backoff=0.5)
    assert (report.done, report.failed) == (12, 0)
    assert calls["http://down:1"] <= 3 and calls["http://up-a"] >= 3 and calls["http://up-b"] >= 3


def test_resume_keeps_good_outputs_redoes_broken_ones_and_removes_temporary_files(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        write_image(tmp_path / "in" / name)
    out = tmp_path / "out"
    write_image(out / "a.png", 5, 5)  # an earlier output (any image that decodes is kept)
    (out / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n half")
    stale = out / f".c.png.0badf00d{PART_SUFFIX}"
    stale.write_bytes(b"partial")
    report = run_mocked(tmp_path, fake_upscale)
    assert (report.done, report.skipped) == (2, 1)
    assert decode_image((out / "a.png").read_bytes()).size == (5, 5)
    assert decode_image((out / "b.png").read_bytes()).size == (32, 32)
    assert not stale.exists() and not list(out.glob(f"*{PART_SUFFIX}"))
    assert run_mocked(tmp_path, fake_upscale, overwrite=True).done == 3
    assert decode_image((out / "a.png").read_bytes()).size == (32, 32)


def test_the_report_records_the_settings_and_a_run_with_others_warns_about_kept_outputs(tmp_path, caplog):
    write_image(tmp_path / "in" / "a.png")
    run_mocked(tmp_path, fake_upscale, scale=2)
    assert json.loads((tmp_path / "out" / "report.json").read_text())["settings"]["scale"] == 2
    report = run_mocked(tmp_path, fake_upscale, scale=3)
    assert report.skipped == 1 and "made with scale 2 (now 3)" in caplog.text
    caplog.clear()
    run_mocked(tmp_path, fake_upscale, scale=3, overwrite=True)  # remade: nothing to warn about
    assert "made with" not in caplog.text


def test_an_interrupted_run_still_writes_its_report(tmp_path):
    for i in range(4):
        write_image(tmp_path / "in" / f"{i}.png", seed=i)
    started = asyncio.Event()

    async def body():
        async def handler(request):
            started.set()
            await asyncio.sleep(60)  # the service is slow; the user presses Ctrl-C meanwhile

        batch = BatchOptions(inputs=[str(tmp_path / "in")], out=tmp_path / "out", servers=["http://replica"])
        run = asyncio.ensure_future(upscale_batch(batch, transport=httpx.MockTransport(handler)))
        await started.wait()
        run.cancel()  # what asyncio.run does with the main task on Ctrl-C
        with pytest.raises(asyncio.CancelledError):
            await run

    asyncio.run(body())
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["aborted"] == "interrupted" and report["not_attempted"] == 4 and report["done"] == 0


def test_the_server_defaults_to_where_make_serve_listens(tmp_path, monkeypatch):
    seen = {}

    async def fake(options, **kwargs):
        seen["servers"] = options.servers
        return BatchReport(servers=options.servers)

    monkeypatch.setattr("client.batch.upscale_batch", fake)
    write_image(tmp_path / "in" / "a.png")
    assert main([str(tmp_path / "in"), "--out", str(tmp_path / "out")]) == 0
    assert seen["servers"] == ["http://127.0.0.1:8000"]


# ---------------------------------------------------------------- against the real service


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("batch-server"), **SMALL_SERVER)
    yield srv
    stop_server(srv)


def make_batch(folder: Path, n: int, h: int = 32, w: int = 32) -> list[Path]:
    return [write_image(folder / f"d{i % 3}" / f"img{i:02d}.png", h, w, seed=i) for i in range(n)]


def start_client(src: Path, out: Path, server: str) -> subprocess.Popen:
    """``python -m client.batch`` in a process of its own, its output in a log beside ``out``."""
    argv = [sys.executable, "-m", "client.batch", str(src), "--out", str(out), "--server", server, "-r"]
    env = child_env()
    with (out.parent / f"client-{time.monotonic_ns()}.log").open("w") as log:
        return subprocess.Popen(argv + ["--concurrency", "2"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_for_outputs(out: Path, at_least: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(out.rglob("*.png"))) >= at_least:
            return
        time.sleep(0.005)
    raise AssertionError(f"the client made no {at_least} outputs in time (exit status {proc.poll()})")


def assert_all_upscaled(sources: list[Path], src: Path, out: Path, scale: int = 2) -> None:
    for source in sources:
        target = out / source.relative_to(src)
        w, h = Image.open(source).size
        assert decode_image(target.read_bytes()).size == (w * scale, h * scale), target
    assert {p.name for p in files_under(out)} == {s.name for s in sources} | {"report.json"}


def test_a_folder_of_mixed_images(service, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    formats = [("PNG", ".png", "PNG"), ("JPEG", ".jpg", "JPEG"), ("WEBP", ".webp", "WEBP"), ("BMP", ".bmp", "PNG")]
    expected = {}  # output -> (size, Pillow format, mode)
    for i in range(48):
        fmt, suffix, out_fmt = formats[i % 4]
        mode = (
            "RGBA" if fmt in ("PNG", "WEBP") and i % 3 == 0 else "L" if fmt in ("PNG", "JPEG") and i % 5 == 0 else "RGB"
        )
        h, w = 8 + (i * 7) % 41, 8 + (i * 13) % 41
        rel = Path(["", "a", "a/b", "c"][(i // 3) % 4]) / f"im{i:02d}{suffix}"
        write_image(src / rel, h, w, fmt, mode, seed=i)
        expected[out / rel.with_suffix(".png" if fmt == "BMP" else suffix)] = ((3 * w, 3 * h), out_fmt, mode)
    good = write_image(src / "a" / "broken.png", 20, 20).read_bytes()
    (src / "a" / "broken.png").write_bytes(good[: len(good) // 2])
    (src / "notes.txt").write_text("a shopping list")
    assert len(files_under(src)) == 50

    argv = [str(src), "--out", str(out), "--server", service.url, "--scale", "3", "--recursive", "--concurrency", "4"]
    assert main(argv) == 1
    for target, (size, fmt, mode) in expected.items():
        im = decode_image(target.read_bytes())
        assert (im.size, im.format, im.mode) == (size, fmt, mode), target
    assert set(files_under(out)) == set(expected) | {out / "report.json"}
    report = json.loads((out / "report.json").read_text())
    assert (report["done"], report["skipped"], report["failed"], report["ignored"]) == (48, 0, 1, 1)
    [failure] = report["failures"]
    assert failure["input"] == str(src / "a" / "broken.png") and failure["status"] == 415
    assert report["ignored_files"] == [str(src / "notes.txt")]

    assert main(argv) == 1  # again: everything kept, the broken file fails again
    report = json.loads((out / "report.json").read_text())
    assert (report["done"], report["skipped"], report["failed"]) == (0, 48, 1)


def test_phone_photos_and_avif_files_in_a_folder(service, tmp_path):
    """HEIC comes back as JPEG (as the service answers it), AVIF as AVIF; both at x2."""
    src, out = tmp_path / "in", tmp_path / "out"
    write_image(src / "IMG_0001.HEIC", 30, 40, "HEIF")
    write_image(src / "web.avif", 30, 40, "AVIF")
    assert main([str(src), "--out", str(out), "--server", service.url]) == 0
    assert (
        decode_image((out / "IMG_0001.jpg").read_bytes()).format,
        decode_image((out / "web.avif").read_bytes()).size,
    ) == (
        "JPEG",
        (80, 60),
    )


@pytest.mark.parametrize(
    ("size", "expected", "recorded"),
    [
        (["--width", "100"], lambda w, h: (100, round(h * 100 / w)), {"width": 100}),
        (["--height", "90"], lambda w, h: (round(w * 90 / h), 90), {"height": 90}),
        (["--scale", "1.5"], lambda w, h: (round(w * 1.5), round(h * 1.5)), {"scale": 1.5}),
        (["--width", "100", "--height", "90", "--fit", "cover"], lambda w, h: (100, 90), {"width": 100, "height": 90}),
    ],
    ids=["width", "height", "scale 1.5", "cover"],
)
def test_a_folder_at_the_size_asked_for(service, tmp_path, size, expected, recorded):
    """Images of different aspect ratios: each keeps its own unless both sides are given."""
    src, out = tmp_path / "in", tmp_path / "out"
    shapes = [(30, 40), (40, 30), (45, 45)]  # (h, w)
    for i, (h, w) in enumerate(shapes):
        write_image(src / f"im{i}.png", h, w, seed=i)
    assert main([str(src), "--out", str(out), "--server", service.url, *size]) == 0
    for i, (h, w) in enumerate(shapes):
        assert decode_image((out / f"im{i}.png").read_bytes()).size == expected(w, h)
    settings = json.loads((out / "report.json").read_text())["settings"]
    assert {k: settings[k] for k in ("scale", "width", "height")} == {
        "scale": None,
        "width": None,
        "height": None,
    } | recorded


@pytest.mark.parametrize(
    "size",
    [["--scale", "1"], ["--scale", "4.5"], ["--scale", "2", "--width", "10"], ["--width", "0"]],
)
def test_a_size_the_service_cannot_make_is_a_usage_error(tmp_path, size, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path), "--out", str(tmp_path / "out"), *size])
    assert exit_.value.code == 2 and "--" in capsys.readouterr().err


def test_the_server_stopped_and_started_again_part_way(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    sources = make_batch(src, 120)
    (tmp_path / "first").mkdir(), (tmp_path / "second").mkdir()
    first = start_server(tmp_path / "first", **SMALL_SERVER)
    client = start_client(src, out, first.url)
    try:
        wait_for_outputs(out, 3, client)
        client.send_signal(signal.SIGSTOP)  # frozen until the server is stopping, however fast both are
        made_while_up = len(list(out.rglob("*.png")))
        first.process.terminate()  # it stops listening, then finishes the requests it holds...
        client.send_signal(signal.SIGCONT)  # ...which it could not while the client that sends them was frozen
        stop_server(first)
        time.sleep(0.5)  # the client finds nobody listening
        port = int(first.url.rsplit(":", 1)[1])
        second = start_server(tmp_path / "second", port=port, **SMALL_SERVER)
        try:
            assert client.wait(timeout=60) == 0
        finally:
            stop_server(second)
    finally:
        stop_server(first)
        client.kill()
    assert made_while_up < 120
    assert_all_upscaled(sources, src, out)
    report = json.loads((out / "report.json").read_text())
    assert report["done"] == 120 and report["retries"] >= 1


def test_the_client_killed_part_way_and_run_again(service, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    sources = make_batch(src, 60)
    client = start_client(src, out, service.url)
    wait_for_outputs(out, 5, client)
    client.send_signal(signal.SIGKILL)
    client.wait()
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.rglob("*.png")}
    assert 5 <= len(before) < 60
    for path in before:
        decode_image(path.read_bytes())  # every output there is whole
    (out / "d0" / f".img99.png.0badf00d{PART_SUFFIX}").write_bytes(b"what a killed run leaves")

    assert main([str(src), "--out", str(out), "--server", service.url, "--recursive"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert (report["skipped"], report["done"], report["failed"]) == (len(before), 60 - len(before), 0)
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in before} == before  # kept, not made again
    assert_all_upscaled(sources, src, out)
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]


def test_two_servers_one_of_them_down(service, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    sources = make_batch(src, 20, 24, 40)
    down = f"http://127.0.0.1:{free_port()}"
    argv = [str(src), "--out", str(out), "--server", down, "--server", service.url, "--recursive"]
    assert main(argv) == 0
    assert_all_upscaled(sources, src, out)
    assert json.loads((out / "report.json").read_text())["megapixels_per_second"] > 0
