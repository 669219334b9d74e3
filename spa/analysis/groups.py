"""The channel-dependency graph and its groups.

``analyze(model)`` runs every node's rule, links the channel spaces they couple
into a graph (networkx), and cuts it into groups (connected components). Each
group gets a *root* — the largest space from which every member is reachable
by forward index maps — and every member the composed map from the root's
indices to its own. A group is frozen, with the reasons recorded, when a
member is a graph input/output, touches an op with no rule, is left unmapped
by a rule, or is reached by two paths whose maps disagree. Nothing is guessed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
import re
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import networkx as nx
import numpy as np
import onnx_ir as ir

from spa.analysis.defaults import DEFAULT_PRUNABLE_IO
from spa.analysis.index_maps import Identity, IndexMap, Lookup, Offset, Permutation
from spa.analysis.rules import (
    Barrier,
    Coupling,
    RuleContext,
    Space,
    Unconstrained,
    find_rule,
    name,
)
from spa.analysis.scopes import has_subgraph, outer_references
from spa.errors import UserError

__all__ = [
    "DEFAULT_PRUNABLE_IO",
    "Analysis",
    "Group",
    "Member",
    "analyze",
    "model_fingerprint",
    "reason_kind",
]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Member:
    """One channel space of a group and the map from the group's root to it."""

    space: Space
    index_map: IndexMap
    is_parameter: bool


@dataclasses.dataclass
class Group:
    """A connected set of channel spaces that must be pruned together."""

    id: int
    root: Space
    size: int
    members: list[Member]
    frozen_reasons: list[str]

    @property
    def frozen(self) -> bool:
        return bool(self.frozen_reasons)

    @property
    def parameters(self) -> list[Member]:
        return [member for member in self.members if member.is_parameter]

    @property
    def prunable(self) -> bool:
        """Not frozen, more than one channel, and holding parameters to slice."""
        has_activation = any(not member.is_parameter for member in self.members)
        return not self.frozen and self.size > 1 and bool(self.parameters) and has_activation

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "root": list(self.root),
            "channels": self.size,
            "members": len(self.members),
            "parameters": [list(member.space) for member in self.parameters],
            "prunable": self.prunable,
            "frozen_reasons": self.frozen_reasons,
        }


@dataclasses.dataclass
class Analysis:
    """Every group of a model, plus the model's fingerprint (for plans)."""

    groups: list[Group]
    fingerprint: str

    def prunable_groups(self) -> list[Group]:
        return [group for group in self.groups if group.prunable]

    def counted_groups(self) -> list[Group]:
        """The groups reports count: with parameters and more than one channel. An axis
        of size 1 (a bias broadcast as ``[1, C, 1, 1]`` has two, one set per private
        copy of a shared gain) forms a group of one channel: nothing to prune, and its
        "frozen" reasons say nothing about the model."""
        return [group for group in self.groups if group.parameters and group.size > 1]

    def frozen_reason_counts(self, groups: Iterable[Group] | None = None) -> dict[str, int]:
        """Frozen groups with parameters per reason kind (among ``groups``, default all)."""
        counts: dict[str, int] = defaultdict(int)
        for group in self.groups if groups is None else groups:
            if group.frozen and group.parameters:
                counts[reason_kind(group.frozen_reasons[0])] += 1
        return dict(sorted(counts.items(), key=lambda item: -item[1]))


def reason_kind(reason: str) -> str:
    """A reason without node or value names, for counting ("ai.onnx::NonZero has no rule")."""
    text = re.sub(r"\s*\(?'[^']*'\)?", "", reason).strip()
    return re.sub(r" of$", "", text)


def model_fingerprint(model: ir.Model) -> str:
    """Hash of the graph's structure and initializer shapes (not their values)."""
    digest = hashlib.sha256()
    for node in model.graph:
        digest.update(f"{node.domain}:{node.op_type}:{node.name}".encode())
        for value in node.inputs:
            digest.update(
                b"|" + (value.name.encode() if value is not None and value.name else b"-")
            )
    for initializer_name, value in sorted(model.graph.initializers.items()):
        shape = tuple(value.const_value.shape) if value.const_value is not None else ()
        digest.update(f"{initializer_name}{shape}".encode())
    return digest.hexdigest()[:16]


#: Longest axis the analyzer maps channel by channel. A group stores, for each
#: member, every root channel's indices in that member, so its memory grows with
#: the axis length: a Tile repeating 8 channels 10^7 times would need GBs. Axes
#: longer than this are no channels anyone prunes (sequence, time or tiled
#: axes): their couplings become barriers.
AXIS_LIMIT = 1 << 22


def _too_long(coupling: Coupling) -> bool:
    index_map = coupling.index_map
    return max(index_map.source_size, index_map.target_size) > AXIS_LIMIT


class _Collector:
    """Runs rules over the graph and gathers couplings and frozen spaces."""

    def __init__(self, model: ir.Model, prunable_io: re.Pattern[str] | None) -> None:
        self.model = model
        self.prunable_io = prunable_io
        self.context = RuleContext()
        self.couplings: list[Coupling] = []
        self.frozen_spaces: dict[Space, str] = {}
        self.frozen_values: dict[str, str] = {}

    def freeze_value(self, name: str, reason: str) -> None:
        self.frozen_values.setdefault(name, reason)

    def _size_mismatch(self, coupling: Coupling, known: dict[str, ir.Value]) -> str | None:
        """Why a rule's map cannot hold: it sizes an axis other than the inferred shape of
        the value (``known``: the node's values by name) does (a rule that misread a
        computed shape). Such an edge would let the group's index sets run past the axis;
        it freezes both spaces instead."""
        for (value_name, axis), size in (
            (coupling.source, coupling.index_map.source_size),
            (coupling.target, coupling.index_map.target_size),
        ):
            value = known.get(value_name)
            shape = None if value is None else self.context.shape(value)
            if shape is not None and axis < len(shape) and shape[axis] not in (None, size):
                return (f"maps axis {axis} of '{value_name}' as {size} channels, but its "
                        f"inferred shape holds {shape[axis]}")
        return None

    def run(self) -> None:
        graph = self.model.graph
        for kind, values in (("input", graph.inputs), ("output", graph.outputs)):
            for value in values:
                if self.prunable_io is None or not self.prunable_io.search(name(value)):
                    self.freeze_value(name(value), f"graph {kind} '{value.name}'")
        for node in graph:
            self._visit(node)

    def _visit(self, node: ir.Node) -> None:
        values = [v for v in (*node.inputs, *node.outputs) if v is not None and v.name]
        opset = self.model.opset_imports.get(node.domain or "", 1)
        rule = find_rule(node.domain, node.op_type, opset)
        if has_subgraph(node):
            self._freeze_control_flow(node, values)
            return
        if rule is None:
            reason = f"{node.domain or 'ai.onnx'}::{node.op_type} has no rule ('{node.name}')"
            for value in values:
                self.freeze_value(name(value), reason)
            return
        mentioned: set[Space] = set()
        unconstrained: set[str] = set()
        known = {name(value): value for value in values}
        for item in rule(node, self.context):
            if isinstance(item, Coupling) and _too_long(item):
                item = Barrier(
                    f"{node.op_type} '{node.name}' couples an axis of "
                    f"{max(item.index_map.source_size, item.index_map.target_size)} channels "
                    f"(the analyzer maps at most {AXIS_LIMIT})",
                    spaces=(item.source, item.target),
                )
            if isinstance(item, Coupling) and (mismatch := self._size_mismatch(item, known)):
                item = Barrier(f"{node.op_type} '{node.name}' {mismatch}", spaces=(item.source, item.target))
            if isinstance(item, Coupling):
                self.couplings.append(item)
                mentioned.update((item.source, item.target))
            elif isinstance(item, Barrier):
                for space in item.spaces:
                    self.frozen_spaces.setdefault(space, item.reason)
                    mentioned.add(space)
                for value_name in item.values:
                    self.freeze_value(value_name, item.reason)
            elif isinstance(item, Unconstrained):
                unconstrained.update(item.values)
                mentioned.update(item.spaces)
        for value in values:
            if name(value) in unconstrained:
                continue
            shape = self.context.shape(value)
            if shape is None:
                self.freeze_value(
                    name(value), f"{node.op_type} '{node.name}': rank of '{value.name}' unknown"
                )
                continue
            for axis in range(len(shape)):
                if (name(value), axis) not in mentioned:
                    reason = (
                        f"{node.op_type} '{node.name}' does not map axis {axis} of '{value.name}'"
                    )
                    self.frozen_spaces.setdefault((name(value), axis), reason)

    def _freeze_control_flow(self, node: ir.Node, values: list[ir.Value]) -> None:
        """Bodies are not sliced: the node's inputs and outputs, and every outer
        value its bodies read by name (an outer-scope reference), are barriers."""
        kind = f"{node.domain or 'ai.onnx'}::{node.op_type}"
        reason = f"{kind} has subgraphs ('{node.name}')"
        for value in values:
            self.freeze_value(name(value), reason)
        for reference in outer_references(node):
            self.freeze_value(
                name(reference.value),
                f"{kind} '{node.name}' reads '{reference.value.name}' inside its body, "
                f"by {reference.reader}: bodies are not pruned",
            )


def _reversed(index_map: IndexMap) -> IndexMap | None:
    if isinstance(index_map, Identity):
        return index_map
    if isinstance(index_map, Offset):
        return Offset(index_map.target, index_map.source, -index_map.offset)
    if isinstance(index_map, Permutation):
        return Permutation(tuple(int(i) for i in np.argsort(np.asarray(index_map.perm))))
    return None


def _agrees(source_map: Lookup, edge: IndexMap, target_map: Lookup) -> bool:
    """Does going root -> source -> target agree with the target's own map?

    Only inside the edge's image: a Concat input covers part of the output.
    """
    if source_map.target_size != edge.source_size or edge.target_size != target_map.target_size:
        return False
    image = edge.forward(np.arange(edge.source_size, dtype=np.int64))
    return source_map.then(edge).same_as(target_map.restricted_to(image))


def _propagate(graph: nx.DiGraph, root: Space, size: int) -> dict[Space, Lookup]:
    """Maps from ``root`` to every member: the union over all paths (a worklist
    fixed point), so a Concat/Split axis gathers the part each input covers."""
    maps: dict[Space, Lookup] = {root: Lookup.of(Identity(size))}
    pending = [root]
    while pending:
        source = pending.pop()
        for target in graph.successors(source):
            through = maps[source].then(graph.edges[source, target]["map"])
            known = maps.get(target)
            if known is not None and through.same_as(known):
                continue  # the common case: a second path agreeing with the first
            merged = through if known is None else known.union(through)
            if known is None or not merged.same_as(known):
                maps[target] = merged
                pending.append(target)
    return maps


def _unify_siblings(directed: nx.DiGraph) -> None:
    """Couple coarse spaces that map into one channel space by the same one-way map.

    K and V heads of a GQA layer each reach the query heads through
    ``Block(kv_heads, n_rep)`` (on values tied by identities through the
    attention MatMuls): pruning a query-head block removes KV head i from both,
    so they are one channel space.
    """
    for _ in range(4):
        identities = nx.Graph()
        identities.add_nodes_from(directed.nodes)
        identities.add_edges_from(
            (u, v) for u, v, data in directed.edges(data=True) if isinstance(data["map"], Identity)
        )
        added = False
        for members in nx.connected_components(identities):
            by_map: dict[IndexMap, set[Space]] = defaultdict(set)
            for target in members:
                for source in directed.predecessors(target):
                    if source not in members and not directed.has_edge(target, source):
                        by_map[directed.edges[source, target]["map"]].add(source)
            for sources in by_map.values():
                ordered = sorted(sources)
                for first, other in itertools.pairwise(ordered):
                    if not directed.has_edge(first, other):
                        identity = Identity(directed.nodes[first]["size"])
                        directed.add_edge(first, other, map=identity)
                        directed.add_edge(other, first, map=identity)
                        added = True
        if not added:
            return


def _root_of(component: set[Space], directed: nx.DiGraph, sizes: dict[Space, int]) -> Space | None:
    adjacency = directed.adj
    if all(source in adjacency[target] for source in component for target in adjacency[source]):
        # every edge has its reverse: one strongly connected component (the
        # common case), whose condensation networkx would build at 6 ms a group
        return max(sorted(component), key=lambda space: sizes[space])
    sub = directed.subgraph(component)
    condensed = nx.condensation(sub)
    sources = [n for n in condensed.nodes if condensed.in_degree(n) == 0]
    if len(sources) != 1:
        return None
    members = condensed.nodes[sources[0]]["members"]
    return max(sorted(members), key=lambda space: sizes[space])


_COMMON_ROOT_LIMIT = 4_000_000  # channel indices in one component


def _common_root(
    component: set[Space], directed: nx.DiGraph, sizes: dict[Space, int]
) -> tuple[int, dict[Space, Lookup]] | None:
    """A root for a component with several coarsest spaces: the classes of
    ``(space, index)`` pairs that some source index reaches together.

    A channel shuffle between two grouped convolutions is such a component:
    the first conv's within-group positions and the second's both map onto the
    shuffled channels. Pruning one class removes, from every member, exactly
    the indices of that class, so each coupling stays satisfied (checked by the
    caller like any other group); positions inside conv groups stay uniform.
    """
    sub = directed.subgraph(component)
    condensed = nx.condensation(sub)
    sources = [
        min(condensed.nodes[n]["members"]) for n in condensed.nodes if condensed.in_degree(n) == 0
    ]
    ordered = sorted(component)
    offsets = dict(zip(ordered, np.cumsum([0] + [sizes[s] for s in ordered[:-1]]), strict=True))
    total = sum(sizes[s] for s in ordered)
    if total > _COMMON_ROOT_LIMIT:
        return None
    left: list[np.ndarray] = []
    right: list[np.ndarray] = []
    for source in sources:
        for member, lookup in _propagate(sub, source, sizes[source]).items():
            rows, columns = np.nonzero(lookup.rows >= 0)
            left.append(rows + offsets[source])
            right.append(lookup.rows[rows, columns] + offsets[member])
    labels = _components(total, np.concatenate(left), np.concatenate(right))
    classes, labels = np.unique(labels, return_inverse=True)
    count = len(classes)
    maps: dict[Space, Lookup] = {}
    for space in ordered:
        own = labels[offsets[space] : offsets[space] + sizes[space]]
        order = np.argsort(own, kind="stable")
        per_class = np.bincount(own, minlength=count)
        starts = np.concatenate([[0], np.cumsum(per_class)[:-1]])
        rows = np.full((count, max(int(per_class.max()), 1)), -1, dtype=np.int64)
        rows[own[order], np.arange(len(order)) - starts[own[order]]] = order
        maps[space] = Lookup(sizes[space], rows)
    return count, maps


def _components(size: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Connected-component labels of ``size`` nodes linked by ``left[i] -- right[i]``
    (min-label propagation with pointer jumping)."""
    labels = np.arange(size, dtype=np.int64)
    while True:
        low = np.minimum(labels[left], labels[right])
        before = labels.copy()
        np.minimum.at(labels, left, low)
        np.minimum.at(labels, right, low)
        labels = labels[labels]
        if np.array_equal(labels, before):
            return labels


def _build_group(
    group_id: int,
    component: set[Space],
    directed: nx.DiGraph,
    collector: _Collector,
    parameters: set[str],
) -> Group:
    sizes = {space: directed.nodes[space]["size"] for space in component}
    reasons = sorted(
        {collector.frozen_spaces[s] for s in component if s in collector.frozen_spaces}
    )
    reasons += sorted(
        {collector.frozen_values[s[0]] for s in component if s[0] in collector.frozen_values}
    )
    root = _root_of(component, directed, sizes)
    common = None if root is not None else _common_root(component, directed, sizes)
    if root is None and common is None:
        anchor = min(component)
        reasons.append(f"no single coarsest channel space (near '{anchor[0]}' axis {anchor[1]})")
        members = [Member(s, Identity(sizes[s]), s[0] in parameters) for s in sorted(component)]
        return Group(group_id, anchor, sizes[anchor], members, reasons)
    if root is not None:
        maps = _propagate(directed, root, sizes[root])  # a component is closed under edges
        size = sizes[root]
    else:
        assert common is not None
        size, maps = common
        anchor = min(component)
        root = (f"{anchor[0]}/common", anchor[1])
    adjacency = directed.adj
    edges = (
        (source, target, data) for source in component for target, data in adjacency[source].items()
    )
    for source, target, data in edges:
        if not _agrees(maps[source], data["map"], maps[target]):
            reasons.append(f"paths disagree on '{target[0]}' axis {target[1]} (conflicting maps)")
            break
    members = [Member(s, maps[s], s[0] in parameters) for s in sorted(component)]
    return Group(group_id, root, size, members, reasons)


def analyze(model: ir.Model, prunable_io: str | None = DEFAULT_PRUNABLE_IO) -> Analysis:
    """Groups of ``model`` (shapes must be inferred: see ``spa.analysis.prepare``).

    Graph inputs and outputs are barriers, except those whose name matches the
    regex ``prunable_io`` (KV-cache tensors by default; None freezes them all):
    their channel axes may shrink, which changes the model's interface for them.
    """
    try:
        pattern = re.compile(prunable_io, re.IGNORECASE) if prunable_io else None
    except re.error as error:
        raise UserError(f"--prunable-io is not a valid regex ({error})") from None
    collector = _Collector(model, pattern)
    collector.run()
    directed = nx.DiGraph()
    for coupling in collector.couplings:
        index_map = coupling.index_map
        directed.add_node(coupling.source, size=index_map.source_size)
        directed.add_node(coupling.target, size=index_map.target_size)
        directed.add_edge(coupling.source, coupling.target, map=index_map)
        back = _reversed(index_map)
        if back is not None and not directed.has_edge(coupling.target, coupling.source):
            directed.add_edge(coupling.target, coupling.source, map=back)
    _unify_siblings(directed)
    parameters = {  # weights; int64 shape vectors and index tables are not channels to slice
        name
        for name, value in model.graph.initializers.items()
        if value.const_value is not None and value.const_value.dtype.is_floating_point()
    }
    groups = [
        _build_group(group_id, component, directed, collector, parameters)
        for group_id, component in enumerate(
            sorted(nx.weakly_connected_components(directed), key=min)
        )
    ]
    logger.info("analysis: %d groups, %d prunable", len(groups), sum(g.prunable for g in groups))
    return Analysis(groups=groups, fingerprint=model_fingerprint(model))
