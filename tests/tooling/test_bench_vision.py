"""bench/vision.py (`make bench-vision`): the runtimes are checked equal, then timed side by side."""

from bench import vision as bench


def test_pytorch_and_onnxruntime_side_by_side(tiny_checkpoint, capsys):
    bench.main(["--checkpoint", str(tiny_checkpoint), "--tiles", "1", "3", "--seconds", "0.1"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.split()[0] in ("1", "3")]
    assert [row[0] for row in rows] == ["1", "3"]
    for row in rows:
        pytorch, onnxruntime = float(row[1]), float(row[2])
        ratio = float(row[-1].rstrip("x"))   # from the unrounded rates
        assert pytorch > 0 and onnxruntime > 0 and abs(ratio - onnxruntime / pytorch) < 0.02 * ratio + 0.01
