"""The sandbox: every known escape fails with a clear reason, and nothing outside the child is touched.

Static rejections need no process; the rest run the real hardened child.  The
``unrestricted`` cases skip RestrictedPython on purpose, to prove the process
boundary (nobody, no network, seccomp, rlimits) holds on its own.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from strategy_fixtures import GAP_UP

from actors.strategies import Sandbox, SandboxLimits, StrategyFailed, validate_code

LIMITS = SandboxLimits(cpu_seconds=2, memory_mb=1024, wall_seconds=60, output_bytes=1 << 20)
SECURITY = "Security validation failed: "


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    sandbox = Sandbox(limits=LIMITS)
    yield sandbox
    sandbox.close()


@pytest.fixture(scope="module")
def bare() -> Iterator[Sandbox]:
    bare = Sandbox(limits=LIMITS, restricted=False)
    yield bare
    bare.close()


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    days = pd.bdate_range("2024-03-01", periods=4)
    return pd.DataFrame(
        {
            "ticker": ["AAA"] * 4 + ["BBB"] * 4,
            "date": list(days) * 2,
            "open": [10.0, 10.5, 11.0, 11.5, 20.0, 21.0, 21.1, 22.0],
            "high": 30.0,
            "low": 5.0,
            "close": [10.0, 10.6, 11.0, 11.4, 20.0, 20.2, 21.0, 21.5],
            "volume": 1000.0,
            "gap_pct": [None, 5.0, 3.5, 4.0, None, 5.0, 4.5, 3.1],
            "volume_ratio": [1.0, 2.0, 1.4, 1.6, 1.0, 1.2, 3.0, 1.51],
        }
    )


def _fails(sandbox: Sandbox, code: str, bars: pd.DataFrame) -> str:
    with pytest.raises(StrategyFailed) as failure:
        sandbox.run(code=code, bars=bars, function_name=None if sandbox.restricted else "s")
    return str(failure.value)


def test_seed_gap_up_strategy_finds_the_right_instances(sandbox: Sandbox, bars: pd.DataFrame) -> None:
    results = sandbox.run(code=GAP_UP, bars=bars)
    found = {t: [(i["date"], i["signal"]) for i in items] for t, items in results.items()}
    assert found == {
        "AAA": [("2024-03-04", True), ("2024-03-06", True)],
        "BBB": [("2024-03-05", True), ("2024-03-06", True)],
    }
    assert results["AAA"][0]["message"] == "gap 5.0% on 2.0x volume"


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("import os\ndef s(df):\n    return []", "Line 1: import of 'os' is not allowed"),
        ("import sys\ndef s(df):\n    return []", "Line 1: import of 'sys' is not allowed"),
        ("def s(df):\n    import ctypes\n    return []", "Line 2: import of 'ctypes' is not allowed"),
        ("from subprocess import run\ndef s(df):\n    return []", "import of 'subprocess' is not allowed"),
        ("def s(df):\n    return [{'x': open('/etc/passwd').read()}]", "Line 2: name 'open' is not allowed"),
        (
            "def s(df):\n    g = (x for x in [1])\n    return [g.gi_frame.f_back.f_globals]",
            'Line 3: "f_globals" is a restricted name',
        ),
        ("def s(df):\n    return vars(type)['__subclasses__']", "Line 2: name 'vars' is not allowed"),
        ("def s(df):\n    return [df.__class__.__mro__]", 'Line 2: "__mro__" is an invalid attribute name'),
        ("def s(df):\n    return eval('1')", "Line 2: name 'eval' is not allowed"),
        ("def s(df):\n    return __import__('os')", 'Line 2: "__import__" is an invalid variable name'),
        ("from pandas import read_pickle\ndef s(df):\n    return []", "Line 1: import of pandas.read_pickle"),
        ("from numpy import ctypeslib\ndef s(df):\n    return []", "Line 1: import of numpy.ctypeslib"),
    ],
)
def test_static_escapes_are_rejected_with_their_line(code: str, expected: str) -> None:
    with pytest.raises(StrategyFailed) as failure:
        validate_code(code)
    assert str(failure.value).startswith(SECURITY)
    assert expected in str(failure.value)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("def s(df):\n    return [\n", "Invalid strategy code: Line 2: SyntaxError"),
        ("x = 1", "Invalid strategy code: strategy code defines no function"),
        ("def a(df):\n    return []\ndef b(df):\n    return []", "defines several functions (a, b)"),
        ("def s(df, other):\n    return []", "Line 1: s() must take exactly one argument"),
        ("def s(df):\n    return " + "+".join(["1"] * 50_000), "nested too deeply to compile"),
        ("def s(df):\n    return " + "-" * 100_000 + "1", "nested too deeply to compile"),
    ],
)
def test_code_that_is_no_strategy_is_rejected(code: str, expected: str) -> None:
    with pytest.raises(StrategyFailed, match=expected.replace("(", r"\(").replace(")", r"\)")):
        validate_code(code)


def test_a_named_entry_point_is_chosen_among_helpers() -> None:
    code = "def helper(x):\n    return x\ndef scan(df):\n    return []"
    assert validate_code(code, "scan") == "scan"
    with pytest.raises(StrategyFailed, match="defines no function 'other'"):
        validate_code(code, "other")


RUNTIME_ESCAPES = {
    "str.format reaches private attributes": (
        "def s(df):\n    return [{'m': '{0.__class__.__mro__}'.format(df)}]",
        "access to attribute 'format' is not allowed (strategy line 2)",
    ),
    "DataFrame.to_csv writes a file": (
        "def s(df):\n    df.to_csv('{target}')\n    return []",
        "access to attribute 'to_csv' is not allowed",
    ),
    "pandas.read_csv reads a file": (
        "import pandas as pd\ndef s(df):\n    return [{'m': str(pd.read_csv('/etc/passwd'))}]",
        "access to attribute 'read_csv' is not allowed",
    ),
    "numpy.load unpickles": (
        "import numpy as np\ndef s(df):\n    return [np.load('{target}', allow_pickle=True)]",
        "access to attribute 'load' is not allowed",
    ),
    "getattr with a computed name": (
        "import numpy as np\ndef s(df):\n    return [getattr(np, 'ctypes' + 'lib')]",
        "access to attribute 'ctypeslib' is not allowed",
    ),
    "a stdlib module reached through pandas": (
        "import pandas as pd\ndef s(df):\n    return [pd.compat.platform.os.system('touch {target}')]",
        "access to module 'platform' is not allowed",
    ),
    "ndarray.tofile writes a file": (
        "def s(df):\n    df.values.tofile('{target}')\n    return []",
        "access to attribute 'tofile' is not allowed",
    ),
    "DataFrame.query evaluates a string": (
        "def s(df):\n    return [df.query('close > 0')]",
        "access to attribute 'query' is not allowed",
    ),
}


@pytest.mark.parametrize("name", RUNTIME_ESCAPES)
def test_runtime_escapes_fail_cleanly_and_touch_nothing(
    name: str, sandbox: Sandbox, bars: pd.DataFrame, tmp_path: Path
) -> None:
    target = tmp_path / "touched"
    code, expected = RUNTIME_ESCAPES[name]
    reason = _fails(sandbox, code.replace("{target}", str(target)), bars)
    assert reason.startswith(SECURITY) and expected in reason
    assert not target.exists()


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A world-readable file: only seccomp stands between it and the strategy."""
    path = tmp_path / "secret.txt"
    path.write_text("s3cret")
    for folder in (path, *path.parents):
        if folder == Path("/"):
            break
        folder.chmod(folder.stat().st_mode | stat.S_IROTH | stat.S_IXOTH)
    return path


#: One statement each, run as plain Python inside the sandbox.
PROCESS_ESCAPES = {
    "read a file": "open('{secret}').read()",
    "write a file": "open('{target}', 'w').write('x')",
    "connect to Redis": "socket.socket().connect(('127.0.0.1', 6379))",
    "fork": "os.fork()",
    "run a command": "subprocess.run(['touch', '{target}'])",
    "exec a shell": "os.execv('/bin/sh', ['sh', '-c', 'touch {target}'])",
    "signal the parent": "os.kill(os.getppid(), signal.SIGTERM)",
    "executable memory": "mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_EXEC)",
}


@pytest.mark.parametrize("name", PROCESS_ESCAPES)
def test_the_process_boundary_holds_without_restricted_python(
    name: str, bare: Sandbox, bars: pd.DataFrame, tmp_path: Path, secret: Path
) -> None:
    target = tmp_path / "touched"
    statement = PROCESS_ESCAPES[name].replace("{secret}", str(secret)).replace("{target}", str(target))
    code = f"import mmap, os, signal, socket, subprocess\ndef s(df):\n    {statement}\n    return []"
    reason = _fails(bare, code, bars)
    assert reason.startswith(SECURITY), reason
    assert "PermissionError" in reason and "Operation not permitted" in reason
    assert not target.exists()


def test_ctypes_system_call_cannot_start_a_process(bare: Sandbox, bars: pd.DataFrame, tmp_path: Path) -> None:
    target = tmp_path / "touched"
    code = f"import ctypes\ndef s(df):\n    return [{{'rc': ctypes.CDLL(None).system(b'touch {target}')}}]"
    results = bare.run(code=code, bars=bars, function_name="s")
    # glibc's system() reports 127 << 8 when it cannot spawn the shell at all.
    assert results["AAA"] == [{"rc": 127 << 8}]
    assert not target.exists()


def test_without_seccomp_the_child_is_still_nobody_offline_and_limited(bars: pd.DataFrame) -> None:
    """The layers under seccomp: privilege drop, network namespace, rlimits."""
    layers = Sandbox(limits=SandboxLimits(memory_mb=1024, seccomp=False), restricted=False, prestart=False)
    code = (
        "import os, resource, socket\n"
        "def attempt(call):\n"
        "    try:\n"
        "        call()\n"
        "    except OSError as exc:\n"
        "        return exc.errno\n"
        "def s(df):\n"
        "    names = ('FSIZE', 'NPROC', 'CORE', 'AS')\n"
        "    limits = {n: resource.getrlimit(getattr(resource, 'RLIMIT_' + n))[0] for n in names}\n"
        "    return [{'uid': os.getuid(), **limits,\n"
        "             'connect': attempt(lambda: socket.socket().connect(('127.0.0.1', 6379))),\n"
        "             'fork': attempt(os.fork)}]\n"
    )
    facts = layers.run(code=code, bars=bars, function_name="s")["AAA"][0]
    assert facts == {
        "uid": 65534 if os.geteuid() == 0 else facts["uid"],
        "FSIZE": 0,
        "NPROC": 0,
        "CORE": 0,
        "AS": 1024 << 20,
        "connect": errno.ENETUNREACH,
        "fork": errno.EAGAIN,
    }


def test_each_run_gets_its_own_child_started_ahead(bars: pd.DataFrame) -> None:
    sandbox = Sandbox(limits=LIMITS, restricted=False)
    code = "import os\ndef s(df):\n    return [{'pid': os.getpid()}]"
    try:
        first = sandbox.run(code=code, bars=bars, function_name="s")["AAA"][0]["pid"]
        spare = sandbox._spare.pid
        second = sandbox.run(code=code, bars=bars, function_name="s")["AAA"][0]["pid"]
        assert second == spare != first
        assert sandbox._spare.pid not in (first, second)
    finally:
        sandbox.close()
    assert sandbox._spare is None


def test_a_dead_spare_is_replaced(bars: pd.DataFrame) -> None:
    sandbox = Sandbox(limits=LIMITS)
    try:
        sandbox.run(code="def s(df):\n    return []", bars=bars)
        sandbox._spare.kill()
        sandbox._spare.wait()
        assert sandbox.run(code="def s(df):\n    return [{'n': len(df)}]", bars=bars)["AAA"] == [{"n": 4}]
    finally:
        sandbox.close()


def test_an_infinite_loop_hits_the_cpu_limit(sandbox: Sandbox, bars: pd.DataFrame) -> None:
    reason = _fails(sandbox, "def s(df):\n    while True:\n        pass", bars)
    assert reason == "Sandbox error: strategy exceeded the CPU limit of 2 s"


def test_a_sleeping_strategy_hits_the_wall_clock_limit(bars: pd.DataFrame) -> None:
    sleeper = Sandbox(limits=SandboxLimits(wall_seconds=3), restricted=False, prestart=False)
    reason = _fails(sleeper, "import time\ndef s(df):\n    time.sleep(60)", bars)
    assert reason == "Sandbox error: strategy exceeded the wall-clock limit of 3 s"


@pytest.mark.parametrize(
    "code", ["def s(df):\n    x = [0] * (10**10)\n    return []", "def s(df):\n    return ['a' * 10**11]"]
)
def test_a_memory_bomb_is_contained(code: str, sandbox: Sandbox, bars: pd.DataFrame) -> None:
    reason = _fails(sandbox, code, bars)
    assert reason.startswith("Sandbox error: strategy ran out of memory (limit 1024 MiB): MemoryError")


def test_huge_output_is_cut_off(sandbox: Sandbox, bars: pd.DataFrame) -> None:
    reason = _fails(sandbox, "def s(df):\n    return [{'m': 'x' * 1000}] * 10000", bars)
    assert reason == f"Sandbox error: strategy output exceeds the limit of {1 << 20} bytes"


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (
            "def s(df):\n    return 5",
            "Strategy error: TypeError: s() returned int for AAA; expected a list of dicts",
        ),
        ("def s(df):\n    return [1]", "s() returned a list containing int for AAA"),
        ("def s(df):\n    return df", "s() returned DataFrame for AAA"),
        (
            "def s(df):\n    return [{'x': 1 / 0}]",
            "Strategy error: ZeroDivisionError: division by zero (strategy line 2)",
        ),
        ("def s(df):\n    return [{'x': df}]", "TypeError: strategy returned a value of type DataFrame"),
    ],
)
def test_wrong_results_are_strategy_errors(
    code: str, expected: str, sandbox: Sandbox, bars: pd.DataFrame
) -> None:
    assert expected in _fails(sandbox, code, bars)


def test_attribute_access_behaves_like_python(sandbox: Sandbox, bars: pd.DataFrame) -> None:
    code = (
        "def s(df):\n"
        "    found = [hasattr(df, 'close'), hasattr(df, 'nope'), hasattr(df, 'to_csv')]\n"
        "    found.append(getattr(df, 'nope', 7))\n"
        "    return [{'found': found, 'missing': df.nope}]"
    )
    reason = _fails(sandbox, code, bars)
    assert reason.startswith("Strategy error: AttributeError") and "nope" in reason
    results = sandbox.run(code=code.replace(", 'missing': df.nope", ""), bars=bars)
    assert results["AAA"] == [{"found": [True, False, False, 7]}]


def test_print_does_not_corrupt_the_answer(sandbox: Sandbox, bars: pd.DataFrame) -> None:
    results = sandbox.run(code="def s(df):\n    print('noise')\n    return [{'n': len(df)}]", bars=bars)
    assert results == {"AAA": [{"n": 4}], "BBB": [{"n": 4}]}
