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


@pytest.mark.parametrize("suite, work", [("unet", "tiny train step"), ("sample", "text-to-image")])
def test_tiny_unet_and_sample_suites_write_their_row(suite, work, tmp_path):
    path = tmp_path / "bench.json"
    code = bench.main([suite, "--tiny", "--repeats", "1", "--warmup", "0", "--device", "cpu", "--json", str(path)])
    assert code == 0
    (row,) = json.loads(path.read_text())["rows"]
    assert row["work"] == work and row["minidiff_s"] > 0 and row["gflop"] > 0 and row["calls"] > 10
    has_torch = json.loads(path.read_text())["environment"]["torch"] is not None
    assert (row["torch_s"] is not None) == has_torch           # the twins run wherever torch imports
    if suite == "sample":
        assert row["images_per_s"] == pytest.approx(row["batch"] / row["minidiff_s"])


def test_the_sample_suite_guides_through_the_one_guidance_function(monkeypatch):
    from minidiff.bench import sample
    calls = []

    def spy(denoiser, cond, cond_mask, uncond, uncond_mask, guidance_scale):
        calls.append((cond.shape[0], uncond.shape[0], guidance_scale))
        return real(denoiser, cond, cond_mask, uncond, uncond_mask, guidance_scale)
    real = sample.guided_model_fn
    monkeypatch.setattr(sample, "guided_model_fn", spy)
    work = bench.sample_works(tiny=True, device=bench.Device("cpu", np), batch=3)[0]
    work.make(bench.Device("cpu", np), 3)()
    assert calls == [(3, 3, 4.0)]


def test_each_guided_sampling_step_is_one_unet_pass_over_2b_latents():
    # guidance at scale 4: the unconditional and conditional branches as one batch of 2B, so one
    # more step adds the calls of one U-Net forward and the multiply-adds of that forward on 2B latents
    from minidiff.bench.sample import prompt_ids, sampling_models
    from minidiff.models.text_encoder import TextEncoder
    from minidiff.models.unet import UNet
    from minidiff.nn.module import no_grad
    B = 2
    two_steps, three_steps = (bench.sample_work(tiny=True, batch=B, steps=s) for s in (2, 3))
    macs_two, _, calls_two = bench.count_work(two_steps.make, B)
    macs_three, _, calls_three = bench.count_work(three_steps.make, B)

    unet_config, _, text_config = sampling_models(tiny=True)
    unet = UNet(unet_config, seed=0).eval()
    ids, mask = prompt_ids(text_config, 2 * B)
    with no_grad():
        context, _ = TextEncoder(text_config, seed=0).eval()(ids, mask)
        z = np.zeros((2 * B, unet_config.in_channels, unet_config.image_size, unet_config.image_size), np.float32)
        with bench.traced(bench.Tally()) as one_pass:
            unet(z, np.full(2 * B, 500), context, mask)
    assert calls_three - calls_two == one_pass.calls
    assert macs_three - macs_two == one_pass.macs


def test_counting_sees_an_op_held_under_its_own_name_by_any_minidiff_module(monkeypatch):
    # a module that did "from ..nn.functional import silu" calls the function, not F.silu
    import types
    from minidiff.nn import functional as F
    probe = types.ModuleType("minidiff.probe")
    probe.silu = F.silu
    monkeypatch.setitem(sys.modules, "minidiff.probe", probe)
    with bench.traced(bench.Tally()) as tally:
        probe.silu(np.ones((2, 3), np.float32))
    assert tally.calls == 1 and probe.silu is F.silu


def test_the_twins_import_without_torch_and_say_what_they_need():
    import subprocess
    code = ("import sys; sys.modules['torch'] = None\n"
            "import minidiff.bench, minidiff.bench.twins as twins\n"
            "try:\n    twins.make_unet_twin\nexcept ImportError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "make_unet_twin needs PyTorch" in out
