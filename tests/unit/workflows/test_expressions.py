"""CEL expressions and `${{ }}` templates: values, the names they read, and clear errors."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from workflows.expressions import (
    ExpressionError,
    compile_expr,
    parse_template,
    render,
    template_references,
    template_strings,
)


class Blob:
    """Stands for a value CEL does not know, such as an Arrow table in a step output."""


BLOB = Blob()
CONTEXT: dict[str, Any] = {
    "inputs": {"n": 3, "name": "ada", "tags": ["a", "b"], "ratio": 0.5, "flag": True, "none": None},
    "steps": {
        "list": {"output": {"root": "/repo", "files": ["/repo/a.py", "/repo/b.py"]}},
        "analyse": {"output": [{"files": BLOB, "n": 1}, {"files": BLOB, "n": 2}]},
    },
    "item": "/repo/a.py",
    "index": 0,
}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("inputs.n", 3),
        ("inputs.n + 1 > 3 && size(inputs.tags) == 2", True),
        ("inputs.ratio * 2.0", 1.0),
        ("inputs.name + '!'", "ada!"),
        ("inputs.none == null", True),
        ("inputs.flag ? 'yes' : 'no'", "yes"),
        ("steps.list.output.files", ["/repo/a.py", "/repo/b.py"]),
        ("steps['list'].output.files[1]", "/repo/b.py"),
        ("steps.list.output.files.map(f, f.endsWith('a.py'))", [True, False]),
        ("steps.analyse.output.filter(o, o.n > 1).map(o, o.n)", [2]),
        ("{'k': [1, 2.5, null, true, b'x']}", {"k": [1, 2.5, None, True, b"x"]}),
        ("index + 1", 1),
        ("timestamp('2024-05-01T10:00:00Z') + duration('1h')", "2024-05-01T11:00:00Z"),
        ("duration('90s')", 90.0),
        ("type(inputs.n)", "int"),
    ],
)
def test_expressions_evaluate_to_plain_python_values(text: str, value: Any) -> None:
    result = compile_expr(text).evaluate(CONTEXT)
    assert result == value
    assert type(result) is type(value)


def test_values_cel_does_not_know_pass_through_untouched() -> None:
    assert compile_expr("steps.analyse.output.map(o, o.files)").evaluate(CONTEXT) == [BLOB, BLOB]
    assert compile_expr("steps.analyse.output[0].files").evaluate(CONTEXT) is BLOB


@pytest.mark.parametrize(
    ("text", "refs"),
    [
        ("inputs.n > 1", {("inputs", "n")}),
        ("steps.a.output.x + inputs['n']", {("steps", "a"), ("inputs", "n")}),
        ("size(steps.b.output) > 0 || has(inputs.k)", {("steps", "b"), ("inputs", "k")}),
        (
            "steps.list.output.files.map(f, f + inputs.suffix)",
            {("steps", "list"), ("inputs", "suffix")},
        ),
        ("steps.a.output.exists(x, x.ok)", {("steps", "a")}),
        ("steps[inputs.which].output", {("steps", None), ("inputs", "which")}),
        ("item.path + string(index)", {("item", "path"), ("index", None)}),
        ("[1, 2].all(n, n > 0)", set()),
    ],
)
def test_references_name_each_root_and_first_attribute_but_not_macro_variables(
    text: str, refs: set[tuple[str, str | None]]
) -> None:
    assert compile_expr(text).references() == refs


def test_paths_keep_every_fixed_key() -> None:
    assert compile_expr("steps.a.output.files[0] + steps['b'].outptu").paths() == {
        ("steps", "a", "output", "files"),
        ("steps", "b", "outptu"),
    }


@pytest.mark.parametrize(
    ("text", "line", "column", "says"),
    [
        ("inputs.n +* 2", 1, 11, "does not parse at line 1 column 11 (near '* 2')"),
        ("'unclosed", 1, 1, 'does not parse at line 1 column 1 (near "\'unclosed")'),
        ("a.b)", 1, 4, "does not parse at line 1 column 4 (near ')')"),
        ("size(inputs.tags", 1, 17, "ends too early at line 1 column 17; missing ')' or ']'?"),
        ("inputs.n >", 1, 11, "ends too early at line 1 column 11"),
    ],
)
def test_parse_errors_say_where(text: str, line: int, column: int, says: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_expr(text)
    assert (caught.value.line, caught.value.column) == (line, column)
    assert caught.value.message == f"{text!r} {says}"
    assert isinstance(caught.value, ValueError)


def test_empty_and_oversized_expressions_are_refused() -> None:
    with pytest.raises(ExpressionError, match="empty"):
        compile_expr("   ")
    with pytest.raises(ExpressionError, match="at most 4096"):
        compile_expr("1 + " * 2000 + "1")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("nobody", "unknown name 'nobody'"),
        ("inputs.missing", "inputs has no key 'missing'"),
        ("inputs.missing + 1", "no such member in mapping: 'missing'"),
        ("inputs.n + 'x'", "no matching overload for '+' applied to '(int, string)'"),
        ("inputs.n / 0", "divide by zero"),
    ],
)
def test_evaluation_errors_are_short_and_name_the_expression(text: str, says: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_expr(text).evaluate(CONTEXT)
    assert caught.value.message.startswith(f"{text!r} failed: ")
    assert says in caught.value.message
    assert "Activation" not in caught.value.message and "celpy" not in caught.value.message


def test_compiled_expressions_are_cached_and_pickle_by_text() -> None:
    expr = compile_expr("inputs.n * 2")
    assert compile_expr("inputs.n * 2") is expr
    assert pickle.loads(pickle.dumps(expr)).evaluate(CONTEXT) == 6
    error = ExpressionError("bad", "x +", 1, 3)
    assert pickle.loads(pickle.dumps(error)).column == 3


def test_a_whole_template_keeps_the_value_type_and_mixed_text_interpolates() -> None:
    value = {
        "count": "${{ inputs.n }}",
        "files": "${{steps.list.output.files}}",
        "title": "Review of ${{ steps.list.output.root }} (${{ inputs.n }} max, ${{ inputs.flag }})",
        "as_json": "tags=${{ inputs.tags }} none=${{ inputs.none }}",
        "nested": [{"path": "${{ item }}", "n": 7}, "plain", None],
        "literal": {"k": 1.5},
    }
    assert render(value, CONTEXT) == {
        "count": 3,
        "files": ["/repo/a.py", "/repo/b.py"],
        "title": "Review of /repo (3 max, true)",
        "as_json": 'tags=["a", "b"] none=null',
        "nested": [{"path": "/repo/a.py", "n": 7}, "plain", None],
        "literal": {"k": 1.5},
    }


def test_two_templates_in_one_string_are_text_not_one_expression() -> None:
    assert render("${{ inputs.n }}${{ inputs.n }}", CONTEXT) == "33"


def test_unclosed_template_is_an_error() -> None:
    with pytest.raises(ExpressionError, match="without a closing"):
        parse_template("x ${{ inputs.n")
    with pytest.raises(ExpressionError, match="without a closing"):
        render("${{ inputs.n }} and ${{ oops", CONTEXT)


def test_template_references_and_strings_walk_dicts_and_lists() -> None:
    value = {"a": ["${{ inputs.n }}", {"b": "x ${{ steps.list.output.root }}"}], "c": 1}
    assert template_references(value) == {("inputs", "n"), ("steps", "list")}
    assert list(template_strings(value, ("with",))) == [
        (("with", "a", 0), "${{ inputs.n }}"),
        (("with", "a", 1, "b"), "x ${{ steps.list.output.root }}"),
    ]


def test_conversion_only_touches_what_the_expression_reads() -> None:
    context = {**CONTEXT, "steps": {**CONTEXT["steps"], "big": {"output": {1, 2}}}}
    # a set is no JSON value; the expression never reads steps.big, so it does not matter
    assert compile_expr("size(steps.list.output.files) + inputs.n").evaluate(context) == 5


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("steps.x.output.missing != null", False),
        ("steps.x.output.missing == null", True),
        ("steps.x.output.a != null", True),
        ("steps.x.output != null", True),
        ("steps.x.output.none == null", True),
        ("steps.skipped.output == null", True),
        ("steps.skipped.output.y != null", False),
        ("steps.skipped.output.y.z == null", True),
        ("null == steps.x.output.missing", True),
        ("steps.x.output.missing != null && steps.x.output.missing > 1", False),
        ("type(steps.skipped.output) == null_type", True),
    ],
)
def test_null_checks_read_naturally_on_any_value(text: str, expected: bool) -> None:
    context = {"steps": {"x": {"output": {"a": 1, "none": None}}, "skipped": {"output": None}}}
    assert compile_expr(text).evaluate(context) is expected


def test_a_missing_key_compared_with_anything_but_null_still_fails() -> None:
    context = {"steps": {"x": {"output": {"a": 1}}}}
    with pytest.raises(ExpressionError, match="no such member"):
        compile_expr("steps.x.output.missing == 1").evaluate(context)
    with pytest.raises(ExpressionError, match="divide by zero"):
        compile_expr("(1 / 0) == null").evaluate(context)
