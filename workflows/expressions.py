"""Workflow expressions: CEL (through cel-python's tree-walking interpreter, never `eval`)
and the `${{ EXPR }}` templates that embed it in `with` values and workflow outputs.

Names an expression sees: `inputs` (the workflow inputs), `steps.<id>.output` (a finished
step's output) and, inside a `for_each` step, its item name (default `item`) and `index`.

Templates: a string that is exactly `${{ EXPR }}` becomes EXPR's value (any JSON type); a
string with `${{ EXPR }}` inside other text is interpolated (strings as they are, other
values as JSON); anything else is a literal, recursively through lists and dicts. An
expression inside a template cannot contain `}}`.

Budget: every evaluation counts the interpreter's steps (and the values it hands back) and
stops past `EvalLimits.steps` or `timeout_s` with `QuotaExceeded` naming the limit, so
nested macros (`xs.map(a, xs.map(b, ...))`, 10^8 steps at eight levels) fail fast instead
of running for hours. An expression with a macro is the only kind whose cost is not
bounded by its length; the `*_async` functions evaluate those in a worker thread, so the
event loop keeps running meanwhile.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import lark
from celpy import celtypes
from celpy.celparser import CELParseError, CELParser
from celpy.evaluation import Activation, CELEvalError, CELUnsupportedError, Evaluator

from cluster.errors import DafnckError, QuotaExceeded

#: Where a value sits inside a spec, as pydantic and `Document.line_of` spell it.
Loc = tuple[str | int, ...]
#: The longest expression accepted; expressions are conditions and lookups, not programs.
MAX_EXPRESSION_CHARS = 4096
_TEMPLATE = re.compile(r"\$\{\{(.*?)\}\}", re.DOTALL)
_CLOSERS = {"RPAR": ")", "RSQB": "]", "RBRACE": "}"}
_MACROS = frozenset({"map", "filter", "all", "exists", "exists_one"})
#: Methods that loop over a list (celpy also has `reduce` and `min`).
_LOOPS = _MACROS | {"reduce", "min"}
_OPERATORS = {
    "addition_add": "+", "addition_sub": "-", "multiplication_mul": "*",
    "multiplication_div": "/", "multiplication_mod": "%", "relation_lt": "<",
    "relation_le": "<=", "relation_gt": ">", "relation_ge": ">=", "relation_eq": "==",
    "relation_ne": "!=", "relation_in": "in", "unary_neg": "-", "unary_not": "!",
}  # fmt: skip


class ExpressionError(DafnckError, ValueError):
    """An expression does not parse, or failed while it was evaluated.

    `line` and `column` (1-based) point into `text` for a parse error; they are 0 otherwise.
    """

    status_code = 422

    def __init__(self, message: str, text: str = "", line: int = 0, column: int = 0) -> None:
        super().__init__(message, text, line, column)

    @property
    def text(self) -> str:
        return str(self.args[1]) if len(self.args) > 1 else ""

    @property
    def line(self) -> int:
        return int(self.args[2]) if len(self.args) > 2 else 0

    @property
    def column(self) -> int:
        return int(self.args[3]) if len(self.args) > 3 else 0


@dataclass(frozen=True)
class EvalLimits:
    """What one evaluation may spend: interpreter steps and seconds (the tenant's quotas
    `expression_steps` and `expression_timeout_s`)."""

    steps: int = 100_000
    timeout_s: float = 1.0


DEFAULT_LIMITS = EvalLimits()


class _OverBudget(Exception):  # not a ValueError, so celpy lets it through
    """Raised inside the interpreter; becomes QuotaExceeded at `Expr.evaluate`."""


class _Budget:
    """Steps left and the deadline, shared by an evaluation's nested evaluators."""

    __slots__ = ("deadline", "left", "limits")

    def __init__(self, limits: EvalLimits) -> None:
        self.limits = limits
        self.left = limits.steps
        self.deadline = time.monotonic() + limits.timeout_s

    def charge(self, steps: int = 1) -> None:
        self.left -= steps
        if self.left < 0:
            raise _OverBudget("expression_steps")
        if self.left % 512 < steps and time.monotonic() > self.deadline:
            raise _OverBudget("expression_timeout_s")


class _BudgetedEvaluator(Evaluator):
    """celpy's evaluator, charging one step per node visited and the size of what it built."""

    def __init__(self, ast: lark.Tree, activation: Activation, budget: _Budget) -> None:
        super().__init__(ast, activation)
        self.budget = budget

    def sub_evaluator(self, ast: lark.Tree) -> Evaluator:
        return _BudgetedEvaluator(ast, self.activation, self.budget)

    def relation(self, tree: lark.Tree) -> Any:
        """`X == null` and `X != null` answer for any X, and a key or field missing on the
        way (a map without it, a skipped step's null output) reads as null."""
        op: Any = tree.children[0]
        if len(tree.children) != 2 or op.data not in _NULL_CHECKS:
            return super().relation(tree)
        left_tree, right_tree = op.children[0], tree.children[1]
        if not (_is_null(left_tree) or _is_null(right_tree)):
            return super().relation(tree)
        values: Any = self.visit_children(tree)
        (left, *_), right = values
        left, right = _missing_as_null(left), _missing_as_null(right)
        for side in (left, right):
            if isinstance(side, CELEvalError):
                return side
        same = (left is None) == (right is None)
        return celtypes.BoolType(same if op.data == "relation_eq" else not same)

    def _visit_tree(self, tree: lark.Tree) -> Any:
        self.budget.charge()
        value = super()._visit_tree(tree)
        if isinstance(value, str | bytes | list | dict) and len(value) > 64:
            self.budget.charge(len(value) // 64)  # `s + s` grows without more steps
        return value


_NULL_CHECKS = frozenset({"relation_eq", "relation_ne"})
_MISSING = ("no such member in mapping", "no such key", "None with type")


def _is_null(node: Any) -> bool:
    """Whether the parse tree `node` is the literal `null`."""
    while isinstance(node, lark.Tree) and len(node.children) == 1:
        node = node.children[0]
    return isinstance(node, lark.Token) and str(node) == "null"


def _missing_as_null(value: Any) -> Any:
    """None for the error of reading a key or field that is not there, else `value`."""
    if isinstance(value, CELEvalError) and str(value.args[0]).startswith(_MISSING):
        return None
    return value


class Expr:
    """One compiled CEL expression; get one from `compile_expr`, which caches by text."""

    __slots__ = ("_ast", "_direct", "_paths", "_refs", "loops", "text")

    def __init__(self, text: str, ast: lark.Tree) -> None:
        self.text = text
        self._ast = ast
        self._paths = frozenset(_collect_paths(ast, frozenset()))
        self._refs = frozenset((p[0], p[1] if len(p) > 1 else None) for p in self._paths)
        #: A bare path such as `steps.a.output.files` is looked up without the interpreter.
        self._direct = _static_path(ast)
        #: Macros loop: only then can the cost outgrow the expression's length.
        self.loops = any(
            str(node.children[1]) in _LOOPS for node in ast.find_data("member_dot_arg")
        )

    def __repr__(self) -> str:
        return f"Expr({self.text!r})"

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (compile_expr, (self.text,))

    def paths(self) -> frozenset[tuple[str, ...]]:
        """Every name path the expression reads with fixed keys, e.g. ('steps', 'a', 'output')."""
        return self._paths

    def references(self) -> frozenset[tuple[str, str | None]]:
        """(root, first attribute) of every name read: {('steps', 'a'), ('inputs', 'n')}.

        The attribute is None when the root is used whole or indexed by a computed key.
        """
        return self._refs

    def evaluate(self, context: Mapping[str, Any], limits: EvalLimits = DEFAULT_LIMITS) -> Any:
        """The expression's value over `context`, as plain Python values.

        Values the expression passes through untouched (an Arrow table inside a step
        output, say) come back as they went in.

        Raises:
            ExpressionError: a name or key is missing, or an operation does not apply.
            QuotaExceeded: the evaluation passed `limits` (the message names which).
        """
        if self._direct is not None:
            return _lookup(self.text, self._direct, context)
        budget = _Budget(limits)
        try:
            activation = Activation(vars=self._activation_vars(context))
            value = _BudgetedEvaluator(self._ast, activation, budget).evaluate()
            return _to_python(value, budget)
        except _OverBudget as exc:
            limit = str(exc.args[0])
            most = limits.steps if limit == "expression_steps" else limits.timeout_s
            raise QuotaExceeded(
                limit, most, f"expression {self.text[:80]!r} does too much work; simplify it"
            ) from None
        except CELEvalError as exc:
            raise ExpressionError(f"{self.text!r} failed: {_describe(exc)}", self.text) from None
        except (CELUnsupportedError, TypeError, ValueError, KeyError, RecursionError) as exc:
            raise ExpressionError(f"{self.text!r} failed: {exc}", self.text) from None

    async def evaluate_async(
        self, context: Mapping[str, Any], limits: EvalLimits = DEFAULT_LIMITS
    ) -> Any:
        """`evaluate`, in a worker thread when the expression loops (off the event loop).

        Raises: ExpressionError, QuotaExceeded.
        """
        if not self.loops:
            return self.evaluate(context, limits)
        return await asyncio.to_thread(self.evaluate, context, limits)

    def _activation_vars(self, context: Mapping[str, Any]) -> dict[str, Any]:
        """Convert only what the expression reads: step outputs may be large."""
        whole: set[str] = set()
        keys: dict[str, set[str]] = {}
        for root, attr in self._refs:
            if root in context:
                if attr is None:
                    whole.add(root)
                else:
                    keys.setdefault(root, set()).add(attr)
        out: dict[str, Any] = {}
        for root in whole | keys.keys():
            value = context[root]
            if root not in whole and isinstance(value, Mapping):
                value = {k: value[k] for k in keys[root] if k in value}
            out[root] = _to_cel(value)
        return out


@lru_cache(maxsize=4096)
def compile_expr(text: str) -> Expr:
    """Parse a bare CEL expression (no `${{ }}`); cached by text.

    Raises:
        ExpressionError: it does not parse; `line`/`column` say where.
    """
    source = text.strip()
    if not source:
        raise ExpressionError("expression is empty", text, 1, 1)
    if len(source) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(
            f"expression is {len(source)} characters; at most {MAX_EXPRESSION_CHARS} allowed", text
        )
    try:
        return Expr(source, CELParser().parse(source))
    except CELParseError as exc:
        raise _syntax_error(source, exc) from None
    except lark.exceptions.LarkError as exc:
        raise ExpressionError(f"{source!r} does not parse: {exc}", source, 1, 1) from None
    except RecursionError:
        raise ExpressionError(f"{source[:40]!r}... is nested too deeply", source) from None


def _syntax_error(source: str, exc: CELParseError) -> ExpressionError:
    cause = exc.__context__
    if isinstance(cause, lark.exceptions.UnexpectedToken) and cause.token.type == "$END":
        lines = source.splitlines()
        line, column = len(lines), len(lines[-1]) + 1
        missing = [_CLOSERS[t] for t in sorted(cause.expected) if t in _CLOSERS]
        only_closers = set(cause.expected) <= {*_CLOSERS, "COMMA"}
        hint = f"; missing {' or '.join(map(repr, missing))}?" if missing and only_closers else ""
        where = f"line {line} column {column}"
        return ExpressionError(f"{source!r} ends too early at {where}{hint}", source, line, column)
    line, column = exc.line or 1, exc.column or 1
    return ExpressionError(
        f"{source!r} does not parse at line {line} column {column}{_near(source, line, column)}",
        source,
        line,
        column,
    )


def _near(source: str, line: int, column: int) -> str:
    lines = source.splitlines() or [""]
    rest = lines[min(line, len(lines)) - 1][column - 1 :]
    return f" (near {rest[:12]!r})" if rest else " (at the end)"


def parse_template(text: str) -> list[Expr]:
    """The expressions inside the `${{ }}` of one string, in order.

    Raises:
        ExpressionError: an expression does not parse, or a `${{` is never closed.
    """
    exprs = [compile_expr(m.group(1)) for m in _TEMPLATE.finditer(text)]
    if "${{" in _TEMPLATE.sub("", text):
        raise ExpressionError(f"{text!r} opens '${{{{' without a closing '}}}}'", text)
    return exprs


def template_strings(value: Any, loc: Loc = ()) -> Iterator[tuple[Loc, str]]:
    """Every string holding a `${{` inside `value` (walking dicts and lists), with its loc."""
    if isinstance(value, str):
        if "${{" in value:
            yield loc, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from template_strings(item, (*loc, key))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from template_strings(item, (*loc, i))


def template_references(value: Any) -> frozenset[tuple[str, str | None]]:
    """(root, first attribute) of every name the templates inside `value` read.

    Raises:
        ExpressionError: an expression does not parse.
    """
    refs: set[tuple[str, str | None]] = set()
    for _, text in template_strings(value):
        for expr in parse_template(text):
            refs |= expr.references()
    return frozenset(refs)


def render(value: Any, context: Mapping[str, Any], limits: EvalLimits = DEFAULT_LIMITS) -> Any:
    """`value` with every template evaluated over `context`; literals are returned as they are.

    Raises:
        ExpressionError: an expression does not parse or fails.
        QuotaExceeded: an expression passed `limits`.
    """
    if isinstance(value, str):
        return _render_string(value, context, limits) if "${{" in value else value
    if isinstance(value, Mapping):
        return {key: render(item, context, limits) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [render(item, context, limits) for item in value]
    return value


async def render_async(
    value: Any, context: Mapping[str, Any], limits: EvalLimits = DEFAULT_LIMITS
) -> Any:
    """`render`, in a worker thread when one of its expressions loops.

    Raises: ExpressionError, QuotaExceeded.
    """
    loops = any(e.loops for _, text in template_strings(value) for e in parse_template(text))
    if not loops:
        return render(value, context, limits)
    return await asyncio.to_thread(render, value, context, limits)


def _render_string(text: str, context: Mapping[str, Any], limits: EvalLimits) -> Any:
    matches = list(_TEMPLATE.finditer(text))
    if len(matches) == 1 and matches[0].span() == (0, len(text)):
        return compile_expr(matches[0].group(1)).evaluate(context, limits)
    parse_template(text)  # refuse an unclosed `${{` before evaluating anything
    return _TEMPLATE.sub(
        lambda m: _as_text(compile_expr(m.group(1)).evaluate(context, limits)), text
    )


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool | list | dict):
        return json.dumps(value, default=str)
    return str(value)


# --- reading the parse tree ---------------------------------------------------------------


def _collect_paths(node: lark.Tree, bound: frozenset[str]) -> Iterator[tuple[str, ...]]:
    """Name paths read by `node`, skipping the variables that macros such as `map` bind."""
    path = _static_path(node)
    if path is not None:
        if path[0] not in bound:
            yield path
        return
    if node.data == "member_dot_arg" and _macro_variable(node) is not None:
        target, _method, args = node.children
        yield from _collect_paths(target, bound)  # type: ignore[arg-type]
        _first, *rest = args.children  # type: ignore[union-attr]
        inner = bound | {_macro_variable(node) or ""}
        for arg in rest:
            yield from _collect_paths(arg, inner)  # type: ignore[arg-type]
        return
    for child in node.children:
        if isinstance(child, lark.Tree):
            yield from _collect_paths(child, bound)


def _static_path(node: lark.Tree) -> tuple[str, ...] | None:
    """('steps', 'a', 'output') for `steps.a.output` or `steps['a'].output`, else None."""
    while node.data in _PASS_THROUGH and len(node.children) == 1:
        child = node.children[0]
        if not isinstance(child, lark.Tree):
            return None
        node = child
    if node.data == "ident":
        return (str(node.children[0]),)
    if node.data == "member_dot":
        base, name = node.children
        head = _static_path(base) if isinstance(base, lark.Tree) else None
        return None if head is None else (*head, str(name))
    if node.data == "member_index":
        base, index = node.children
        head = _static_path(base) if isinstance(base, lark.Tree) else None
        key = _string_literal(index) if isinstance(index, lark.Tree) else None
        return None if head is None or key is None else (*head, key)
    return None


_PASS_THROUGH = frozenset({
    "expr", "conditionalor", "conditionaland", "relation", "addition", "multiplication",
    "unary", "member", "primary",
})  # fmt: skip


def _string_literal(node: lark.Tree) -> str | None:
    """The value of a plain quoted string literal ('a' or "a", no escapes), else None."""
    while len(node.children) == 1 and isinstance(node.children[0], lark.Tree):
        node = node.children[0]
    if node.data != "literal" or len(node.children) != 1:
        return None
    token = node.children[0]
    raw = str(token)
    if getattr(token, "type", "") != "STRING_LIT" or len(raw) < 2 or raw[0] not in "'\"":
        return None
    inner = raw[1:-1]
    return None if "\\" in inner or raw[0] in inner or raw[:3] in ("'''", '"""') else inner


def _macro_variable(node: lark.Tree) -> str | None:
    """The variable a macro call like `xs.map(x, x + 1)` binds, else None."""
    _target, method, args = node.children
    if str(method) not in _MACROS or not isinstance(args, lark.Tree) or not args.children:
        return None
    first = args.children[0]
    path = _static_path(first) if isinstance(first, lark.Tree) else None
    return path[0] if path is not None and len(path) == 1 else None


# --- values in and out ----------------------------------------------------------------------


def _lookup(text: str, path: tuple[str, ...], context: Mapping[str, Any]) -> Any:
    if path[0] not in context:
        raise ExpressionError(f"{text!r} failed: unknown name {path[0]!r}", text)
    value = context[path[0]]
    for depth, key in enumerate(path[1:], start=1):
        if not isinstance(value, Mapping) or key not in value:
            where = ".".join(path[:depth])
            raise ExpressionError(f"{text!r} failed: {where} has no key {key!r}", text)
        value = value[key]
    return value


def _to_cel(value: Any) -> Any:
    """JSON-like Python values as CEL values; anything else passes through opaque."""
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if isinstance(value, int):
        return celtypes.IntType(value)
    if isinstance(value, float):
        return celtypes.DoubleType(value)
    if isinstance(value, str):
        return celtypes.StringType(value)
    if isinstance(value, bytes):
        return celtypes.BytesType(value)
    if isinstance(value, Mapping):
        return celtypes.MapType({_to_cel(k): _to_cel(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return celtypes.ListType([_to_cel(v) for v in value])
    if isinstance(value, datetime.datetime):
        return celtypes.TimestampType(value)
    if isinstance(value, datetime.timedelta):
        return celtypes.DurationType(value)
    return value


def _to_python(value: Any, budget: _Budget) -> Any:
    """CEL values as plain Python: timestamps as RFC 3339 text, durations as seconds.

    Each value converted is charged: a list holding itself twice at every level is small
    in memory but exponential once copied out.
    """
    budget.charge()
    if isinstance(value, CELEvalError):
        raise value
    if isinstance(value, bool | celtypes.BoolType):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bytes):
        return bytes(value)
    if isinstance(value, Mapping):
        return {_to_python(k, budget): _to_python(v, budget) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_python(v, budget) for v in value]
    if isinstance(value, datetime.datetime):
        return value.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, type):  # `type(x)` yields a CEL type such as IntType
        return value.__name__.removesuffix("Type").lower()
    return value


def _describe(exc: CELEvalError) -> str:
    """celpy's message without its internals (activations, rule tokens, class paths)."""
    text = str(exc.args[0]) if exc.args else type(exc).__name__
    text = text.split(" (in activation", 1)[0]
    text = text.replace("undeclared reference to", "unknown name")
    text = re.sub(r"Token\('RULE', '(\w+)'\)", lambda m: repr(_OPERATORS.get(m[1], m[1])), text)
    text = re.sub(r"<class 'celpy\.celtypes\.(\w+?)(?:Type)?'>", lambda m: m[1].lower(), text)
    return text


__all__ = [
    "DEFAULT_LIMITS",
    "MAX_EXPRESSION_CHARS",
    "EvalLimits",
    "Expr",
    "ExpressionError",
    "Loc",
    "compile_expr",
    "parse_template",
    "render",
    "render_async",
    "template_references",
    "template_strings",
]
