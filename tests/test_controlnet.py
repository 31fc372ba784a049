"""ControlNet (minidiff/models/controlnet.py): the combined model equals the base at step 0, and the
whole ControlNet (copy, hint encoder, zero convs) and the locked U-Net's path back to its inputs
are gradient-checked in float64 on a tiny config; the Sobel outlines."""
import numpy as np
import pytest

from minidiff.datasets import shapes
from minidiff.models.controlnet import ControlledUNet, ControlNet, ControlNetConfig, edge_map, skip_channels
from minidiff.models.unet import UNet, UNetConfig
from minidiff.nn.gradcheck import check_module

TINY = ControlNetConfig(hint_channels=1, hint_downsample=1, hint_width=4)


def tiny_unet():
    """Float64, every zero-initialised layer made random (no path hides behind a zero)."""
    unet = UNet(UNetConfig.tiny(), seed=1).to(dtype=np.float64)
    rng = np.random.default_rng(0)
    for p in unet.parameters():
        if np.all(p.data == 0):
            p.data = 0.1 * rng.standard_normal(p.shape)
    return unet


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((2, 2, 8, 8)), np.array([3.0, 500.0]), rng.standard_normal((2, 3, 6)),
            rng.standard_normal((2, 1, 16, 16)))


def test_combined_model_equals_the_base_at_step_zero():
    unet = tiny_unet().eval()
    x, t, context, control = inputs()
    model = ControlledUNet(unet, ControlNet(unet, TINY).to(dtype=np.float64))
    np.testing.assert_array_equal(model(x, t, context, None, control), unet(x, t, context))
    assert len(model.controlnet.zero_convs) == len(skip_channels(unet.config))


def test_controlnet_gradients_match_finite_differences():
    unet = tiny_unet()
    controlnet = ControlNet(unet, TINY).to(dtype=np.float64)
    rng = np.random.default_rng(1)
    for p in controlnet.parameters():              # leave step 0 behind: zero convs and hint output random
        if np.all(p.data == 0):
            p.data = 0.2 * rng.standard_normal(p.shape)
    model = ControlledUNet(unet, controlnet)
    model.control_scale = 0.7
    x, t, context, control = inputs()

    class Fixed(ControlledUNet):                   # t and the control image fixed: inputs x and context
        def forward(self, x, context):
            return super().forward(x, t, context, None, control)

    fixed = Fixed(unet, controlnet)
    fixed.control_scale = 0.7
    report = check_module(fixed, [x, context], eps=3e-6, max_coords=2)
    assert report.passed(1e-5), str(report)
    assert all(r.name.startswith("controlnet.") for r in report.rows if r.kind == "param")


def test_edge_map_outlines_the_shapes():
    batch = shapes.sample(4, seed=0, size=32, two_object_fraction=0.0)
    edges = edge_map(batch["images"])
    assert edges.shape == (4, 1, 32, 32) and set(np.unique(edges)) <= {0.0, 1.0}
    for edge, box in zip(edges, batch["boxes"]):
        x0, y0, x1, y1 = box[0]
        rows, cols = np.nonzero(edge[0])
        assert len(rows) > 10                                          # an outline, ...
        # ... on the object's border: within 2 pixels of its box, and none at its centre
        assert rows.min() >= y0 - 2 and rows.max() <= y1 + 2 and cols.min() >= x0 - 2 and cols.max() <= x1 + 2
        assert edge[0, int((y0 + y1) / 2), int((x0 + x1) / 2)] == 0


@pytest.mark.parametrize("batch, size, seed", [(1, 8, 0), (2, 8, 1), (2, 16, 2)])
def test_unet_residual_hook_gradients_match_finite_differences(batch, size, seed):
    """UNet.forward(..., residuals=(down, mid)) adds each residual to its skip (and the middle);
    residual_grads after backward are the gradients of those residuals: checked in float64 against
    central differences, with x, every skip's residual and the middle's as inputs."""
    from minidiff.nn.gradcheck import gradcheck
    unet = tiny_unet()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 2, size, size))
    t = rng.integers(0, 1000, size=(batch,)).astype(np.float64)
    context = rng.standard_normal((batch, 3, 6))
    control = rng.standard_normal((batch, 1, 2 * size, 2 * size))
    shapes_from, mid_from = ControlNet(unet, TINY).to(dtype=np.float64)(x, t, context, None, control)
    down = [rng.standard_normal(r.shape) for r in shapes_from]      # one residual per skip, random
    mid = rng.standard_normal(mid_from.shape)

    def forward(x, mid, *down):
        return unet.forward(x, t, context, residuals=(list(down), mid))

    def backward(d_out):
        unet.zero_grad()
        dx, _ = unet.backward(d_out)
        d_down, d_mid = unet.residual_grads
        return (dx, d_mid, *d_down)

    errors = gradcheck(forward, [x, mid, *down], backward, eps=1e-6, max_coords=3, seed=seed)
    assert max(errors.values()) < 1e-6, errors
