"""Whole-workflow checks, run once when a workflow is defined, reporting every problem at once.

The dependency graph is each step's `needs` plus the steps its expressions read
(`steps.X` in `with`, `when`, `for_each.items` and the approval prompt).
"""

from __future__ import annotations

import difflib
import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from cluster.errors import SpecInvalid
from cluster.yamlfile import Document
from workflows.expressions import (
    Expr,
    ExpressionError,
    Loc,
    compile_expr,
    parse_template,
    template_strings,
)
from workflows.spec import StepSpec, WorkflowSpec
from workflows.spec_waits import REPEAT_NAMES
from workflows.triggers import EARLY

#: CEL's type names, which expressions may compare with `type(x)`.
CEL_TYPES = frozenset(
    {"null_type", "bool", "int", "uint", "double", "string", "bytes", "list", "map", "type"}
)
#: What `steps.<id>` offers to expressions.
STEP_FIELDS = frozenset({"output"})


@dataclass(frozen=True)
class _Source:
    """One place in a step that holds expressions, and the extra names it may read."""

    loc: Loc
    text: str
    template: bool
    local: frozenset[str] = frozenset()


@dataclass
class _Problems:
    document: Document | None
    items: list[tuple[int, int, str]] = field(default_factory=list)

    def add(self, loc: Loc, message: str) -> None:
        line = self.document.line_of(loc) if self.document else 0
        prefix = f"{self.document.path}:{line}: " if self.document else ""
        self.items.append((line, len(self.items), prefix + message))

    def messages(self) -> list[str]:
        return [message for *_, message in sorted(self.items)]


def validate_workflow(
    spec: WorkflowSpec,
    *,
    known_capabilities: set[str] | None = None,
    known_agents: set[str] | None = None,
    known_workflows: set[str] | None = None,
    document: Document | None = None,
) -> None:
    """Check the workflow as a whole; a known set left as None is not checked.

    Raises:
        SpecInvalid: listing every problem, each as `file:line: step 'id': ...` when
            `document` (the YAML it came from) is given.
    """
    problems = _Problems(document)
    ids = _check_ids(spec, problems)
    _check_needs(spec, ids, problems)
    _check_uses(spec, problems, known_capabilities, known_agents, known_workflows)
    for index, step in enumerate(spec.steps):
        for source in _sources(step, index):
            for expr in _compile(source, problems, f"step {step.id!r}"):
                _check_reads(spec, step, source, expr, problems)
    _check_outputs(spec, problems)
    graph = effective_needs(spec)
    _check_fallbacks(spec, ids, graph, problems)
    _check_triggers(spec, graph, problems)
    for cycle in _cycles(graph, list(ids)):
        problems.add(("steps", ids[cycle[0]]), f"step {cycle[0]!r}: {_cycle_text(cycle)}")
    if problems.items:
        raise SpecInvalid(f"workflow {spec.name!r}", problems.messages())


def effective_needs(spec: WorkflowSpec) -> dict[str, set[str]]:
    """Each step's explicit `needs` plus the steps its expressions read (known ids only)."""
    ids = {step.id for step in spec.steps}
    graph: dict[str, set[str]] = {step.id: set() for step in spec.steps}
    for index, step in enumerate(spec.steps):
        graph[step.id] |= set(step.needs)
        for source in _sources(step, index):
            for expr in _compile(source, None, ""):
                graph[step.id] |= {a for r, a in expr.references() if r == "steps" and a}
    return {sid: {n for n in needs if n in ids and n != sid} for sid, needs in graph.items()}


def topological_order(spec: WorkflowSpec) -> list[str]:
    """Step ids so that every step comes after what it needs; ties keep file order.

    Raises:
        SpecInvalid: the steps form a cycle (named).
    """
    graph = effective_needs(spec)
    position = {sid: i for i, sid in reversed(list(enumerate(s.id for s in spec.steps)))}
    waiting = {sid: len(needs) for sid, needs in graph.items()}
    dependents: dict[str, list[str]] = {sid: [] for sid in graph}
    for sid, needs in graph.items():
        for need in needs:
            dependents[need].append(sid)
    ready = [(position[sid], sid) for sid, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, sid = heapq.heappop(ready)
        order.append(sid)
        for dependent in dependents[sid]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(ready, (position[dependent], dependent))
    if len(order) < len(graph):
        cycles = _cycles(graph, sorted(graph, key=lambda sid: position[sid]))
        raise SpecInvalid(f"workflow {spec.name!r}", [_cycle_text(c) for c in cycles])
    return order


# --- the checks -----------------------------------------------------------------------------


def _check_ids(spec: WorkflowSpec, problems: _Problems) -> dict[str, int]:
    """Index of each step id's first occurrence; repeats are problems."""
    ids: dict[str, int] = {}
    for index, step in enumerate(spec.steps):
        if step.id in ids:
            first = ids[step.id]
            problems.add(
                ("steps", index, "id"),
                f"step {step.id!r}: id is used more than once (first by steps[{first}])",
            )
        else:
            ids[step.id] = index
    return ids


def _check_needs(spec: WorkflowSpec, ids: dict[str, int], problems: _Problems) -> None:
    for index, step in enumerate(spec.steps):
        for j, need in enumerate(step.needs):
            loc = ("steps", index, "needs", j)
            if need == step.id:
                problems.add(loc, f"step {step.id!r}: needs itself")
            elif need not in ids:
                problems.add(
                    loc, f"step {step.id!r}: needs unknown step {need!r}{_hint(need, ids)}"
                )


def _check_uses(
    spec: WorkflowSpec,
    problems: _Problems,
    capabilities: set[str] | None,
    agents: set[str] | None,
    workflows: set[str] | None,
) -> None:
    known: dict[str, set[str] | None] = {
        "capability": capabilities,
        "agent": agents,
        "workflow": workflows,
    }
    for index, step in enumerate(spec.steps):
        loc = ("steps", index, "uses")
        if step.kind == "workflow" and step.target_name == spec.name:
            problems.add(loc, f"step {step.id!r}: uses its own workflow {spec.name!r}")
            continue
        names = known.get(step.kind)
        if names is not None and step.target_name not in names:
            problems.add(
                loc,
                f"step {step.id!r}: uses unknown {step.kind} {step.target_name!r}"
                f"{_hint(step.target_name, names)}",
            )


def _sources(step: StepSpec, index: int) -> Iterator[_Source]:
    base: Loc = ("steps", index)
    local = frozenset({step.for_each.as_, "index"}) if step.for_each else frozenset()
    if step.repeat:
        local = REPEAT_NAMES
        yield _Source((*base, "repeat", "until"), step.repeat.until, False, local)
    for loc, text in template_strings(step.with_, (*base, "with")):
        yield _Source(loc, text, True, local)
    if step.when is not None:
        yield _Source((*base, "when"), step.when, False)
    if step.for_each is not None:
        yield _Source((*base, "for_each", "items"), step.for_each.items, False)
    if step.sleep is not None and step.sleep.until and "${{" in step.sleep.until:
        yield _Source((*base, "sleep", "until"), step.sleep.until, True)
    if step.approval is not None and "${{" in step.approval.prompt:
        yield _Source((*base, "approval", "prompt"), step.approval.prompt, True)


def _compile(source: _Source, problems: _Problems | None, who: str) -> list[Expr]:
    """The source's expressions; a parse failure is reported (when asked) and skipped."""
    try:
        if source.template:
            return parse_template(source.text)
        if "${{" in source.text:
            raise ExpressionError(f"{source.text!r} must be a bare expression, without ${{{{ }}}}")
        return [compile_expr(source.text)]
    except ExpressionError as exc:
        if problems is not None:
            where = ".".join(map(str, source.loc[2:])) if source.loc[0] == "steps" else ""
            problems.add(source.loc, f"{who}: {where + ': ' if where else ''}{exc.message}")
        return []


def _check_reads(
    spec: WorkflowSpec, step: StepSpec | None, source: _Source, expr: Expr, problems: _Problems
) -> None:
    """Every name path the expression reads must exist and be upstream of `step`."""
    who = f"step {step.id!r}" if step else f"output {source.loc[-1]!r}"
    step_ids = [s.id for s in spec.steps]
    for path in sorted(expr.paths()):
        root, rest = path[0], path[1:]
        problem: str | None = None
        if root == "inputs":
            if rest and rest[0] not in spec.inputs:
                problem = f"unknown input {rest[0]!r}{_hint(rest[0], spec.inputs)}"
        elif root == "steps":
            problem = _step_read(step, rest, step_ids)
        elif root not in source.local and root not in CEL_TYPES:
            names = ", ".join(sorted({"inputs", "steps"} | source.local))
            problem = f"unknown name {root!r}; expressions here can use {names}"
        if problem:
            problems.add(source.loc, f"{who}: {expr.text!r}: {problem}")


def _step_read(step: StepSpec | None, rest: tuple[str, ...], step_ids: list[str]) -> str | None:
    if not rest:
        return "name the step, as in steps.<id>.output"
    if rest[0] not in step_ids:
        return f"unknown step {rest[0]!r}{_hint(rest[0], step_ids)}"
    if step is not None and rest[0] == step.id:
        return "a step cannot read its own output"
    if len(rest) > 1 and rest[1] not in STEP_FIELDS:
        return f"steps.{rest[0]} has only {', '.join(sorted(STEP_FIELDS))}, not {rest[1]!r}"
    return None


def _check_outputs(spec: WorkflowSpec, problems: _Problems) -> None:
    for name, text in spec.outputs.items():
        source = _Source(("outputs", name), text, True)
        exprs = _compile(source, problems, f"output {name!r}")
        for expr in exprs:
            _check_reads(spec, None, source, expr, problems)
        unparsed = "${{" in text and not exprs
        reads = {root for expr in exprs for root, _ in expr.references()}
        if not unparsed and not reads & {"inputs", "steps"}:
            problems.add(
                source.loc,
                f"output {name!r}: {text!r} reads no step or input; "
                "write it like '${{ steps.<id>.output }}'",
            )


def _check_fallbacks(
    spec: WorkflowSpec, ids: dict[str, int], graph: dict[str, set[str]], problems: _Problems
) -> None:
    for index, step in enumerate(spec.steps):
        target = step.fallback
        if target is None:
            continue
        loc = ("steps", index, "on_error", "fallback")
        if target == step.id:
            problems.add(loc, f"step {step.id!r}: is its own fallback")
        elif target not in ids:
            problems.add(
                loc, f"step {step.id!r}: fallback {target!r} is not a step{_hint(target, ids)}"
            )
        elif step.id in _ancestors(graph, target):
            problems.add(
                loc,
                f"step {step.id!r}: fallback {target!r} depends on {step.id!r}, "
                "so it could never run when that step fails",
            )


def _check_triggers(spec: WorkflowSpec, graph: dict[str, set[str]], problems: _Problems) -> None:
    """Steps whose trigger rule can never be met."""
    for index, step in enumerate(spec.steps):
        loc = ("steps", index, "trigger_rule")
        rule = step.trigger_rule
        if rule in EARLY and not graph[step.id]:
            problems.add(
                loc,
                f"step {step.id!r}: can never run: trigger_rule {rule} waits for one of its "
                "upstream steps and it has none; add `needs` or drop the rule",
            )


def _ancestors(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    stack = [start]
    while stack:
        for need in graph.get(stack.pop(), ()):
            if need not in seen:
                seen.add(need)
                stack.append(need)
    return seen


def _cycles(graph: dict[str, set[str]], order: list[str]) -> list[list[str]]:
    """One cycle per strongly connected group, as ids 'a needs b needs ... needs a'."""
    cycles: list[list[str]] = []
    for group in _strongly_connected(graph, order):
        if len(group) < 2:
            continue
        start = min(group, key=order.index)
        cycles.append(_path_back(graph, start, group))
    return cycles


def _cycle_text(cycle: list[str]) -> str:
    return f"steps form a cycle: {' -> '.join(cycle)} (each needs the next)"


def _path_back(graph: dict[str, set[str]], start: str, group: set[str]) -> list[str]:
    """Shortest walk along `needs` from `start` back to itself inside `group`."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for need in sorted(graph[node] & group):
                if need == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if need not in previous:
                    previous[need] = node
                    following.append(need)
        frontier = following
    return [start, start]  # unreachable for a real group


def _strongly_connected(graph: dict[str, set[str]], order: list[str]) -> list[set[str]]:
    """Tarjan's algorithm without recursion (a 1,000-step chain must not hit the limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []
    for root in order:
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    groups.append(_pop_group(stack, on_stack, node))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return groups


def _pop_group(stack: list[str], on_stack: set[str], node: str) -> set[str]:
    group: set[str] = set()
    while True:
        member = stack.pop()
        on_stack.discard(member)
        group.add(member)
        if member == node:
            return group


def _hint(wanted: str, known: Iterable[str]) -> str:
    names = sorted(set(known))
    near = difflib.get_close_matches(wanted, names, n=3, cutoff=0.6)
    if near:
        return f"; did you mean {' or '.join(map(repr, near))}?"
    if not names:
        return "; none are declared"
    shown = ", ".join(map(repr, names[:8]))
    return f"; known: {shown}{', ...' if len(names) > 8 else ''}"


__all__ = ["STEP_FIELDS", "effective_needs", "topological_order", "validate_workflow"]
