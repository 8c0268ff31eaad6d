"""Odd and hostile inputs get one clear error naming the option, before any model loads or folder is written
(issue #16, "bad inputs with tracebacks"). Each case runs the real command line in-process (``adapt3d.cli.main``)
or the shared check it goes through; none of them loads a model."""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

from adapt3d.cli.main import main
from adapt3d.utils.parsing import parse_seeds, read_prompt_file

NOT_UTF8 = b"a \xff zombie".decode("utf-8", "surrogateescape")  # what Python makes of a non-UTF-8 argv item


def _cli(capsys, *argv: str) -> tuple[int, str]:
    start = time.perf_counter()
    code = main(list(argv))
    err = capsys.readouterr().err
    assert time.perf_counter() - start < 30, "the check should fail before any heavy work"
    return code, err


def _one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize("argv,needles", [
    (["--seeds", "0-1000000000"], ["--seeds", "1,000,000,001 seeds", "at most 100,000"]),
    (["--yaw-deg", "inf"], ["--yaw-deg", "finite"]),
    (["--pitch-deg", "nan"], ["--pitch-deg", "finite"]),
    (["--video-frames", "1000000000"], ["--video-frames", "1,000,000,000", "10,000"]),
    (["--mesh", "ply", "--mesh-resolution", "100000"], ["--mesh-resolution", "100,000", "1,024"]),
])
def test_render_refuses_absurd_values_before_anything_runs(tmp_path, capsys, argv, needles):
    out = tmp_path / "out"
    code, err = _cli(capsys, "render", "--preset", "tiny", "--out", str(out), *argv)
    _one_line_error(code, err, "adapt3d render: error:", *needles)
    assert not out.exists()


def test_seed_ranges_are_counted_before_they_are_expanded():
    start = time.perf_counter()
    with pytest.raises(ValueError, match="--seeds: '0-4294967295' gives 4,294,967,296 seeds"):
        parse_seeds("0-4294967295")
    assert time.perf_counter() - start < 0.5
    assert parse_seeds("0-2,9") == [0, 1, 2, 9]


def test_make_dataset_refuses_bad_prompts_and_counts(tmp_path, capsys):
    out = tmp_path / "out"
    base = ["make-dataset", "--preset", "tiny", "--out", str(out)]
    _one_line_error(*_cli(capsys, *base, "--prompt", NOT_UTF8), "--prompt", "not valid UTF-8", "ff")
    _one_line_error(*_cli(capsys, *base, "--prompt", "x", "--num-images", "1000000000"), "--num-images",
                    "1,000,000,000", "1,000,000]")
    binary = tmp_path / "weights.bin"
    binary.write_bytes(b"\x00\x01\x02" * 100)
    _one_line_error(*_cli(capsys, *base, "--prompt-file", str(binary)), "--prompt-file", "binary file")
    _one_line_error(*_cli(capsys, *base, "--prompt-file", str(tmp_path)), "--prompt-file", "is not a file")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    _one_line_error(*_cli(capsys, *base, "--prompt-file", str(latin1)), "--prompt-file", "not UTF-8", "e9")
    assert not out.exists()  # nothing written, no job.json that would block the folder


def test_tyro_rejects_non_integers_cleanly(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["render", "--preset", "tiny", "--out", str(tmp_path / "o"), "--video-frames", "1e9"])
    assert exc.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_prompt_files(tmp_path):
    good = tmp_path / "p.txt"
    good.write_text("\ufeff# comment\na zombie\n\n  an elf  \n", encoding="utf-8")
    assert read_prompt_file(good) == ["a zombie", "an elf"]
    empty = tmp_path / "e.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(ValueError, match="--prompt-file: .* holds no prompt"):
        read_prompt_file(empty)
    with pytest.raises(FileNotFoundError, match="--prompt-file: .* does not exist"):
        read_prompt_file(tmp_path / "missing.txt")


# ------------------------------------------------------------------------------------- eval reference images
def _png(path: Path, size=(8, 8)) -> Path:
    Image.new("RGB", size, (200, 30, 30)).save(path)
    return path


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A small PNG whose header claims width x height (checked before any pixel is decoded)."""
    data = bytearray(_png(path).read_bytes())
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("kind,needle", [("text", "not a readable image"), ("empty", "is empty \\(0 bytes\\)"),
                                         ("huge", "more pixels than 100,000,000"), ("truncated", "truncated")])
def test_eval_reference_images_are_checked(tmp_path, kind, needle):
    from adapt3d.metrics import fid

    ref = tmp_path / "ref"
    ref.mkdir()
    _png(ref / "a.png")
    bad = ref / "b.png"
    if kind == "text":
        bad.write_text("this is not an image")
    elif kind == "empty":
        bad.write_bytes(b"")
    elif kind == "huge":
        _png_claiming(bad, 20000, 20000)  # 400 megapixels
    else:
        data = _png(bad, (64, 64)).read_bytes()
        Image.effect_noise((256, 256), 64).convert("RGB").save(bad)
        data = bad.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    if kind == "truncated":  # only decoding finds it: at load time, still one error naming the file
        fid.check_reference_images(ref)
        with pytest.raises(ValueError, match=f"--reference: {bad}.*{needle}"):
            list(fid.load_reference_images(ref, 16))
    else:
        with pytest.raises(ValueError, match=f"--reference: {bad}.*{needle}"):
            fid.check_reference_images(ref)


def test_eval_refuses_a_non_utf8_prompt_before_loading(tmp_path, capsys):
    code, err = _cli(capsys, "eval", "--preset", "tiny", "--prompt", NOT_UTF8, "--out", str(tmp_path / "o"))
    _one_line_error(code, err, "--prompt", "not valid UTF-8")
    assert not (tmp_path / "o").exists()


def test_mesh_coordinates_beyond_float_range_are_refused(tmp_path):
    from adapt3d.data.cad import load_cad_mesh

    mesh = tmp_path / "huge.obj"
    mesh.write_text("v 0 0 0\nv 1e308 0 0\nv 0 1e308 0\nv 0 0 1e308\nf 1 2 3\nf 1 2 4\nf 1 3 4\nf 2 3 4\n")
    with pytest.raises(ValueError, match="huge.obj has vertex coordinates up to 1e\\+308"):
        load_cad_mesh(mesh)
    mesh.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 9\n")
    with pytest.raises(ValueError, match="huge.obj"):
        load_cad_mesh(mesh)


def test_adapt_refuses_a_non_utf8_prompt_before_any_folder_or_model(tmp_path, capsys):
    out = tmp_path / "adapt"
    code, err = _cli(capsys, "adapt", "--preset", "tiny", "--prompt", NOT_UTF8, "--out", str(out))
    _one_line_error(code, err, "adapt3d adapt: error: --prompt", "not valid UTF-8")
    assert not out.exists()  # no folder, so no job.json that would block it
    code, err = _cli(capsys, "adapt", "--preset", "tiny", "--prompt", "x", "--video-frames", "99999999",
                     "--out", str(out))
    _one_line_error(code, err, "--video-frames", "99,999,999")
    assert not out.exists()


@pytest.mark.parametrize("command,extra", [("nada", ["--prompt", "x"]), ("itportrait", ["--prompt", "x"]),
                                           ("distill", ["--prompts", "x;y"])])
def test_training_commands_bound_their_videos_and_meshes(tmp_path, capsys, command, extra):
    out = tmp_path / "o"
    code, err = _cli(capsys, command, "--preset", "tiny", *extra, "--video-frames", "50000", "--out", str(out))
    _one_line_error(code, err, "--video-frames", "50,000")
    assert not out.exists()
