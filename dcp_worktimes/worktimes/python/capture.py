"""A Python function as work: its source, checked so that it can run in the sandbox.

A Python function travels as *source*, so it cannot carry its closure or the module globals it
uses (they do not exist in the worker). ``capture_python`` checks this up front and says which
names would be missing and how to fix it::

    >>> def square(x):
    ...     return x * x
    >>> capture_python(square).work               # doctest: +SKIP
    'def square(x):\\n    return x * x\\n'
    >>> k = 3
    >>> capture_python(lambda x: x * k)          # doctest: +SKIP
    WorkError: EBADWORK: the work function uses the global name 'k', which is not sent to the worker ...

Default values are evaluated where the function is *defined*, so a default that is not a literal
(``def f(x, scale=SCALE)``) is sent as its value (``def f(x, scale=2.5)``) when that value is in
the lossless value set, and refused otherwise (it would be a ``NameError`` on every slice).

Lambdas are sent as an equivalent ``def`` (``lambda x: x*x`` → ``def work_fn(x): return x*x``; not ``work``,
which is the sandbox's ``work.emit`` object), so
the worktime always receives a source string that defines exactly one function, named in
``options["function"]``.
"""

from __future__ import annotations

import ast
import builtins
import copy
import dis
import inspect
import math
import sys
import textwrap
import types
from typing import Any, Callable

from ...errors import WorkError
from ...worktime import CapturedWork

__all__ = ["capture_python", "SANDBOX_GLOBALS"]

#: Names every Python worktime provides inside the sandbox (so using them is not a free variable).
SANDBOX_GLOBALS = frozenset({"progress", "work", "dcp", "console", "emit", "job"})


def capture_python(fn: Callable[..., Any]) -> CapturedWork:
    """Source of a Python function as one ``def``; ``WorkError`` if it cannot run elsewhere."""
    if isinstance(fn, functools_partial_type()):
        raise WorkError("functools.partial cannot be sent as work (its bound arguments are not source); "
                        "pass the function and give the extra values as job arguments: for_(inputs, fn, [a, b])")
    if inspect.isbuiltin(fn) or not isinstance(fn, types.FunctionType):
        if inspect.ismethod(fn):
            raise WorkError(f"{fn.__qualname__} is a bound method; its instance cannot be sent. "
                            "Use a plain module-level function and pass data as job arguments")
        raise WorkError(f"{fn!r} is not a Python function defined in source; pass a def or lambda from a .py file, "
                        "or its source as a string")
    name = fn.__name__
    code = fn.__code__
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise WorkError(f"the work function {name!r} is a generator (it yields): its result would be a generator, "
                        "which cannot cross the sandbox boundary; return a list instead (e.g. "
                        f"return list(...) of what it yields)")
    if hasattr(fn, "__wrapped__"):  # functools.wraps: the source found would be the inner function's
        raise WorkError(f"the work function {name!r} is decorated; a decorator's wrapper cannot be sent (only "
                        f"source is, as DCP does with toString()). Deploy the undecorated function "
                        f"({name}.__wrapped__) and apply what the decorator does inside it")
    if code.co_freevars:
        raise WorkError(
            f"the work function {name!r} closes over {', '.join(repr(v) for v in code.co_freevars)} from its "
            "enclosing function; closures are not sent to the worker (only the function's source is, as DCP does "
            "with toString()). Pass those values as job arguments: compute.for_(inputs, fn, [value, ...]) and add "
            "parameters for them"
        )
    try:
        lines, first = inspect.getsourcelines(fn)
    except (OSError, TypeError):
        raise WorkError(
            f"the source of {name!r} is not available (defined in an interactive session or with exec?); "
            "define it in a .py file, or pass its source as a string with worktime='python'"
        ) from None
    source = textwrap.dedent("".join(lines))
    first = first or 1
    node, tree_source = _find_node(source, fn, first)
    label = "lambda" if fn.__name__ == "<lambda>" else name
    swaps = _default_swaps(fn, node, tree_source, label)
    if isinstance(node, ast.Lambda):
        args_node = copy.deepcopy(node.args)
        for where, attr, index, literal, _pos in swaps:
            getattr(args_node, attr)[index] = ast.parse(literal, mode="eval").body
        args = ast.unparse(args_node)
        body = ast.get_source_segment(tree_source, node.body) or ast.unparse(node.body)
        name = "work_fn"
        text = f"def work_fn({args}):\n    return {_one_line(body)}\n"
    else:
        text = _def_text(_replace_segments(tree_source, [(pos, lit) for _w, _a, _i, lit, pos in swaps]), node)
    _check_globals(fn, label)
    return CapturedWork(text, options={"function": name}, origin=f"function {fn.__qualname__}")


#: Above this, a default value is better sent as a job argument than pasted into the source.
MAX_DEFAULT_SOURCE = 64 * 1024


def _literal(value: Any, depth: int = 0) -> str | None:
    """Python source that evaluates to exactly ``value`` (lossless value set only), else ``None``."""
    if depth > 50:
        return None
    t = type(value)
    if value is None or t in (bool, int, str, bytes):
        return repr(value)
    if t is float:
        return repr(value) if math.isfinite(value) else f"float({repr(value)!r})"
    if t in (list, tuple):
        items = [_literal(v, depth + 1) for v in value]
        if any(i is None for i in items):
            return None
        if t is tuple:
            return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"  # type: ignore[arg-type]
        return "[" + ", ".join(items) + "]"  # type: ignore[arg-type]
    if t is dict:
        pairs = [(_literal(k, depth + 1), _literal(v, depth + 1)) for k, v in value.items()]
        if any(k is None or v is None for k, v in pairs):
            return None
        return "{" + ", ".join(f"{k}: {v}" for k, v in pairs) + "}"
    return None


def _is_literal(node: ast.AST) -> bool:
    try:
        ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


def _default_swaps(fn: types.FunctionType, node: ast.AST, source: str, label: str) -> list[tuple]:
    """Defaults that are not literals, as ``(kind, attr, index, literal source, (l0, c0, l1, c1))``.

    Defaults are evaluated when the ``def`` runs, in the deployer's module: re-evaluating their
    text in the worker would need the deployer's globals. Their *values* travel instead.
    """
    from ...inputs import plain  # numpy scalars as defaults become plain numbers

    args = node.args  # type: ignore[attr-defined]
    pairs: list[tuple[str, int, ast.AST, str, Any]] = []
    positional = args.posonlyargs + args.args
    values = fn.__defaults__ or ()
    for i, (d, v) in enumerate(zip(args.defaults, values)):
        pairs.append(("defaults", i, d, positional[len(positional) - len(args.defaults) + i].arg, v))
    kwvalues = fn.__kwdefaults__ or {}
    for i, (a, d) in enumerate(zip(args.kwonlyargs, args.kw_defaults)):
        if d is not None and a.arg in kwvalues:
            pairs.append(("kw_defaults", i, d, a.arg, kwvalues[a.arg]))
    swaps = []
    for attr, i, d, param, value in pairs:
        if _is_literal(d):
            continue
        text = ast.get_source_segment(source, d) or ast.unparse(d)
        changed = _not_as_sent(value)
        literal = None if changed is not None else _literal(plain(value))
        if literal is None or len(literal) > MAX_DEFAULT_SOURCE:
            what = changed if changed is not None else value
            why = ("is too large to paste into the source" if literal is not None
                   else f"is a {type(what).__module__}.{type(what).__qualname__}"
                        f"{', which would arrive as a plain ' + _base_name(what) + ' and behave differently' if changed is not None else ''}"
                        ", outside the values that can be sent (None, bool, int, float, str, bytes, list, tuple, dict)")
            raise WorkError(
                f"the default of parameter {param!r} of the work function {label!r} ({text}) {why}; defaults are "
                "evaluated where the function is defined, so only their values could be sent. Drop the default and "
                "pass the value as a job argument (compute.for_(inputs, fn, [value])), or build it inside the function"
            )
        pos = (d.lineno, d.col_offset, d.end_lineno, d.end_col_offset)
        swaps.append(("def", attr, i, literal, pos))
    return swaps


def _not_as_sent(value: Any, depth: int = 0) -> Any:
    """The first part of a default value that would arrive as something else: a numpy array (a
    list: ``w * x`` repeats it), a dict, list or tuple subclass (``defaultdict``, ``Counter``,
    a namedtuple: their behaviour is lost). Numpy scalars pass: they arrive as the same number."""
    if depth > 100:
        return None  # deeper than a default is written by hand; _literal judges it
    t = type(value)
    if t in (list, tuple):
        return next((bad for v in value if (bad := _not_as_sent(v, depth + 1)) is not None), None)
    if t is dict:
        return next((bad for kv in value.items() for v in kv if (bad := _not_as_sent(v, depth + 1)) is not None), None)
    if isinstance(value, (list, tuple, dict)):
        return value
    np = sys.modules.get("numpy")
    if np is not None and isinstance(value, np.ndarray):
        return value
    return None


def _base_name(value: Any) -> str:
    for base in (dict, list, tuple):
        if isinstance(value, base):
            return base.__name__
    return "list"  # a numpy array


def _replace_segments(source: str, swaps: list[tuple[tuple[int, int, int, int], str]]) -> str:
    """``source`` with each ``(lineno, col, end_lineno, end_col)`` segment replaced, line numbers kept.

    AST columns are UTF-8 byte offsets, hence the bytes. A multi-line segment becomes its
    replacement plus as many newlines (it sits inside the ``def``'s parentheses, where newlines
    are free), so the user's line numbers in tracebacks stay right.
    """
    if not swaps:
        return source
    lines = [ln.encode("utf-8") for ln in source.splitlines(keepends=True)]
    for (l0, c0, l1, c1), literal in sorted(swaps, reverse=True):
        new = literal.encode("utf-8") + b"\n" * (l1 - l0)
        head, tail = lines[l0 - 1][:c0], lines[l1 - 1][c1:]
        lines[l0 - 1:l1] = [head + new + tail]
    return b"".join(lines).decode("utf-8")


def functools_partial_type() -> type:
    import functools

    return functools.partial


def _one_line(expr: str) -> str:
    # A lambda body spanning lines (inside brackets) is fine inside parentheses.
    return expr if "\n" not in expr else "(" + expr + ")"


def _find_node(source: str, fn: types.FunctionType, first: int) -> tuple[ast.AST, str]:
    """The def/lambda node that compiled to ``fn`` (``first``: file line of ``source``'s line 1)."""
    offset = first - 1
    try:
        tree = ast.parse(source)
    except SyntaxError:
        # The lines of a lambda inside a call that spans lines are a fragment; parse the whole file.
        try:
            text = inspect.getsource(inspect.getmodule(fn))  # type: ignore[arg-type]
            tree = ast.parse(text)
            source, offset = text, 0
        except (OSError, TypeError, SyntaxError):
            raise WorkError(f"cannot parse the source of {fn.__name__!r}; pass its source as a string") from None
    code = fn.__code__
    is_lambda = fn.__name__ == "<lambda>"
    candidates: list[ast.AST] = []
    for node in ast.walk(tree):
        if is_lambda and isinstance(node, ast.Lambda):
            lines = {node.lineno}
        elif not is_lambda and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == fn.__name__:
            lines = {node.lineno} | {d.lineno for d in node.decorator_list[:1]}
        else:
            continue
        if code.co_firstlineno in {n + offset for n in lines}:
            candidates.append(node)
    if len(candidates) > 1:
        wanted = list(code.co_varnames[: code.co_argcount + code.co_kwonlyargcount])
        candidates = [n for n in candidates if [a.arg for a in n.args.posonlyargs + n.args.args + n.args.kwonlyargs] == wanted] or candidates  # type: ignore[attr-defined]
    if len(candidates) != 1:
        what = "several lambdas on one line" if candidates else "no matching definition"
        raise WorkError(
            f"cannot find the source of {fn.__name__!r} ({what}); put the work on its own line, use a def, "
            "or pass its source as a string"
        )
    return candidates[0], source


def _def_text(source: str, node: ast.AST) -> str:
    lines = source.splitlines(keepends=True)
    start = node.lineno - 1  # the ``def`` line: decorators are left out (they are not sent)
    end = node.end_lineno or len(lines)
    return textwrap.dedent("".join(lines[start:end])).rstrip("\n") + "\n"


def _code_objects(code: types.CodeType):
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def _imported_from(value: Any, fn: types.FunctionType) -> tuple[str, str] | None:
    """``(module, name)`` when ``value`` is a function or class imported from another module."""
    if not (callable(value) and isinstance(value, (type, types.FunctionType, types.BuiltinFunctionType))
            or type(value).__name__ == "ufunc"):
        return None
    mod, real = getattr(value, "__module__", None), getattr(value, "__name__", None)
    if not isinstance(mod, str) or not isinstance(real, str) or mod in (fn.__module__, "__main__"):
        return None
    return mod, real


def _check_globals(fn: types.FunctionType, name: str) -> None:
    """Refuse module globals the work uses: they are not sent with the source."""
    used: list[str] = []
    for code in _code_objects(fn.__code__):
        # A class body (no CO_NEWLOCALS) reads the names it assigned before with LOAD_NAME, and
        # reads __name__ (for __module__) and __annotations__ without the user writing them; the
        # sandbox's module has a __name__ of its own. A name it reads before assigning it
        # (x = x + 1) is a global.
        body = not code.co_flags & inspect.CO_NEWLOCALS
        own = {"__annotations__"} if body else set()
        for ins in dis.get_instructions(code):
            if body and ins.opname == "STORE_NAME":
                own.add(ins.argval)
            elif ins.opname in ("LOAD_GLOBAL", "LOAD_NAME") and ins.argval not in used and ins.argval not in own \
                    and ins.argval != "__name__":
                used.append(ins.argval)
    if fn.__name__ in SANDBOX_GLOBALS and fn.__name__ in used and fn.__name__ != "<lambda>":
        # In the sandbox the function's own name is bound to it, so `work.reject()` would look for
        # reject on the function.
        raise WorkError(f"the work function is named {fn.__name__!r}, which hides the sandbox's {fn.__name__!r} it "
                        "uses; give the function another name")
    missing = []
    for g in used:
        if g == fn.__name__ or g in SANDBOX_GLOBALS or g not in fn.__globals__:
            continue  # itself, a sandbox name (a module's stub of progress() for local runs is fine), or a builtin
        if hasattr(builtins, g) and fn.__globals__[g] is getattr(builtins, g):
            continue
        # A module-level name, also one that shadows a builtin (`from numpy import max`): in the
        # sandbox it would be the builtin, silently computing something else.
        missing.append(g)
    if not missing:
        return
    modules = [g for g in missing if isinstance(fn.__globals__[g], types.ModuleType)]
    imported = [g for g in missing if g not in modules and _imported_from(fn.__globals__[g], fn) is not None]
    others = [g for g in missing if g not in modules and g not in imported]
    hints = []
    if modules:
        names = [fn.__globals__[m].__name__ + ("" if fn.__globals__[m].__name__ == m else f" as {m}") for m in modules]
        hints.append(f"import {', '.join(names)} inside the function")  # "import numpy as np", as it is used
    for g in imported:
        mod, real = _imported_from(fn.__globals__[g], fn)  # type: ignore[misc]
        hints.append(f"import it inside the function: from {mod} import {real}{'' if real == g else f' as {g}'}")
    if others:
        hints.append("pass values as job arguments (compute.for_(inputs, fn, [value, ...])) or define helpers "
                     "inside the function, or ship them as a module with job.requires()")
    raise WorkError(
        f"the work function {name!r} uses the global name{'s' if len(missing) > 1 else ''} "
        f"{', '.join(repr(m) for m in missing)}, which {'are' if len(missing) > 1 else 'is'} not sent to the worker "
        f"(only the function's source is, as DCP does with toString()); {'; '.join(hints)}"
    )
