"""Where is this gradient computed? Follow one parameter's gradient from the loss to ``p.grad``.

A hand-written backward is spread over many files: a cross-attention weight's gradient leaves the
loss, passes UNet.backward, a level's backward, the transformer block's, the attention layer's and
the Linear layer's, and is finally computed by ``linear_backward`` and added into the parameter.
``gradient_path`` runs a backward pass and writes that chain down as it happens:

    path = gradient_path(model, "mid_block.attentions.0.attn2.to_k.weight", lambda: model.backward(d_out))
    for hop in path:
        print(hop)          # minidiff/models/unet.py:UNet.backward ... minidiff/nn/module.py:Parameter.accumulate

Each hop is ``file:function`` of a frame inside minidiff, outermost first: the call stack at the
moment the gradient reaches the parameter, with, just before the last hop, the functional op that
computed the array being added (the op that returned into the same frame last). Nothing is
written by hand, so the path cannot go stale when code moves.
"""
from __future__ import annotations

import sys
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]          # .../minidiff
_OPS = (_PACKAGE / "nn" / "ops", _PACKAGE / "nn" / "fast")


def _hop(frame) -> str:
    path = Path(frame.f_code.co_filename).resolve()
    return f"{path.relative_to(_PACKAGE.parent).as_posix()}:{frame.f_code.co_qualname}"


def _inside(frame, folders=(_PACKAGE,)) -> bool:
    path = Path(frame.f_code.co_filename).resolve()
    return any(folder in path.parents for folder in folders)


def gradient_path(model, name: str, run_backward) -> list:
    """The hops (``"file:function"``, outermost first) by which the gradient of parameter ``name``
    is made during ``run_backward()``; the first time it reaches the parameter if several do."""
    params = dict(model.named_parameters())
    if name not in params:
        raise ValueError(f"gradient_path: the model has no parameter {name!r}; "
                         f"it has e.g. {list(params)[:3]}")
    param = params[name]
    last_op = {}                      # id(caller frame) -> the hop of the last ops function it called
    path = []

    def profiler(frame, event, arg):
        if event == "return" and _inside(frame, _OPS) and frame.f_back is not None:
            last_op[id(frame.f_back)] = _hop(frame)

    cls = type(param)
    original = cls.accumulate

    def recording(self, g):
        if self is param and not path:
            frame, stack = sys._getframe(1), []            # the frame that adds the gradient
            caller = frame
            while frame is not None:
                if _inside(frame) and Path(frame.f_code.co_filename).resolve() != Path(__file__).resolve():
                    stack.append(_hop(frame))
                frame = frame.f_back
            stack.reverse()
            if id(caller) in last_op:
                stack.append(last_op[id(caller)])
            path.extend(stack + ["minidiff/nn/module.py:Parameter.accumulate"])
        return original(self, g)

    cls.accumulate = recording                         # for this one pass; it records ``param`` only
    previous = sys.getprofile()
    sys.setprofile(profiler)
    try:
        run_backward()
    finally:
        sys.setprofile(previous)
        cls.accumulate = original
    if not path:
        raise ValueError(f"gradient_path: no gradient reached {name!r} in that backward pass")
    return path
