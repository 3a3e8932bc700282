"""The sandboxed child process that runs one user strategy.

Run as a script (``python -I sandbox_runner.py --cpu-seconds ...``), never as
part of the ``actors`` package: it imports nothing of tradeflow.  The parent
(:mod:`actors.strategies.sandbox`) writes a JSON header line and an Arrow IPC stream of
bars to stdin and reads one JSON document from stdout.

The process hardens itself in this order before it touches the user's code:
rlimits, a new network namespace, pre-import of numpy/pandas, privilege drop
(setuid nobody, ``RLIMIT_NPROC`` 0, ``no_new_privs``), read input, seccomp
allow-list (all threads), then run.  Anything the strategy does wrong comes
back as ``{"ok": false, "kind": ..., "error": ...}``.

:func:`check_strategy_code` is shared with the parent so users get precise
errors with line numbers before a process is started.
"""

from __future__ import annotations

import argparse
import ast
import ctypes
import errno
import json
import os
import resource
import sys
import types

from RestrictedPython import PrintCollector, compile_restricted_exec, safe_builtins
from RestrictedPython.Eval import default_guarded_getitem, default_guarded_getiter
from RestrictedPython.Guards import (
    full_write_guard,
    guarded_iter_unpack_sequence,
    guarded_unpack_sequence,
    raise_,
    safer_getattr,
)

#: Modules a strategy may import.  Submodules are reached by attribute only.
ALLOWED_IMPORTS = frozenset({"math", "statistics", "datetime", "numpy", "pandas", "collections", "itertools"})

#: Builtins a strategy may not even name: they inspect or escape the namespace.
FORBIDDEN_NAMES = frozenset(
    {
        "vars",
        "dir",
        "eval",
        "exec",
        "compile",
        "open",
        "globals",
        "locals",
        "breakpoint",
        "input",
        "help",
        "memoryview",
        "exit",
        "quit",
    }
)

#: Attributes of pandas/numpy objects that read or write files, evaluate
#: strings as code or reach native code.  Denied at run time, on any object.
FORBIDDEN_ATTRIBUTES = frozenset(
    {
        "to_csv",
        "to_pickle",
        "to_parquet",
        "to_sql",
        "to_clipboard",
        "to_excel",
        "to_hdf",
        "to_feather",
        "to_json",
        "to_html",
        "to_latex",
        "to_markdown",
        "to_stata",
        "to_xml",
        "to_orc",
        "tofile",
        "dump",
        "dumps",
        "load",
        "loads",
        "save",
        "savez",
        "savez_compressed",
        "savetxt",
        "loadtxt",
        "genfromtxt",
        "fromfile",
        "fromregex",
        "memmap",
        "ctypeslib",
        "ctypes",
        "lib",
        "io",
        "f2py",
        "testing",
        "DataSource",
        "eval",
        "query",
        "format",
        "format_map",
        "mro",
        "gi_code",
        "gi_yieldfrom",
        "cr_code",
        "ag_code",
    }
)

#: ``SECCOMP_RET_ERRNO`` value the kernel returns for any syscall not allowed.
DENIED_ERRNO = errno.EPERM

#: Syscalls the strategy may make once the filter is loaded: memory, time,
#: signals, and writing its answer.  No open, no socket, no fork, no exec.
ALLOWED_SYSCALLS = (
    "read",
    "brk",
    "munmap",
    "mremap",
    "madvise",
    "futex",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "sigaltstack",
    "exit",
    "exit_group",
    "getpid",
    "gettid",
    "getuid",
    "geteuid",
    "getgid",
    "getegid",
    "nanosleep",
    "clock_nanosleep",
    "getrandom",
    "clock_gettime",
    "clock_getres",
    "gettimeofday",
    "sched_yield",
    "sched_getaffinity",
    "getrusage",
    "times",
    "lseek",
    "fstat",
    "newfstatat",
    "close",
)

#: Most signal dates of one symbol at which the look-ahead check cuts its bars.
CUTS_PER_SYMBOL = 3

#: ``nobody``: the user the strategy runs as when the runner starts as root.
NOBODY_UID = 65534
NOBODY_GID = 65534

#: Linux constants (not exposed by the ``os`` module of Python 3.11).
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_NO_NEW_PRIVS = 38
PROT_EXEC = 0x4

#: Exit status of a runner that could not harden itself; the parent refuses the result.
HARDENING_FAILED_EXIT = 3


class SecurityViolation(Exception):
    """The strategy tried something the sandbox forbids."""


class StrategyCodeError(Exception):
    """The strategy's source is not a valid strategy (syntax, missing function)."""


def check_strategy_code(code: str, function_name: str | None = None) -> str:
    """Compile ``code`` with RestrictedPython and return the entry function's name.

    Raises :class:`SecurityViolation` or :class:`StrategyCodeError` whose
    message names the line of each problem.
    """
    result = compile_restricted_exec(code, filename="<strategy>")
    syntax = [e for e in result.errors if "SyntaxError" in e or "IndentationError" in e]
    if syntax:
        raise StrategyCodeError("; ".join(syntax))
    problems = list(result.errors) + _forbidden_names(code)
    if problems:
        raise SecurityViolation("; ".join(problems))
    return _entry_function(ast.parse(code), function_name)


def _forbidden_names(code: str) -> list[str]:
    tree = ast.parse(code)
    bound = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
    bound |= {n.arg for n in ast.walk(tree) if isinstance(n, ast.arg)}
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES and node.id not in bound:
            problems.append(f"Line {node.lineno}: name {node.id!r} is not allowed")
        elif isinstance(node, ast.Import | ast.ImportFrom):
            problems += _forbidden_imports(node)
    return problems


def _forbidden_imports(node: ast.Import | ast.ImportFrom) -> list[str]:
    allowed = ", ".join(sorted(ALLOWED_IMPORTS))
    modules = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
    problems = [
        f"Line {node.lineno}: import of {module!r} is not allowed (allowed: {allowed})"
        for module in modules
        if module not in ALLOWED_IMPORTS
    ]
    if isinstance(node, ast.ImportFrom):
        problems += [
            f"Line {node.lineno}: import of {node.module}.{alias.name} is not allowed"
            for alias in node.names
            if forbidden_attribute(alias.name)
        ]
    return problems


def _entry_function(tree: ast.Module, function_name: str | None) -> str:
    functions = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
    names = [f.name for f in functions]
    if function_name is not None:
        if function_name not in names:
            raise StrategyCodeError(
                f"strategy code defines no function {function_name!r} (found: {names or 'none'})"
            )
        chosen = next(f for f in functions if f.name == function_name)
    elif len(functions) == 1:
        chosen = functions[0]
    elif "strategy" in names:
        chosen = next(f for f in functions if f.name == "strategy")
    elif not functions:
        raise StrategyCodeError("strategy code defines no function; expected `def name(df) -> list[dict]`")
    else:
        raise StrategyCodeError(
            f"strategy code defines several functions ({', '.join(names)}); "
            "name the entry point with args.function_name or call it `strategy`"
        )
    positional = chosen.args.posonlyargs + chosen.args.args
    if len(positional) - len(chosen.args.defaults) > 1 or (not positional and not chosen.args.vararg):
        raise StrategyCodeError(
            f"Line {chosen.lineno}: {chosen.name}() must take exactly one argument, the frame"
        )
    return chosen.name


def forbidden_attribute(name: str) -> bool:
    return name in FORBIDDEN_ATTRIBUTES or name.startswith(("_", "read_"))


def guarded_getattr(obj: object, name: str, *default: object) -> object:
    """RestrictedPython's ``safer_getattr`` plus our deny-list, as a security error.

    A module reached through an attribute (``pd.compat.platform.os``) must
    belong to an allowed package.  Like ``getattr``: a missing attribute
    raises unless a default is given.
    """
    if forbidden_attribute(name):
        raise SecurityViolation(f"access to attribute {name!r} is not allowed")
    try:
        value = safer_getattr(obj, name, *(default or (raise_,)))
    except NotImplementedError as exc:
        raise SecurityViolation(str(exc)) from None
    if isinstance(value, types.ModuleType) and value.__name__.partition(".")[0] not in ALLOWED_IMPORTS:
        raise SecurityViolation(f"access to module {value.__name__!r} is not allowed")
    return value


def guarded_import(name: str, globals=None, locals=None, fromlist=(), level=0):
    if level != 0 or name not in ALLOWED_IMPORTS:
        raise SecurityViolation(f"import of {name!r} is not allowed")
    for attribute in fromlist or ():
        if forbidden_attribute(attribute):
            raise SecurityViolation(f"import of {name}.{attribute} is not allowed")
    return __import__(name, globals, locals, fromlist, level)


def restricted_globals() -> dict:
    builtins = dict(safe_builtins)
    builtins.update(
        __import__=guarded_import,
        getattr=guarded_getattr,
        list=list,
        dict=dict,
        set=set,
        tuple=tuple,
        sorted=sorted,
        min=min,
        max=max,
        sum=sum,
        any=any,
        all=all,
        enumerate=enumerate,
        zip=zip,
        map=map,
        filter=filter,
        reversed=reversed,
        iter=iter,
        next=next,
        abs=abs,
        hasattr=_hasattr,
    )
    return {
        "__builtins__": builtins,
        "__name__": "strategy",
        "_print_": PrintCollector,
        "_getattr_": guarded_getattr,
        "_getitem_": default_guarded_getitem,
        "_getiter_": default_guarded_getiter,
        "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
        "_unpack_sequence_": guarded_unpack_sequence,
        "_write_": full_write_guard,
        "_inplacevar_": _inplacevar,
    }


def _hasattr(obj: object, name: str) -> bool:
    try:
        guarded_getattr(obj, name)
    except (AttributeError, SecurityViolation):
        return False
    return True


def _inplacevar(op: str, x, y):
    operators = {
        "+=": lambda: x + y,
        "-=": lambda: x - y,
        "*=": lambda: x * y,
        "/=": lambda: x / y,
        "//=": lambda: x // y,
        "%=": lambda: x % y,
        "**=": lambda: x**y,
        "|=": lambda: x | y,
        "&=": lambda: x & y,
    }
    if op not in operators:
        raise SecurityViolation(f"operator {op} is not allowed")
    return operators[op]()


# --- hardening ---------------------------------------------------------------


def set_rlimits(*, cpu_seconds: int, memory_bytes: int, open_files: int) -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def enter_network_namespace() -> None:
    """A namespace with no interface but a down loopback: every connect fails."""
    flags = CLONE_NEWNET if os.geteuid() == 0 else CLONE_NEWUSER | CLONE_NEWNET
    if _libc().unshare(flags) != 0:
        raise OSError(ctypes.get_errno(), f"unshare(CLONE_NEWNET): {os.strerror(ctypes.get_errno())}")


def preimport() -> None:
    """Import and warm up what strategies use: after seccomp nothing can be opened."""
    import datetime  # noqa: F401
    import itertools  # noqa: F401
    import math  # noqa: F401
    import statistics  # noqa: F401

    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.ipc
    import pyseccomp  # noqa: F401  (it imports ctypes.util, unreadable once we are nobody)

    # Arrow starts its thread pools lazily; after RLIMIT_NPROC 0 it could not.
    sink = pa.BufferOutputStream()
    with pyarrow.ipc.new_stream(sink, pa.schema([("x", pa.int64())])) as writer:
        writer.write_table(pa.table({"x": [1]}))
    pyarrow.ipc.open_stream(sink.getvalue()).read_all().to_pandas(use_threads=False)
    frame = pd.DataFrame({"date": pd.date_range("2024-01-01", periods=30), "close": np.arange(30.0)})
    frame["close"].rolling(5).mean().ewm(span=3).mean().pct_change().shift(1).fillna(0).cumsum()
    frame.groupby(frame["date"].dt.month)["close"].agg(["mean", "std", "max"])
    list(frame.itertuples())
    frame.iloc[0].to_dict()
    str(frame["date"].iloc[0].date())
    frame["close"].rank().diff().abs().clip(0, 1).where(frame["close"] > 1)


def drop_privileges() -> None:
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(NOBODY_GID)
        os.setuid(NOBODY_UID)
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    if _libc().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")


def load_seccomp() -> None:
    import pyseccomp as seccomp

    syscalls = seccomp.SyscallFilter(defaction=seccomp.ERRNO(DENIED_ERRNO))
    for name in ALLOWED_SYSCALLS:
        syscalls.add_rule(seccomp.ALLOW, name)
    for fd in (1, 2):
        syscalls.add_rule(seccomp.ALLOW, "write", seccomp.Arg(0, seccomp.EQ, fd))
    # Memory, but never executable: no shellcode even through numpy's ctypes.
    for name in ("mmap", "mprotect"):
        syscalls.add_rule(seccomp.ALLOW, name, seccomp.Arg(2, seccomp.MASKED_EQ, PROT_EXEC, 0))
    syscalls.set_attr(seccomp.Attr.CTL_TSYNC, 1)
    syscalls.load()


# --- running -------------------------------------------------------------------


def read_input():
    import pyarrow.ipc

    stdin = sys.stdin.buffer
    header = json.loads(stdin.readline())
    table = pyarrow.ipc.open_stream(stdin).read_all()
    return header, table.to_pandas(use_threads=False)


def run_strategy(header: dict, bars, *, restricted: bool = True) -> tuple[dict, dict]:
    """The instances per ticker, and per ticker the true signals on its bars cut at some of its
    signal dates: at most ``header["cuts"]`` such runs in all (the look-ahead check; 0: none)."""
    code, entry = header["code"], header["function"]
    if restricted:
        compiled = compile_restricted_exec(code, filename="<strategy>")
        if compiled.errors:
            raise SecurityViolation("; ".join(compiled.errors))
        namespace = restricted_globals()
        exec(compiled.code, namespace)
    else:
        namespace = {"__name__": "strategy"}
        exec(compile(code, "<strategy>", "exec"), namespace)
    function = namespace[entry]
    results, candidates = {}, {}
    for ticker, frame in bars.groupby("ticker", sort=True):
        results[str(ticker)] = _instances(function, frame.reset_index(drop=True), entry, ticker)
        candidates[str(ticker)] = cut_dates(frame, results[str(ticker)], CUTS_PER_SYMBOL)
    plan = plan_cuts(candidates, header.get("cuts", 0))
    cuts: dict[str, list] = {ticker: [] for ticker in results}
    for ticker, frame in bars[bars["ticker"].astype(str).isin(plan)].groupby("ticker", sort=True):
        for cut in plan[str(ticker)]:
            signals = _signals(function, frame[frame["date"] <= cut], entry, ticker)
            cuts[str(ticker)].append({"cut": cut.isoformat(), "instances": signals})
    return results, cuts


def plan_cuts(candidates: dict[str, list], budget: int) -> dict[str, list]:
    """At most ``budget`` (ticker, date) cuts: every ticker's first candidate before any ticker's
    second, tickers spread evenly when the budget does not reach them all."""
    plan: dict[str, list] = {}
    taken = 0
    for level in range(CUTS_PER_SYMBOL):
        row = [(ticker, dates[level]) for ticker, dates in candidates.items() if len(dates) > level]
        room = budget - taken
        if room <= 0 or not row:
            break
        if len(row) > room:
            row = [row[int(i * len(row) / room)] for i in range(room)]
        for ticker, cut in row:
            plan.setdefault(ticker, []).append(cut)
        taken += len(row)
    return plan


def _instances(function, frame, entry: str, ticker) -> list:
    instances = function(frame)
    if not isinstance(instances, list | tuple):
        raise TypeError(
            f"{entry}() returned {type(instances).__name__} for {ticker}; expected a list of dicts"
        )
    for instance in instances:
        if not isinstance(instance, dict):
            raise TypeError(
                f"{entry}() returned a list containing {type(instance).__name__} for {ticker}; "
                "expected a list of dicts"
            )
    return list(instances)


def _signals(function, frame, entry: str, ticker) -> list:
    """The dates (and signals) of the instances not marked false: all the check compares."""
    return [
        {"date": i.get("date"), "signal": i.get("signal", True)}
        for i in _instances(function, frame.reset_index(drop=True), entry, ticker)
        if i.get("signal", True) is not False
    ]


def cut_dates(frame, instances: list, count: int) -> list:
    """Up to ``count`` dates of true signals before the last bar, spread evenly over them, in
    the order they are worth checking: the first (most future removed), the last, the rest."""
    import pandas as pd

    if count <= 0 or frame.empty:
        return []
    last, found = frame["date"].max(), set()
    for instance in instances:
        if instance.get("signal", True) is not True:
            continue
        try:
            stamp = pd.Timestamp(instance.get("date"))
        except (TypeError, ValueError):
            continue  # the parent rejects such an instance with its position named
        if pd.isna(stamp):
            continue
        if stamp.tzinfo is not None:
            stamp = stamp.tz_convert("UTC").tz_localize(None)
        if stamp < last:
            found.add(stamp)
    ordered = sorted(found)
    if len(ordered) > count:
        step = (len(ordered) - 1) / (count - 1) if count > 1 else 0
        ordered = sorted({ordered[round(i * step)] for i in range(count)})
    return ordered[:1] + ordered[:0:-1]


def _to_json(value: object) -> object:
    import datetime

    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, datetime.date):
        return value.isoformat()
    raise TypeError(f"strategy returned a value of type {type(value).__name__}, which is not JSON")


def _emit(document: dict) -> None:
    data = json.dumps(document, default=_to_json, allow_nan=False).encode()
    view = memoryview(data)
    while view:
        view = view[os.write(1, view) :]


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, SecurityViolation | PermissionError):
        return "security"
    if isinstance(exc, MemoryError):
        return "memory"
    return "strategy"


def _describe(exc: BaseException) -> str:
    import traceback

    lines = [
        f"line {frame.lineno}"
        for frame in traceback.extract_tb(exc.__traceback__)
        if frame.filename == "<strategy>"
    ]
    where = f" (strategy {lines[-1]})" if lines else ""
    return f"{type(exc).__name__}: {exc}{where}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cpu-seconds", type=int, required=True)
    parser.add_argument("--memory-bytes", type=int, required=True)
    parser.add_argument("--open-files", type=int, required=True)
    parser.add_argument("--no-seccomp", action="store_true")
    # Only for the escape tests: plain Python, to prove the process boundary holds on its own.
    parser.add_argument("--unrestricted", action="store_true")
    options = parser.parse_args(argv)
    try:
        set_rlimits(
            cpu_seconds=options.cpu_seconds, memory_bytes=options.memory_bytes, open_files=options.open_files
        )
        enter_network_namespace()
        preimport()
        drop_privileges()
        header, bars = read_input()
        if not options.no_seccomp:
            load_seccomp()
    except Exception as exc:
        sys.stderr.write(f"sandbox hardening failed: {type(exc).__name__}: {exc}\n")
        os._exit(HARDENING_FAILED_EXIT)
    try:
        results, cuts = run_strategy(header, bars, restricted=not options.unrestricted)
        document = {"ok": True, "results": results, "cuts": cuts}
        _emit(document)
    except BaseException as exc:  # the strategy's failure is our answer, whatever it is
        _emit({"ok": False, "kind": _error_kind(exc), "error": _describe(exc)[:4000]})
    os._exit(0)


if __name__ == "__main__":
    main()
