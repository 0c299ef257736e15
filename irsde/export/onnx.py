"""ONNX graphs of a restorer, for onnxruntime (CPU, GPU, mobile): ``scripts/export.py --onnx``.

Two graphs per folder, in ``onnx/``:

- ``daclip.onnx`` (when the restorer is conditioned on DA-CLIP): ``clip_images (B, 3, S, S) ->
  (content_emb, degra_emb)``, the controlled image encoder only (the text tower is not needed to restore);
  the CLIP input transform stays outside (:func:`data.clip_input.clip_input_array`, numpy and Pillow).
- ``restorer.onnx``: a one-pass restorer (NAFNet) ``(lq, [degra_emb], [content_emb]) -> restored``; an
  IR-SDE restorer one network evaluation ``(x_t, mu, t, [degra_emb], [content_emb]) -> output`` (in its
  parametrisation), the solver loop staying in Python (:mod:`irsde.export.runtime`).

Batch, height and width are dynamic: the padding to a multiple of ``2**depth`` and the crop back are in
the graph. Every export is checked: onnxruntime must reproduce PyTorch within :data:`PARITY_ATOL` (max abs,
float32) at two odd sizes, or the export fails. Needs the ``[export]`` extra (onnx, onnxscript,
onnxruntime).
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from daclip.engine.errors import UserError
from daclip.inference import FrozenDaCLIP
from irsde.inference.pipeline import RestorationPipeline
from irsde.inference.pretrained import ONNX_DIR, OnnxGraphs

__all__ = [
    "DACLIP_GRAPH",
    "OPSET",
    "PARITY_ATOL",
    "RESTORER_GRAPH",
    "embedding_names",
    "export_daclip_graph",
    "export_onnx",
    "export_restorer_graph",
    "parity_sizes",
]

OPSET = 18  #: onnxruntime 1.14+ and its mobile builds run it
PARITY_ATOL = 1e-4  #: largest |onnxruntime − PyTorch| an export accepts (float32)
RESTORER_GRAPH = f"{ONNX_DIR}/restorer.onnx"
DACLIP_GRAPH = f"{ONNX_DIR}/daclip.onnx"


def embedding_names(model: nn.Module) -> list[str]:
    """The DA-CLIP inputs the restorer takes, in graph order (those of :func:`irsde.models.families.daclip_kwargs`)."""
    switches = (("degra_emb", "use_degra_context"), ("content_emb", "use_image_context"))
    return [name for name, switch in switches if getattr(model, switch, False)]


def parity_sizes(multiple: int) -> list[tuple[int, int]]:
    """Two odd (height, width) sizes, neither a multiple of ``multiple``: the padding path is checked."""
    return [(multiple + 5, 2 * multiple + 7), (2 * multiple + 9, multiple + 3)]


class _OnePass(nn.Module):
    """``(lq, *embeddings) -> restored`` with the embeddings passed by name."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.model, self.names = model, list(names)

    def forward(self, lq: Tensor, *embeddings: Tensor) -> Tensor:
        return self.model(lq, **dict(zip(self.names, embeddings)))  # (B, 3, H, W)


class _Step(nn.Module):
    """``(x_t, mu, t, *embeddings) -> network output``: one evaluation of an IR-SDE restorer."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.model, self.names = model, list(names)

    def forward(self, x_t: Tensor, mu: Tensor, t: Tensor, *embeddings: Tensor) -> Tensor:
        return self.model(x_t, mu, t, **dict(zip(self.names, embeddings)))  # (B, 3, H, W)


class _DaCLIPImage(nn.Module):
    """``clip_images -> (content_emb, degra_emb)``, unnormalised: what the restorer consumes."""

    def __init__(self, daclip: nn.Module) -> None:
        super().__init__()
        self.daclip = daclip

    def forward(self, clip_images: Tensor) -> tuple[Tensor, Tensor]:
        return self.daclip.encode_image(clip_images, control=True, normalize=False)  # (B, E) each


def _export(
    module: nn.Module,
    args: tuple[Tensor, ...],
    path: Path,
    names: Sequence[str],
    outputs: Sequence[str],
    varargs_from: int | None = None,
) -> None:
    """``torch.onnx.export`` (the dynamo exporter), dynamic batch for every input, dynamic height and width
    for the 4-d ones.

    From index ``varargs_from`` on, the inputs are the wrapper's ``*embeddings`` (one nested entry for the
    exporter). The weights stay inside the file unless it would pass protobuf's 2 GB limit.
    """
    batch, height, width = (torch.export.Dim(n) for n in ("batch", "height", "width"))

    def axes(arg: Tensor) -> dict[int, torch.export.Dim]:
        return {0: batch, 2: height, 3: width} if arg.dim() == 4 else {0: batch}

    shapes: tuple[Any, ...] = tuple(axes(a) for a in args[:varargs_from])
    if varargs_from is not None:
        shapes += (tuple(axes(a) for a in args[varargs_from:]),)
    size = sum(p.numel() * p.element_size() for p in module.parameters())
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter's progress lines and deprecation chatter
        program = torch.onnx.export(
            module.eval(),
            args,
            dynamo=True,
            opset_version=OPSET,
            input_names=list(names),
            output_names=list(outputs),
            dynamic_shapes=shapes,
            verbose=False,
        )
        program.save(str(path), external_data=size > 1_800_000_000)


def _session(path: Path) -> Any:  # an onnxruntime.InferenceSession
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@torch.no_grad()
def _max_diff(module: nn.Module, session: Any, args: tuple[Tensor, ...], names: Sequence[str]) -> float:
    """Largest |onnxruntime − PyTorch| over every output for the inputs ``args``."""
    expected = module(*args)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = session.run(None, {n: a.numpy() for n, a in zip(names, args)})
    return max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected))


def _inputs(
    model: nn.Module, one_pass: bool, size: tuple[int, int], batch: int, t_max: int
) -> tuple[Tensor, ...]:
    """Random inputs of one restorer call: images in [0, 1], embeddings ~ N(0, 1), timesteps in 1..T."""
    gen = torch.Generator().manual_seed(size[0] * 1000 + size[1])
    image = torch.rand(batch, 3, *size, generator=gen)
    embeddings = tuple(torch.randn(batch, model.context_dim, generator=gen) for _ in embedding_names(model))
    if one_pass:
        return (image, *embeddings)
    x_t = image + 0.2 * torch.randn(batch, 3, *size, generator=gen)
    t = torch.randint(1, t_max + 1, (batch,), generator=gen)
    return (x_t, image, t, *embeddings)


def export_restorer_graph(
    pipeline: RestorationPipeline, folder: str | os.PathLike, log: Callable[[str], None] = print
) -> OnnxGraphs:
    """Write ``onnx/restorer.onnx`` for ``pipeline``'s restorer and check it at :func:`parity_sizes`."""
    model = pipeline.model.cpu().eval()
    one_pass, names = pipeline.one_pass, embedding_names(model)
    multiple = 2 ** int(model.depth)
    t_max = 1 if one_pass else pipeline.sde.T
    inputs = ["lq", *names] if one_pass else ["x_t", "mu", "t", *names]
    wrapper = _OnePass(model, names) if one_pass else _Step(model, names)
    # Batch 2 in the sample: the exporter takes a size of 1 for a constant.
    sample = _inputs(model, one_pass, (2 * multiple + 3, 2 * multiple + 5), 2, t_max)
    log(f"exporting {RESTORER_GRAPH} ...")
    path = Path(folder) / RESTORER_GRAPH
    _export(wrapper, sample, path, inputs, ["restored" if one_pass else "output"], len(inputs) - len(names))
    session = _session(path)
    sizes = parity_sizes(multiple)
    worst = max(_max_diff(wrapper, session, _inputs(model, one_pass, s, 2, t_max), inputs) for s in sizes)
    return OnnxGraphs(
        opset=OPSET,
        restorer=RESTORER_GRAPH,
        pad_multiple=multiple,
        max_abs_diff=worst,
        checked_sizes=[list(s) for s in sizes],
    )


def export_daclip_graph(
    embedder: FrozenDaCLIP, folder: str | os.PathLike, log: Callable[[str], None] = print
) -> float:
    """Write ``onnx/daclip.onnx`` (S x S CLIP input, dynamic batch); returns its parity with PyTorch."""
    wrapper = _DaCLIPImage(embedder.model.cpu().eval())
    size = int(embedder.image_size)
    gen = torch.Generator().manual_seed(0)
    log(f"exporting {DACLIP_GRAPH} ...")
    path = Path(folder) / DACLIP_GRAPH
    sample = (torch.randn(2, 3, size, size, generator=gen),)
    _export(wrapper, sample, path, ["clip_images"], ["content_emb", "degra_emb"])
    check = (torch.randn(3, 3, size, size, generator=gen),)
    return _max_diff(wrapper, _session(path), check, ["clip_images"])


def export_onnx(
    pipeline: RestorationPipeline, folder: str | os.PathLike, log: Callable[[str], None] = print
) -> OnnxGraphs:
    """Write the ONNX graphs of ``pipeline`` (a :class:`RestorationPipeline` on the CPU) into ``folder/onnx/``
    and check each against PyTorch with onnxruntime; returns the ``onnx`` section of ``config.json``.

    Raises:
        UserError: onnxruntime or onnxscript is not installed, or a graph differs from PyTorch by more than
            :data:`PARITY_ATOL`.
    """
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise UserError(
            f'--onnx needs the export extra ({err.name} is missing): pip install -e ".[export]"'
        ) from None
    graphs = export_restorer_graph(pipeline, folder, log)
    if pipeline.embedder is not None:
        graphs.max_abs_diff = max(graphs.max_abs_diff, export_daclip_graph(pipeline.embedder, folder, log))
        graphs.daclip = DACLIP_GRAPH
    if graphs.max_abs_diff > PARITY_ATOL:
        raise UserError(
            f"{Path(folder) / ONNX_DIR}: onnxruntime differs from PyTorch by {graphs.max_abs_diff:.2e} "
            f"(> {PARITY_ATOL:g}); not exported"
        )
    log(f"onnxruntime vs PyTorch: max abs difference {graphs.max_abs_diff:.2e} at {graphs.checked_sizes}")
    return graphs
