"""The graph edits behind SliceGPT (Ashkboos et al., ICLR 2024, arXiv 2401.15024).

:func:`make_invariant` turns a pre-norm transformer found by
:func:`spa.analysis.residual.find_residual_stream` into one whose norms are
plain RMSNorms (no scale, no bias), so that ``RMSNorm(x Q) = RMSNorm(x) Q``:

* every norm becomes ``x / sqrt(mean(x^2) + eps)`` (``Mul``, ``ReduceMean``,
  ``Add``, ``Sqrt``, ``Div``), whatever form the exporter wrote;
* its scale ``g`` multiplies the rows of each reader's weight (``diag(g) W``)
  and its bias ``b`` becomes reader bias ``b W`` (Gemm ``C``, or a new ``Add``);
* for LayerNorm models every term added into the stream (writer weights and
  biases, embedding rows) loses its mean over the hidden axis, so the stream is
  centred and LayerNorm equals RMSNorm with the same eps (the OPT treatment of
  the paper's appendix);
* every changed weight is a new initializer of the node that reads it, which
  unties tied embeddings and weights shared by deduplication.

:func:`rotate` then multiplies every writer by ``Q`` (``D x D'``, orthonormal
columns) on its hidden axis and every reader by ``Q^T`` and ``sqrt(D / D')``,
scales eps by ``D / D'`` (the mean in the norm runs over ``D'`` channels) and
rewrites constant ``Reshape`` targets that name ``D``. With ``D' = D`` it is
an exact rewrite; with ``D' < D`` it slices.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np
import onnx_ir as ir

from spa.analysis.norms import Refusal, find_norms, node_uses
from spa.analysis.residual import (
    EMBEDDING_AFFINE,
    STREAM_ENTRY,
    STREAM_NODE_OPS,
    Norm,
    ResidualStream,
    WeightSite,
    find_residual_stream,
    initializer_array,
    is_token_embedding,
    last_dim,
)

__all__ = [
    "enter_streams",
    "fold_layer_scales",
    "make_invariant",
    "norm_groups",
    "read_output_norms",
    "rotate",
    "split_embedding_norms",
    "unfuse_skip_norms",
]

MS_DOMAIN = "com.microsoft"
_SKIP_NORMS = frozenset({"SkipLayerNormalization", "SkipSimplifiedLayerNormalization"})

_counter = itertools.count()
#: The name suffix of the identity MatMul a norm returned as a graph output is read through.
OUTPUT_BASIS = ".spa_output_basis"


def _new_constant(model: ir.Model, array: np.ndarray, hint: str) -> ir.Value:
    name = f"{hint}.slice{next(_counter)}"
    while name in model.graph.initializers:
        name = f"{hint}.slice{next(_counter)}"
    value = ir.Value(name=name, const_value=ir.Tensor(np.ascontiguousarray(array), name=name))
    value.shape = ir.Shape(array.shape)
    value.type = ir.TensorType(ir.DataType.from_numpy(array.dtype))
    model.graph.register_initializer(value)
    return value


def _set_site(model: ir.Model, site: WeightSite, array: np.ndarray) -> None:
    """Give ``site.node`` its own initializer holding ``array`` (never edits a shared one)."""
    old = site.node.inputs[site.index]
    dtype = site.array().dtype
    value = _new_constant(model, array.astype(dtype), site.node.name or "w")
    site.node.replace_input_with(site.index, value)
    if old is not None and old.const_value is not None:  # a Shape of that data reads the new one
        for node, index in node_uses(old):
            if node.op_type == "Shape" and node.domain == "":
                node.replace_input_with(index, value)
    _drop_if_unused(model, old)


def _drop_if_unused(model: ir.Model, value: ir.Value | None) -> None:
    while value is not None and not value.uses() and not value.is_graph_output():
        if value.name in model.graph.initializers:
            model.graph.initializers.pop(value.name)  # type: ignore[arg-type]
            return
        producer = value.producer()
        if producer is None or any(output.uses() for output in producer.outputs):
            return
        inputs = list(producer.inputs)
        model.graph.remove(producer, safe=True)
        value = inputs[0] if inputs else None


def _hidden_last(array: np.ndarray, axis: int, hidden: int) -> np.ndarray:
    """``array`` with its hidden axis last, broadcast to ``hidden`` channels (float64)."""
    array = np.asarray(array, dtype=np.float64)
    if array.ndim == 0:
        array = array.reshape(1)
    moved = np.moveaxis(array, axis, -1)
    return np.broadcast_to(moved, (*moved.shape[:-1], hidden)).copy()


def _put_back(moved: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    return np.moveaxis(moved, -1, axis if ndim > 0 else -1)


def _rms_nodes(model: ir.Model, norm: Norm, epsilon: float) -> tuple[list[ir.Node], ir.Value]:
    """``x / sqrt(mean(x^2, -1) + eps)`` on ``norm.input``; the nodes and their output."""
    x = norm.input
    dtype = x.dtype.numpy() if x.dtype is not None else np.dtype(np.float32)
    prefix = f"{norm.name}.rms{next(_counter)}"
    eps = _new_constant(model, np.array(epsilon, dtype=dtype), prefix)
    square = ir.node("Mul", [x, x], name=f"{prefix}.square")
    opset = model.opset_imports.get("", 17)
    if opset >= 18:
        axes = _new_constant(model, np.array([-1], dtype=np.int64), prefix)
        mean = ir.node("ReduceMean", [square.outputs[0], axes], name=f"{prefix}.mean")
    else:
        mean = ir.node("ReduceMean", [square.outputs[0]], {"axes": [-1]}, name=f"{prefix}.mean")
    add = ir.node("Add", [mean.outputs[0], eps], name=f"{prefix}.add_eps")
    root = ir.node("Sqrt", [add.outputs[0]], name=f"{prefix}.sqrt")
    divide = ir.node("Div", [x, root.outputs[0]], name=f"{prefix}.div")
    for node in (square, mean, add, root, divide):
        node.outputs[0].name = f"{node.name}.out"
    divide.outputs[0].type = x.type if x.type is not None else norm.output.type  # one of them may be declared
    # its rank, which the readers' walk needs to tell a pooling over tokens from one over channels
    divide.outputs[0].shape = norm.output.shape if norm.output.shape is not None else x.shape
    return [square, mean, add, root, divide], divide.outputs[0]


def _replace_norm(model: ir.Model, norm: Norm, position: Callable[[ir.Node], int]) -> None:
    """``position``: the graph order of the original nodes (computed once per pass:
    a norm's own nodes keep their relative order while others are inserted)."""
    nodes, output = _rms_nodes(model, norm, norm.epsilon)
    anchor = min(norm.nodes, key=position)
    model.graph.insert_before(anchor, nodes)
    norm.output.replace_all_uses_with(output)
    # What no longer has a reader goes: the norm's nodes and the Casts around them (OLMo's
    # LayerNorm in float32 between two Casts); a dead LayerNormalization left reading the
    # stream was found again as a norm ("the stream mixes LayerNorm and RMSNorm").
    pending = sorted({id(n): n for n in (*norm.nodes, norm.output.producer()) if n is not None}.values(), key=position)
    while pending:
        node = pending.pop()
        if node.graph is None or any(out.uses() or out.is_graph_output() for out in node.outputs):
            continue
        inputs = list(node.inputs)
        model.graph.remove(node, safe=True)
        for value in inputs:
            if value is not None and value.name in model.graph.initializers:
                _drop_if_unused(model, value)
            elif value is not None and (producer := value.producer()) is not None:
                pending.append(producer)


def _position(model: ir.Model) -> Callable[[ir.Node], int]:
    order = {id(node): index for index, node in enumerate(model.graph)}
    return lambda node: order.get(id(node), -1)


def _fold_into_reader(
    model: ir.Model, site: WeightSite, scale: np.ndarray | None, bias: np.ndarray | None, hidden: int
) -> None:
    """A reader of ``x * scale + bias`` made to read ``x``: the scale into its weight along
    the hidden axis, ``bias W`` added after it."""
    weight = site.array()
    moved = _hidden_last(weight, site.axis, hidden)
    if bias is not None:
        extra = moved @ bias.astype(np.float64).reshape(-1)
        _add_reader_bias(model, site.node, extra.astype(weight.dtype))
    if scale is not None:
        moved = moved * scale.astype(np.float64).reshape(-1)
    _set_site(model, site, _put_back(moved, site.axis, weight.ndim))


def _add_reader_bias(model: ir.Model, node: ir.Node, extra: np.ndarray) -> None:
    if node.op_type == "Gemm":
        old = node.inputs[2] if len(node.inputs) > 2 else None
        current = initializer_array(old) if old is not None else None
        total = extra if current is None else current + extra
        value = _new_constant(model, total.astype(extra.dtype), node.name or "gemm")
        node.resize_inputs(3)
        node.replace_input_with(2, value)
        _drop_if_unused(model, old)
        return
    product = node.outputs[0]
    bias = _new_constant(model, extra, node.name or "matmul")
    add = ir.node("Add", [product, bias], name=f"{node.name}.slice_bias{next(_counter)}")
    was_output = product.is_graph_output()
    product.replace_all_uses_with(add.outputs[0], replace_graph_outputs=True)
    add.replace_input_with(0, product)
    add.outputs[0].type, add.outputs[0].shape = product.type, product.shape
    if was_output:  # the graph output keeps its name, now after the Add
        original = product.name
        product.name = f"{original}.unbiased"
        add.outputs[0].name = original
    else:
        add.outputs[0].name = f"{product.name}.biased"
    model.graph.insert_after(node, add)


def _stored(value: ir.Value | None) -> ir.Value | None:
    """The initializer ``value`` reads, through Identity and Transpose (a tied head's table)."""
    while value is not None and value.const_value is None:
        producer = value.producer()
        if producer is None or producer.domain != "" or producer.op_type not in ("Identity", "Transpose"):
            return None
        value = producer.inputs[0]
    return value


def _tied_readers(stream: ResidualStream) -> list[WeightSite]:
    """Readers whose weight is a writer's too: a head tied to the token embedding table.
    Folding the norm into them (and rotating) gives them their own copy."""
    written = {
        id(v): (id(site.node), site.index)
        for site in stream.writers
        if (v := _stored(site.node.inputs[site.index])) is not None
    }
    return [  # not a site that reads a norm and writes the stream itself (an embedding norm's MatMul)
        site
        for norm in stream.norms
        for site in norm.readers
        if (v := _stored(site.node.inputs[site.index])) is not None
        and written.get(id(v), (id(site.node), site.index)) != (id(site.node), site.index)
    ]


def make_invariant(model: ir.Model, stream: ResidualStream) -> dict[str, int]:
    """Fold norms into readers, centre a LayerNorm stream; statistics of what changed
    (``untied_params``: the elements of readers that shared a writer's table, now copied)."""
    hidden = stream.hidden
    untied = sum(int(site.array().size) for site in _tied_readers(stream))
    if stream.kind == "layer":
        for site in stream.writers:
            array = site.array()
            moved = _hidden_last(array, site.axis, hidden)
            moved -= moved.mean(axis=-1, keepdims=True)
            _set_site(model, site, _put_back(moved, site.axis, max(array.ndim, 1)))
    position = _position(model)
    for norm in stream.norms:
        for site in norm.readers:
            _fold_into_reader(model, site, norm.scale, norm.bias, hidden)
        _replace_norm(model, norm, position)
    return {
        "norms_folded": len(stream.norms),
        "readers": len(stream.readers),
        "writers_centred": len(stream.writers) if stream.kind == "layer" else 0,
        "untied_params": untied,
    }


def norm_groups(stream: ResidualStream) -> list[int]:
    """A group index per norm: norms reading the same stream value (a parallel
    residual's two norms) must share a basis."""
    groups: list[int] = []
    first: dict[int, int] = {}
    for norm in stream.norms:
        key = id(norm.input)
        if key not in first:
            first[key] = len(first)
        groups.append(first[key])
    return groups


def _value_bases(stream: ResidualStream, groups: Sequence[int]) -> dict[int, int]:
    """The basis (group) of every stream value: that of the norm reading it, else
    that of the stream node it flows into."""
    by_input = {id(norm.input): group for norm, group in zip(stream.norms, groups, strict=True)}
    stream_nodes = _stream_nodes(stream)
    bases: dict[int, int] = {}

    def basis(value: ir.Value) -> int:
        key = id(value)
        if key not in bases:
            if key in by_input:
                bases[key] = by_input[key]
            else:
                nodes = [use.node for use in value.uses() if id(use.node) in stream_nodes]
                if not nodes:
                    raise ValueError(f"stream value '{value.name}' reaches no norm")
                bases[key] = basis(nodes[0].outputs[0])
        return bases[key]

    for value in stream.values:
        basis(value)
    return bases


def _stream_nodes(stream: ResidualStream) -> set[int]:
    """Ids of the nodes that make stream values from stream values (adds, relabelling, a
    pooling over the tokens before a norm)."""
    return {
        id(value.producer())
        for value in stream.values
        if value.producer() is not None and value.producer().op_type in STREAM_NODE_OPS  # type: ignore[union-attr]
    }


def _shortcuts(
    model: ir.Model, stream: ResidualStream, bases: Sequence[np.ndarray], of_value: dict[int, int]
) -> int:
    """``Q_a^T Q_b`` on every edge from a value in basis ``a`` into a stream node in basis ``b``."""
    stream_nodes = _stream_nodes(stream)
    count = 0
    for value in list(stream.values):
        for use in list(value.uses()):
            node = use.node
            if id(node) not in stream_nodes:
                continue
            source, target = of_value[id(value)], of_value[id(node.outputs[0])]
            if source == target:
                continue
            matrix = bases[source].T @ bases[target]
            dtype = value.dtype.numpy() if value.dtype is not None else np.dtype(np.float32)
            weight = _new_constant(model, matrix.astype(dtype), f"{node.name}.shortcut")
            shortcut = ir.node(
                "MatMul", [value, weight], name=f"{node.name}.shortcut{next(_counter)}"
            )
            shortcut.outputs[0].name = f"{shortcut.name}.out"
            shortcut.outputs[0].type = value.type
            model.graph.insert_before(node, shortcut)
            node.replace_input_with(use.idx, shortcut.outputs[0])
            count += 1
    return count


def rotate(
    model: ir.Model,
    stream: ResidualStream,
    bases: Sequence[np.ndarray],
    groups: Sequence[int] | None = None,
) -> dict[str, int]:
    """Writers ``W Q``, readers ``sqrt(D/D') Q^T W``, eps ``* D/D'``.

    ``bases``: ``D x D'`` matrices with orthonormal columns; ``groups``: the
    basis of each norm (default: all the first). A writer takes the basis of
    the value it is summed into; where a residual skip joins a value of another
    basis it goes through ``Q_a^T Q_b``.
    """
    groups = list(groups) if groups is not None else [0] * len(stream.norms)
    hidden, kept = bases[0].shape
    if hidden != stream.hidden or any(q.shape != (hidden, kept) for q in bases):
        raise ValueError(f"bases must be {stream.hidden} x D', got {[q.shape for q in bases]}")
    for norm in stream.norms:
        if norm.op != "decomposed" or norm.scale is not None or norm.eps_site is None:
            raise ValueError(f"norm '{norm.name}' still has a scale; run make_invariant first")
    of_value = _value_bases(stream, groups)
    gain = np.sqrt(hidden / kept)
    for site in stream.writers:
        assert site.into is not None, f"writer {site.node.name} has no stream value"
        array = site.array()
        moved = _hidden_last(array, site.axis, hidden) @ bases[of_value[id(site.into)]]
        _set_site(model, site, _put_back(moved, site.axis, max(array.ndim, 1)))
    for norm, group in zip(stream.norms, groups, strict=True):
        for site in norm.readers:
            array = site.array()
            moved = (_hidden_last(array, site.axis, hidden) @ bases[group]) * gain
            _set_site(model, site, _put_back(moved, site.axis, array.ndim))
        assert norm.eps_site is not None
        node, index = norm.eps_site
        eps = initializer_array(node.inputs[index])
        assert eps is not None
        _set_site(model, WeightSite(node, index, -1), eps * (hidden / kept))
    reshapes = _fix_reshapes(model, stream, kept) if kept != hidden else 0
    shortcuts = _shortcuts(model, stream, bases, of_value) if len(bases) > 1 else 0
    if kept != hidden:
        _forget_shapes(model)
    return {"hidden_before": hidden, "hidden_after": kept, "reshapes_fixed": reshapes,
            "shortcuts": shortcuts}  # fmt: skip


#: Ops on a writer's path that carry the sliced hidden axis from their data input to their
#: output (a ViT's interpolated position table: Reshape, Transpose, Resize, Transpose, Reshape).
_CARRIERS = frozenset({"Transpose", "Cast", "Identity", "Resize", "Concat"})


def _fix_reshapes(model: ir.Model, stream: ResidualStream, kept: int) -> int:
    """Constant Reshape targets ending in ``D`` that reshape the stream, a norm's
    output or a writer's output or constant (``[-1, D]`` around a Gemm; a position table
    reshaped to its grid and back), through the ops that carry the hidden axis."""
    sliced = {id(value) for value in stream.values}
    sliced.update(id(norm.output) for norm in stream.norms)
    sliced.update(id(site.node.outputs[0]) for site in stream.writers if site.axis != -1)
    sliced.update(id(site.node.inputs[site.index]) for site in stream.writers)
    own_targets = {id(node) for node, _ in stream.targets}
    fixed = 0
    for node in model.graph:
        if node.domain != "" or not node.inputs:
            continue
        if node.op_type in _CARRIERS:
            data = node.inputs if node.op_type == "Concat" else node.inputs[:1]
            if any(value is not None and id(value) in sliced for value in data):
                sliced.add(id(node.outputs[0]))
            continue
        if node.op_type != "Reshape" or id(node.inputs[0]) not in sliced:
            continue
        sliced.add(id(node.outputs[0]))
        if id(node) in own_targets:
            continue  # the hidden size inside the target: fixed below
        if _ends_in(node.inputs[1], stream.hidden):
            target = initializer_array(node.inputs[1]).copy()  # type: ignore[union-attr]
            target[-1] = kept
            _set_site(model, WeightSite(node, 1, -1), target)
            fixed += 1
        elif _fix_concat_target(model, node, stream.hidden, kept):
            fixed += 1
    for node, axis in stream.targets:  # the hidden size inside a target (a patch embedding's, a Resize's sizes)
        index = 3 if node.op_type == "Resize" else 1
        target = initializer_array(node.inputs[index])
        if target is not None and int(target[axis]) == stream.hidden:
            target = target.copy()
            target[axis] = kept
            _set_site(model, WeightSite(node, index, -1), target)
            fixed += 1
    return fixed


def _ends_in(value: ir.Value | None, size: int) -> bool:
    found = initializer_array(value)
    return found is not None and found.ndim == 1 and len(found) > 0 and int(found[-1]) == size


def _fix_concat_target(model: ir.Model, reshape: ir.Node, hidden: int, kept: int) -> bool:
    """A target ``Concat(dims..., [D])`` (shapes computed at run time, the hidden size
    a constant): the Reshape gets its own Concat ending in ``D'``."""
    concat = reshape.inputs[1].producer() if reshape.inputs[1] is not None else None
    if concat is None or concat.op_type != "Concat" or not _ends_in(concat.inputs[-1], hidden):
        return False
    last = initializer_array(concat.inputs[-1]).copy()  # type: ignore[union-attr]
    last[-1] = kept
    value = _new_constant(model, last, reshape.name or "reshape")
    copy = ir.node(
        "Concat",
        [*concat.inputs[:-1], value],
        {"axis": 0},
        name=f"{reshape.name}.target{next(_counter)}",
    )
    copy.outputs[0].name = f"{copy.name}.out"
    model.graph.insert_before(reshape, copy)
    old = reshape.inputs[1]
    reshape.replace_input_with(1, copy.outputs[0])
    _drop_if_unused(model, old)
    return True


def _forget_shapes(model: ir.Model) -> None:
    """Drop the shapes of intermediate values (the hidden size changed); ORT re-infers them."""
    for node in model.graph:
        for value in node.outputs:
            if not value.is_graph_output():
                value.shape = None


def split_embedding_norms(model: ir.Model) -> int:
    """An embedding norm (BLOOM's ``word_embeddings_layernorm``: the token embedding, then a
    LayerNorm, then the stream) keeps its normalisation and hands its scale and bias to a new
    ``MatMul(diag(g))`` and ``Add(b)``: the stream then starts at a linear writer, as SliceGPT
    needs, and the norm reads the embedding as a norm reads the stream. Returns how many."""
    count = 0
    for node in list(model.graph):
        if node.domain != "" or node.op_type not in ("LayerNormalization", "RMSNormalization"):
            continue
        if not is_token_embedding(node.inputs[0]) or len(node.inputs) < 2:
            continue
        output = node.outputs[0]
        if not any(use.node.op_type == "Add" for use in output.uses()):
            continue  # not the start of a residual stream
        scale = initializer_array(node.inputs[1])
        bias = initializer_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        if scale is None or scale.ndim != 1 or (len(node.inputs) > 2 and node.inputs[2] is not None and bias is None):
            continue
        prefix = f"{node.name or node.op_type}.affine{next(_counter)}"
        matrix = _new_constant(model, np.diag(scale).astype(scale.dtype), prefix)
        ones = _new_constant(model, np.ones_like(scale), f"{prefix}.ones")
        multiply = ir.node("MatMul", [output, matrix], name=f"{prefix}{EMBEDDING_AFFINE}")
        new_nodes, result = [multiply], multiply.outputs[0]
        if bias is not None:
            shift = ir.node("Add", [result, node.inputs[2]], name=f"{prefix}.bias")
            new_nodes.append(shift)
            result = shift.outputs[0]
        for made in new_nodes:
            made.outputs[0].name = made.name
        was_output = output.is_graph_output()
        output.replace_all_uses_with(result, replace_graph_outputs=True)
        multiply.replace_input_with(0, output)
        old_scale = node.inputs[1]
        node.replace_input_with(1, ones)
        if bias is not None:
            node.resize_inputs(2)  # the bias moved to the Add
        _drop_if_unused(model, old_scale)
        if was_output:
            _keep_output_name(result, output)
        model.graph.insert_after(node, new_nodes)
        # A block that reads the embedding without a norm of its own (ModernBERT's first
        # attention: its attn_norm is Identity) would read the stream: it reads the norm's
        # output instead, the scale folded into its weight and the bias after it (exact).
        for reader, index in node_uses(result):
            weight = initializer_array(reader.inputs[1]) if reader.op_type == "MatMul" and index == 0 else None
            if weight is None or weight.ndim != 2 or weight.shape[0] != scale.size:
                continue
            _fold_into_reader(model, WeightSite(reader, 1, 0), scale, bias, scale.size)
            reader.replace_input_with(0, output)
        count += 1
    return count


def _keep_output_name(result: ir.Value, output: ir.Value) -> None:
    """``result`` took over the graph output ``output``: it takes the output's name (the
    model's interface keeps its names) and ``output`` is renamed ``<name>.normalized``."""
    result.name, output.name = output.name, f"{output.name}.normalized"


#: Steps between a norm and a graph output that keep what they read in the norm's basis.
_TO_OUTPUT = frozenset({"Reshape", "Flatten", "Cast", "Identity", "Gather", "Slice", "ReduceMean", "ReduceSum",
                        "Squeeze", "Unsqueeze"})  # fmt: skip


def _returned(value: ir.Value) -> bool:
    """Whether the graph returns ``value`` itself or a part of it (a class token's row, a mean
    over the tokens: ``pooler_output``) through :data:`_TO_OUTPUT` steps."""
    pending, seen = [value], set()
    while pending:
        current = pending.pop()
        if current.is_graph_output():
            return True
        for node, index in node_uses(current):
            if index == 0 and node.domain == "" and node.op_type in _TO_OUTPUT and id(node) not in seen:
                seen.add(id(node))
                pending.append(node.outputs[0])
    return False


def _identity_reader(model: ir.Model, value: ir.Value, hidden: int, dtype: np.dtype, name: str) -> ir.Node:
    """A new ``MatMul(value, I_hidden)`` node named ``name`` (not yet in the graph, nothing
    rewired); its output carries ``value``'s type and shape."""
    identity = _new_constant(model, np.eye(hidden, dtype=dtype), name)
    multiply = ir.node("MatMul", [value, identity], name=name)
    result = multiply.outputs[0]
    result.name, result.type, result.shape = name, value.type, value.shape
    return multiply


def read_output_norms(model: ir.Model) -> int:
    """A norm whose output the graph returns (a vision transformer's ``last_hidden_state``, or
    its class token's row) has no reader to fold its scale into: it gets one, ``MatMul(I_D)`` (named
    ``...{OUTPUT_BASIS}``), which takes over the graph output and every other use but the
    constant-weight MatMul/Gemm readers. The rotation then makes it ``Q^T diag(g)``, so the
    output stays in the model's own basis (``D' x D`` once sliced). Returns how many."""
    try:
        norms = [norm for norm in find_norms(model.graph) if _returned(norm.output)]
    except Refusal:
        return 0  # the stream analysis says why
    count = 0
    for norm in norms:
        output, producer = norm.output, norm.output.producer()
        hidden = len(norm.scale) if norm.scale is not None and norm.scale.ndim == 1 else last_dim(output)
        dtype = next((v.dtype.numpy() for v in (output, norm.input) if v.dtype is not None), None)
        if dtype is None and norm.scale is not None:
            dtype = norm.scale.dtype
        if not hidden or producer is None or dtype is None:
            continue
        multiply = _identity_reader(model, output, hidden, dtype, f"{norm.name}.output{next(_counter)}{OUTPUT_BASIS}")
        result = multiply.outputs[0]
        readers = [(node, index) for node, index in node_uses(output) if index == 0 and
                   node.op_type in ("MatMul", "Gemm") and initializer_array(node.inputs[1]) is not None]  # fmt: skip
        output.replace_all_uses_with(result, replace_graph_outputs=True)
        multiply.replace_input_with(0, output)
        for node, index in readers:
            node.replace_input_with(index, output)
        if result.is_graph_output():
            _keep_output_name(result, output)
        model.graph.insert_after(producer, multiply)
        count += 1
    return count


def enter_streams(model: ir.Model, limit: int = 4) -> tuple[int, ResidualStream]:
    """A stream that starts after a non-linear front end (Whisper's encoder: convolutions and
    GELU, a Transpose, then the position table is added) has no linear first writer: the
    value added there gets one, ``MatMul(I_D)`` (named ``...{STREAM_ENTRY}``), which the
    rotation makes ``I Q`` (``D x D'`` params once sliced). Only where the stream analysis
    names such a start (:class:`spa.analysis.residual.StreamEntry`). Returns how many, and
    the analysis of the model as it is then (the caller needs no second one)."""
    count = 0
    stream = find_residual_stream(model)
    while stream.entry is not None and count < limit:
        entry = stream.entry
        constants = [initializer_array(node.inputs[1 - index]) for node, index in node_uses(entry)
                     if node.op_type == "Add" and index in (0, 1)]  # fmt: skip
        widths = {int(c.shape[-1]) for c in constants if c is not None and c.ndim}
        hidden = last_dim(entry) or (widths.pop() if len(widths) == 1 else 0)
        dtype = entry.dtype.numpy() if entry.dtype is not None else next(
            (c.dtype for c in constants if c is not None), None
        )  # fmt: skip
        producer = entry.producer()
        if not hidden or dtype is None or producer is None:
            break
        name = f"{producer.name or producer.op_type}.entry{next(_counter)}{STREAM_ENTRY}"
        multiply = _identity_reader(model, entry, hidden, dtype, name)
        result = multiply.outputs[0]
        for node, index in node_uses(entry):
            if node is not multiply and node.op_type != "Shape":
                node.replace_input_with(index, result)
        model.graph.insert_after(producer, multiply)
        count += 1
        stream = find_residual_stream(model)
    return count, stream


def _scale_vector(value: ir.Value | None) -> np.ndarray | None:
    """A constant that scales only the last axis (shape [..., D], every other dim 1), as a
    vector, or None."""
    found = initializer_array(value)
    if found is None or found.ndim == 0 or found.shape[-1] < 2 or any(d != 1 for d in found.shape[:-1]):
        return None
    return found.reshape(-1)


def fold_layer_scales(model: ir.Model) -> int:
    """LayerScale (DeiT-III, CaiT, DINOv2: ``x + gamma * proj(h)``) folded into the branch's
    last projection: ``(h W + b) * gamma = h (W diag(gamma)) + b * gamma``. The constant Mul
    is then gone, so the projection writes into the stream as SliceGPT needs. Only where the
    projection feeds nothing but that Mul; the weights become the projection's own copies.
    Returns how many."""
    count = 0
    for mul in list(model.graph):
        if mul.op_type != "Mul" or mul.domain != "" or len(mul.inputs) != 2:
            continue
        for index in (0, 1):
            gamma = _scale_vector(mul.inputs[1 - index])
            data = mul.inputs[index]
            if gamma is None or data is None or len(data.uses()) != 1 or data.is_graph_output():
                continue
            producer = data.producer()
            bias_add, bias_index = None, -1
            if producer is not None and producer.op_type == "Add" and producer.domain == "":
                for position in (0, 1):
                    if initializer_array(producer.inputs[position]) is not None:
                        bias_add, bias_index = producer, position
                inner = producer.inputs[1 - bias_index] if bias_add is not None else None
                producer = inner.producer() if inner is not None and len(inner.uses()) == 1 else None
            if producer is None or producer.op_type != "MatMul" or producer.domain != "":
                continue
            weight = initializer_array(producer.inputs[1])
            if weight is None or weight.ndim != 2 or weight.shape[1] != gamma.size:
                continue
            if bias_add is not None:
                bias = initializer_array(bias_add.inputs[bias_index])
                assert bias is not None
                if bias.shape[-1:] != (gamma.size,) and bias.size != 1:
                    continue
                _set_site(model, WeightSite(bias_add, bias_index, -1), (bias * gamma).astype(bias.dtype))
            _set_site(model, WeightSite(producer, 1, 1), (weight * gamma).astype(weight.dtype))
            out = mul.outputs[0]
            was_output = out.is_graph_output()
            out.replace_all_uses_with(data, replace_graph_outputs=True)
            old = mul.inputs[1 - index]
            model.graph.remove(mul, safe=True)
            _drop_if_unused(model, old)
            if was_output:
                data.name = out.name
            count += 1
            break
    return count


def unfuse_skip_norms(model: ir.Model) -> int:
    """Split ORT's ``Skip(Simplified)LayerNormalization`` into the residual ``Add`` (plus
    its bias) and a plain norm, so the stream is visible; returns how many were split."""
    count = 0
    for node in list(model.graph):
        if node.domain != MS_DOMAIN or node.op_type not in _SKIP_NORMS:
            continue
        inputs = list(node.inputs) + [None] * 5
        prefix = f"{node.name or node.op_type}.unfused{next(_counter)}"
        added = ir.node("Add", [inputs[0], inputs[1]], name=f"{prefix}.add")
        total = added.outputs[0]
        new_nodes = [added]
        bias_index = 3 if node.op_type == "SkipSimplifiedLayerNormalization" else 4
        if inputs[bias_index] is not None:
            with_bias = ir.node("Add", [total, inputs[bias_index]], name=f"{prefix}.bias")
            new_nodes.append(with_bias)
            total = with_bias.outputs[0]
        epsilon = node.attributes.get_float("epsilon", 1e-5)
        if node.op_type == "SkipLayerNormalization":
            norm_inputs = [total, inputs[2]] + ([inputs[3]] if inputs[3] is not None else [])
            norm = ir.node("LayerNormalization", norm_inputs, {"axis": -1, "epsilon": epsilon},
                           name=f"{prefix}.norm")  # fmt: skip
        else:
            norm = ir.node("SimplifiedLayerNormalization", [total, inputs[2]],
                           {"axis": -1, "epsilon": epsilon}, name=f"{prefix}.norm")  # fmt: skip
        new_nodes.append(norm)
        for value in (*(n.outputs[0] for n in new_nodes),):
            value.name = f"{value.producer().name}.out"  # type: ignore[union-attr]
        model.graph.insert_before(node, new_nodes)
        outputs = list(node.outputs)
        replacements = {0: norm.outputs[0], 3: total}
        for index, value in enumerate(outputs):
            if value is None or not (value.uses() or value.is_graph_output()):
                continue
            if index not in replacements:
                raise ValueError(f"{node.op_type} '{node.name}': its output {index} is read")
            value.replace_all_uses_with(replacements[index], replace_graph_outputs=True)
        model.graph.remove(node, safe=True)
        count += 1
    return count
