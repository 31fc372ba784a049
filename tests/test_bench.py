"""minidiff.bench: the tables run, the JSON is complete, the work counts are right, with or
without PyTorch. Timings themselves are never asserted."""
import json
import sys

import numpy as np
import pytest

from minidiff import bench

OPS = ["conv2d fwd+bwd", "group_norm fwd+bwd", "attention fwd+bwd", "linear fwd+bwd", "silu fwd+bwd",
       "gelu fwd+bwd", "softmax fwd+bwd", "AdamW step"]


def run_tiny_ops(tmp_path, *extra):
    path = tmp_path / "bench.json"
    code = bench.main(["ops", "--tiny", "--repeats", "1", "--warmup", "0", "--device", "cpu",
                       "--json", str(path), *extra])
    return code, json.loads(path.read_text())


def test_tiny_ops_bench_writes_a_row_per_op_with_times_and_counts(tmp_path):
    code, report = run_tiny_ops(tmp_path, "--no-torch")
    assert code == 0
    rows = report["rows"]
    assert [r["work"] for r in rows] == OPS
    for r in rows:
        assert r["minidiff_s"] > 0 and r["calls"] >= 1 and r["mbytes"] > 0
        assert r["limit"] in ("compute", "memory", "overhead")
        assert r["torch_s"] is None and r["ratio"] is None
    assert report["environment"]["device"] == "cpu"
    assert report["environment"]["gemm_flops_per_s"] > 0


def test_tiny_ops_bench_times_pytorch_beside_minidiff_when_it_imports(tmp_path):
    pytest.importorskip("torch")
    code, report = run_tiny_ops(tmp_path)
    assert code == 0
    assert report["environment"]["torch"] is not None
    for r in report["rows"]:
        assert r["torch_s"] > 0
        assert r["ratio"] == pytest.approx(r["minidiff_s"] / r["torch_s"])


def test_tiny_ops_bench_leaves_the_torch_column_empty_when_torch_is_missing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)             # "import torch" now raises ImportError
    code, report = run_tiny_ops(tmp_path)
    assert code == 0
    assert report["environment"]["torch"] is None
    assert report["environment"]["torch_missing_because"] == "PyTorch is not installed"
    assert all(r["torch_s"] is None for r in report["rows"])


def test_the_table_prints_every_row(capsys, tmp_path):
    run_tiny_ops(tmp_path, "--no-torch")
    out = capsys.readouterr().out
    for name in OPS:
        assert name in out
    assert f"wrote {tmp_path / 'bench.json'}" in out


@pytest.mark.parametrize("argv", [["ops", "--batch", "0"], ["ops", "--repeats", "-1"]])
def test_a_non_positive_count_is_exit_code_2(argv, capsys):
    assert bench.main(argv + ["--device", "cpu"]) == 2
    assert "must be a positive integer" in capsys.readouterr().err


def test_conv_work_counts_three_products_of_the_forward_size():
    # fwd + bwd of a 3x3 conv is three GEMMs of B*Ho*Wo x C_in*9 x C_out multiply-adds
    conv = bench.ops_works(tiny=True)[0]
    B, C, HW = 3, 4, 6
    macs, nbytes, calls = bench.count_work(conv.make, B)
    assert macs == 3 * B * HW * HW * C * 9 * C
    assert calls == 2                                          # conv2d and conv2d_backward
    x_bytes = B * C * HW * HW * 4
    assert nbytes > 4 * x_bytes                                # x, y, dy, dx at least


def test_attention_work_counts_two_products_forward_and_four_backward():
    attention = bench.ops_works(tiny=True)[2]
    B, heads, L, d = 2, 2, 8, 4
    macs, _, _ = bench.count_work(attention.make, B)
    forward = B * heads * L * L * (d + d)                      # S = q k^T and O = P v
    assert macs == 3 * forward


def test_counting_restores_the_functional_ops_and_layers():
    from minidiff.nn import functional as F
    from minidiff.nn import layers
    from minidiff.optim import AdamW
    before = (F.conv2d, layers.SiLU.op, AdamW.step)
    with bench.traced(bench.Tally()):
        assert F.conv2d is not before[0] and layers.SiLU.op is not before[1]
    assert (F.conv2d, layers.SiLU.op, AdamW.step) == before


def test_limit_names_the_closest_floor():
    rates = {"gemm_flops_per_s": 1e9, "copy_bytes_per_s": 1e9}
    cpu = bench.Device("cpu", np)
    assert bench.limit_of(1.0, 0.9e9, 0.1e9, rates, cpu)[0] == "compute"
    assert bench.limit_of(1.0, 0.1e9, 0.8e9, rates, cpu)[0] == "memory"
    assert bench.limit_of(1.0, 0.1e9, 0.1e9, rates, cpu)[0] == "overhead"
    assert bench.limit_of(1.0, 0.1e9, 0.1e9, rates, bench.Device("gpu", None))[0] == "launch"


def test_check_without_a_gpu_says_so_and_still_benchmarks(tmp_path, capsys):
    code, report = run_tiny_ops(tmp_path, "--no-torch", "--check")
    assert code == 0
    assert "needs --device gpu; skipped" in capsys.readouterr().out
    assert "check" not in report and len(report["rows"]) == len(OPS)
